//! AVX-512 kernels for x86_64: F + BW + VL, plus VNNI and VPOPCNTDQ where present.
//!
//! There are four tables, one per combination of the optional VNNI and VPOPCNTDQ
//! extensions; [`best_table`] picks the richest one this CPU runs, and [`all_tables`] lists all
//! that it runs (so tests on a VNNI machine also cover the F/BW/VL fallbacks). The
//! `#[target_feature]` functions are reachable only through those tables, which are handed out
//! only after detecting every feature their functions enable.
//!
//! - f32 kernels: four 16-lane FMA accumulators (64 elements per iteration); the tail is one
//!   masked load, so there is no scalar loop. `matvec_f32` runs four rows at a time, one
//!   accumulator each, so each load of `x` serves four FMAs. `matvec_f16` does the same on
//!   half-precision rows, 16 entries widened by one `vcvtph2ps` (AVX-512 F) per row and step;
//!   the tail is a zero-masked 16-bit load (BW + VL).
//! - `dot_u8_i8`: VNNI `vpdpbusd` (u8 x i8, non-saturating) or, without VNNI, widening to i16
//!   and `vpmaddwd`. `dot_u8` with VNNI uses `a . b = a . (b - 128) + 128 * sum(a)`, where
//!   `b - 128` is `b ^ 0x80` read as i8 and `sum(a)` comes from `vpsadbw`.
//! - `dot_u4_i8`: one 64-byte load holds two 64-dimension blocks of the packed layout; its low
//!   nibbles pair with query bytes `[0..32 | 64..96]` and its high nibbles with
//!   `[32..64 | 96..128]` (two 256-bit loads joined with `vinserti64x4`). VNNI `vpdpbusd`
//!   multiplies u8 codes by i8 query bytes directly; without VNNI `vpmaddubsw` is exact for
//!   4-bit codes (2 * 15 * 128 < i16::MAX) and `vpmaddwd` with ones widens to i32.
//! - `dot_u4_i8_split_gather` (and `_segs` with one or two segments), codes up to 256 bytes:
//!   the weights stay in registers and codes are scored in groups (8 codes, or 4 codes x 2
//!   segments), one accumulator per code and segment; the group's accumulators are reduced
//!   together by a shuffle/blend/add tree (`reduce8`) into one register, stored at once.
//!   Without VNNI, the group kernels add `vpmaddubsw` results in i16 (at most 8 terms) and
//!   widen once per code.
//! - Popcount: `vpopcntq`, or the `vpshufb` nibble look-up with `vpsadbw`.
//! - `dot_f32_bitplanes`: two bytes of a plane are the `__mmask16` of a masked add
//!   (`vaddps` with a write mask) of 16 weights; plane by plane into two accumulators, each
//!   plane's sum scaled by `2^j` with one FMA into the total.
//! - FastScan: `vpshufb` looks up four sub-quantizers per 512-bit op (one per 128-bit lane);
//!   the last 1-3 sub-quantizers use zero-masked loads, and a zero table looks up zeros.
//! - `fwht_f32`: stages 1, 2, 4, 8 inside each register (`vpermilps` / `vshuff32x4` pair
//!   `x[i]` with `x[i ^ h]`, a mask blend keeps the sum or the difference), the larger ones
//!   between registers.
//! - `fastscan_lut_u8`: one 4-dimension group per step, its 16 nibbles in one register
//!   (zero-masked broadcasts of the weights), `vpmovdb` for the low bytes.
//! - `fastscan_pack_u4`: per 32 code bytes, the AVX2 transpose on four 128-bit lanes (two
//!   byte ranges of codes 0..16 and 16..32), nibbles merged across lane pairs; a 16-byte
//!   remainder uses the AVX2 step.

use std::sync::OnceLock;

use crate::{Kernels, SimdLevel};

fn has_base() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
}

/// The richest AVX-512 table this CPU runs, or `None` without AVX-512 F/BW/VL.
pub(crate) fn best_table() -> Option<&'static Kernels> {
    table(
        is_x86_feature_detected!("avx512vnni"),
        is_x86_feature_detected!("avx512vpopcntdq"),
    )
}

/// Every AVX-512 table this CPU runs, plainest first.
pub(crate) fn all_tables() -> Vec<&'static Kernels> {
    [(false, false), (false, true), (true, false), (true, true)]
        .into_iter()
        .filter_map(|(vnni, popcnt)| table(vnni, popcnt))
        .collect()
}

/// The table using VNNI and VPOPCNTDQ kernels as asked, if this CPU has every feature it uses.
fn table(vnni: bool, vpopcntdq: bool) -> Option<&'static Kernels> {
    if !has_base()
        || (vnni && !is_x86_feature_detected!("avx512vnni"))
        || (vpopcntdq && !is_x86_feature_detected!("avx512vpopcntdq"))
    {
        return None;
    }
    static TABLES: [OnceLock<Kernels>; 4] = [const { OnceLock::new() }; 4];
    let slot = &TABLES[usize::from(vnni) * 2 + usize::from(vpopcntdq)];
    Some(slot.get_or_init(|| Kernels {
        level: SimdLevel::Avx512,
        isa: match (vnni, vpopcntdq) {
            (false, false) => "avx512f+bw+vl",
            (false, true) => "avx512f+bw+vl+vpopcntdq",
            (true, false) => "avx512f+bw+vl+vnni",
            (true, true) => "avx512f+bw+vl+vnni+vpopcntdq",
        },
        l2sq_f32,
        dot_f32,
        matvec_f32,
        matvec_f16,
        l2sq_f32_f16,
        dot_f32_u8,
        dot_f32_bitplanes,
        dot_u8_i8: if vnni { dot_u8_i8_vnni } else { dot_u8_i8 },
        dot_u8: if vnni { dot_u8_vnni } else { dot_u8 },
        dot_u4_i8: if vnni { dot_u4_i8_vnni } else { dot_u4_i8 },
        dot_u4_i8_split: if vnni {
            dot_u4_i8_split_vnni
        } else {
            dot_u4_i8_split
        },
        dot_f32_u4_split,
        dot_u4_i8_split_gather: if vnni {
            dot_u4_i8_split_gather_vnni
        } else {
            dot_u4_i8_split_gather
        },
        dot_u4_i8_split_gather_segs: if vnni {
            dot_u4_i8_split_gather_segs_vnni
        } else {
            dot_u4_i8_split_gather_segs
        },
        and_popcount_u64: if vpopcntdq {
            and_popcount_u64_vpopcntdq
        } else {
            and_popcount_u64
        },
        fastscan_u16,
        fwht_f32,
        rotate_rounds_f32,
        fastscan_lut_u8,
        nearest_centroid_t,
        fastscan_pack_u4,
    }))
}

// Safe entry points. Each is only reachable through a table built by `table()`, which checks
// AVX-512 F/BW/VL first, and VNNI / VPOPCNTDQ before placing the functions that need them.

fn l2sq_f32(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: only reachable through a table built after detecting avx512f/bw/vl.
    unsafe { imp::l2sq_f32(a, b) }
}

fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: only reachable through a table built after detecting avx512f/bw/vl.
    unsafe { imp::dot_f32(a, b) }
}

fn dot_f32_u8(a: &[f32], b: &[u8]) -> f32 {
    // SAFETY: only reachable through a table built after detecting avx512f/bw/vl.
    unsafe { imp::dot_f32_u8(a, b) }
}

fn matvec_f32(m: &[f32], x: &[f32], out: &mut [f32]) {
    // SAFETY: only reachable through a table built after detecting avx512f/bw/vl.
    unsafe { imp::matvec_f32(m, x, out) }
}

fn matvec_f16(m: &[u16], x: &[f32], out: &mut [f32]) {
    // SAFETY: only reachable through a table built after detecting avx512f/bw/vl.
    unsafe { imp::matvec_f16(m, x, out) }
}

fn l2sq_f32_f16(a: &[f32], b: &[u16]) -> f32 {
    // SAFETY: only reachable through a table built after detecting avx512f/bw/vl.
    unsafe { imp::l2sq_f32_f16(a, b) }
}

fn dot_f32_bitplanes(a: &[f32], planes: &[u8]) -> f32 {
    // SAFETY: only reachable through a table built after detecting avx512f/bw/vl.
    unsafe { imp::dot_f32_bitplanes(a, planes) }
}

fn dot_u8_i8(a: &[u8], b: &[i8]) -> i32 {
    // SAFETY: only reachable through a table built after detecting avx512f/bw/vl.
    unsafe { imp::dot_u8_i8(a, b) }
}

fn dot_u8_i8_vnni(a: &[u8], b: &[i8]) -> i32 {
    // SAFETY: only placed in a table after detecting avx512f/bw/vl and avx512vnni.
    unsafe { imp::dot_u8_i8_vnni(a, b) }
}

fn dot_u8(a: &[u8], b: &[u8]) -> u32 {
    // SAFETY: only reachable through a table built after detecting avx512f/bw/vl.
    unsafe { imp::dot_u8(a, b) }
}

fn dot_u8_vnni(a: &[u8], b: &[u8]) -> u32 {
    // SAFETY: only placed in a table after detecting avx512f/bw/vl and avx512vnni.
    unsafe { imp::dot_u8_vnni(a, b) }
}

fn dot_u4_i8(packed: &[u8], b: &[i8]) -> i32 {
    // SAFETY: only reachable through a table built after detecting avx512f/bw/vl.
    unsafe { imp::dot_u4_i8(packed, b) }
}

fn dot_u4_i8_vnni(packed: &[u8], b: &[i8]) -> i32 {
    // SAFETY: only placed in a table after detecting avx512f/bw/vl and avx512vnni.
    unsafe { imp::dot_u4_i8_vnni(packed, b) }
}

fn dot_u4_i8_split(p: &[u8], lo: &[i8], hi: &[i8]) -> i32 {
    // SAFETY: only reachable through a table built after detecting avx512f/bw/vl.
    unsafe { imp::dot_u4_i8_split(p, lo, hi) }
}

fn dot_u4_i8_split_vnni(p: &[u8], lo: &[i8], hi: &[i8]) -> i32 {
    // SAFETY: only placed in a table after detecting avx512f/bw/vl and avx512vnni.
    unsafe { imp::dot_u4_i8_split_vnni(p, lo, hi) }
}

fn dot_f32_u4_split(p: &[u8], lo: &[f32], hi: &[f32]) -> f32 {
    // SAFETY: only reachable through a table built after detecting avx512f/bw/vl.
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
    // SAFETY: only reachable through a table built after detecting avx512f/bw/vl.
    unsafe { imp::dot_u4_i8_split_gather(base, stride, ids, lo, hi, out) }
}

fn dot_u4_i8_split_gather_vnni(
    base: &[u8],
    stride: usize,
    ids: &[u32],
    lo: &[i8],
    hi: &[i8],
    out: &mut [i32],
) {
    // SAFETY: only placed in a table after detecting avx512f/bw/vl and avx512vnni.
    unsafe { imp::dot_u4_i8_split_gather_vnni(base, stride, ids, lo, hi, out) }
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
    // SAFETY: only reachable through a table built after detecting avx512f/bw/vl.
    unsafe { imp::dot_u4_i8_split_gather_segs(base, stride, ids, lo, hi, ends, out) }
}

fn dot_u4_i8_split_gather_segs_vnni(
    base: &[u8],
    stride: usize,
    ids: &[u32],
    lo: &[i8],
    hi: &[i8],
    ends: &[u32],
    out: &mut [i32],
) {
    // SAFETY: only placed in a table after detecting avx512f/bw/vl and avx512vnni.
    unsafe { imp::dot_u4_i8_split_gather_segs_vnni(base, stride, ids, lo, hi, ends, out) }
}

fn and_popcount_u64(a: &[u64], b: &[u64]) -> u32 {
    // SAFETY: only reachable through a table built after detecting avx512f/bw/vl.
    unsafe { imp::and_popcount_u64(a, b) }
}

fn and_popcount_u64_vpopcntdq(a: &[u64], b: &[u64]) -> u32 {
    // SAFETY: only placed in a table after detecting avx512f/bw/vl and avx512vpopcntdq.
    unsafe { imp::and_popcount_u64_vpopcntdq(a, b) }
}

fn fastscan_u16(codes: &[u8], luts: &[u8], out: &mut [u16; 32]) {
    // SAFETY: only reachable through a table built after detecting avx512f/bw/vl.
    unsafe { imp::fastscan_u16(codes, luts, out) }
}

fn fwht_f32(x: &mut [f32]) {
    // SAFETY: only reachable through a table built after detecting avx512f/bw/vl.
    unsafe { imp::fwht_f32(x) }
}

fn rotate_rounds_f32(x: &mut [f32], masks: &[u32], t: usize, scale: f32) {
    // SAFETY: only reachable through a table built after detecting avx512f/bw/vl.
    unsafe { imp::rotate_rounds_f32(x, masks, t, scale) }
}

fn fastscan_lut_u8(w: &[f32], scale: f32, out: &mut [u8]) {
    // SAFETY: only reachable through a table built after detecting avx512f/bw/vl.
    unsafe { imp::fastscan_lut_u8(w, scale, out) }
}

fn nearest_centroid_t(
    xt: &[f32],
    stride: usize,
    centroids: &[f32],
    norms: &[f32],
    out: &mut [u32],
) {
    // SAFETY: only reachable through a table built after detecting avx512f/bw/vl.
    unsafe { imp::nearest_centroid_t(xt, stride, centroids, norms, out) }
}

fn fastscan_pack_u4(base: &[u8], stride: usize, ids: &[u32], nbytes: usize, out: &mut [u8]) {
    // SAFETY: only reachable through a table built after detecting avx512f/bw/vl.
    unsafe { imp::fastscan_pack_u4(base, stride, ids, nbytes, out) }
}

mod imp {
    use core::arch::x86_64::*;

    /// Stages `h = 1, 2, 4, 8` of [`fwht_f32`] within one register of 16 floats (lanes with
    /// bit `h` clear keep the sum, the others the difference), as in the scalar reference. A
    /// macro so that callers keep their registers (a `target_feature` function cannot be
    /// forced inline).
    macro_rules! fwht16 {
        ($w:expr) => {{
            let mut w = $w;
            let s = _mm512_permute_ps::<0b10_11_00_01>(w);
            w = _mm512_mask_blend_ps(0xAAAA, _mm512_add_ps(w, s), _mm512_sub_ps(s, w));
            let s = _mm512_permute_ps::<0b01_00_11_10>(w);
            w = _mm512_mask_blend_ps(0xCCCC, _mm512_add_ps(w, s), _mm512_sub_ps(s, w));
            let s = _mm512_shuffle_f32x4::<0b10_11_00_01>(w, w);
            w = _mm512_mask_blend_ps(0xF0F0, _mm512_add_ps(w, s), _mm512_sub_ps(s, w));
            let s = _mm512_shuffle_f32x4::<0b01_00_11_10>(w, w);
            _mm512_mask_blend_ps(0xFF00, _mm512_add_ps(w, s), _mm512_sub_ps(s, w))
        }};
    }

    /// Mask with the low `r` bits set, `r < 16`.
    fn mask16(r: usize) -> __mmask16 {
        debug_assert!(r < 16);
        ((1u32 << r) - 1) as __mmask16
    }

    /// Mask with the low `r` bits set, `r < 64`.
    fn mask64(r: usize) -> __mmask64 {
        debug_assert!(r < 64);
        (1u64 << r) - 1
    }

    /// What `l2sq` reads its second vector from: f32, or half-precision bit patterns widened
    /// exactly (`vcvtph2ps`).
    trait Lanes: Copy {
        /// 16 entries at `p` as f32, the lanes off in `m` zero and unread.
        ///
        /// # Safety
        /// AVX-512 F/BW/VL; the enabled lanes at `p` readable.
        unsafe fn load16(p: *const Self, m: __mmask16) -> __m512;
    }

    impl Lanes for f32 {
        #[inline(always)]
        unsafe fn load16(p: *const f32, m: __mmask16) -> __m512 {
            // SAFETY: the caller's contract.
            unsafe { _mm512_maskz_loadu_ps(m, p) }
        }
    }

    impl Lanes for u16 {
        #[inline(always)]
        unsafe fn load16(p: *const u16, m: __mmask16) -> __m512 {
            // SAFETY: the caller's contract.
            unsafe { load_f16x16(p, m) }
        }
    }

    /// `sum (a[i] - b[i])^2`, `b` widened to f32: four accumulators over 64 entries, then
    /// 16 at a time, then a masked tail.
    ///
    /// # Safety
    /// AVX-512 F/BW/VL (inlined into the callers, which enable them).
    #[inline(always)]
    unsafe fn l2sq<T: Lanes>(a: &[f32], b: &[T]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        // SAFETY: the features are the caller's contract; every load below reads lanes
        // i.. < n = a.len() = b.len() only (full loads inside the bounds, masked lanes unread).
        unsafe {
            let mut acc = [_mm512_setzero_ps(); 4];
            let mut i = 0;
            while i + 64 <= n {
                for (k, acc) in acc.iter_mut().enumerate() {
                    let d = _mm512_sub_ps(
                        _mm512_loadu_ps(pa.add(i + 16 * k)),
                        T::load16(pb.add(i + 16 * k), !0),
                    );
                    *acc = _mm512_fmadd_ps(d, d, *acc);
                }
                i += 64;
            }
            while i + 16 <= n {
                let d = _mm512_sub_ps(_mm512_loadu_ps(pa.add(i)), T::load16(pb.add(i), !0));
                acc[0] = _mm512_fmadd_ps(d, d, acc[0]);
                i += 16;
            }
            if i < n {
                let m = mask16(n - i);
                let d = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, pa.add(i)), T::load16(pb.add(i), m));
                acc[1] = _mm512_fmadd_ps(d, d, acc[1]);
            }
            _mm512_reduce_add_ps(_mm512_add_ps(
                _mm512_add_ps(acc[0], acc[1]),
                _mm512_add_ps(acc[2], acc[3]),
            ))
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) fn l2sq_f32(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        // SAFETY: this function enables the features `l2sq` needs.
        unsafe { l2sq(a, b) }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        while i + 64 <= n {
            for (k, acc) in acc.iter_mut().enumerate() {
                // SAFETY: i + 16k + 16 <= i + 64 <= n = a.len() = b.len().
                let (x, y) = unsafe {
                    (
                        _mm512_loadu_ps(pa.add(i + 16 * k)),
                        _mm512_loadu_ps(pb.add(i + 16 * k)),
                    )
                };
                *acc = _mm512_fmadd_ps(x, y, *acc);
            }
            i += 64;
        }
        while i + 16 <= n {
            // SAFETY: i + 16 <= n = a.len() = b.len().
            let (x, y) = unsafe { (_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i))) };
            acc[0] = _mm512_fmadd_ps(x, y, acc[0]);
            i += 16;
        }
        if i < n {
            let m = mask16(n - i);
            // SAFETY: the mask enables only lanes i..n, inside both slices; masked-off lanes
            // are not read and cannot fault.
            let (x, y) = unsafe {
                (
                    _mm512_maskz_loadu_ps(m, pa.add(i)),
                    _mm512_maskz_loadu_ps(m, pb.add(i)),
                )
            };
            acc[1] = _mm512_fmadd_ps(x, y, acc[1]);
        }
        _mm512_reduce_add_ps(_mm512_add_ps(
            _mm512_add_ps(acc[0], acc[1]),
            _mm512_add_ps(acc[2], acc[3]),
        ))
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
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
        let tail = mask16(n % 16);
        let mut rows = out.chunks_exact_mut(4);
        let mut r = 0;
        for o in &mut rows {
            // SAFETY: rows r .. r + 4 of m exist (o has 4 elements, m.len() = out.len() * n).
            let p = unsafe { [0, 1, 2, 3].map(|k| m.as_ptr().add((r + k) * n)) };
            let mut acc = [_mm512_setzero_ps(); 4];
            let mut i = 0;
            while i + 16 <= n {
                // SAFETY: elements i .. i + 16 <= n of x and of each of the four rows.
                unsafe {
                    let xv = _mm512_loadu_ps(px.add(i));
                    for k in 0..4 {
                        acc[k] = _mm512_fmadd_ps(_mm512_loadu_ps(p[k].add(i)), xv, acc[k]);
                    }
                }
                i += 16;
            }
            if i < n {
                // SAFETY: the mask enables only elements i..n of x and of each row; masked-off
                // lanes are not read and cannot fault.
                unsafe {
                    let xv = _mm512_maskz_loadu_ps(tail, px.add(i));
                    for k in 0..4 {
                        acc[k] =
                            _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, p[k].add(i)), xv, acc[k]);
                    }
                }
            }
            for (o, a) in o.iter_mut().zip(acc) {
                *o = _mm512_reduce_add_ps(a);
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

    /// The 16 half-precision entries at `p` (those enabled by `mask`; zero elsewhere) widened
    /// to f32.
    ///
    /// # Safety
    /// The entries of `p .. p + 16` that `mask` enables must be readable.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn load_f16x16(p: *const u16, mask: __mmask16) -> __m512 {
        // SAFETY: masked-off lanes are not read and cannot fault; the caller guarantees the
        // others.
        _mm512_cvtph_ps(unsafe { _mm256_maskz_loadu_epi16(mask, p.cast()) })
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) fn l2sq_f32_f16(a: &[f32], b: &[u16]) -> f32 {
        assert_eq!(
            a.len(),
            b.len(),
            "l2sq_f32_f16: slices of different lengths"
        );
        // SAFETY: this function enables the features `l2sq` needs.
        unsafe { l2sq(a, b) }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
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
        let body = n - n % 16;
        let tail = mask16(n % 16);
        let mut rows = out.chunks_exact_mut(4);
        let mut r = 0;
        for o in &mut rows {
            // SAFETY: rows r .. r + 4 of m exist (o has 4 elements, m.len() = out.len() * n).
            let p = unsafe { [0, 1, 2, 3].map(|k| m.as_ptr().add((r + k) * n)) };
            let mut acc = [_mm512_setzero_ps(); 4];
            let mut i = 0;
            while i < body {
                // SAFETY: elements i .. i + 16 <= n of x and of each of the four rows.
                unsafe {
                    let xv = _mm512_loadu_ps(px.add(i));
                    for k in 0..4 {
                        acc[k] = _mm512_fmadd_ps(load_f16x16(p[k].add(i), !0), xv, acc[k]);
                    }
                }
                i += 16;
            }
            if body < n {
                // SAFETY: the mask enables only elements body..n of x and of each row;
                // masked-off lanes are not read and cannot fault.
                unsafe {
                    let xv = _mm512_maskz_loadu_ps(tail, px.add(body));
                    for k in 0..4 {
                        acc[k] = _mm512_fmadd_ps(load_f16x16(p[k].add(body), tail), xv, acc[k]);
                    }
                }
            }
            for (o, a) in o.iter_mut().zip(acc) {
                *o = _mm512_reduce_add_ps(a);
            }
            r += 4;
        }
        for (o, row) in rows
            .into_remainder()
            .iter_mut()
            .zip(m[r * n..].chunks_exact(n))
        {
            let pr = row.as_ptr();
            let mut acc = [_mm512_setzero_ps(); 2];
            let mut i = 0;
            while i < body {
                // SAFETY: elements i .. i + 16 <= n of x and of the row (n entries).
                unsafe {
                    let xv = _mm512_loadu_ps(px.add(i));
                    let a = &mut acc[(i / 16) % 2];
                    *a = _mm512_fmadd_ps(load_f16x16(pr.add(i), !0), xv, *a);
                }
                i += 16;
            }
            if body < n {
                // SAFETY: the mask enables only elements body..n of x and of the row.
                unsafe {
                    let xv = _mm512_maskz_loadu_ps(tail, px.add(body));
                    acc[1] = _mm512_fmadd_ps(load_f16x16(pr.add(body), tail), xv, acc[1]);
                }
            }
            *o = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) fn dot_f32_bitplanes(a: &[f32], planes: &[u8]) -> f32 {
        let k = crate::scalar::bitplane_count(a.len(), planes);
        let n = a.len();
        let pb = n.div_ceil(8);
        let pa = a.as_ptr();
        let mut total = _mm512_setzero_ps();
        for j in 0..k {
            let p = &planes[j * pb..(j + 1) * pb];
            let mut acc = [_mm512_setzero_ps(); 2];
            let mut i = 0;
            while i + 32 <= n {
                for (h, acc) in acc.iter_mut().enumerate() {
                    let at = i + 16 * h;
                    let m = u16::from_le_bytes([p[at / 8], p[at / 8 + 1]]);
                    // SAFETY: elements at .. at + 16 <= i + 32 <= n of `a`.
                    let x = unsafe { _mm512_loadu_ps(pa.add(at)) };
                    *acc = _mm512_mask_add_ps(*acc, m, *acc, x);
                }
                i += 32;
            }
            while i < n {
                let r = (n - i).min(16);
                let lo = p[i / 8] as u16;
                let hi = if r > 8 { p[i / 8 + 1] as u16 } else { 0 };
                let live = if r == 16 { u16::MAX } else { mask16(r) };
                // SAFETY: the mask enables only elements i .. i + r <= n of `a`; masked-off
                // lanes are not read and cannot fault.
                let x = unsafe { _mm512_maskz_loadu_ps(live, pa.add(i)) };
                acc[0] = _mm512_mask_add_ps(acc[0], (lo | hi << 8) & live, acc[0], x);
                i += r;
            }
            total = _mm512_fmadd_ps(
                _mm512_add_ps(acc[0], acc[1]),
                _mm512_set1_ps((1u32 << j) as f32),
                total,
            );
        }
        _mm512_reduce_add_ps(total)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) fn dot_f32_u8(a: &[f32], b: &[u8]) -> f32 {
        assert_eq!(a.len(), b.len());
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let widen = |c: __m128i| _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(c));
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        while i + 64 <= n {
            for (k, acc) in acc.iter_mut().enumerate() {
                // SAFETY: elements i + 16k .. i + 16k + 16 <= n of both slices.
                let (x, c) = unsafe {
                    (
                        _mm512_loadu_ps(pa.add(i + 16 * k)),
                        _mm_loadu_si128(pb.add(i + 16 * k).cast()),
                    )
                };
                *acc = _mm512_fmadd_ps(x, widen(c), *acc);
            }
            i += 64;
        }
        while i + 16 <= n {
            // SAFETY: elements i .. i + 16 <= n of both slices.
            let (x, c) = unsafe {
                (
                    _mm512_loadu_ps(pa.add(i)),
                    _mm_loadu_si128(pb.add(i).cast()),
                )
            };
            acc[0] = _mm512_fmadd_ps(x, widen(c), acc[0]);
            i += 16;
        }
        if i < n {
            let m = mask16(n - i);
            // SAFETY: the mask enables only elements i..n of both slices; masked-off lanes are
            // not read and cannot fault.
            let (x, c) = unsafe {
                (
                    _mm512_maskz_loadu_ps(m, pa.add(i)),
                    _mm_maskz_loadu_epi8(m, pb.add(i).cast()),
                )
            };
            acc[1] = _mm512_fmadd_ps(x, widen(c), acc[1]);
        }
        _mm512_reduce_add_ps(_mm512_add_ps(
            _mm512_add_ps(acc[0], acc[1]),
            _mm512_add_ps(acc[2], acc[3]),
        ))
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) fn dot_u8_i8(a: &[u8], b: &[i8]) -> i32 {
        assert_eq!(a.len(), b.len());
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        // u8 -> i16 and i8 -> i16, then vpmaddwd: exact (|255 * -128 * 2| < 2^31).
        let madd = |x: __m256i, y: __m256i| {
            _mm512_madd_epi16(_mm512_cvtepu8_epi16(x), _mm512_cvtepi8_epi16(y))
        };
        let mut acc = [_mm512_setzero_si512(); 2];
        let mut i = 0;
        while i + 64 <= n {
            for (k, acc) in acc.iter_mut().enumerate() {
                // SAFETY: bytes i + 32k .. i + 32k + 32 <= n of both slices.
                let (x, y) = unsafe {
                    (
                        _mm256_loadu_si256(pa.add(i + 32 * k).cast()),
                        _mm256_loadu_si256(pb.add(i + 32 * k).cast()),
                    )
                };
                *acc = _mm512_add_epi32(*acc, madd(x, y));
            }
            i += 64;
        }
        while i < n {
            let r = (n - i).min(32);
            let m = if r == 32 { u32::MAX } else { (1u32 << r) - 1 };
            // SAFETY: the mask enables only bytes i .. i + r <= n of both slices; masked-off
            // bytes are not read and cannot fault.
            let (x, y) = unsafe {
                (
                    _mm256_maskz_loadu_epi8(m, pa.add(i).cast()),
                    _mm256_maskz_loadu_epi8(m, pb.add(i).cast()),
                )
            };
            acc[1] = _mm512_add_epi32(acc[1], madd(x, y));
            i += r;
        }
        _mm512_reduce_add_epi32(_mm512_add_epi32(acc[0], acc[1]))
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) fn dot_u8_i8_vnni(a: &[u8], b: &[i8]) -> i32 {
        assert_eq!(a.len(), b.len());
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm512_setzero_si512(); 2];
        let mut i = 0;
        while i + 128 <= n {
            for (k, acc) in acc.iter_mut().enumerate() {
                // SAFETY: bytes i + 64k .. i + 64k + 64 <= n of both slices.
                let (x, y) = unsafe {
                    (
                        _mm512_loadu_si512(pa.add(i + 64 * k).cast()),
                        _mm512_loadu_si512(pb.add(i + 64 * k).cast()),
                    )
                };
                *acc = _mm512_dpbusd_epi32(*acc, x, y);
            }
            i += 128;
        }
        if i + 64 <= n {
            // SAFETY: bytes i .. i + 64 <= n of both slices.
            let (x, y) = unsafe {
                (
                    _mm512_loadu_si512(pa.add(i).cast()),
                    _mm512_loadu_si512(pb.add(i).cast()),
                )
            };
            acc[0] = _mm512_dpbusd_epi32(acc[0], x, y);
            i += 64;
        }
        if i < n {
            let m = mask64(n - i);
            // SAFETY: the mask enables only bytes i..n of both slices; masked-off bytes are
            // not read and cannot fault.
            let (x, y) = unsafe {
                (
                    _mm512_maskz_loadu_epi8(m, pa.add(i).cast()),
                    _mm512_maskz_loadu_epi8(m, pb.add(i).cast()),
                )
            };
            acc[1] = _mm512_dpbusd_epi32(acc[1], x, y);
        }
        _mm512_reduce_add_epi32(_mm512_add_epi32(acc[0], acc[1]))
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) fn dot_u8(a: &[u8], b: &[u8]) -> u32 {
        assert_eq!(a.len(), b.len());
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        // Zero-extended bytes are non-negative i16, so vpmaddwd is exact (2 * 255^2 < 2^31).
        let madd = |x: __m256i, y: __m256i| {
            _mm512_madd_epi16(_mm512_cvtepu8_epi16(x), _mm512_cvtepu8_epi16(y))
        };
        let mut acc = [_mm512_setzero_si512(); 2];
        let mut i = 0;
        while i + 64 <= n {
            for (k, acc) in acc.iter_mut().enumerate() {
                // SAFETY: bytes i + 32k .. i + 32k + 32 <= n of both slices.
                let (x, y) = unsafe {
                    (
                        _mm256_loadu_si256(pa.add(i + 32 * k).cast()),
                        _mm256_loadu_si256(pb.add(i + 32 * k).cast()),
                    )
                };
                *acc = _mm512_add_epi32(*acc, madd(x, y));
            }
            i += 64;
        }
        while i < n {
            let r = (n - i).min(32);
            let m = if r == 32 { u32::MAX } else { (1u32 << r) - 1 };
            // SAFETY: the mask enables only bytes i .. i + r <= n of both slices; masked-off
            // bytes are not read and cannot fault.
            let (x, y) = unsafe {
                (
                    _mm256_maskz_loadu_epi8(m, pa.add(i).cast()),
                    _mm256_maskz_loadu_epi8(m, pb.add(i).cast()),
                )
            };
            acc[1] = _mm512_add_epi32(acc[1], madd(x, y));
            i += r;
        }
        _mm512_reduce_add_epi32(_mm512_add_epi32(acc[0], acc[1])) as u32
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) fn dot_u8_vnni(a: &[u8], b: &[u8]) -> u32 {
        assert_eq!(a.len(), b.len());
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        // a . b = a . (b - 128) + 128 * sum(a); b ^ 0x80 read as i8 is b - 128.
        let flip = _mm512_set1_epi8(i8::MIN);
        let zero = _mm512_setzero_si512();
        let mut dot = _mm512_setzero_si512();
        let mut sum = _mm512_setzero_si512();
        let mut step = |x: __m512i, y: __m512i| {
            dot = _mm512_dpbusd_epi32(dot, x, _mm512_xor_si512(y, flip));
            sum = _mm512_add_epi64(sum, _mm512_sad_epu8(x, zero));
        };
        let mut i = 0;
        while i + 64 <= n {
            // SAFETY: bytes i .. i + 64 <= n of both slices.
            let (x, y) = unsafe {
                (
                    _mm512_loadu_si512(pa.add(i).cast()),
                    _mm512_loadu_si512(pb.add(i).cast()),
                )
            };
            step(x, y);
            i += 64;
        }
        if i < n {
            let m = mask64(n - i);
            // SAFETY: the mask enables only bytes i..n of both slices; masked-off bytes are
            // not read and cannot fault. Masked-off a bytes are 0, so they add nothing.
            let (x, y) = unsafe {
                (
                    _mm512_maskz_loadu_epi8(m, pa.add(i).cast()),
                    _mm512_maskz_loadu_epi8(m, pb.add(i).cast()),
                )
            };
            step(x, y);
        }
        let d = _mm512_reduce_add_epi32(dot) as u32;
        let s = _mm512_reduce_add_epi64(sum) as u32;
        d.wrapping_add(s.wrapping_mul(128))
    }

    /// Loads the two 64-byte halves of the query that pair with one 64-byte load of packed
    /// 4-bit codes at dimension `i` (see the module docs).
    ///
    /// # Safety
    /// `b[i .. i + 128]` must be in bounds.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn u4_query(pb: *const i8, i: usize) -> (__m512i, __m512i) {
        // SAFETY: the caller guarantees bytes i .. i + 128 are in bounds.
        unsafe {
            let l = _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(_mm256_loadu_si256(pb.add(i).cast())),
                _mm256_loadu_si256(pb.add(i + 64).cast()),
            );
            let h = _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(_mm256_loadu_si256(pb.add(i + 32).cast())),
                _mm256_loadu_si256(pb.add(i + 96).cast()),
            );
            (l, h)
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) fn dot_u4_i8(packed: &[u8], b: &[i8]) -> i32 {
        let n = b.len();
        assert_eq!(
            packed.len(),
            n.div_ceil(2),
            "dot_u4_i8: packed.len() must be ceil(n / 2)"
        );
        let (pp, pb) = (packed.as_ptr(), b.as_ptr());
        let nib = _mm512_set1_epi8(0x0f);
        let ones = _mm512_set1_epi16(1);
        let mut acc = _mm512_setzero_si512();
        let mut i = 0;
        while i + 128 <= n {
            // SAFETY: packed bytes i/2 .. i/2 + 64 <= n/2 and query bytes i .. i + 128 <= n.
            let (p, (ql, qh)) =
                unsafe { (_mm512_loadu_si512(pp.add(i / 2).cast()), u4_query(pb, i)) };
            let lo = _mm512_and_si512(p, nib);
            let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(p), nib);
            let s16 = _mm512_add_epi16(_mm512_maddubs_epi16(lo, ql), _mm512_maddubs_epi16(hi, qh));
            acc = _mm512_add_epi32(acc, _mm512_madd_epi16(s16, ones));
            i += 128;
        }
        let mut s = _mm512_reduce_add_epi32(acc);
        if i + 64 <= n {
            // SAFETY: packed bytes i/2 .. i/2 + 32 <= n/2 and query bytes i .. i + 64 <= n.
            let (p, q0, q1) = unsafe {
                (
                    _mm256_loadu_si256(pp.add(i / 2).cast()),
                    _mm256_loadu_si256(pb.add(i).cast()),
                    _mm256_loadu_si256(pb.add(i + 32).cast()),
                )
            };
            let nib = _mm256_set1_epi8(0x0f);
            let lo = _mm256_and_si256(p, nib);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(p), nib);
            let s16 = _mm256_add_epi16(_mm256_maddubs_epi16(lo, q0), _mm256_maddubs_epi16(hi, q1));
            let v = _mm256_madd_epi16(s16, _mm256_set1_epi16(1));
            s = s.wrapping_add(_mm512_reduce_add_epi32(_mm512_zextsi256_si512(v)));
            i += 64;
        }
        s.wrapping_add(crate::scalar::dot_u4_i8(&packed[i / 2..], &b[i..]))
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) fn dot_u4_i8_vnni(packed: &[u8], b: &[i8]) -> i32 {
        let n = b.len();
        assert_eq!(
            packed.len(),
            n.div_ceil(2),
            "dot_u4_i8: packed.len() must be ceil(n / 2)"
        );
        let (pp, pb) = (packed.as_ptr(), b.as_ptr());
        let nib = _mm512_set1_epi8(0x0f);
        let mut acc = [_mm512_setzero_si512(); 2];
        let mut i = 0;
        while i + 128 <= n {
            // SAFETY: packed bytes i/2 .. i/2 + 64 <= n/2 and query bytes i .. i + 128 <= n.
            let (p, (ql, qh)) =
                unsafe { (_mm512_loadu_si512(pp.add(i / 2).cast()), u4_query(pb, i)) };
            let lo = _mm512_and_si512(p, nib);
            let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(p), nib);
            acc[0] = _mm512_dpbusd_epi32(acc[0], lo, ql);
            acc[1] = _mm512_dpbusd_epi32(acc[1], hi, qh);
            i += 128;
        }
        let mut s = _mm512_reduce_add_epi32(_mm512_add_epi32(acc[0], acc[1]));
        if i + 64 <= n {
            // SAFETY: packed bytes i/2 .. i/2 + 32 <= n/2 and query bytes i .. i + 64 <= n.
            let (p, q0, q1) = unsafe {
                (
                    _mm256_loadu_si256(pp.add(i / 2).cast()),
                    _mm256_loadu_si256(pb.add(i).cast()),
                    _mm256_loadu_si256(pb.add(i + 32).cast()),
                )
            };
            let nib = _mm256_set1_epi8(0x0f);
            let lo = _mm256_and_si256(p, nib);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(p), nib);
            let v = _mm256_dpbusd_epi32(_mm256_setzero_si256(), lo, q0);
            let v = _mm256_dpbusd_epi32(v, hi, q1);
            s = s.wrapping_add(_mm512_reduce_add_epi32(_mm512_zextsi256_si512(v)));
            i += 64;
        }
        s.wrapping_add(crate::scalar::dot_u4_i8(&packed[i / 2..], &b[i..]))
    }

    /// Mask of the bytes of 64-byte step `c` of a `len`-byte vector (`64c < len`).
    #[inline]
    fn step_mask(len: usize, c: usize) -> __mmask64 {
        let r = len - 64 * c;
        if r >= 64 {
            u64::MAX
        } else {
            mask64(r)
        }
    }

    /// `[x0 + x2, x1 + x3 | y2 + y0, y3 + y1]` in 128-bit chunks: the lanes of `x` folded into
    /// the low half, those of `y` into the high half (first level of a joint reduction).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    fn fold_halves(x: __m512i, y: __m512i) -> __m512i {
        _mm512_add_epi32(
            _mm512_mask_blend_epi64(0xF0, x, y),
            _mm512_shuffle_i64x2::<0x4E>(x, y),
        )
    }

    /// From `p = [a a | b b]` and `q = [c c | d d]` (two `fold_halves` results, a code per
    /// 256-bit half), the chunks `[a, b, c, d]`: each code's two chunks added.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    fn fold_quarters(p: __m512i, q: __m512i) -> __m512i {
        _mm512_add_epi32(
            _mm512_shuffle_i64x2::<0x88>(p, q),
            _mm512_shuffle_i64x2::<0xDD>(p, q),
        )
    }

    /// The sums of the i32 lanes of `a[0]` .. `a[7]`, in that order, reduced jointly (24
    /// shuffles, blends and adds for the eight instead of about nine each).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    fn reduce8(a: &[__m512i; 8]) -> __m256i {
        let r0 = fold_quarters(fold_halves(a[0], a[1]), fold_halves(a[2], a[3]));
        let r1 = fold_quarters(fold_halves(a[4], a[5]), fold_halves(a[6], a[7]));
        // Chunk k: lanes [a[k], a[k], a[4 + k], a[4 + k]], then each pair added.
        let t = _mm512_add_epi32(_mm512_unpacklo_epi64(r0, r1), _mm512_unpackhi_epi64(r0, r1));
        let t = _mm512_add_epi32(t, _mm512_shuffle_epi32::<0xB1>(t));
        let idx = _mm512_setr_epi32(0, 4, 8, 12, 2, 6, 10, 14, 0, 0, 0, 0, 0, 0, 0, 0);
        _mm512_castsi512_si256(_mm512_permutexvar_epi32(idx, t))
    }

    /// The sums of the i32 lanes of `a[0]` .. `a[3]` in the low four lanes, reduced jointly.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    fn reduce4(a: &[__m512i; 4]) -> __m256i {
        let r = fold_quarters(fold_halves(a[0], a[1]), fold_halves(a[2], a[3]));
        let r = _mm512_add_epi32(r, _mm512_shuffle_epi32::<0x4E>(r));
        let r = _mm512_add_epi32(r, _mm512_shuffle_epi32::<0xB1>(r));
        let idx = _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
        _mm512_castsi512_si256(_mm512_permutexvar_epi32(idx, r))
    }

    /// The code `id` of a gather (`base[id * stride..]`), after checking that its `len` bytes
    /// lie in `base`: every pointer the group kernels read through comes from here.
    #[inline]
    fn code_at(base: &[u8], stride: usize, id: u32, len: usize) -> *const u8 {
        let at = id as usize * stride;
        assert!(
            at <= base.len() && len <= base.len() - at,
            "dot_u4_i8_split_gather: code {id} outside base"
        );
        base[at..].as_ptr()
    }

    /// 64-byte step `c` of `n` at `p`: a plain load, the last step a zero-masked one.
    ///
    /// # Safety
    /// Bytes `p + 64c .. p + 64c + 64` must be readable when `c + 1 < n`, otherwise the bytes
    /// of that range enabled in `mlast`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn load_step(p: *const u8, c: usize, n: usize, mlast: __mmask64) -> __m512i {
        // SAFETY: the caller's contract.
        unsafe {
            if c + 1 < n {
                _mm512_loadu_si512(p.add(64 * c).cast())
            } else {
                _mm512_maskz_loadu_epi8(mlast, p.add(64 * c).cast())
            }
        }
    }

    /// Mask with the low `r <= 8` bits set.
    fn mask8(r: usize) -> __mmask8 {
        debug_assert!(r <= 8);
        ((1u32 << r) - 1) as __mmask8
    }

    /// `dot_u4_i8_split` and its gathers, once per way of multiplying bytes: `$mul(acc, codes,
    /// weights)` adds the products of unsigned 4-bit codes with i8 weights into the i32 lanes
    /// of `acc`. Each 64-byte step is one masked load of codes and of each weight vector. The
    /// gathers keep the weights in registers when a code is at most 256 bytes (512
    /// dimensions), so they load only codes, and score the codes in groups (8 codes, or 4
    /// codes of two segments each): one accumulator per code and segment, all reduced
    /// together by `reduce8` and stored with one write. A last, partial group repeats its
    /// last code and stores only its own sums. The group kernels accumulate with `$mulg`
    /// (`$mul`, or without VNNI `vpmaddubsw` into i16 lanes), add a split step's products
    /// under an i32 lane mask with `$addm`, and turn each accumulator into i32 lanes with
    /// `$fin` before the reduction.
    macro_rules! split_kernels {
        ($feat:literal, $single:ident, $gather:ident, $gather_n:ident, $group:ident,
         $segs:ident, $segs_n:ident, $group2:ident, $mul:ident, $mulg:ident, $addm:ident,
         $fin:ident) => {
            #[target_feature(enable = $feat)]
            pub(super) fn $single(p: &[u8], lo: &[i8], hi: &[i8]) -> i32 {
                assert!(
                    p.len() == lo.len() && p.len() == hi.len(),
                    "dot_u4_i8_split: slices of different lengths"
                );
                let n = p.len();
                let nib = _mm512_set1_epi8(0x0f);
                let mut acc = [_mm512_setzero_si512(); 2];
                for c in 0..n.div_ceil(64) {
                    let m = step_mask(n, c);
                    // SAFETY: the mask enables only bytes 64c .. min(64c + 64, n) of the three
                    // slices; masked-off bytes are not read and cannot fault.
                    let (x, l, h) = unsafe {
                        (
                            _mm512_maskz_loadu_epi8(m, p.as_ptr().add(64 * c).cast()),
                            _mm512_maskz_loadu_epi8(m, lo.as_ptr().add(64 * c).cast()),
                            _mm512_maskz_loadu_epi8(m, hi.as_ptr().add(64 * c).cast()),
                        )
                    };
                    acc[0] = $mul(acc[0], _mm512_and_si512(x, nib), l);
                    acc[1] = $mul(acc[1], _mm512_and_si512(_mm512_srli_epi16::<4>(x), nib), h);
                }
                _mm512_reduce_add_epi32(_mm512_add_epi32(acc[0], acc[1]))
            }

            /// The products of the `G` codes at `ptrs` (`N` steps, the last one masked by
            /// `mlast`) with `wl`, `wh`: one accumulator per code.
            ///
            /// # Safety
            /// The CPU must have the features `$feat` (it is called only from functions that
            /// enable them; it has no `#[target_feature]` of its own so that it can be
            /// `#[inline(always)]`, which keeps the accumulators out of memory). Every
            /// `ptrs[g]` must be readable for the bytes `load_step` reads (steps 0 .. N - 1
            /// whole, the enabled bytes of the last).
            #[inline(always)]
            unsafe fn $group<const N: usize, const G: usize>(
                ptrs: &[*const u8; G],
                mlast: __mmask64,
                wl: &[__m512i; N],
                wh: &[__m512i; N],
            ) -> [__m512i; G] {
                // SAFETY: the caller's contract (features and readable bytes).
                unsafe {
                    let nib = _mm512_set1_epi8(0x0f);
                    let mut acc = [_mm512_setzero_si512(); G];
                    for c in 0..N {
                        for (a, &p) in acc.iter_mut().zip(ptrs) {
                            let x = load_step(p, c, N, mlast);
                            *a = $mulg(*a, _mm512_and_si512(x, nib), wl[c]);
                            *a = $mulg(*a, _mm512_and_si512(_mm512_srli_epi16::<4>(x), nib), wh[c]);
                        }
                    }
                    for a in acc.iter_mut() {
                        *a = $fin(*a);
                    }
                    acc
                }
            }

            /// `$group` for two segments, the first ending in step `k` at i32 lane mask `m`
            /// (`m == 0`: at the start of step `k`): two accumulators per code, the steps before
            /// `k` into the first, those after into the second, and step `k`'s products split
            /// between them by `m`.
            ///
            /// # Safety
            /// As for `$group`.
            #[inline(always)]
            unsafe fn $group2<const N: usize, const G: usize>(
                ptrs: &[*const u8; G],
                mlast: __mmask64,
                wl: &[__m512i; N],
                wh: &[__m512i; N],
                k: usize,
                m: __mmask16,
            ) -> [[__m512i; 2]; G] {
                // SAFETY: the caller's contract (features and readable bytes).
                unsafe {
                    let nib = _mm512_set1_epi8(0x0f);
                    let mut acc = [[_mm512_setzero_si512(); 2]; G];
                    for c in 0..N {
                        for (a, &p) in acc.iter_mut().zip(ptrs) {
                            let x = load_step(p, c, N, mlast);
                            let l = _mm512_and_si512(x, nib);
                            let h = _mm512_and_si512(_mm512_srli_epi16::<4>(x), nib);
                            if c < k {
                                a[0] = $mulg($mulg(a[0], l, wl[c]), h, wh[c]);
                            } else if c > k || m == 0 {
                                a[1] = $mulg($mulg(a[1], l, wl[c]), h, wh[c]);
                            } else {
                                let q = $mulg($mulg(_mm512_setzero_si512(), l, wl[c]), h, wh[c]);
                                a[0] = $addm(a[0], m, q);
                                a[1] = $addm(a[1], !m, q);
                            }
                        }
                    }
                    for a in acc.iter_mut() {
                        *a = [$fin(a[0]), $fin(a[1])];
                    }
                    acc
                }
            }

            #[target_feature(enable = $feat)]
            fn $gather_n<const N: usize>(
                base: &[u8],
                stride: usize,
                ids: &[u32],
                lo: &[i8],
                hi: &[i8],
                out: &mut [i32],
            ) {
                let len = lo.len();
                debug_assert!(len.div_ceil(64) == N);
                let (wl, wh) = load_weights::<N>(lo, hi);
                let mlast = step_mask(len, N - 1);
                let mut ic = ids.chunks_exact(8);
                let mut oc = out.chunks_exact_mut(8);
                for (ig, o) in (&mut ic).zip(&mut oc) {
                    let ptrs: [*const u8; 8] =
                        core::array::from_fn(|g| code_at(base, stride, ig[g], len));
                    // SAFETY: this function enables $feat; code_at checked that each code's
                    // `len` bytes lie in `base`, and load_step reads only bytes below `len`
                    // (whole steps before the last, mlast's bytes in it).
                    let acc = unsafe { $group::<N, 8>(&ptrs, mlast, &wl, &wh) };
                    // SAFETY: `o` is 8 i32 long.
                    unsafe { _mm256_storeu_si256(o.as_mut_ptr().cast(), reduce8(&acc)) };
                }
                let (ids, out) = (ic.remainder(), oc.into_remainder());
                let r = ids.len();
                if r == 0 {
                    return;
                }
                let pick = |g: usize| code_at(base, stride, ids[g.min(r - 1)], len);
                // SAFETY: as above; the sums are stored under a mask of the r lanes `out` has.
                unsafe {
                    let sums = if r <= 4 {
                        reduce4(&$group::<N, 4>(
                            &core::array::from_fn(pick),
                            mlast,
                            &wl,
                            &wh,
                        ))
                    } else {
                        reduce8(&$group::<N, 8>(
                            &core::array::from_fn(pick),
                            mlast,
                            &wl,
                            &wh,
                        ))
                    };
                    _mm256_mask_storeu_epi32(out.as_mut_ptr(), mask8(r), sums);
                }
            }

            #[target_feature(enable = $feat)]
            pub(super) fn $gather(
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
                match lo.len().div_ceil(64) {
                    1 => $gather_n::<1>(base, stride, ids, lo, hi, out),
                    2 => $gather_n::<2>(base, stride, ids, lo, hi, out),
                    3 => $gather_n::<3>(base, stride, ids, lo, hi, out),
                    4 => $gather_n::<4>(base, stride, ids, lo, hi, out),
                    _ => {
                        let len = lo.len();
                        for (o, &id) in out.iter_mut().zip(ids) {
                            let at = id as usize * stride;
                            *o = $single(&base[at..at + len], lo, hi);
                        }
                    }
                }
            }

            #[target_feature(enable = $feat)]
            fn $segs_n<const N: usize>(
                base: &[u8],
                stride: usize,
                ids: &[u32],
                lo: &[i8],
                hi: &[i8],
                ends: &[u32],
                out: &mut [i32],
            ) {
                let len = lo.len();
                debug_assert!(len.div_ceil(64) == N);
                let s = ends.len();
                if s == 1 {
                    return $gather_n::<N>(base, stride, ids, lo, hi, out);
                }
                let (wl, wh) = load_weights::<N>(lo, hi);
                if s == 2 {
                    // SAQ's usual case: four codes' eight sums per group.
                    let e0 = ends[0] as usize;
                    let (k, m) = (e0 / 64, ((1u32 << (e0 % 64 / 4)) - 1) as __mmask16);
                    let mlast = step_mask(len, N - 1);
                    let mut ic = ids.chunks_exact(4);
                    let mut oc = out.chunks_exact_mut(8);
                    for (ig, o) in (&mut ic).zip(&mut oc) {
                        let ptrs: [*const u8; 4] =
                            core::array::from_fn(|g| code_at(base, stride, ig[g], len));
                        // SAFETY: as in $gather_n.
                        let acc = unsafe { $group2::<N, 4>(&ptrs, mlast, &wl, &wh, k, m) };
                        let acc: [__m512i; 8] = core::array::from_fn(|i| acc[i / 2][i % 2]);
                        // SAFETY: `o` is 8 i32 long.
                        unsafe { _mm256_storeu_si256(o.as_mut_ptr().cast(), reduce8(&acc)) };
                    }
                    let (ids, out) = (ic.remainder(), oc.into_remainder());
                    let r = ids.len();
                    let pick = |g: usize| code_at(base, stride, ids[g.min(r - 1)], len);
                    // SAFETY: as above; the sums are stored under a mask of the 2r lanes `out`
                    // has. One or two codes go as a group of two.
                    unsafe {
                        if r == 3 {
                            let ptrs: [*const u8; 4] = core::array::from_fn(pick);
                            let acc = $group2::<N, 4>(&ptrs, mlast, &wl, &wh, k, m);
                            let acc: [__m512i; 8] = core::array::from_fn(|i| acc[i / 2][i % 2]);
                            _mm256_mask_storeu_epi32(out.as_mut_ptr(), mask8(6), reduce8(&acc));
                        } else if r > 0 {
                            let ptrs: [*const u8; 2] = core::array::from_fn(pick);
                            let acc = $group2::<N, 2>(&ptrs, mlast, &wl, &wh, k, m);
                            let acc = [acc[0][0], acc[0][1], acc[1][0], acc[1][1]];
                            _mm256_mask_storeu_epi32(out.as_mut_ptr(), mask8(2 * r), reduce4(&acc));
                        }
                    }
                    return;
                }
                let nib = _mm512_set1_epi8(0x0f);
                // (step, segment, i32 lanes of the step in the segment): a lane sums 4 bytes
                // and the ends are multiples of 4, so every lane lies in one segment; at most
                // N + S - 1 <= 4 + MAX_SEGS - 1 pieces.
                let mut parts = [(0usize, 0usize, 0 as __mmask16); 4 + crate::scalar::MAX_SEGS];
                let (mut np, mut a) = (0, 0usize);
                for (t, &e) in ends.iter().enumerate() {
                    let e = e as usize;
                    for c in a / 64..=(e - 1) / 64 {
                        let (l0, l1) = (
                            (a.max(64 * c) - 64 * c) / 4,
                            (e.min(64 * c + 64) - 64 * c) / 4,
                        );
                        let m = (((1u32 << l1) - 1) & !((1u32 << l0) - 1)) as __mmask16;
                        parts[np] = (c, t, m);
                        np += 1;
                    }
                    a = e;
                }
                for (o, &id) in out.chunks_exact_mut(s).zip(ids) {
                    let at = id as usize * stride;
                    assert!(
                        at <= base.len() && len <= base.len() - at,
                        "dot_u4_i8_split_gather: code {id} outside base"
                    );
                    let pc = base[at..].as_ptr();
                    // Steps in order, each step's pieces (segment order) added to the running
                    // segment's register as soon as the step's products exist; a segment's sum
                    // is reduced when the next segment starts. Nothing goes through memory.
                    let (mut acc, mut cur, mut pi) = (_mm512_setzero_si512(), 0, 0);
                    for c in 0..N {
                        // SAFETY: the mask enables only bytes at + 64c .. at + min(64c + 64,
                        // len) <= base.len(), checked above.
                        let x = unsafe {
                            _mm512_maskz_loadu_epi8(step_mask(len, c), pc.add(64 * c).cast())
                        };
                        let p = $mul(_mm512_setzero_si512(), _mm512_and_si512(x, nib), wl[c]);
                        let p = $mul(p, _mm512_and_si512(_mm512_srli_epi16::<4>(x), nib), wh[c]);
                        while pi < np && parts[pi].0 == c {
                            let (_, t, m) = parts[pi];
                            if t != cur {
                                o[cur] = _mm512_reduce_add_epi32(acc);
                                (acc, cur) = (_mm512_setzero_si512(), t);
                            }
                            acc = _mm512_mask_add_epi32(acc, m, acc, p);
                            pi += 1;
                        }
                    }
                    o[cur] = _mm512_reduce_add_epi32(acc);
                }
            }

            #[target_feature(enable = $feat)]
            pub(super) fn $segs(
                base: &[u8],
                stride: usize,
                ids: &[u32],
                lo: &[i8],
                hi: &[i8],
                ends: &[u32],
                out: &mut [i32],
            ) {
                crate::scalar::check_segs_args(ids, lo, hi, ends, out);
                match lo.len().div_ceil(64) {
                    1 => $segs_n::<1>(base, stride, ids, lo, hi, ends, out),
                    2 => $segs_n::<2>(base, stride, ids, lo, hi, ends, out),
                    3 => $segs_n::<3>(base, stride, ids, lo, hi, ends, out),
                    4 => $segs_n::<4>(base, stride, ids, lo, hi, ends, out),
                    _ => crate::scalar::gather_segs_with(
                        |p, l, h| $single(p, l, h),
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
        };
    }

    /// The weights of a gather, the `N = ceil(len / 64)` steps of `lo` and of `hi`, zero past
    /// their end.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    fn load_weights<const N: usize>(lo: &[i8], hi: &[i8]) -> ([__m512i; N], [__m512i; N]) {
        let len = lo.len();
        debug_assert!(hi.len() == len && len.div_ceil(64) == N);
        let mut wl = [_mm512_setzero_si512(); N];
        let mut wh = [_mm512_setzero_si512(); N];
        for c in 0..N {
            let m = step_mask(len, c);
            // SAFETY: the mask enables only bytes 64c .. min(64c + 64, len) of lo and hi (both
            // `len` long).
            unsafe {
                wl[c] = _mm512_maskz_loadu_epi8(m, lo.as_ptr().add(64 * c).cast());
                wh[c] = _mm512_maskz_loadu_epi8(m, hi.as_ptr().add(64 * c).cast());
            }
        }
        (wl, wh)
    }

    /// 16 codes per step: bytes widened to i32 lanes, nibbles split, converted to f32 and
    /// multiplied into two FMA accumulators; the tail is one masked step.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) fn dot_f32_u4_split(p: &[u8], lo: &[f32], hi: &[f32]) -> f32 {
        assert!(
            p.len() == lo.len() && p.len() == hi.len(),
            "dot_f32_u4_split: slices of different lengths"
        );
        let n = p.len();
        let nib = _mm512_set1_epi32(0x0f);
        let mut acc = [_mm512_setzero_ps(); 2];
        let mut i = 0;
        while i < n {
            let m = if n - i >= 16 { u16::MAX } else { mask16(n - i) };
            // SAFETY: the mask enables only elements i .. min(i + 16, n) of the three slices;
            // masked-off elements are not read and cannot fault.
            let (x, l, h) = unsafe {
                (
                    _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, p.as_ptr().add(i).cast())),
                    _mm512_maskz_loadu_ps(m, lo.as_ptr().add(i)),
                    _mm512_maskz_loadu_ps(m, hi.as_ptr().add(i)),
                )
            };
            let cl = _mm512_cvtepi32_ps(_mm512_and_si512(x, nib));
            let ch = _mm512_cvtepi32_ps(_mm512_srli_epi32::<4>(x));
            acc[0] = _mm512_fmadd_ps(cl, l, acc[0]);
            acc[1] = _mm512_fmadd_ps(ch, h, acc[1]);
            i += 16;
        }
        _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]))
    }

    /// `vpdpbusd`: u8 x i8 products summed in fours into the i32 lanes.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    fn mul_vnni(acc: __m512i, codes: __m512i, w: __m512i) -> __m512i {
        _mm512_dpbusd_epi32(acc, codes, w)
    }

    /// `vpmaddubsw` (exact for 4-bit codes: 2 * 15 * 128 < i16::MAX), then `vpmaddwd` by ones.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    fn mul_bw(acc: __m512i, codes: __m512i, w: __m512i) -> __m512i {
        let s16 = _mm512_maddubs_epi16(codes, w);
        _mm512_add_epi32(acc, _mm512_madd_epi16(s16, _mm512_set1_epi16(1)))
    }

    /// `vpmaddubsw` added into i16 lanes: the group kernels' accumulators get at most 8 such
    /// terms (2 per step, at most 4 steps), at most 8 * 2 * 15 * 128 = 30720 < 2^15 in
    /// magnitude, so the i16 sums are exact; `fin_bw` widens them once per code.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    fn mul_bw16(acc: __m512i, codes: __m512i, w: __m512i) -> __m512i {
        _mm512_add_epi16(acc, _mm512_maddubs_epi16(codes, w))
    }

    /// `acc` plus the i16 pairs of `q` in the i32 lanes set in `m`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    fn addm_bw16(acc: __m512i, m: __mmask16, q: __m512i) -> __m512i {
        _mm512_add_epi16(acc, _mm512_maskz_mov_epi32(m, q))
    }

    /// The i16 pairs of `acc` summed into i32 lanes.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    fn fin_bw16(acc: __m512i) -> __m512i {
        _mm512_madd_epi16(acc, _mm512_set1_epi16(1))
    }

    /// `acc` plus the i32 lanes of `q` set in `m`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    fn addm_i32(acc: __m512i, m: __mmask16, q: __m512i) -> __m512i {
        _mm512_mask_add_epi32(acc, m, acc, q)
    }

    /// The accumulator as it is (already i32 lanes).
    #[inline]
    fn fin_i32(acc: __m512i) -> __m512i {
        acc
    }

    split_kernels!(
        "avx512f,avx512bw,avx512vl",
        dot_u4_i8_split,
        dot_u4_i8_split_gather,
        split_gather_n,
        split_group,
        dot_u4_i8_split_gather_segs,
        split_gather_segs_n,
        split_group2,
        mul_bw,
        mul_bw16,
        addm_bw16,
        fin_bw16
    );
    split_kernels!(
        "avx512f,avx512bw,avx512vl,avx512vnni",
        dot_u4_i8_split_vnni,
        dot_u4_i8_split_gather_vnni,
        split_gather_n_vnni,
        split_group_vnni,
        dot_u4_i8_split_gather_segs_vnni,
        split_gather_segs_n_vnni,
        split_group2_vnni,
        mul_vnni,
        mul_vnni,
        addm_i32,
        fin_i32
    );

    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) fn and_popcount_u64(a: &[u64], b: &[u64]) -> u32 {
        assert_eq!(a.len(), b.len());
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        #[rustfmt::skip]
        let lut = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4));
        let nib = _mm512_set1_epi8(0x0f);
        let zero = _mm512_setzero_si512();
        let mut acc = _mm512_setzero_si512();
        let mut step = |x: __m512i, y: __m512i| {
            let v = _mm512_and_si512(x, y);
            let lo = _mm512_shuffle_epi8(lut, _mm512_and_si512(v, nib));
            let hi = _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16::<4>(v), nib));
            acc = _mm512_add_epi64(acc, _mm512_sad_epu8(_mm512_add_epi8(lo, hi), zero));
        };
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: words i .. i + 8 <= n of both slices.
            let (x, y) = unsafe {
                (
                    _mm512_loadu_si512(pa.add(i).cast()),
                    _mm512_loadu_si512(pb.add(i).cast()),
                )
            };
            step(x, y);
            i += 8;
        }
        if i < n {
            let m = ((1u32 << (n - i)) - 1) as __mmask8;
            // SAFETY: the mask enables only words i..n of both slices; masked-off words are
            // not read and cannot fault.
            let (x, y) = unsafe {
                (
                    _mm512_maskz_loadu_epi64(m, pa.add(i).cast()),
                    _mm512_maskz_loadu_epi64(m, pb.add(i).cast()),
                )
            };
            step(x, y);
        }
        _mm512_reduce_add_epi64(acc) as u32
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vpopcntdq")]
    pub(super) fn and_popcount_u64_vpopcntdq(a: &[u64], b: &[u64]) -> u32 {
        assert_eq!(a.len(), b.len());
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm512_setzero_si512(); 2];
        let mut i = 0;
        while i + 16 <= n {
            for (k, acc) in acc.iter_mut().enumerate() {
                // SAFETY: words i + 8k .. i + 8k + 8 <= n of both slices.
                let (x, y) = unsafe {
                    (
                        _mm512_loadu_si512(pa.add(i + 8 * k).cast()),
                        _mm512_loadu_si512(pb.add(i + 8 * k).cast()),
                    )
                };
                *acc = _mm512_add_epi64(*acc, _mm512_popcnt_epi64(_mm512_and_si512(x, y)));
            }
            i += 16;
        }
        while i < n {
            let r = (n - i).min(8);
            let m = ((1u32 << r) - 1) as __mmask8;
            // SAFETY: the mask enables only words i .. i + r <= n of both slices; masked-off
            // words are not read and cannot fault.
            let (x, y) = unsafe {
                (
                    _mm512_maskz_loadu_epi64(m, pa.add(i).cast()),
                    _mm512_maskz_loadu_epi64(m, pb.add(i).cast()),
                )
            };
            acc[1] = _mm512_add_epi64(acc[1], _mm512_popcnt_epi64(_mm512_and_si512(x, y)));
            i += r;
        }
        _mm512_reduce_add_epi64(_mm512_add_epi64(acc[0], acc[1])) as u32
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) fn fastscan_u16(codes: &[u8], luts: &[u8], out: &mut [u16; 32]) {
        let m = crate::scalar::fastscan_m(codes, luts);
        let (pc, pl) = (codes.as_ptr(), luts.as_ptr());
        let nib = _mm512_set1_epi8(0x0f);
        // As in the AVX2 kernel: u16 lanes of `*_a` sum (even byte + 256 * odd byte), `*_b`
        // the odd bytes; even sums = a - (b << 8), exact modulo 2^16. Four sub-quantizers per
        // step, one per 128-bit lane.
        let (mut lo_a, mut lo_b) = (_mm512_setzero_si512(), _mm512_setzero_si512());
        let (mut hi_a, mut hi_b) = (_mm512_setzero_si512(), _mm512_setzero_si512());
        let mut step = |c: __m512i, t: __m512i| {
            let rl = _mm512_shuffle_epi8(t, _mm512_and_si512(c, nib));
            let rh = _mm512_shuffle_epi8(t, _mm512_and_si512(_mm512_srli_epi16::<4>(c), nib));
            lo_a = _mm512_add_epi16(lo_a, rl);
            lo_b = _mm512_add_epi16(lo_b, _mm512_srli_epi16::<8>(rl));
            hi_a = _mm512_add_epi16(hi_a, rh);
            hi_b = _mm512_add_epi16(hi_b, _mm512_srli_epi16::<8>(rh));
        };
        let mut j = 0;
        while j + 4 <= m {
            // SAFETY: bytes 16j .. 16j + 64 <= 16m = codes.len() = luts.len().
            let (c, t) = unsafe {
                (
                    _mm512_loadu_si512(pc.add(16 * j).cast()),
                    _mm512_loadu_si512(pl.add(16 * j).cast()),
                )
            };
            step(c, t);
            j += 4;
        }
        if j < m {
            let k = mask64(16 * (m - j));
            // SAFETY: the mask enables only bytes 16j .. 16m of both slices; masked-off bytes
            // are not read, and their zero table entries look up zeros.
            let (c, t) = unsafe {
                (
                    _mm512_maskz_loadu_epi8(k, pc.add(16 * j).cast()),
                    _mm512_maskz_loadu_epi8(k, pl.add(16 * j).cast()),
                )
            };
            step(c, t);
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
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    fn finish(a: __m512i, b: __m512i) -> (__m128i, __m128i) {
        let even = _mm512_sub_epi16(a, _mm512_slli_epi16::<8>(b));
        let fold = |v: __m512i| {
            let s01 = _mm_add_epi16(
                _mm512_extracti32x4_epi32::<0>(v),
                _mm512_extracti32x4_epi32::<1>(v),
            );
            let s23 = _mm_add_epi16(
                _mm512_extracti32x4_epi32::<2>(v),
                _mm512_extracti32x4_epi32::<3>(v),
            );
            _mm_add_epi16(s01, s23)
        };
        let (e, o) = (fold(even), fold(b));
        (_mm_unpacklo_epi16(e, o), _mm_unpackhi_epi16(e, o))
    }

    /// Stages `h = 1, 2, 4, 8` inside each 16-lane register (a lane permute pairs `x[i]` with
    /// `x[i ^ h]`; lanes with bit `h` clear keep the sum, the others the difference), then
    /// `h >= 16` between registers.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) fn fwht_f32(x: &mut [f32]) {
        let n = crate::scalar::fwht_len(x);
        if n < 16 {
            return crate::scalar::fwht_f32(x);
        }
        let p = x.as_mut_ptr();
        let mut i = 0;
        while i < n {
            // SAFETY: i + 16 <= n, as n is a multiple of 16.
            let v = fwht16!(unsafe { _mm512_loadu_ps(p.add(i)) });
            // SAFETY: as above.
            unsafe { _mm512_storeu_ps(p.add(i), v) };
            i += 16;
        }
        let mut h = 16;
        while h < n {
            let mut b = 0;
            while b < n {
                let mut j = b;
                while j < b + h {
                    // SAFETY: j + 16 <= b + h and j + h + 16 <= b + 2h <= n.
                    unsafe {
                        let u = _mm512_loadu_ps(p.add(j));
                        let v = _mm512_loadu_ps(p.add(j + h));
                        _mm512_storeu_ps(p.add(j), _mm512_add_ps(u, v));
                        _mm512_storeu_ps(p.add(j + h), _mm512_sub_ps(u, v));
                    }
                    j += 16;
                }
                b += 2 * h;
            }
            h *= 2;
        }
    }

    /// Up to 512 entries the whole rotation runs in registers (`R = d / 16` of them, the
    /// transform's block `T = t / 16`), with the scalar reference's operations in its order;
    /// other sizes go through [`fwht_f32`] (bit-identical either way).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) fn rotate_rounds_f32(x: &mut [f32], masks: &[u32], t: usize, scale: f32) {
        let d = x.len();
        let fits =
            d > 0 && d.is_multiple_of(64) && masks.len().is_multiple_of(d) && t.is_power_of_two();
        match (fits, d, t) {
            (true, 64, 64) => rotate_regs::<4, 4>(x, masks, scale),
            (true, 128, 128) => rotate_regs::<8, 8>(x, masks, scale),
            (true, 192, 128) => rotate_regs::<12, 8>(x, masks, scale),
            (true, 256, 256) => rotate_regs::<16, 16>(x, masks, scale),
            (true, 320, 256) => rotate_regs::<20, 16>(x, masks, scale),
            (true, 384, 256) => rotate_regs::<24, 16>(x, masks, scale),
            (true, 448, 256) => rotate_regs::<28, 16>(x, masks, scale),
            (true, 512, 512) => rotate_regs::<32, 32>(x, masks, scale),
            _ => crate::scalar::rotate_rounds_with(x, masks, t, scale, |b| fwht_f32(b)),
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    fn rotate_regs<const R: usize, const T: usize>(x: &mut [f32], masks: &[u32], scale: f32) {
        debug_assert!(x.len() == 16 * R && masks.len().is_multiple_of(16 * R));
        let p = x.as_mut_ptr();
        let mut v = [_mm512_setzero_ps(); R];
        for (i, r) in v.iter_mut().enumerate() {
            // SAFETY: 16 i + 16 <= 16 R = x.len().
            *r = unsafe { _mm512_loadu_ps(p.add(16 * i)) };
        }
        let sc = _mm512_set1_ps(scale);
        let hs = _mm512_set1_ps(core::f32::consts::FRAC_1_SQRT_2);
        // One round's transform and scaling of registers `$start .. $start + T`: the four
        // in-register stages of `fwht_f32`, then the stages between registers with constant
        // strides (macros rather than functions, so that `v` stays in registers).
        macro_rules! stage {
            ($start:expr, $h:expr) => {
                if $h < T {
                    for i in 0..T {
                        if i & $h == 0 {
                            let (a, b) = (v[$start + i], v[$start + i + $h]);
                            v[$start + i] = _mm512_add_ps(a, b);
                            v[$start + i + $h] = _mm512_sub_ps(a, b);
                        }
                    }
                }
            };
        }
        macro_rules! block {
            ($start:expr) => {
                for r in v[$start..$start + T].iter_mut() {
                    *r = fwht16!(*r);
                }
                stage!($start, 1);
                stage!($start, 2);
                stage!($start, 4);
                stage!($start, 8);
                stage!($start, 16);
                for r in v[$start..$start + T].iter_mut() {
                    *r = _mm512_mul_ps(*r, sc);
                }
            };
        }
        for (round, m) in masks.chunks_exact(16 * R).enumerate() {
            let pm = m.as_ptr();
            for (i, r) in v.iter_mut().enumerate() {
                // SAFETY: 16 i + 16 <= 16 R = m.len().
                let mk = unsafe { _mm512_loadu_si512(pm.add(16 * i).cast()) };
                *r = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(*r), mk));
            }
            if round % 2 == 0 {
                block!(0);
            } else {
                block!(R - T);
            }
            if T < R {
                for i in 0..R / 2 {
                    let (a, b) = (v[i], v[i + R / 2]);
                    v[i] = _mm512_mul_ps(_mm512_add_ps(a, b), hs);
                    v[i + R / 2] = _mm512_mul_ps(_mm512_sub_ps(a, b), hs);
                }
            }
        }
        for (i, r) in v.iter().enumerate() {
            // SAFETY: as above.
            unsafe { _mm512_storeu_ps(p.add(16 * i), *r) };
        }
    }

    /// One group per step, its 16 nibbles in one register: subset sums by masking the
    /// broadcast weights (lane `c` takes `g[t]` where bit `t` of `c` is set), the scalar
    /// reference's operation order, and `vpmovdb` for the low bytes.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) fn fastscan_lut_u8(w: &[f32], scale: f32, out: &mut [u8]) {
        use crate::scalar::{lut_groups, lut_lo, ROUND_MAGIC};
        let m = lut_groups(w, out);
        let sc = _mm512_set1_ps(scale);
        let magic = _mm512_set1_ps(ROUND_MAGIC);
        let top = _mm512_set1_ps(ROUND_MAGIC + 255.0);
        for (j, g) in w.chunks_exact(4).enumerate().take(m) {
            let lo = _mm512_set1_ps(lut_lo(g));
            let [w0, w1, w2, w3] = [0, 1, 2, 3].map(|t| _mm512_set1_ps(g[t]));
            let l = _mm512_add_ps(
                _mm512_maskz_mov_ps(0xAAAA, w0),
                _mm512_maskz_mov_ps(0xCCCC, w1),
            );
            let h = _mm512_add_ps(
                _mm512_maskz_mov_ps(0xF0F0, w2),
                _mm512_maskz_mov_ps(0xFF00, w3),
            );
            let x = _mm512_add_ps(
                _mm512_mul_ps(_mm512_sub_ps(l, lo), sc),
                _mm512_mul_ps(h, sc),
            );
            let v = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(x, magic), magic), top);
            let b = _mm512_cvtepi32_epi8(_mm512_castps_si512(v));
            // SAFETY: 16j + 16 <= 16m = out.len().
            unsafe { _mm_storeu_si128(out.as_mut_ptr().add(16 * j).cast(), b) };
        }
    }

    /// Points in lanes, four groups of 16 per step (independent dependency chains), each
    /// centroid broadcast; every lane follows the reference order of operations, so the result
    /// is bit-identical. The last `n % 64` points are padded to a full step.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) fn nearest_centroid_t(
        xt: &[f32],
        stride: usize,
        centroids: &[f32],
        norms: &[f32],
        out: &mut [u32],
    ) {
        use crate::scalar::nearest_t_dim;
        let dim = nearest_t_dim(xt, stride, centroids, norms, out);
        let w = 16 * GROUPS;
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
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
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

    /// `out.len()` a multiple of `16 G`; `D == dim`, or `D == 0` for any `dim` (coordinates
    /// kept in a buffer instead of registers).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    fn nearest_t_block<const D: usize, const G: usize>(
        xt: &[f32],
        stride: usize,
        dim: usize,
        centroids: &[f32],
        norms: &[f32],
        out: &mut [u32],
    ) {
        let m2 = _mm512_set1_ps(-2.0);
        let inf = _mm512_set1_ps(f32::INFINITY);
        let mut xd = vec![[m2; G]; dim];
        let mut xr = [[m2; G]; D];
        for (g, o) in out.chunks_exact_mut(16 * G).enumerate() {
            for (t, x) in xd.iter_mut().enumerate() {
                let row = &xt[t * stride + 16 * G * g..][..16 * G];
                for (l, x) in x.iter_mut().enumerate() {
                    // SAFETY: `row` holds 16 G floats.
                    *x = _mm512_mul_ps(m2, unsafe { _mm512_loadu_ps(row.as_ptr().add(16 * l)) });
                }
            }
            if D > 0 {
                xr.copy_from_slice(&xd[..D]);
            }
            let mut best = [inf; G];
            let mut idx = [_mm512_setzero_si512(); G];
            let mut jv = _mm512_setzero_si512();
            let one = _mm512_set1_epi32(1);
            for (c, &nj) in centroids.chunks_exact(dim).zip(norms) {
                let mut d = [_mm512_set1_ps(nj); G];
                if D > 0 {
                    for t in 0..D {
                        let ct = _mm512_set1_ps(c[t]);
                        for l in 0..G {
                            d[l] = _mm512_add_ps(d[l], _mm512_mul_ps(xr[t][l], ct));
                        }
                    }
                } else {
                    for (t, &cv) in c.iter().enumerate() {
                        let ct = _mm512_set1_ps(cv);
                        for l in 0..G {
                            d[l] = _mm512_add_ps(d[l], _mm512_mul_ps(xd[t][l], ct));
                        }
                    }
                }
                for l in 0..G {
                    let m = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(d[l], best[l]);
                    // vminps(d, b) = d < b ? d : b: a NaN never replaces the best.
                    best[l] = _mm512_min_ps(d[l], best[l]);
                    idx[l] = _mm512_mask_mov_epi32(idx[l], m, jv);
                }
                jv = _mm512_add_epi32(jv, one);
            }
            for (l, v) in idx.iter().enumerate() {
                // SAFETY: `o` holds 16 G u32.
                unsafe { _mm512_storeu_si512(o.as_mut_ptr().add(16 * l).cast(), *v) };
            }
        }
    }

    /// One round of the 16x16 byte transpose: rows `i` and `i + 8` zipped into rows `2i`,
    /// `2i + 1` (a new array from literal indices, so the rows stay in registers).
    macro_rules! zip_round {
        ($r:expr) => {{
            let r = $r;
            [
                _mm512_unpacklo_epi8(r[0], r[8]),
                _mm512_unpackhi_epi8(r[0], r[8]),
                _mm512_unpacklo_epi8(r[1], r[9]),
                _mm512_unpackhi_epi8(r[1], r[9]),
                _mm512_unpacklo_epi8(r[2], r[10]),
                _mm512_unpackhi_epi8(r[2], r[10]),
                _mm512_unpacklo_epi8(r[3], r[11]),
                _mm512_unpackhi_epi8(r[3], r[11]),
                _mm512_unpacklo_epi8(r[4], r[12]),
                _mm512_unpackhi_epi8(r[4], r[12]),
                _mm512_unpacklo_epi8(r[5], r[13]),
                _mm512_unpackhi_epi8(r[5], r[13]),
                _mm512_unpacklo_epi8(r[6], r[14]),
                _mm512_unpackhi_epi8(r[6], r[14]),
                _mm512_unpacklo_epi8(r[7], r[15]),
                _mm512_unpackhi_epi8(r[7], r[15]),
            ]
        }};
    }

    /// `fastscan_pack_u4`: 32 code bytes per step. Row `i` of the transpose holds, per
    /// 128-bit lane, bytes `b0..b0 + 16` of code `i`, of code `i + 16`, then bytes
    /// `b0 + 16..b0 + 32` of the same two codes; the in-lane byte transpose (as in the AVX2
    /// kernel) leaves in `r[k]` byte `b0 + k` (lanes 0, 1) and `b0 + 16 + k` (lanes 2, 3) of
    /// codes 0..16 and 16..32. A 16-byte remainder goes through the AVX2 step (AVX-512 F
    /// implies AVX2), the rest through the scalar loop.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
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
        let po = out.as_mut_ptr();
        let nib = _mm512_set1_epi8(0x0f);
        let z = _mm256_setzero_si256();
        // Lanes (0, 1, 2, 3) of the result: even rows of byte b0 + k, odd rows of it, then
        // the same for byte b0 + 16 + k.
        let sel = _mm512_set_epi64(13, 12, 5, 4, 9, 8, 1, 0);
        let full = nbytes / 32 * 32;
        for b0 in (0..full).step_by(32) {
            let mut r = [_mm512_setzero_si512(); 16];
            for (i, ri) in r.iter_mut().enumerate() {
                // SAFETY: b0 + 32 <= nbytes bytes of each code `i < n`.
                let (a, b) = unsafe {
                    (
                        if i < n {
                            _mm256_loadu_si256(p[i].add(b0).cast())
                        } else {
                            z
                        },
                        if i + 16 < n {
                            _mm256_loadu_si256(p[i + 16].add(b0).cast())
                        } else {
                            z
                        },
                    )
                };
                // [a0 a1 b0 b1] -> [a0 b0 a1 b1] (128-bit lanes).
                let ab = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(a), b);
                *ri = _mm512_shuffle_i64x2::<0xd8>(ab, ab);
            }
            let r = zip_round!(zip_round!(zip_round!(zip_round!(r))));
            for (k, &c) in r.iter().enumerate() {
                // s: lanes (1, 0, 3, 2) of c, so codes 16..32 sit under codes 0..16.
                let s = _mm512_shuffle_i64x2::<0xb1>(c, c);
                let even = _mm512_or_si512(
                    _mm512_and_si512(c, nib),
                    _mm512_slli_epi16::<4>(_mm512_and_si512(s, nib)),
                );
                let odd = _mm512_or_si512(
                    _mm512_and_si512(_mm512_srli_epi16::<4>(c), nib),
                    _mm512_andnot_si512(nib, s),
                );
                let rows = _mm512_permutex2var_epi64(even, sel, odd);
                // SAFETY: 32 (b0 + 16 + k) + 32 <= 32 nbytes bytes of `out`.
                unsafe {
                    _mm256_storeu_si256(po.add(32 * (b0 + k)).cast(), _mm512_castsi512_si256(rows));
                    _mm256_storeu_si256(
                        po.add(32 * (b0 + 16 + k)).cast(),
                        _mm512_extracti64x4_epi64::<1>(rows),
                    );
                }
            }
        }
        let mut done = full;
        if done + 16 <= nbytes {
            // SAFETY: bytes done..done + 16 of every code exist; `out` holds 32 nbytes bytes;
            // AVX2 is implied by AVX-512 F.
            unsafe { crate::x86_avx2::imp::pack16(&p, n, done, po) };
            done += 16;
        }
        crate::scalar::fastscan_pack_range(base, stride, ids, done, nbytes, out);
    }
}
