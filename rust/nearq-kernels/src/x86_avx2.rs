//! AVX2 + FMA kernels for x86_64 (plus POPCNT for popcount tails).
//!
//! The `#[target_feature]` functions in `imp` are reachable only through [`TABLE`], which
//! [`table`] returns only after detecting every feature they enable.
//!
//! - f32 kernels: four independent 8-lane FMA accumulators (32 elements per iteration) hide
//!   the FMA latency; the tail uses a masked load, so there is no scalar loop.
//! - Integer dot products widen bytes to i16 and use `vpmaddwd`. `vpmaddubsw` would be faster
//!   but saturates (255 * 127 * 2 > i16::MAX), and these kernels must be exact.
//! - `dot_u4_i8`: one 32-byte load is one 64-dimension block of the packed layout (low
//!   nibbles = dimensions 0..32, high = 32..64), so `vpmaddubsw` applies directly; it cannot
//!   saturate here (2 * 15 * 128 < i16::MAX), and two of its results are added in i16 before
//!   `vpmaddwd` with ones widens to i32 (4 * 15 * 128 < i16::MAX).
//! - Popcount: nibble look-up with `vpshufb`, summed with `vpsadbw` (Mula's method).
//! - FastScan: `vpshufb` looks up two sub-quantizers per 256-bit op (one per 128-bit lane).

use crate::{Kernels, SimdLevel};

/// The AVX2 table, if this CPU supports AVX2, FMA and POPCNT.
pub(crate) fn table() -> Option<&'static Kernels> {
    let ok = is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("popcnt");
    ok.then_some(&TABLE)
}

static TABLE: Kernels = Kernels {
    level: SimdLevel::Avx2,
    isa: "avx2+fma",
    l2sq_f32,
    dot_f32,
    dot_f32_u8,
    dot_u8_i8,
    dot_u8,
    dot_u4_i8,
    and_popcount_u64,
    fastscan_u16,
};

// Safe entry points. Each is only reachable through `TABLE`, which `table()` hands out only
// after detecting AVX2, FMA and POPCNT, the features `imp` enables.

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

fn and_popcount_u64(a: &[u64], b: &[u64]) -> u32 {
    // SAFETY: only reachable through TABLE, handed out after detecting avx2, fma and popcnt.
    unsafe { imp::and_popcount_u64(a, b) }
}

fn fastscan_u16(codes: &[u8], luts: &[u8], out: &mut [u16; 32]) {
    // SAFETY: only reachable through TABLE, handed out after detecting avx2, fma and popcnt.
    unsafe { imp::fastscan_u16(codes, luts, out) }
}

mod imp {
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

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn l2sq_f32(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (k, acc) in acc.iter_mut().enumerate() {
                // SAFETY: i + 8k + 8 <= i + 32 <= n = a.len() = b.len().
                let d = unsafe {
                    _mm256_sub_ps(
                        _mm256_loadu_ps(pa.add(i + 8 * k)),
                        _mm256_loadu_ps(pb.add(i + 8 * k)),
                    )
                };
                *acc = _mm256_fmadd_ps(d, d, *acc);
            }
            i += 32;
        }
        while i + 8 <= n {
            // SAFETY: i + 8 <= n = a.len() = b.len().
            let d =
                unsafe { _mm256_sub_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i))) };
            acc[0] = _mm256_fmadd_ps(d, d, acc[0]);
            i += 8;
        }
        if i < n {
            let m = tail_mask(n - i);
            // SAFETY: the mask enables only lanes i..n, inside both slices; masked-off lanes
            // are not read and cannot fault.
            let d = unsafe {
                _mm256_sub_ps(
                    _mm256_maskload_ps(pa.add(i), m),
                    _mm256_maskload_ps(pb.add(i), m),
                )
            };
            acc[1] = _mm256_fmadd_ps(d, d, acc[1]);
        }
        hsum_ps(_mm256_add_ps(
            _mm256_add_ps(acc[0], acc[1]),
            _mm256_add_ps(acc[2], acc[3]),
        ))
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
}
