//! AVX2 + FMA kernels for x86_64 (plus POPCNT for popcount tails).
//!
//! The `#[target_feature]` functions in `imp` are reachable only through [`TABLE`], which
//! [`table`] returns only after detecting every feature they enable.
//!
//! - f32 kernels: four independent 8-lane FMA accumulators (32 elements per iteration) hide
//!   the FMA latency; the tail uses a masked load, so there is no scalar loop. `matvec_f32`
//!   runs four rows at a time, one accumulator each, so each load of `x` serves four FMAs.
//!   `matvec_f16` does the same on half-precision rows, 8 entries widened by one F16C
//!   `vcvtph2ps` per row and step; the tail of a row is copied into a zeroed 8-entry buffer
//!   (there is no masked 16-bit load in AVX2).
//! - Integer dot products widen bytes to i16 and use `vpmaddwd`. `vpmaddubsw` would be faster
//!   but saturates (255 * 127 * 2 > i16::MAX), and these kernels must be exact.
//! - `dot_u4_i8`: one 32-byte load is one 64-dimension block of the packed layout (low
//!   nibbles = dimensions 0..32, high = 32..64), so `vpmaddubsw` applies directly; it cannot
//!   saturate here (2 * 15 * 128 < i16::MAX), and two of its results are added in i16 before
//!   `vpmaddwd` with ones widens to i32 (4 * 15 * 128 < i16::MAX).
//! - `dot_u4_i8_split_gather` (and `_segs` with one or two segments), codes of 1 to 8 whole
//!   32-byte steps: codes scored in groups, step by step so that each step's weights are
//!   loaded once per group, `vpmaddubsw` results added in i16 for 4 steps; the group's
//!   accumulators (8 codes, or 4 codes x 2 segments) are reduced together (`reduce8`) and
//!   stored at once. Bytes past the whole steps go through the scalar kernel.
//! - Popcount: nibble look-up with `vpshufb`, summed with `vpsadbw` (Mula's method).
//! - `dot_f32_bitplanes`: one byte of a plane, broadcast to 8 lanes, AND-ed with
//!   `1, 2, ..., 128` and compared for equality, is the lane mask of 8 weights; plane by plane
//!   into four accumulators, each plane's sum scaled by `2^j` with one FMA into the total.
//! - FastScan: `vpshufb` looks up two sub-quantizers per 256-bit op (one per 128-bit lane).
//! - `fwht_f32`: stages 1, 2, 4 inside each register (a lane permute pairs `x[i]` with
//!   `x[i ^ h]`, a blend keeps the sum or the difference), the larger ones between registers.
//! - `fastscan_lut_u8`: one 4-dimension group per step, its nibbles 0..8 and 8..16 in two
//!   registers; the low bytes are packed with `packus` and a dword permute.
//! - `fastscan_pack_u4`: per 16 code bytes, a 16×16 byte transpose (four rounds of
//!   `vpunpck{l,h}bw`, codes 0..16 in the low lane and 16..32 in the high one), then the two
//!   lanes' nibbles merged into the FastScan rows of two sub-quantizers.

use crate::{Kernels, SimdLevel};

/// The AVX2 table, if this CPU supports AVX2, FMA, F16C and POPCNT (every AVX2 CPU has F16C
/// and POPCNT).
pub(crate) fn table() -> Option<&'static Kernels> {
    let ok = is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
        && is_x86_feature_detected!("popcnt");
    ok.then_some(&TABLE)
}

static TABLE: Kernels = Kernels {
    level: SimdLevel::Avx2,
    isa: "avx2+fma+f16c",
    l2sq_f32,
    dot_f32,
    matvec_f32,
    matvec_f16,
    l2sq_f32_f16,
    dot_f32_u8,
    dot_f32_bitplanes,
    dot_u8_i8,
    dot_u8,
    dot_u4_i8,
    dot_u4_i8_split,
    dot_f32_u4_split,
    dot_u4_i8_split_gather,
    dot_u4_i8_split_gather_segs,
    and_popcount_u64,
    fastscan_u16,
    fwht_f32,
    rotate_rounds_f32,
    fastscan_lut_u8,
    nearest_centroid_t,
    fastscan_pack_u4,
};

// Safe entry points. Each is only reachable through `TABLE`, which `table()` hands out only
// after detecting AVX2, FMA, F16C and POPCNT, the features `imp` enables.

fn l2sq_f32(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: only reachable through TABLE, handed out after detecting avx2, fma and popcnt.
    unsafe { imp::l2sq_f32(a, b) }
}

fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: only reachable through TABLE, handed out after detecting avx2, fma and popcnt.
    unsafe { imp::dot_f32(a, b) }
}

fn dot_f32_u8(a: &[f32], b: &[u8]) -> f32 {
    // SAFETY: only reachable through TABLE, handed out after detecting avx2, fma and popcnt.
    unsafe { imp::dot_f32_u8(a, b) }
}

fn matvec_f32(m: &[f32], x: &[f32], out: &mut [f32]) {
    // SAFETY: only reachable through TABLE, handed out after detecting avx2, fma and popcnt.
    unsafe { imp::matvec_f32(m, x, out) }
}

fn l2sq_f32_f16(a: &[f32], b: &[u16]) -> f32 {
    // SAFETY: only reachable through TABLE, handed out after detecting avx2, fma and f16c.
    unsafe { imp::l2sq_f32_f16(a, b) }
}

fn matvec_f16(m: &[u16], x: &[f32], out: &mut [f32]) {
    // SAFETY: only reachable through TABLE, handed out after detecting avx2, fma, f16c and
    // popcnt.
    unsafe { imp::matvec_f16(m, x, out) }
}

fn dot_f32_bitplanes(a: &[f32], planes: &[u8]) -> f32 {
    // SAFETY: only reachable through TABLE, handed out after detecting avx2, fma and popcnt.
    unsafe { imp::dot_f32_bitplanes(a, planes) }
}

fn dot_u8_i8(a: &[u8], b: &[i8]) -> i32 {
    // SAFETY: only reachable through TABLE, handed out after detecting avx2, fma and popcnt.
    unsafe { imp::dot_u8_i8(a, b) }
}

fn dot_u8(a: &[u8], b: &[u8]) -> u32 {
    // SAFETY: only reachable through TABLE, handed out after detecting avx2, fma and popcnt.
    unsafe { imp::dot_u8(a, b) }
}

fn dot_u4_i8(packed: &[u8], b: &[i8]) -> i32 {
    // SAFETY: only reachable through TABLE, handed out after detecting avx2, fma and popcnt.
    unsafe { imp::dot_u4_i8(packed, b) }
}

fn dot_u4_i8_split(p: &[u8], lo: &[i8], hi: &[i8]) -> i32 {
    // SAFETY: only reachable through TABLE, handed out after detecting avx2, fma and popcnt.
    unsafe { imp::dot_u4_i8_split(p, lo, hi) }
}

fn dot_f32_u4_split(p: &[u8], lo: &[f32], hi: &[f32]) -> f32 {
    // SAFETY: only reachable through TABLE, handed out after detecting avx2, fma and popcnt.
    unsafe { imp::dot_f32_u4_split(p, lo, hi) }
}

fn dot_u4_i8_split_gather(
    base: &[u8],
    stride: usize,
    ids: &[u32],
    lo: &[i8],
    hi: &[i8],
    out: &mut [i32],
) {
    // SAFETY: only reachable through TABLE, handed out after detecting avx2, fma and popcnt.
    unsafe { imp::dot_u4_i8_split_gather(base, stride, ids, lo, hi, out) }
}

fn dot_u4_i8_split_gather_segs(
    base: &[u8],
    stride: usize,
    ids: &[u32],
    lo: &[i8],
    hi: &[i8],
    ends: &[u32],
    out: &mut [i32],
) {
    // SAFETY: only reachable through TABLE, handed out after detecting avx2, fma and popcnt.
    unsafe { imp::dot_u4_i8_split_gather_segs(base, stride, ids, lo, hi, ends, out) }
}

fn and_popcount_u64(a: &[u64], b: &[u64]) -> u32 {
    // SAFETY: only reachable through TABLE, handed out after detecting avx2, fma and popcnt.
    unsafe { imp::and_popcount_u64(a, b) }
}

fn fastscan_u16(codes: &[u8], luts: &[u8], out: &mut [u16; 32]) {
    // SAFETY: only reachable through TABLE, handed out after detecting avx2, fma and popcnt.
    unsafe { imp::fastscan_u16(codes, luts, out) }
}

fn fwht_f32(x: &mut [f32]) {
    // SAFETY: only reachable through TABLE, handed out after detecting avx2, fma and popcnt.
    unsafe { imp::fwht_f32(x) }
}

fn rotate_rounds_f32(x: &mut [f32], masks: &[u32], t: usize, scale: f32) {
    crate::scalar::rotate_rounds_with(x, masks, t, scale, fwht_f32);
}

fn fastscan_lut_u8(w: &[f32], scale: f32, out: &mut [u8]) {
    // SAFETY: only reachable through TABLE, handed out after detecting avx2, fma and popcnt.
    unsafe { imp::fastscan_lut_u8(w, scale, out) }
}

fn nearest_centroid_t(
    xt: &[f32],
    stride: usize,
    centroids: &[f32],
    norms: &[f32],
    out: &mut [u32],
) {
    // SAFETY: only reachable through TABLE, handed out after detecting avx2, fma and popcnt.
    unsafe { imp::nearest_centroid_t(xt, stride, centroids, norms, out) }
}

fn fastscan_pack_u4(base: &[u8], stride: usize, ids: &[u32], nbytes: usize, out: &mut [u8]) {
    // SAFETY: only reachable through TABLE, handed out after detecting avx2, fma and popcnt.
    unsafe { imp::fastscan_pack_u4(base, stride, ids, nbytes, out) }
}

pub(crate) mod imp {
    use core::arch::x86_64::*;

    /// `MASK[8 - r..16 - r]` has `r` leading all-ones lanes, for `vmaskmovps` tails.
    static TAIL_MASK: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];

    #[target_feature(enable = "avx2,fma")]
    fn tail_mask(r: usize) -> __m256i {
        assert!(r <= 8);
        // SAFETY: 8 - r + 8 <= 16, so the 8 lanes read lie inside TAIL_MASK.
        unsafe { _mm256_loadu_si256(TAIL_MASK.as_ptr().add(8 - r).cast()) }
    }

    #[target_feature(enable = "avx2,fma")]
    fn hsum_ps(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma")]
    fn hsum_epi32(v: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01>(s));
        _mm_cvtsi128_si32(s)
    }

    /// What `l2sq` reads its second vector from: f32, or half-precision bit patterns widened
    /// exactly (F16C).
    trait Lanes: Copy {
        /// 8 entries at `p` as f32.
        ///
        /// # Safety
        /// AVX2 and FMA (F16C for `u16`); 8 entries readable at `p`.
        unsafe fn load8(p: *const Self) -> __m256;
        /// The last `s.len() < 8` entries, zero-padded to 8; `m` is [`tail_mask`] of that
        /// length.
        ///
        /// # Safety
        /// As [`Lanes::load8`].
        unsafe fn load_tail(s: &[Self], m: __m256i) -> __m256;
    }

    impl Lanes for f32 {
        #[inline(always)]
        unsafe fn load8(p: *const f32) -> __m256 {
            // SAFETY: the caller's contract.
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn load_tail(s: &[f32], m: __m256i) -> __m256 {
            // SAFETY: the mask enables only the s.len() lanes of s; masked-off lanes are not
            // read and cannot fault.
            unsafe { _mm256_maskload_ps(s.as_ptr(), m) }
        }
    }

    impl Lanes for u16 {
        #[inline(always)]
        unsafe fn load8(p: *const u16) -> __m256 {
            // SAFETY: the caller's contract.
            unsafe { load_f16x8(p) }
        }
        #[inline(always)]
        unsafe fn load_tail(s: &[u16], _: __m256i) -> __m256 {
            // SAFETY: the caller's contract (features).
            unsafe { load_f16_tail(s) }
        }
    }

    /// `sum (a[i] - b[i])^2`, `b` widened to f32: four accumulators over 32 entries, then 8
    /// at a time, then a masked tail.
    ///
    /// # Safety
    /// AVX2 and FMA, and F16C for `u16` (inlined into the callers, which enable them).
    #[inline(always)]
    unsafe fn l2sq<T: Lanes>(a: &[f32], b: &[T]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        // SAFETY: the features are the caller's contract; the full loads read entries
        // i.. < n = a.len() = b.len(), the tail only the enabled lanes i..n.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut i = 0;
            while i + 32 <= n {
                for (k, acc) in acc.iter_mut().enumerate() {
                    let d = _mm256_sub_ps(
                        _mm256_loadu_ps(pa.add(i + 8 * k)),
                        T::load8(pb.add(i + 8 * k)),
                    );
                    *acc = _mm256_fmadd_ps(d, d, *acc);
                }
                i += 32;
            }
            while i + 8 <= n {
                let d = _mm256_sub_ps(_mm256_loadu_ps(pa.add(i)), T::load8(pb.add(i)));
                acc[0] = _mm256_fmadd_ps(d, d, acc[0]);
                i += 8;
            }
            if i < n {
                let m = tail_mask(n - i);
                let d = _mm256_sub_ps(_mm256_maskload_ps(pa.add(i), m), T::load_tail(&b[i..], m));
                acc[1] = _mm256_fmadd_ps(d, d, acc[1]);
            }
            hsum_ps(_mm256_add_ps(
                _mm256_add_ps(acc[0], acc[1]),
                _mm256_add_ps(acc[2], acc[3]),
            ))
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn l2sq_f32(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        // SAFETY: this function enables the features `l2sq` needs for f32.
        unsafe { l2sq(a, b) }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (k, acc) in acc.iter_mut().enumerate() {
                // SAFETY: i + 8k + 8 <= i + 32 <= n = a.len() = b.len().
                let (x, y) = unsafe {
                    (
                        _mm256_loadu_ps(pa.add(i + 8 * k)),
                        _mm256_loadu_ps(pb.add(i + 8 * k)),
                    )
                };
                *acc = _mm256_fmadd_ps(x, y, *acc);
            }
            i += 32;
        }
        while i + 8 <= n {
            // SAFETY: i + 8 <= n = a.len() = b.len().
            let (x, y) = unsafe { (_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i))) };
            acc[0] = _mm256_fmadd_ps(x, y, acc[0]);
            i += 8;
        }
        if i < n {
            let m = tail_mask(n - i);
            // SAFETY: the mask enables only lanes i..n, inside both slices; masked-off lanes
            // are not read and cannot fault.
            let (x, y) = unsafe {
                (
                    _mm256_maskload_ps(pa.add(i), m),
                    _mm256_maskload_ps(pb.add(i), m),
                )
            };
            acc[1] = _mm256_fmadd_ps(x, y, acc[1]);
        }
        hsum_ps(_mm256_add_ps(
            _mm256_add_ps(acc[0], acc[1]),
            _mm256_add_ps(acc[2], acc[3]),
        ))
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn matvec_f32(m: &[f32], x: &[f32], out: &mut [f32]) {
        let n = x.len();
        assert_eq!(
            m.len(),
            out.len() * n,
            "matvec_f32: m must be out.len() × x.len()"
        );
        if n == 0 {
            out.fill(0.0);
            return;
        }
        let px = x.as_ptr();
        let tail = tail_mask(n % 8);
        let mut rows = out.chunks_exact_mut(4);
        let mut r = 0;
        for o in &mut rows {
            // SAFETY: rows r .. r + 4 of m exist (o has 4 elements, m.len() = out.len() * n).
            let p = unsafe { [0, 1, 2, 3].map(|k| m.as_ptr().add((r + k) * n)) };
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut i = 0;
            while i + 8 <= n {
                // SAFETY: elements i .. i + 8 <= n of x and of each of the four rows.
                unsafe {
                    let xv = _mm256_loadu_ps(px.add(i));
                    for k in 0..4 {
                        acc[k] = _mm256_fmadd_ps(_mm256_loadu_ps(p[k].add(i)), xv, acc[k]);
                    }
                }
                i += 8;
            }
            if i < n {
                // SAFETY: the mask enables only elements i..n of x and of each row.
                unsafe {
                    let xv = _mm256_maskload_ps(px.add(i), tail);
                    for k in 0..4 {
                        acc[k] = _mm256_fmadd_ps(_mm256_maskload_ps(p[k].add(i), tail), xv, acc[k]);
                    }
                }
            }
            for (o, a) in o.iter_mut().zip(acc) {
                *o = hsum_ps(a);
            }
            r += 4;
        }
        for (o, row) in rows
            .into_remainder()
            .iter_mut()
            .zip(m[r * n..].chunks_exact(n))
        {
            *o = dot_f32(row, x);
        }
    }

    /// The 8 half-precision entries at `p` widened to f32.
    ///
    /// # Safety
    /// `p .. p + 8` must be readable.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_f16x8(p: *const u16) -> __m256 {
        // SAFETY: the caller guarantees 8 readable entries (16 bytes) at p.
        _mm256_cvtph_ps(unsafe { _mm_loadu_si128(p.cast()) })
    }

    /// Entries `i..` (fewer than 8) of `row`, zero-padded to 8 and widened to f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn load_f16_tail(row: &[u16]) -> __m256 {
        let mut buf = [0u16; 8];
        buf[..row.len()].copy_from_slice(row);
        // SAFETY: buf holds 8 entries.
        unsafe { load_f16x8(buf.as_ptr()) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn l2sq_f32_f16(a: &[f32], b: &[u16]) -> f32 {
        assert_eq!(
            a.len(),
            b.len(),
            "l2sq_f32_f16: slices of different lengths"
        );
        // SAFETY: this function enables the features `l2sq` needs for u16.
        unsafe { l2sq(a, b) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn matvec_f16(m: &[u16], x: &[f32], out: &mut [f32]) {
        let n = x.len();
        assert_eq!(
            m.len(),
            out.len() * n,
            "matvec_f16: m must be out.len() × x.len()"
        );
        if n == 0 {
            out.fill(0.0);
            return;
        }
        let px = x.as_ptr();
        let body = n - n % 8;
        let tail = tail_mask(n % 8);
        let mut rows = out.chunks_exact_mut(4);
        let mut r = 0;
        for o in &mut rows {
            // SAFETY: rows r .. r + 4 of m exist (o has 4 elements, m.len() = out.len() * n).
            let p = unsafe { [0, 1, 2, 3].map(|k| m.as_ptr().add((r + k) * n)) };
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut i = 0;
            while i < body {
                // SAFETY: elements i .. i + 8 <= n of x and of each of the four rows.
                unsafe {
                    let xv = _mm256_loadu_ps(px.add(i));
                    for k in 0..4 {
                        acc[k] = _mm256_fmadd_ps(load_f16x8(p[k].add(i)), xv, acc[k]);
                    }
                }
                i += 8;
            }
            if body < n {
                // SAFETY: the mask enables only elements body..n of x.
                let xv = unsafe { _mm256_maskload_ps(px.add(body), tail) };
                for k in 0..4 {
                    let row = &m[(r + k) * n + body..(r + k + 1) * n];
                    acc[k] = _mm256_fmadd_ps(load_f16_tail(row), xv, acc[k]);
                }
            }
            for (o, a) in o.iter_mut().zip(acc) {
                *o = hsum_ps(a);
            }
            r += 4;
        }
        for (o, row) in rows
            .into_remainder()
            .iter_mut()
            .zip(m[r * n..].chunks_exact(n))
        {
            let mut acc = [_mm256_setzero_ps(); 2];
            let mut i = 0;
            while i < body {
                // SAFETY: elements i .. i + 8 <= n of x and of the row (n entries).
                unsafe {
                    let xv = _mm256_loadu_ps(px.add(i));
                    let a = &mut acc[(i / 8) % 2];
                    *a = _mm256_fmadd_ps(load_f16x8(row.as_ptr().add(i)), xv, *a);
                }
                i += 8;
            }
            if body < n {
                // SAFETY: the mask enables only elements body..n of x.
                let xv = unsafe { _mm256_maskload_ps(px.add(body), tail) };
                acc[1] = _mm256_fmadd_ps(load_f16_tail(&row[body..]), xv, acc[1]);
            }
            *o = hsum_ps(_mm256_add_ps(acc[0], acc[1]));
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot_f32_bitplanes(a: &[f32], planes: &[u8]) -> f32 {
        let k = crate::scalar::bitplane_count(a.len(), planes);
        let n = a.len();
        let pb = n.div_ceil(8);
        let pa = a.as_ptr();
        let bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
        // Lanes of `x` whose bit is set in `byte`.
        let select = |byte: u8, x: __m256| {
            let b = _mm256_and_si256(_mm256_set1_epi32(byte as i32), bit);
            _mm256_and_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(b, bit)), x)
        };
        let mut total = _mm256_setzero_ps();
        for j in 0..k {
            let p = &planes[j * pb..(j + 1) * pb];
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut i = 0;
            while i + 32 <= n {
                for (h, acc) in acc.iter_mut().enumerate() {
                    let at = i + 8 * h;
                    // SAFETY: elements at .. at + 8 <= i + 32 <= n of `a`.
                    let x = unsafe { _mm256_loadu_ps(pa.add(at)) };
                    *acc = _mm256_add_ps(*acc, select(p[at / 8], x));
                }
                i += 32;
            }
            while i + 8 <= n {
                // SAFETY: elements i .. i + 8 <= n of `a`.
                let x = unsafe { _mm256_loadu_ps(pa.add(i)) };
                acc[0] = _mm256_add_ps(acc[0], select(p[i / 8], x));
                i += 8;
            }
            if i < n {
                // SAFETY: the mask enables only lanes i..n of `a`; the other lanes read as 0,
                // so bits past n in the last byte add nothing.
                let x = unsafe { _mm256_maskload_ps(pa.add(i), tail_mask(n - i)) };
                acc[1] = _mm256_add_ps(acc[1], select(p[i / 8], x));
            }
            let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
            total = _mm256_fmadd_ps(sum, _mm256_set1_ps((1u32 << j) as f32), total);
        }
        hsum_ps(total)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot_f32_u8(a: &[f32], b: &[u8]) -> f32 {
        assert_eq!(a.len(), b.len());
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (k, acc) in acc.iter_mut().enumerate() {
                // SAFETY: the loads cover elements i + 8k .. i + 8k + 8 <= n of both slices
                // (_mm_loadl_epi64 reads exactly 8 bytes).
                let (x, c) = unsafe {
                    (
                        _mm256_loadu_ps(pa.add(i + 8 * k)),
                        _mm_loadl_epi64(pb.add(i + 8 * k).cast()),
                    )
                };
                *acc = _mm256_fmadd_ps(x, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(c)), *acc);
            }
            i += 32;
        }
        while i + 8 <= n {
            // SAFETY: elements i .. i + 8 <= n of both slices.
            let (x, c) = unsafe {
                (
                    _mm256_loadu_ps(pa.add(i)),
                    _mm_loadl_epi64(pb.add(i).cast()),
                )
            };
            acc[0] = _mm256_fmadd_ps(x, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(c)), acc[0]);
            i += 8;
        }
        if i < n {
            let mut buf = [0u8; 8];
            buf[..n - i].copy_from_slice(&b[i..]);
            let m = tail_mask(n - i);
            // SAFETY: the mask enables only lanes i..n of `a`; `buf` holds 8 bytes.
            let (x, c) = unsafe {
                (
                    _mm256_maskload_ps(pa.add(i), m),
                    _mm_loadl_epi64(buf.as_ptr().cast()),
                )
            };
            acc[1] = _mm256_fmadd_ps(x, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(c)), acc[1]);
        }
        hsum_ps(_mm256_add_ps(
            _mm256_add_ps(acc[0], acc[1]),
            _mm256_add_ps(acc[2], acc[3]),
        ))
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot_u8_i8(a: &[u8], b: &[i8]) -> i32 {
        assert_eq!(a.len(), b.len());
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_si256(); 2];
        let mut i = 0;
        // u8 -> i16 and i8 -> i16, then vpmaddwd: |255 * -128 * 2| fits an i32 lane exactly.
        while i + 32 <= n {
            for (k, acc) in acc.iter_mut().enumerate() {
                // SAFETY: bytes i + 16k .. i + 16k + 16 <= n of both slices.
                let (x, y) = unsafe {
                    (
                        _mm_loadu_si128(pa.add(i + 16 * k).cast()),
                        _mm_loadu_si128(pb.add(i + 16 * k).cast()),
                    )
                };
                let p = _mm256_madd_epi16(_mm256_cvtepu8_epi16(x), _mm256_cvtepi8_epi16(y));
                *acc = _mm256_add_epi32(*acc, p);
            }
            i += 32;
        }
        if i + 16 <= n {
            // SAFETY: bytes i .. i + 16 <= n of both slices.
            let (x, y) = unsafe {
                (
                    _mm_loadu_si128(pa.add(i).cast()),
                    _mm_loadu_si128(pb.add(i).cast()),
                )
            };
            let p = _mm256_madd_epi16(_mm256_cvtepu8_epi16(x), _mm256_cvtepi8_epi16(y));
            acc[0] = _mm256_add_epi32(acc[0], p);
            i += 16;
        }
        let tail = crate::scalar::dot_u8_i8(&a[i..], &b[i..]);
        hsum_epi32(_mm256_add_epi32(acc[0], acc[1])).wrapping_add(tail)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot_u8(a: &[u8], b: &[u8]) -> u32 {
        assert_eq!(a.len(), b.len());
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_si256(); 2];
        let mut i = 0;
        // Zero-extended bytes are non-negative i16, so vpmaddwd is exact (2 * 255^2 < 2^31).
        while i + 32 <= n {
            for (k, acc) in acc.iter_mut().enumerate() {
                // SAFETY: bytes i + 16k .. i + 16k + 16 <= n of both slices.
                let (x, y) = unsafe {
                    (
                        _mm_loadu_si128(pa.add(i + 16 * k).cast()),
                        _mm_loadu_si128(pb.add(i + 16 * k).cast()),
                    )
                };
                let p = _mm256_madd_epi16(_mm256_cvtepu8_epi16(x), _mm256_cvtepu8_epi16(y));
                *acc = _mm256_add_epi32(*acc, p);
            }
            i += 32;
        }
        if i + 16 <= n {
            // SAFETY: bytes i .. i + 16 <= n of both slices.
            let (x, y) = unsafe {
                (
                    _mm_loadu_si128(pa.add(i).cast()),
                    _mm_loadu_si128(pb.add(i).cast()),
                )
            };
            let p = _mm256_madd_epi16(_mm256_cvtepu8_epi16(x), _mm256_cvtepu8_epi16(y));
            acc[0] = _mm256_add_epi32(acc[0], p);
            i += 16;
        }
        let tail = crate::scalar::dot_u8(&a[i..], &b[i..]);
        (hsum_epi32(_mm256_add_epi32(acc[0], acc[1])) as u32).wrapping_add(tail)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot_u4_i8(packed: &[u8], b: &[i8]) -> i32 {
        let n = b.len();
        assert_eq!(
            packed.len(),
            n.div_ceil(2),
            "dot_u4_i8: packed.len() must be ceil(n / 2)"
        );
        let (pp, pb) = (packed.as_ptr(), b.as_ptr());
        let nib = _mm256_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_si256(); 2];
        let blocks = n / 64;
        for k in 0..blocks {
            // SAFETY: block k is packed bytes 32k .. 32k + 32 <= 32 * blocks <= packed.len()
            // and dimensions 64k .. 64k + 64 <= n of `b`.
            let (p, q0, q1) = unsafe {
                (
                    _mm256_loadu_si256(pp.add(32 * k).cast()),
                    _mm256_loadu_si256(pb.add(64 * k).cast()),
                    _mm256_loadu_si256(pb.add(64 * k + 32).cast()),
                )
            };
            let lo = _mm256_and_si256(p, nib);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(p), nib);
            let s16 = _mm256_add_epi16(_mm256_maddubs_epi16(lo, q0), _mm256_maddubs_epi16(hi, q1));
            acc[k & 1] = _mm256_add_epi32(acc[k & 1], _mm256_madd_epi16(s16, ones));
        }
        let tail = crate::scalar::dot_u4_i8(&packed[32 * blocks..], &b[64 * blocks..]);
        hsum_epi32(_mm256_add_epi32(acc[0], acc[1])).wrapping_add(tail)
    }

    /// 32 bytes per step: `vpmaddubsw` of the masked nibbles with their weights (exact for
    /// 4-bit codes: 2 * 15 * 128 < i16::MAX), `vpmaddwd` by ones into i32; scalar tail.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot_u4_i8_split(p: &[u8], lo: &[i8], hi: &[i8]) -> i32 {
        assert!(
            p.len() == lo.len() && p.len() == hi.len(),
            "dot_u4_i8_split: slices of different lengths"
        );
        let n = p.len();
        let nib = _mm256_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_si256();
        let mut i = 0;
        while i + 32 <= n {
            // SAFETY: bytes i .. i + 32 <= n of the three slices.
            let (x, l, h) = unsafe {
                (
                    _mm256_loadu_si256(p.as_ptr().add(i).cast()),
                    _mm256_loadu_si256(lo.as_ptr().add(i).cast()),
                    _mm256_loadu_si256(hi.as_ptr().add(i).cast()),
                )
            };
            let s16 = _mm256_add_epi16(
                _mm256_maddubs_epi16(_mm256_and_si256(x, nib), l),
                _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16::<4>(x), nib), h),
            );
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(s16, ones));
            i += 32;
        }
        let tail = crate::scalar::dot_u4_i8_split(&p[i..], &lo[i..], &hi[i..]);
        hsum_epi32(acc).wrapping_add(tail)
    }

    /// 8 codes per step: bytes widened to i32 lanes, nibbles split, converted to f32 and
    /// multiplied into two FMA accumulators; scalar tail.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot_f32_u4_split(p: &[u8], lo: &[f32], hi: &[f32]) -> f32 {
        assert!(
            p.len() == lo.len() && p.len() == hi.len(),
            "dot_f32_u4_split: slices of different lengths"
        );
        let n = p.len();
        let nib = _mm256_set1_epi32(0x0f);
        let mut acc = [_mm256_setzero_ps(); 2];
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: elements i .. i + 8 <= n of the three slices.
            let (x, l, h) = unsafe {
                (
                    _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.as_ptr().add(i).cast())),
                    _mm256_loadu_ps(lo.as_ptr().add(i)),
                    _mm256_loadu_ps(hi.as_ptr().add(i)),
                )
            };
            let cl = _mm256_cvtepi32_ps(_mm256_and_si256(x, nib));
            let ch = _mm256_cvtepi32_ps(_mm256_srli_epi32::<4>(x));
            acc[0] = _mm256_fmadd_ps(cl, l, acc[0]);
            acc[1] = _mm256_fmadd_ps(ch, h, acc[1]);
            i += 8;
        }
        let tail = crate::scalar::dot_f32_u4_split(&p[i..], &lo[i..], &hi[i..]);
        hsum_ps(_mm256_add_ps(acc[0], acc[1])) + tail
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot_u4_i8_split_gather(
        base: &[u8],
        stride: usize,
        ids: &[u32],
        lo: &[i8],
        hi: &[i8],
        out: &mut [i32],
    ) {
        assert_eq!(ids.len(), out.len(), "dot_u4_i8_split_gather: ids and out");
        assert_eq!(
            lo.len(),
            hi.len(),
            "dot_u4_i8_split: slices of different lengths"
        );
        let len = lo.len();
        let ends = [len as u32];
        match len / 32 {
            1 => gather_n::<1>(base, stride, ids, lo, hi, &ends, out),
            2 => gather_n::<2>(base, stride, ids, lo, hi, &ends, out),
            3 => gather_n::<3>(base, stride, ids, lo, hi, &ends, out),
            4 => gather_n::<4>(base, stride, ids, lo, hi, &ends, out),
            5 => gather_n::<5>(base, stride, ids, lo, hi, &ends, out),
            6 => gather_n::<6>(base, stride, ids, lo, hi, &ends, out),
            7 => gather_n::<7>(base, stride, ids, lo, hi, &ends, out),
            8 => gather_n::<8>(base, stride, ids, lo, hi, &ends, out),
            _ => {
                for (o, &id) in out.iter_mut().zip(ids) {
                    let at = id as usize * stride;
                    *o = dot_u4_i8_split(&base[at..at + len], lo, hi);
                }
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot_u4_i8_split_gather_segs(
        base: &[u8],
        stride: usize,
        ids: &[u32],
        lo: &[i8],
        hi: &[i8],
        ends: &[u32],
        out: &mut [i32],
    ) {
        crate::scalar::check_segs_args(ids, lo, hi, ends, out);
        let steps = if ends.len() <= 2 { lo.len() / 32 } else { 0 };
        match steps {
            1 => gather_n::<1>(base, stride, ids, lo, hi, ends, out),
            2 => gather_n::<2>(base, stride, ids, lo, hi, ends, out),
            3 => gather_n::<3>(base, stride, ids, lo, hi, ends, out),
            4 => gather_n::<4>(base, stride, ids, lo, hi, ends, out),
            5 => gather_n::<5>(base, stride, ids, lo, hi, ends, out),
            6 => gather_n::<6>(base, stride, ids, lo, hi, ends, out),
            7 => gather_n::<7>(base, stride, ids, lo, hi, ends, out),
            8 => gather_n::<8>(base, stride, ids, lo, hi, ends, out),
            _ => crate::scalar::gather_segs_with(
                |p, l, h| dot_u4_i8_split(p, l, h),
                base,
                stride,
                ids,
                lo,
                hi,
                ends,
                out,
            ),
        }
    }

    /// `[x.lo + x.hi | y.hi + y.lo]` (128-bit halves): `x`'s lanes folded into the low half,
    /// `y`'s into the high half.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn fold_halves(x: __m256i, y: __m256i) -> __m256i {
        _mm256_add_epi32(
            _mm256_blend_epi32::<0xF0>(x, y),
            _mm256_permute2x128_si256::<0x21>(x, y),
        )
    }

    /// The sums of the i32 lanes of `a[0]` .. `a[7]`, in that order, reduced jointly.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn reduce8(a: &[__m256i; 8]) -> __m256i {
        let (p0, p1) = (fold_halves(a[0], a[1]), fold_halves(a[2], a[3]));
        let (p2, p3) = (fold_halves(a[4], a[5]), fold_halves(a[6], a[7]));
        // [a0 a0 a2 a2 | a1 a1 a3 a3] and [a4 a4 a6 a6 | a5 a5 a7 a7].
        let u = _mm256_add_epi32(_mm256_unpacklo_epi64(p0, p1), _mm256_unpackhi_epi64(p0, p1));
        let v = _mm256_add_epi32(_mm256_unpacklo_epi64(p2, p3), _mm256_unpackhi_epi64(p2, p3));
        // [a0 a4 a2 a6 | a1 a5 a3 a7].
        let w = _mm256_add_epi32(
            _mm256_blend_epi32::<0xAA>(u, v),
            _mm256_shuffle_epi32::<0xB1>(_mm256_blend_epi32::<0x55>(u, v)),
        );
        _mm256_permutevar8x32_epi32(w, _mm256_setr_epi32(0, 4, 2, 6, 1, 5, 3, 7))
    }

    /// The sums of the i32 lanes of `a[0]` .. `a[3]` in the low four lanes, reduced jointly.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn reduce4(a: &[__m256i; 4]) -> __m256i {
        let (p0, p1) = (fold_halves(a[0], a[1]), fold_halves(a[2], a[3]));
        let u = _mm256_add_epi32(_mm256_unpacklo_epi64(p0, p1), _mm256_unpackhi_epi64(p0, p1));
        let u = _mm256_add_epi32(u, _mm256_shuffle_epi32::<0xB1>(u));
        _mm256_permutevar8x32_epi32(u, _mm256_setr_epi32(0, 4, 2, 6, 0, 0, 0, 0))
    }

    /// The code `id` of a gather, after checking that its `len` bytes lie in `base`.
    #[inline]
    fn code_at(base: &[u8], stride: usize, id: u32, len: usize) -> *const u8 {
        let at = id as usize * stride;
        assert!(
            at <= base.len() && len <= base.len() - at,
            "dot_u4_i8_split_gather: code {id} outside base"
        );
        base[at..].as_ptr()
    }

    /// The products of the `G` codes at `ptrs` (`N` 32-byte steps each) with `lo`, `hi`, one
    /// accumulator of i32 lanes per code, step by step so that each step's weights are loaded
    /// once for the group. `vpmaddubsw` results are added in i16 for up to 4 steps (8 terms,
    /// each at most 2 * 15 * 128 in magnitude: 30720 < 2^15) before `vpmaddwd` with ones
    /// widens them.
    ///
    /// # Safety
    /// The CPU must have AVX2 (it is called only from `avx2` functions; it has no
    /// `#[target_feature]` so that it can be `#[inline(always)]`); bytes `ptrs[g] .. ptrs[g]
    /// + 32 N` must be readable, and `lo`, `hi` at least `32 N` long.
    #[inline(always)]
    unsafe fn group_acc<const N: usize, const G: usize>(
        ptrs: &[*const u8; G],
        lo: &[i8],
        hi: &[i8],
    ) -> [__m256i; G] {
        debug_assert!(lo.len() >= 32 * N && hi.len() >= 32 * N);
        // SAFETY: the caller's contract; weight bytes 32c .. 32c + 32 <= 32 N of lo and hi.
        unsafe {
            let nib = _mm256_set1_epi8(0x0f);
            let ones = _mm256_set1_epi16(1);
            let mut acc = [_mm256_setzero_si256(); G];
            let mut s16 = [_mm256_setzero_si256(); G];
            for c in 0..N {
                let wl = _mm256_loadu_si256(lo.as_ptr().add(32 * c).cast());
                let wh = _mm256_loadu_si256(hi.as_ptr().add(32 * c).cast());
                for (s, &p) in s16.iter_mut().zip(ptrs) {
                    let x = _mm256_loadu_si256(p.add(32 * c).cast());
                    let q = _mm256_add_epi16(
                        _mm256_maddubs_epi16(_mm256_and_si256(x, nib), wl),
                        _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16::<4>(x), nib), wh),
                    );
                    *s = _mm256_add_epi16(*s, q);
                }
                if c % 4 == 3 || c + 1 == N {
                    for (a, s) in acc.iter_mut().zip(s16.iter_mut()) {
                        *a = _mm256_add_epi32(*a, _mm256_madd_epi16(*s, ones));
                        *s = _mm256_setzero_si256();
                    }
                }
            }
            acc
        }
    }

    /// `group_acc` with two accumulators per code: segment 0 (the steps before `k`, and the
    /// lanes of step `k` set in `m`) and segment 1 (the rest). Two codes at a time keep the
    /// eight i16 and i32 accumulators in the 16 registers.
    ///
    /// # Safety
    /// As for `group_acc`.
    #[inline(always)]
    unsafe fn group_acc2<const N: usize, const G: usize>(
        ptrs: &[*const u8; G],
        lo: &[i8],
        hi: &[i8],
        k: usize,
        m: __m256i,
    ) -> [[__m256i; 2]; G] {
        debug_assert!(lo.len() >= 32 * N && hi.len() >= 32 * N);
        // SAFETY: the caller's contract; weight bytes 32c .. 32c + 32 <= 32 N of lo and hi.
        unsafe {
            let nib = _mm256_set1_epi8(0x0f);
            let ones = _mm256_set1_epi16(1);
            let mut acc = [[_mm256_setzero_si256(); 2]; G];
            let mut s16 = [[_mm256_setzero_si256(); 2]; G];
            for c in 0..N {
                let wl = _mm256_loadu_si256(lo.as_ptr().add(32 * c).cast());
                let wh = _mm256_loadu_si256(hi.as_ptr().add(32 * c).cast());
                for (s, &p) in s16.iter_mut().zip(ptrs) {
                    let x = _mm256_loadu_si256(p.add(32 * c).cast());
                    let q = _mm256_add_epi16(
                        _mm256_maddubs_epi16(_mm256_and_si256(x, nib), wl),
                        _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16::<4>(x), nib), wh),
                    );
                    if c < k {
                        s[0] = _mm256_add_epi16(s[0], q);
                    } else if c > k {
                        s[1] = _mm256_add_epi16(s[1], q);
                    } else {
                        s[0] = _mm256_add_epi16(s[0], _mm256_and_si256(q, m));
                        s[1] = _mm256_add_epi16(s[1], _mm256_andnot_si256(m, q));
                    }
                }
                if c % 4 == 3 || c + 1 == N {
                    for (a, s) in acc.iter_mut().zip(s16.iter_mut()) {
                        if c - c % 4 <= k {
                            a[0] = _mm256_add_epi32(a[0], _mm256_madd_epi16(s[0], ones));
                            s[0] = _mm256_setzero_si256();
                        }
                        if c >= k {
                            a[1] = _mm256_add_epi32(a[1], _mm256_madd_epi16(s[1], ones));
                            s[1] = _mm256_setzero_si256();
                        }
                    }
                }
            }
            acc
        }
    }

    /// The gathers on codes of `N` whole 32-byte steps and at most 31 more bytes, one or two
    /// segments (`ends`): codes in groups (8 codes, or 4 codes of two segments), one
    /// accumulator per code and segment, all reduced together by `reduce8` (or `reduce4`);
    /// a partial last group repeats its last code and stores only its own sums. Bytes past
    /// the whole steps are added by the scalar kernel, segment by segment.
    #[target_feature(enable = "avx2,fma")]
    fn gather_n<const N: usize>(
        base: &[u8],
        stride: usize,
        ids: &[u32],
        lo: &[i8],
        hi: &[i8],
        ends: &[u32],
        out: &mut [i32],
    ) {
        let len = lo.len();
        let s = ends.len();
        debug_assert!(len / 32 == N && (s == 1 || s == 2));
        // Segment 0 ends in step k, at the lanes of m (all of step k when ends[0] lies past it).
        let e0 = if s == 2 { ends[0] as usize } else { len };
        let k = e0 / 32;
        let m = _mm256_cmpgt_epi32(
            _mm256_set1_epi32((e0 % 32 / 4) as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        );
        let g = if s == 1 { 8 } else { 4 };
        for (ig, o) in ids.chunks(g).zip(out.chunks_mut(g * s)) {
            let r = ig.len();
            let pick = |j: usize| code_at(base, stride, ig[j.min(r - 1)], len);
            // SAFETY: this function enables avx2; code_at checked that each code's `len >=
            // 32 N` bytes lie in `base`, and lo, hi are `len` long.
            let sums = unsafe {
                if s == 1 && r > 4 {
                    let ptrs: [*const u8; 8] = core::array::from_fn(pick);
                    let a = group_acc::<N, 4>(&[ptrs[0], ptrs[1], ptrs[2], ptrs[3]], lo, hi);
                    let b = group_acc::<N, 4>(&[ptrs[4], ptrs[5], ptrs[6], ptrs[7]], lo, hi);
                    reduce8(&[a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3]])
                } else if s == 1 {
                    let ptrs: [*const u8; 4] = core::array::from_fn(pick);
                    reduce4(&group_acc::<N, 4>(&ptrs, lo, hi))
                } else {
                    let ptrs: [*const u8; 4] = core::array::from_fn(pick);
                    let a = group_acc2::<N, 2>(&[ptrs[0], ptrs[1]], lo, hi, k, m);
                    let b = group_acc2::<N, 2>(&[ptrs[2], ptrs[3]], lo, hi, k, m);
                    reduce8(&[
                        a[0][0], a[0][1], a[1][0], a[1][1], b[0][0], b[0][1], b[1][0], b[1][1],
                    ])
                }
            };
            let mut buf = [0i32; 8];
            // SAFETY: `buf` is 8 i32 long.
            unsafe { _mm256_storeu_si256(buf.as_mut_ptr().cast(), sums) };
            o.copy_from_slice(&buf[..r * s]);
            if len > 32 * N {
                for (o, &id) in o.chunks_exact_mut(s).zip(ig) {
                    let at = id as usize * stride;
                    let code = &base[at..at + len];
                    let mut a = 0;
                    for (o, &e) in o.iter_mut().zip(ends) {
                        let (b, e) = (a.max(32 * N), e as usize);
                        if b < e {
                            let t =
                                crate::scalar::dot_u4_i8_split(&code[b..e], &lo[b..e], &hi[b..e]);
                            *o = o.wrapping_add(t);
                        }
                        a = e;
                    }
                }
            }
        }
    }

    #[target_feature(enable = "avx2,fma,popcnt")]
    pub(super) fn and_popcount_u64(a: &[u64], b: &[u64]) -> u32 {
        assert_eq!(a.len(), b.len());
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        #[rustfmt::skip]
        let lut = _mm256_setr_epi8(
            0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
            0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
        );
        let nib = _mm256_set1_epi8(0x0f);
        let count = |v: __m256i| {
            let lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(v, nib));
            let hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16::<4>(v), nib));
            _mm256_add_epi8(lo, hi) // at most 8 per byte
        };
        let mut acc = _mm256_setzero_si256();
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: words i .. i + 8 <= n of both slices.
            let (x0, y0, x1, y1) = unsafe {
                (
                    _mm256_loadu_si256(pa.add(i).cast()),
                    _mm256_loadu_si256(pb.add(i).cast()),
                    _mm256_loadu_si256(pa.add(i + 4).cast()),
                    _mm256_loadu_si256(pb.add(i + 4).cast()),
                )
            };
            // Two byte counts of at most 8 each: no u8 overflow before the vpsadbw.
            let c = _mm256_add_epi8(
                count(_mm256_and_si256(x0, y0)),
                count(_mm256_and_si256(x1, y1)),
            );
            acc = _mm256_add_epi64(acc, _mm256_sad_epu8(c, _mm256_setzero_si256()));
            i += 8;
        }
        let s = _mm_add_epi64(
            _mm256_castsi256_si128(acc),
            _mm256_extracti128_si256::<1>(acc),
        );
        let s = _mm_add_epi64(s, _mm_unpackhi_epi64(s, s));
        let mut total = _mm_cvtsi128_si64(s) as u32;
        for (x, y) in a[i..].iter().zip(&b[i..]) {
            total = total.wrapping_add((x & y).count_ones());
        }
        total
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn fastscan_u16(codes: &[u8], luts: &[u8], out: &mut [u16; 32]) {
        let m = crate::scalar::fastscan_m(codes, luts);
        let (pc, pl) = (codes.as_ptr(), luts.as_ptr());
        let nib = _mm256_set1_epi8(0x0f);
        // u16 lanes of `*_a` accumulate (even byte + 256 * odd byte) of the looked-up bytes,
        // `*_b` the odd bytes alone; the even-byte sums are recovered as a - (b << 8), exact
        // modulo 2^16. `lo` serves vectors 0..16 (low nibbles), `hi` vectors 16..32.
        let (mut lo_a, mut lo_b) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        let (mut hi_a, mut hi_b) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        let mut step = |c: __m256i, t: __m256i| {
            let rl = _mm256_shuffle_epi8(t, _mm256_and_si256(c, nib));
            let rh = _mm256_shuffle_epi8(t, _mm256_and_si256(_mm256_srli_epi16::<4>(c), nib));
            lo_a = _mm256_add_epi16(lo_a, rl);
            lo_b = _mm256_add_epi16(lo_b, _mm256_srli_epi16::<8>(rl));
            hi_a = _mm256_add_epi16(hi_a, rh);
            hi_b = _mm256_add_epi16(hi_b, _mm256_srli_epi16::<8>(rh));
        };
        let mut j = 0;
        while j + 2 <= m {
            // SAFETY: bytes 16j .. 16j + 32 <= 16m = codes.len() = luts.len().
            let (c, t) = unsafe {
                (
                    _mm256_loadu_si256(pc.add(16 * j).cast()),
                    _mm256_loadu_si256(pl.add(16 * j).cast()),
                )
            };
            step(c, t);
            j += 2;
        }
        if j < m {
            // SAFETY: bytes 16j .. 16j + 16 = 16m of both slices.
            let (c, t) = unsafe {
                (
                    _mm_loadu_si128(pc.add(16 * j).cast()),
                    _mm_loadu_si128(pl.add(16 * j).cast()),
                )
            };
            // A zero table in the upper lane looks up zeros.
            let z = _mm_setzero_si128();
            step(_mm256_set_m128i(z, c), _mm256_set_m128i(z, t));
        }
        let (v0, v1) = finish(lo_a, lo_b);
        let (v2, v3) = finish(hi_a, hi_b);
        let po = out.as_mut_ptr();
        // SAFETY: `out` holds 32 u16 = four 16-byte stores at offsets 0, 8, 16, 24.
        unsafe {
            _mm_storeu_si128(po.cast(), v0);
            _mm_storeu_si128(po.add(8).cast(), v1);
            _mm_storeu_si128(po.add(16).cast(), v2);
            _mm_storeu_si128(po.add(24).cast(), v3);
        }
    }

    /// Turns the (a, b) accumulators of 16 vectors into their sums, in vector order.
    #[target_feature(enable = "avx2,fma")]
    fn finish(a: __m256i, b: __m256i) -> (__m128i, __m128i) {
        let even = _mm256_sub_epi16(a, _mm256_slli_epi16::<8>(b));
        let e = _mm_add_epi16(
            _mm256_castsi256_si128(even),
            _mm256_extracti128_si256::<1>(even),
        );
        let o = _mm_add_epi16(_mm256_castsi256_si128(b), _mm256_extracti128_si256::<1>(b));
        (_mm_unpacklo_epi16(e, o), _mm_unpackhi_epi16(e, o))
    }

    /// Stages `h = 1, 2, 4` inside each 8-lane register (a lane permute pairs `x[i]` with
    /// `x[i ^ h]`; lanes with bit `h` clear keep the sum, the others the difference), then
    /// `h >= 8` between registers.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn fwht_f32(x: &mut [f32]) {
        let n = crate::scalar::fwht_len(x);
        if n < 8 {
            return crate::scalar::fwht_f32(x);
        }
        let p = x.as_mut_ptr();
        let mut i = 0;
        while i < n {
            // SAFETY: i + 8 <= n, as n is a multiple of 8.
            let mut v = unsafe { _mm256_loadu_ps(p.add(i)) };
            let s = _mm256_permute_ps::<0b10_11_00_01>(v);
            v = _mm256_blend_ps::<0b1010_1010>(_mm256_add_ps(v, s), _mm256_sub_ps(s, v));
            let s = _mm256_permute_ps::<0b01_00_11_10>(v);
            v = _mm256_blend_ps::<0b1100_1100>(_mm256_add_ps(v, s), _mm256_sub_ps(s, v));
            let s = _mm256_permute2f128_ps::<0x01>(v, v);
            v = _mm256_blend_ps::<0b1111_0000>(_mm256_add_ps(v, s), _mm256_sub_ps(s, v));
            // SAFETY: as above.
            unsafe { _mm256_storeu_ps(p.add(i), v) };
            i += 8;
        }
        let mut h = 8;
        while h < n {
            let mut b = 0;
            while b < n {
                let mut j = b;
                while j < b + h {
                    // SAFETY: j + 8 <= b + h and j + h + 8 <= b + 2h <= n.
                    unsafe {
                        let u = _mm256_loadu_ps(p.add(j));
                        let v = _mm256_loadu_ps(p.add(j + h));
                        _mm256_storeu_ps(p.add(j), _mm256_add_ps(u, v));
                        _mm256_storeu_ps(p.add(j + h), _mm256_sub_ps(u, v));
                    }
                    j += 8;
                }
                b += 2 * h;
            }
            h *= 2;
        }
    }

    /// One group per step: nibbles 0..8 and 8..16 in two registers, subset sums by masking
    /// the broadcast weights, the same operation order as the scalar reference; the low bytes
    /// of the 16 results are packed with `packus` and a dword permute.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn fastscan_lut_u8(w: &[f32], scale: f32, out: &mut [u8]) {
        use crate::scalar::{lut_groups, lut_lo, ROUND_MAGIC};
        let m = lut_groups(w, out);
        let lane = |bit: i32| {
            let l = [0, 1, 2, 3, 4, 5, 6, 7].map(|c: i32| -i32::from(c & bit != 0));
            _mm256_castsi256_ps(_mm256_setr_epi32(
                l[0], l[1], l[2], l[3], l[4], l[5], l[6], l[7],
            ))
        };
        // lanes of nibbles 0..8; for 8..16 bit 3 is set in every lane
        let (m0, m1, m2) = (lane(1), lane(2), lane(4));
        let ones = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
        let sc = _mm256_set1_ps(scale);
        let magic = _mm256_set1_ps(ROUND_MAGIC);
        let top = _mm256_set1_ps(ROUND_MAGIC + 255.0);
        let byte = _mm256_set1_epi32(0xff);
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let zero = _mm256_setzero_ps();
        for (j, g) in w.chunks_exact(4).enumerate().take(m) {
            let lo = _mm256_set1_ps(lut_lo(g));
            let [w0, w1, w2, w3] = [0, 1, 2, 3].map(|t| _mm256_set1_ps(g[t]));
            let l = _mm256_add_ps(_mm256_and_ps(w0, m0), _mm256_and_ps(w1, m1));
            let a = _mm256_mul_ps(_mm256_sub_ps(l, lo), sc);
            let q = |h3: __m256| {
                let h = _mm256_add_ps(_mm256_and_ps(w2, m2), _mm256_and_ps(w3, h3));
                let x = _mm256_add_ps(a, _mm256_mul_ps(h, sc));
                let v = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(x, magic), magic), top);
                _mm256_and_si256(_mm256_castps_si256(v), byte)
            };
            let (v0, v1) = (q(zero), q(ones));
            // u16: [v0 0..4, v1 0..4 | v0 4..8, v1 4..8]; u8 likewise, twice per lane
            let b = _mm256_packus_epi16(_mm256_packus_epi32(v0, v1), _mm256_setzero_si256());
            // dwords [v0 0..4, v1 0..4, 0, 0 | v0 4..8, v1 4..8, 0, 0] -> dwords 0, 4, 1, 5
            let b = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(b, order));
            // SAFETY: 16j + 16 <= 16m = out.len().
            unsafe { _mm_storeu_si128(out.as_mut_ptr().add(16 * j).cast(), b) };
        }
    }

    /// Points in lanes, four groups of 8 per step (independent dependency chains), each
    /// centroid broadcast; every lane follows the reference order of operations (separate
    /// multiply and add, no FMA), so the result is bit-identical. The best index is kept as
    /// float bits and blended. The last `n % 32` points are padded to a full step.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn nearest_centroid_t(
        xt: &[f32],
        stride: usize,
        centroids: &[f32],
        norms: &[f32],
        out: &mut [u32],
    ) {
        use crate::scalar::nearest_t_dim;
        let dim = nearest_t_dim(xt, stride, centroids, norms, out);
        let w = 8 * GROUPS;
        let full = out.len() / w * w;
        let (head, tail) = out.split_at_mut(full);
        nearest_t_any(xt, stride, dim, centroids, norms, head);
        if !tail.is_empty() {
            // The last points, padded with zeros to one step.
            let mut pad = vec![0.0f32; dim * w];
            for (t, p) in pad.chunks_exact_mut(w).enumerate() {
                p[..tail.len()].copy_from_slice(&xt[t * stride + full..][..tail.len()]);
            }
            let mut o = vec![0u32; w];
            nearest_t_any(&pad, w, dim, centroids, norms, &mut o);
            tail.copy_from_slice(&o[..tail.len()]);
        }
    }

    /// Points in steps of `GROUPS` registers.
    const GROUPS: usize = 4;

    /// `out.len()` a multiple of the step; arguments checked.
    #[target_feature(enable = "avx2,fma")]
    fn nearest_t_any(
        xt: &[f32],
        stride: usize,
        dim: usize,
        c: &[f32],
        nm: &[f32],
        out: &mut [u32],
    ) {
        match dim {
            1 => nearest_t_block::<1, GROUPS>(xt, stride, 1, c, nm, out),
            2 => nearest_t_block::<2, GROUPS>(xt, stride, 2, c, nm, out),
            3 => nearest_t_block::<3, GROUPS>(xt, stride, 3, c, nm, out),
            4 => nearest_t_block::<4, GROUPS>(xt, stride, 4, c, nm, out),
            5 => nearest_t_block::<5, GROUPS>(xt, stride, 5, c, nm, out),
            6 => nearest_t_block::<6, GROUPS>(xt, stride, 6, c, nm, out),
            7 => nearest_t_block::<7, GROUPS>(xt, stride, 7, c, nm, out),
            8 => nearest_t_block::<8, GROUPS>(xt, stride, 8, c, nm, out),
            _ => nearest_t_block::<0, GROUPS>(xt, stride, dim, c, nm, out),
        }
    }

    /// `out.len()` a multiple of `8 G`; `D == dim`, or `D == 0` for any `dim` (coordinates
    /// kept in a buffer instead of registers).
    #[target_feature(enable = "avx2,fma")]
    fn nearest_t_block<const D: usize, const G: usize>(
        xt: &[f32],
        stride: usize,
        dim: usize,
        centroids: &[f32],
        norms: &[f32],
        out: &mut [u32],
    ) {
        let m2 = _mm256_set1_ps(-2.0);
        let inf = _mm256_set1_ps(f32::INFINITY);
        let mut xd = vec![[m2; G]; dim];
        let mut xr = [[m2; G]; D];
        for (g, o) in out.chunks_exact_mut(8 * G).enumerate() {
            for (t, x) in xd.iter_mut().enumerate() {
                let row = &xt[t * stride + 8 * G * g..][..8 * G];
                for (l, x) in x.iter_mut().enumerate() {
                    // SAFETY: `row` holds 8 G floats.
                    *x = _mm256_mul_ps(m2, unsafe { _mm256_loadu_ps(row.as_ptr().add(8 * l)) });
                }
            }
            if D > 0 {
                xr.copy_from_slice(&xd[..D]);
            }
            let mut best = [inf; G];
            let mut idx = [_mm256_setzero_ps(); G];
            let mut jv = _mm256_setzero_si256();
            let one = _mm256_set1_epi32(1);
            for (c, &nj) in centroids.chunks_exact(dim).zip(norms) {
                let mut d = [_mm256_set1_ps(nj); G];
                if D > 0 {
                    for t in 0..D {
                        let ct = _mm256_set1_ps(c[t]);
                        for l in 0..G {
                            d[l] = _mm256_add_ps(d[l], _mm256_mul_ps(xr[t][l], ct));
                        }
                    }
                } else {
                    for (t, &cv) in c.iter().enumerate() {
                        let ct = _mm256_set1_ps(cv);
                        for l in 0..G {
                            d[l] = _mm256_add_ps(d[l], _mm256_mul_ps(xd[t][l], ct));
                        }
                    }
                }
                let j = _mm256_castsi256_ps(jv);
                for l in 0..G {
                    let m = _mm256_cmp_ps::<_CMP_LT_OQ>(d[l], best[l]);
                    // vminps(d, b) = d < b ? d : b: a NaN never replaces the best.
                    best[l] = _mm256_min_ps(d[l], best[l]);
                    idx[l] = _mm256_blendv_ps(idx[l], j, m);
                }
                jv = _mm256_add_epi32(jv, one);
            }
            for (l, v) in idx.iter().enumerate() {
                // SAFETY: `o` holds 8 G u32.
                unsafe {
                    _mm256_storeu_si256(o.as_mut_ptr().add(8 * l).cast(), _mm256_castps_si256(*v))
                };
            }
        }
    }

    /// One round of the 16x16 byte transpose: rows `i` and `i + 8` zipped into rows `2i`,
    /// `2i + 1` (a new array from literal indices, so the rows stay in registers).
    macro_rules! zip_round {
        ($r:expr) => {{
            let r = $r;
            [
                _mm256_unpacklo_epi8(r[0], r[8]),
                _mm256_unpackhi_epi8(r[0], r[8]),
                _mm256_unpacklo_epi8(r[1], r[9]),
                _mm256_unpackhi_epi8(r[1], r[9]),
                _mm256_unpacklo_epi8(r[2], r[10]),
                _mm256_unpackhi_epi8(r[2], r[10]),
                _mm256_unpacklo_epi8(r[3], r[11]),
                _mm256_unpackhi_epi8(r[3], r[11]),
                _mm256_unpacklo_epi8(r[4], r[12]),
                _mm256_unpackhi_epi8(r[4], r[12]),
                _mm256_unpacklo_epi8(r[5], r[13]),
                _mm256_unpackhi_epi8(r[5], r[13]),
                _mm256_unpacklo_epi8(r[6], r[14]),
                _mm256_unpackhi_epi8(r[6], r[14]),
                _mm256_unpacklo_epi8(r[7], r[15]),
                _mm256_unpackhi_epi8(r[7], r[15]),
            ]
        }};
    }

    /// Transposes 16 rows of 16 bytes per 128-bit lane: afterwards `r[k]` byte `i` of a lane
    /// is byte `k` of that lane's row `i`. Four rounds of "zip row `i` with row `i + 8`"
    /// (each round rotates the 8-bit (row, column) index left by one).
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn transpose16x16(r: [__m256i; 16]) -> [__m256i; 16] {
        zip_round!(zip_round!(zip_round!(zip_round!(r))))
    }

    /// Bytes `b0..b0 + 16` of [`crate::scalar::fastscan_pack_u4`]; `p[i]` is code `i`'s
    /// start for `i < n`. Caller: bytes `b0..b0 + 16` of each of those codes are readable and
    /// `out` holds `32 * (b0 + 16)` bytes.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn pack16(p: &[*const u8; 32], n: usize, b0: usize, out: *mut u8) {
        let z = _mm_setzero_si128();
        let mut r = [_mm256_setzero_si256(); 16];
        for (i, ri) in r.iter_mut().enumerate() {
            // SAFETY: the caller's contract.
            let (lo, hi) = unsafe {
                (
                    if i < n {
                        _mm_loadu_si128(p[i].add(b0).cast())
                    } else {
                        z
                    },
                    if i + 16 < n {
                        _mm_loadu_si128(p[i + 16].add(b0).cast())
                    } else {
                        z
                    },
                )
            };
            *ri = _mm256_set_m128i(hi, lo);
        }
        let r = transpose16x16(r);
        let nib = _mm256_set1_epi8(0x0f);
        for (k, &c) in r.iter().enumerate() {
            // c = [byte b0 + k of codes 0..16 | of codes 16..32]; s has the halves swapped.
            let s = _mm256_permute2x128_si256::<0x01>(c, c);
            let even = _mm256_or_si256(
                _mm256_and_si256(c, nib),
                _mm256_slli_epi16::<4>(_mm256_and_si256(s, nib)),
            );
            let odd = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(c), nib),
                _mm256_andnot_si256(nib, s),
            );
            let row = _mm256_permute2x128_si256::<0x20>(even, odd);
            // SAFETY: 32 (b0 + k) + 32 <= 32 (b0 + 16) bytes of `out`.
            unsafe { _mm256_storeu_si256(out.add(32 * (b0 + k)).cast(), row) };
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn fastscan_pack_u4(
        base: &[u8],
        stride: usize,
        ids: &[u32],
        nbytes: usize,
        out: &mut [u8],
    ) {
        let n = crate::scalar::fastscan_pack_check(base, stride, ids, nbytes, out);
        let mut p = [core::ptr::null::<u8>(); 32];
        for (pi, &id) in p.iter_mut().zip(ids) {
            // SAFETY: checked above: the code lies inside `base`.
            *pi = unsafe { base.as_ptr().add(id as usize * stride) };
        }
        let full = nbytes / 16 * 16;
        let po = out.as_mut_ptr();
        for b0 in (0..full).step_by(16) {
            // SAFETY: b0 + 16 <= nbytes: every code has those bytes, `out` 32 nbytes.
            unsafe { pack16(&p, n, b0, po) };
        }
        crate::scalar::fastscan_pack_range(base, stride, ids, full, nbytes, out);
    }
}
