//! NEON (Advanced SIMD) kernels for aarch64.
//!
//! The `#[target_feature]` functions in `imp` are reachable only through [`TABLE`], which
//! [`table`] returns only after detecting NEON.
//!
//! - f32 kernels: four 4-lane FMA accumulators (16 elements per iteration). `matvec_f32`
//!   runs four rows at a time, two accumulators each, so each load of `x` serves four rows.
//!   `matvec_f16` does the same on half-precision rows, widened 4 entries at a time by
//!   `fcvtl` (base ARMv8 floating point, no FP16 extension needed).
//! - `dot_u8_i8`: widen to i16 and multiply-accumulate into i32 (`smlal`), exact.
//!   `dot_u8`: `umull` (255^2 fits u16) and pairwise accumulate into u32 (`uadalp`).
//! - `dot_u4_i8`: a 64-dimension block is two 16-byte loads whose low nibbles are dimensions
//!   0..16 and 16..32 and whose high nibbles are 32..48 and 48..64; 4-bit codes are valid i8,
//!   so `smull`/`smlal` multiply them into i16 lanes (4 products of at most 15 * 128 per lane)
//!   and `sadalp` accumulates pairs into i32.
//! - Popcount: `cnt` per byte, pairwise accumulated into u16 (`uadalp`), flushed into u32
//!   lanes before a u16 lane can overflow.
//! - `dot_f32_bitplanes`: a nibble of a plane, broadcast to 4 lanes and tested against
//!   `1, 2, 4, 8` (`cmtst`), is the lane mask of 4 weights; plane by plane into four
//!   accumulators, each plane's sum scaled by `2^j` into the total.
//! - FastScan: `tbl` (`vqtbl1q_u8`) looks up one sub-quantizer per op, widened into u16 lanes.
//! - `fwht_f32`: stages 1 and 2 inside each register (`rev64`, `ext`, then `bsl` of the sum
//!   and the difference), the larger ones between registers.
//! - `fastscan_lut_u8`: one 4-dimension group per step, four nibbles per register, `xtn`
//!   twice for the low bytes.
//! - `fastscan_pack_u4`: per 16 code bytes, two 16×16 byte transposes (`zip1`/`zip2`, codes
//!   0..16 and 16..32), then their nibbles merged with shifts and `bic`.

use crate::{Kernels, SimdLevel};

/// The NEON table, if this CPU supports NEON.
pub(crate) fn table() -> Option<&'static Kernels> {
    std::arch::is_aarch64_feature_detected!("neon").then_some(&TABLE)
}

static TABLE: Kernels = Kernels {
    level: SimdLevel::Neon,
    isa: "neon",
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
// after detecting NEON.

fn l2sq_f32(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: only reachable through TABLE, handed out after detecting neon.
    unsafe { imp::l2sq_f32(a, b) }
}

fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: only reachable through TABLE, handed out after detecting neon.
    unsafe { imp::dot_f32(a, b) }
}

fn dot_f32_u8(a: &[f32], b: &[u8]) -> f32 {
    // SAFETY: only reachable through TABLE, handed out after detecting neon.
    unsafe { imp::dot_f32_u8(a, b) }
}

fn matvec_f32(m: &[f32], x: &[f32], out: &mut [f32]) {
    // SAFETY: only reachable through TABLE, handed out after detecting neon.
    unsafe { imp::matvec_f32(m, x, out) }
}

fn l2sq_f32_f16(a: &[f32], b: &[u16]) -> f32 {
    // SAFETY: only reachable through TABLE, handed out after detecting neon.
    unsafe { imp::l2sq_f32_f16(a, b) }
}

fn matvec_f16(m: &[u16], x: &[f32], out: &mut [f32]) {
    // SAFETY: only reachable through TABLE, handed out after detecting neon.
    unsafe { imp::matvec_f16(m, x, out) }
}

fn dot_f32_bitplanes(a: &[f32], planes: &[u8]) -> f32 {
    // SAFETY: only reachable through TABLE, handed out after detecting neon.
    unsafe { imp::dot_f32_bitplanes(a, planes) }
}

fn dot_u8_i8(a: &[u8], b: &[i8]) -> i32 {
    // SAFETY: only reachable through TABLE, handed out after detecting neon.
    unsafe { imp::dot_u8_i8(a, b) }
}

fn dot_u8(a: &[u8], b: &[u8]) -> u32 {
    // SAFETY: only reachable through TABLE, handed out after detecting neon.
    unsafe { imp::dot_u8(a, b) }
}

fn dot_u4_i8(packed: &[u8], b: &[i8]) -> i32 {
    // SAFETY: only reachable through TABLE, handed out after detecting neon.
    unsafe { imp::dot_u4_i8(packed, b) }
}

fn dot_u4_i8_split(p: &[u8], lo: &[i8], hi: &[i8]) -> i32 {
    // SAFETY: only reachable through TABLE, handed out after detecting neon.
    unsafe { imp::dot_u4_i8_split(p, lo, hi) }
}

fn dot_f32_u4_split(p: &[u8], lo: &[f32], hi: &[f32]) -> f32 {
    // SAFETY: only reachable through TABLE, handed out after detecting neon.
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
    // SAFETY: only reachable through TABLE, handed out after detecting neon.
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
    // SAFETY: only reachable through TABLE, handed out after detecting neon.
    unsafe { imp::dot_u4_i8_split_gather_segs(base, stride, ids, lo, hi, ends, out) }
}

fn and_popcount_u64(a: &[u64], b: &[u64]) -> u32 {
    // SAFETY: only reachable through TABLE, handed out after detecting neon.
    unsafe { imp::and_popcount_u64(a, b) }
}

fn fastscan_u16(codes: &[u8], luts: &[u8], out: &mut [u16; 32]) {
    // SAFETY: only reachable through TABLE, handed out after detecting neon.
    unsafe { imp::fastscan_u16(codes, luts, out) }
}

fn fwht_f32(x: &mut [f32]) {
    // SAFETY: only reachable through TABLE, handed out after detecting neon.
    unsafe { imp::fwht_f32(x) }
}

fn rotate_rounds_f32(x: &mut [f32], masks: &[u32], t: usize, scale: f32) {
    crate::scalar::rotate_rounds_with(x, masks, t, scale, fwht_f32);
}

fn fastscan_lut_u8(w: &[f32], scale: f32, out: &mut [u8]) {
    // SAFETY: only reachable through TABLE, handed out after detecting neon.
    unsafe { imp::fastscan_lut_u8(w, scale, out) }
}

fn nearest_centroid_t(
    xt: &[f32],
    stride: usize,
    centroids: &[f32],
    norms: &[f32],
    out: &mut [u32],
) {
    // SAFETY: only reachable through TABLE, handed out after detecting neon.
    unsafe { imp::nearest_centroid_t(xt, stride, centroids, norms, out) }
}

fn fastscan_pack_u4(base: &[u8], stride: usize, ids: &[u32], nbytes: usize, out: &mut [u8]) {
    // SAFETY: only reachable through TABLE, handed out after detecting neon.
    unsafe { imp::fastscan_pack_u4(base, stride, ids, nbytes, out) }
}

mod imp {
    use core::arch::aarch64::*;

    /// What `l2sq` reads its second vector from: f32, or half-precision bit patterns widened
    /// exactly (`fcvtl`).
    trait Lanes: Copy {
        /// 4 entries at `p` as f32.
        ///
        /// # Safety
        /// NEON; 4 entries readable at `p`.
        unsafe fn load4(p: *const Self) -> float32x4_t;
        fn widen(self) -> f32;
    }

    impl Lanes for f32 {
        #[inline(always)]
        unsafe fn load4(p: *const f32) -> float32x4_t {
            // SAFETY: the caller's contract.
            unsafe { vld1q_f32(p) }
        }
        #[inline(always)]
        fn widen(self) -> f32 {
            self
        }
    }

    impl Lanes for u16 {
        #[inline(always)]
        unsafe fn load4(p: *const u16) -> float32x4_t {
            // SAFETY: the caller's contract.
            unsafe { load_f16x4(p) }
        }
        #[inline(always)]
        fn widen(self) -> f32 {
            crate::scalar::f16_to_f32(self)
        }
    }

    /// `sum (a[i] - b[i])^2`, `b` widened to f32: four accumulators over 16 entries, then 4
    /// at a time, then the last entries one by one.
    ///
    /// # Safety
    /// NEON (inlined into the callers, which enable it).
    #[inline(always)]
    unsafe fn l2sq<T: Lanes>(a: &[f32], b: &[T]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        // SAFETY: NEON is the caller's contract; the vector loads read entries i.. < n =
        // a.len() = b.len() only.
        unsafe {
            let mut acc = [vdupq_n_f32(0.0); 4];
            let mut i = 0;
            while i + 16 <= n {
                for (k, acc) in acc.iter_mut().enumerate() {
                    let d = vsubq_f32(vld1q_f32(pa.add(i + 4 * k)), T::load4(pb.add(i + 4 * k)));
                    *acc = vfmaq_f32(*acc, d, d);
                }
                i += 16;
            }
            while i + 4 <= n {
                let d = vsubq_f32(vld1q_f32(pa.add(i)), T::load4(pb.add(i)));
                acc[0] = vfmaq_f32(acc[0], d, d);
                i += 4;
            }
            let mut s = vaddvq_f32(vaddq_f32(
                vaddq_f32(acc[0], acc[1]),
                vaddq_f32(acc[2], acc[3]),
            ));
            for (x, y) in a[i..].iter().zip(&b[i..]) {
                let d = x - y.widen();
                s += d * d;
            }
            s
        }
    }

    #[target_feature(enable = "neon")]
    pub(super) fn l2sq_f32(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        // SAFETY: this function enables NEON.
        unsafe { l2sq(a, b) }
    }

    #[target_feature(enable = "neon")]
    pub(super) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [vdupq_n_f32(0.0); 4];
        let mut i = 0;
        while i + 16 <= n {
            for (k, acc) in acc.iter_mut().enumerate() {
                // SAFETY: i + 4k + 4 <= i + 16 <= n = a.len() = b.len().
                let (x, y) =
                    unsafe { (vld1q_f32(pa.add(i + 4 * k)), vld1q_f32(pb.add(i + 4 * k))) };
                *acc = vfmaq_f32(*acc, x, y);
            }
            i += 16;
        }
        while i + 4 <= n {
            // SAFETY: i + 4 <= n = a.len() = b.len().
            let (x, y) = unsafe { (vld1q_f32(pa.add(i)), vld1q_f32(pb.add(i))) };
            acc[0] = vfmaq_f32(acc[0], x, y);
            i += 4;
        }
        let mut s = vaddvq_f32(vaddq_f32(
            vaddq_f32(acc[0], acc[1]),
            vaddq_f32(acc[2], acc[3]),
        ));
        for (x, y) in a[i..].iter().zip(&b[i..]) {
            s += x * y;
        }
        s
    }

    #[target_feature(enable = "neon")]
    pub(super) fn dot_f32_u8(a: &[f32], b: &[u8]) -> f32 {
        assert_eq!(a.len(), b.len());
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [vdupq_n_f32(0.0); 4];
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: elements i .. i + 16 <= n of both slices.
            let (c, x) = unsafe {
                let x = [
                    vld1q_f32(pa.add(i)),
                    vld1q_f32(pa.add(i + 4)),
                    vld1q_f32(pa.add(i + 8)),
                    vld1q_f32(pa.add(i + 12)),
                ];
                (vld1q_u8(pb.add(i)), x)
            };
            let lo = vmovl_u8(vget_low_u8(c));
            let hi = vmovl_high_u8(c);
            let f = [
                vcvtq_f32_u32(vmovl_u16(vget_low_u16(lo))),
                vcvtq_f32_u32(vmovl_high_u16(lo)),
                vcvtq_f32_u32(vmovl_u16(vget_low_u16(hi))),
                vcvtq_f32_u32(vmovl_high_u16(hi)),
            ];
            for k in 0..4 {
                acc[k] = vfmaq_f32(acc[k], x[k], f[k]);
            }
            i += 16;
        }
        let mut s = vaddvq_f32(vaddq_f32(
            vaddq_f32(acc[0], acc[1]),
            vaddq_f32(acc[2], acc[3]),
        ));
        for (x, &y) in a[i..].iter().zip(&b[i..]) {
            s += x * y as f32;
        }
        s
    }

    #[target_feature(enable = "neon")]
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
        let mut rows = out.chunks_exact_mut(4);
        let mut r = 0;
        for o in &mut rows {
            // SAFETY: rows r .. r + 4 of m exist (o has 4 elements, m.len() = out.len() * n).
            let p = unsafe { [0, 1, 2, 3].map(|k| m.as_ptr().add((r + k) * n)) };
            let mut acc = [[vdupq_n_f32(0.0); 2]; 4];
            let mut i = 0;
            while i + 8 <= n {
                // SAFETY: elements i .. i + 8 <= n of x and of each of the four rows.
                unsafe {
                    let xv = [vld1q_f32(px.add(i)), vld1q_f32(px.add(i + 4))];
                    for k in 0..4 {
                        for h in 0..2 {
                            acc[k][h] = vfmaq_f32(acc[k][h], vld1q_f32(p[k].add(i + 4 * h)), xv[h]);
                        }
                    }
                }
                i += 8;
            }
            for (k, o) in o.iter_mut().enumerate() {
                let mut s = vaddvq_f32(vaddq_f32(acc[k][0], acc[k][1]));
                for e in i..n {
                    // SAFETY: e < n: element e of row r + k.
                    s += unsafe { *p[k].add(e) } * x[e];
                }
                *o = s;
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

    /// The 4 half-precision entries at `p` widened to f32 (`fcvtl`; written as inline assembly
    /// because the `vcvt_f32_f16` intrinsic is stable only since Rust 1.94, above the
    /// workspace's minimum version).
    ///
    /// # Safety
    /// `p .. p + 4` must be readable.
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn load_f16x4(p: *const u16) -> float32x4_t {
        // SAFETY: the caller guarantees 4 readable entries at p.
        let h = unsafe { vld1_u16(p) };
        let out: float32x4_t;
        // SAFETY: `fcvtl` (base ARMv8 floating point) reads and writes vector registers only.
        unsafe {
            core::arch::asm!(
                "fcvtl {out:v}.4s, {h:v}.4h",
                out = lateout(vreg) out,
                h = in(vreg) h,
                options(pure, nomem, nostack, preserves_flags),
            );
        }
        out
    }

    #[target_feature(enable = "neon")]
    pub(super) fn l2sq_f32_f16(a: &[f32], b: &[u16]) -> f32 {
        assert_eq!(
            a.len(),
            b.len(),
            "l2sq_f32_f16: slices of different lengths"
        );
        // SAFETY: this function enables NEON.
        unsafe { l2sq(a, b) }
    }

    #[target_feature(enable = "neon")]
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
        let mut rows = out.chunks_exact_mut(4);
        let mut r = 0;
        for o in &mut rows {
            // SAFETY: rows r .. r + 4 of m exist (o has 4 elements, m.len() = out.len() * n).
            let p = unsafe { [0, 1, 2, 3].map(|k| m.as_ptr().add((r + k) * n)) };
            let mut acc = [[vdupq_n_f32(0.0); 2]; 4];
            let mut i = 0;
            while i < body {
                // SAFETY: elements i .. i + 8 <= n of x and of each of the four rows.
                unsafe {
                    let xv = [vld1q_f32(px.add(i)), vld1q_f32(px.add(i + 4))];
                    for k in 0..4 {
                        for h in 0..2 {
                            acc[k][h] =
                                vfmaq_f32(acc[k][h], load_f16x4(p[k].add(i + 4 * h)), xv[h]);
                        }
                    }
                }
                i += 8;
            }
            for (k, o) in o.iter_mut().enumerate() {
                let row = &m[(r + k) * n..(r + k + 1) * n];
                *o = vaddvq_f32(vaddq_f32(acc[k][0], acc[k][1]))
                    + tail_f16(&row[body..], &x[body..]);
            }
            r += 4;
        }
        for (o, row) in rows
            .into_remainder()
            .iter_mut()
            .zip(m[r * n..].chunks_exact(n))
        {
            let pr = row.as_ptr();
            let mut acc = [vdupq_n_f32(0.0); 2];
            let mut i = 0;
            while i < body {
                // SAFETY: elements i .. i + 8 <= n of x and of the row (n entries).
                unsafe {
                    for h in 0..2 {
                        acc[h] = vfmaq_f32(
                            acc[h],
                            load_f16x4(pr.add(i + 4 * h)),
                            vld1q_f32(px.add(i + 4 * h)),
                        );
                    }
                }
                i += 8;
            }
            *o = vaddvq_f32(vaddq_f32(acc[0], acc[1])) + tail_f16(&row[body..], &x[body..]);
        }
    }

    /// `sum f16(row[i]) * x[i]` over a short tail, one entry at a time.
    fn tail_f16(row: &[u16], x: &[f32]) -> f32 {
        row.iter()
            .zip(x)
            .map(|(&h, &y)| crate::scalar::f16_to_f32(h) * y)
            .sum()
    }

    #[target_feature(enable = "neon")]
    pub(super) fn dot_f32_bitplanes(a: &[f32], planes: &[u8]) -> f32 {
        let k = crate::scalar::bitplane_count(a.len(), planes);
        let n = a.len();
        let pb = n.div_ceil(8);
        let pa = a.as_ptr();
        let bits: [u32; 4] = [1, 2, 4, 8];
        // SAFETY: `bits` holds 4 u32.
        let bit = unsafe { vld1q_u32(bits.as_ptr()) };
        // Lanes of `x` whose bit is set in the low nibble of `nib`.
        let select = |nib: u8, x: float32x4_t| {
            let m = vtstq_u32(vdupq_n_u32(nib as u32), bit);
            vreinterpretq_f32_u32(vandq_u32(m, vreinterpretq_u32_f32(x)))
        };
        let mut total = 0.0f32;
        for j in 0..k {
            let p = &planes[j * pb..(j + 1) * pb];
            let mut acc = [vdupq_n_f32(0.0); 4];
            let mut i = 0;
            while i + 16 <= n {
                let (b0, b1) = (p[i / 8], p[i / 8 + 1]);
                // SAFETY: elements i .. i + 16 <= n of `a`.
                let x = unsafe {
                    [
                        vld1q_f32(pa.add(i)),
                        vld1q_f32(pa.add(i + 4)),
                        vld1q_f32(pa.add(i + 8)),
                        vld1q_f32(pa.add(i + 12)),
                    ]
                };
                acc[0] = vaddq_f32(acc[0], select(b0 & 15, x[0]));
                acc[1] = vaddq_f32(acc[1], select(b0 >> 4, x[1]));
                acc[2] = vaddq_f32(acc[2], select(b1 & 15, x[2]));
                acc[3] = vaddq_f32(acc[3], select(b1 >> 4, x[3]));
                i += 16;
            }
            let mut t = vaddvq_f32(vaddq_f32(
                vaddq_f32(acc[0], acc[1]),
                vaddq_f32(acc[2], acc[3]),
            ));
            for (e, &x) in a.iter().enumerate().skip(i) {
                if (p[e / 8] >> (e % 8)) & 1 == 1 {
                    t += x;
                }
            }
            total += (1u32 << j) as f32 * t;
        }
        total
    }

    #[target_feature(enable = "neon")]
    pub(super) fn dot_u8_i8(a: &[u8], b: &[i8]) -> i32 {
        assert_eq!(a.len(), b.len());
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [vdupq_n_s32(0); 2];
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: bytes i .. i + 16 <= n of both slices.
            let (x, y) = unsafe { (vld1q_u8(pa.add(i)), vld1q_s8(pb.add(i))) };
            // Zero-extended u8 fits i16; products and their sums fit i32 exactly.
            let x0 = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(x)));
            let x1 = vreinterpretq_s16_u16(vmovl_high_u8(x));
            let y0 = vmovl_s8(vget_low_s8(y));
            let y1 = vmovl_high_s8(y);
            acc[0] = vmlal_s16(acc[0], vget_low_s16(x0), vget_low_s16(y0));
            acc[1] = vmlal_high_s16(acc[1], x0, y0);
            acc[0] = vmlal_s16(acc[0], vget_low_s16(x1), vget_low_s16(y1));
            acc[1] = vmlal_high_s16(acc[1], x1, y1);
            i += 16;
        }
        let tail = crate::scalar::dot_u8_i8(&a[i..], &b[i..]);
        vaddvq_s32(vaddq_s32(acc[0], acc[1])).wrapping_add(tail)
    }

    #[target_feature(enable = "neon")]
    pub(super) fn dot_u8(a: &[u8], b: &[u8]) -> u32 {
        assert_eq!(a.len(), b.len());
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [vdupq_n_u32(0); 2];
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: bytes i .. i + 16 <= n of both slices.
            let (x, y) = unsafe { (vld1q_u8(pa.add(i)), vld1q_u8(pb.add(i))) };
            // 255 * 255 fits u16 exactly.
            acc[0] = vpadalq_u16(acc[0], vmull_u8(vget_low_u8(x), vget_low_u8(y)));
            acc[1] = vpadalq_u16(acc[1], vmull_high_u8(x, y));
            i += 16;
        }
        let tail = crate::scalar::dot_u8(&a[i..], &b[i..]);
        vaddvq_u32(vaddq_u32(acc[0], acc[1])).wrapping_add(tail)
    }

    #[target_feature(enable = "neon")]
    pub(super) fn dot_u4_i8(packed: &[u8], b: &[i8]) -> i32 {
        let n = b.len();
        assert_eq!(
            packed.len(),
            n.div_ceil(2),
            "dot_u4_i8: packed.len() must be ceil(n / 2)"
        );
        let (pp, pb) = (packed.as_ptr(), b.as_ptr());
        let nib = vdupq_n_u8(0x0f);
        let mut acc = [vdupq_n_s32(0); 2];
        let blocks = n / 64;
        for k in 0..blocks {
            // SAFETY: block k is packed bytes 32k .. 32k + 32 <= 32 * blocks <= packed.len()
            // and dimensions 64k .. 64k + 64 <= n of `b`.
            let (p0, p1, q) = unsafe {
                (
                    vld1q_u8(pp.add(32 * k)),
                    vld1q_u8(pp.add(32 * k + 16)),
                    [
                        vld1q_s8(pb.add(64 * k)),
                        vld1q_s8(pb.add(64 * k + 16)),
                        vld1q_s8(pb.add(64 * k + 32)),
                        vld1q_s8(pb.add(64 * k + 48)),
                    ],
                )
            };
            let c = [
                vreinterpretq_s8_u8(vandq_u8(p0, nib)),
                vreinterpretq_s8_u8(vandq_u8(p1, nib)),
                vreinterpretq_s8_u8(vshrq_n_u8::<4>(p0)),
                vreinterpretq_s8_u8(vshrq_n_u8::<4>(p1)),
            ];
            let mut lo = vmull_s8(vget_low_s8(c[0]), vget_low_s8(q[0]));
            lo = vmlal_s8(lo, vget_low_s8(c[1]), vget_low_s8(q[1]));
            lo = vmlal_s8(lo, vget_low_s8(c[2]), vget_low_s8(q[2]));
            lo = vmlal_s8(lo, vget_low_s8(c[3]), vget_low_s8(q[3]));
            let mut hi = vmull_high_s8(c[0], q[0]);
            hi = vmlal_high_s8(hi, c[1], q[1]);
            hi = vmlal_high_s8(hi, c[2], q[2]);
            hi = vmlal_high_s8(hi, c[3], q[3]);
            acc[0] = vpadalq_s16(acc[0], lo);
            acc[1] = vpadalq_s16(acc[1], hi);
        }
        let tail = crate::scalar::dot_u4_i8(&packed[32 * blocks..], &b[64 * blocks..]);
        vaddvq_s32(vaddq_s32(acc[0], acc[1])).wrapping_add(tail)
    }

    /// 16 bytes per step: the two nibbles (valid i8) times their weights with `smull` /
    /// `smlal` into i16 lanes (2 products of at most 15 * 128 per lane), `sadalp` into i32;
    /// scalar tail.
    #[target_feature(enable = "neon")]
    pub(super) fn dot_u4_i8_split(p: &[u8], lo: &[i8], hi: &[i8]) -> i32 {
        assert!(
            p.len() == lo.len() && p.len() == hi.len(),
            "dot_u4_i8_split: slices of different lengths"
        );
        let n = p.len();
        let nib = vdupq_n_u8(0x0f);
        let mut acc = [vdupq_n_s32(0); 2];
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: bytes i .. i + 16 <= n of the three slices.
            let (x, l, h) = unsafe {
                (
                    vld1q_u8(p.as_ptr().add(i)),
                    vld1q_s8(lo.as_ptr().add(i)),
                    vld1q_s8(hi.as_ptr().add(i)),
                )
            };
            let cl = vreinterpretq_s8_u8(vandq_u8(x, nib));
            let ch = vreinterpretq_s8_u8(vshrq_n_u8::<4>(x));
            let a = vmlal_s8(
                vmull_s8(vget_low_s8(cl), vget_low_s8(l)),
                vget_low_s8(ch),
                vget_low_s8(h),
            );
            let b = vmlal_high_s8(vmull_high_s8(cl, l), ch, h);
            acc[0] = vpadalq_s16(acc[0], a);
            acc[1] = vpadalq_s16(acc[1], b);
            i += 16;
        }
        let tail = crate::scalar::dot_u4_i8_split(&p[i..], &lo[i..], &hi[i..]);
        vaddvq_s32(vaddq_s32(acc[0], acc[1])).wrapping_add(tail)
    }

    /// 8 codes per step: bytes widened to u16, nibbles split, widened to u32, converted to
    /// f32 and multiplied into FMA accumulators; scalar tail.
    #[target_feature(enable = "neon")]
    pub(super) fn dot_f32_u4_split(p: &[u8], lo: &[f32], hi: &[f32]) -> f32 {
        assert!(
            p.len() == lo.len() && p.len() == hi.len(),
            "dot_f32_u4_split: slices of different lengths"
        );
        let n = p.len();
        let nib = vdupq_n_u16(0x0f);
        let mut acc = [vdupq_n_f32(0.0); 2];
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: elements i .. i + 8 <= n of the three slices.
            let (x, l, h) = unsafe {
                (
                    vmovl_u8(vld1_u8(p.as_ptr().add(i))),
                    [
                        vld1q_f32(lo.as_ptr().add(i)),
                        vld1q_f32(lo.as_ptr().add(i + 4)),
                    ],
                    [
                        vld1q_f32(hi.as_ptr().add(i)),
                        vld1q_f32(hi.as_ptr().add(i + 4)),
                    ],
                )
            };
            let cl = vandq_u16(x, nib);
            let ch = vshrq_n_u16::<4>(x);
            let f = |v: uint32x4_t| vcvtq_f32_u32(v);
            acc[0] = vfmaq_f32(acc[0], f(vmovl_u16(vget_low_u16(cl))), l[0]);
            acc[1] = vfmaq_f32(acc[1], f(vmovl_high_u16(cl)), l[1]);
            acc[0] = vfmaq_f32(acc[0], f(vmovl_u16(vget_low_u16(ch))), h[0]);
            acc[1] = vfmaq_f32(acc[1], f(vmovl_high_u16(ch)), h[1]);
            i += 8;
        }
        let tail = crate::scalar::dot_f32_u4_split(&p[i..], &lo[i..], &hi[i..]);
        vaddvq_f32(vaddq_f32(acc[0], acc[1])) + tail
    }

    #[target_feature(enable = "neon")]
    pub(super) fn dot_u4_i8_split_gather(
        base: &[u8],
        stride: usize,
        ids: &[u32],
        lo: &[i8],
        hi: &[i8],
        out: &mut [i32],
    ) {
        assert_eq!(ids.len(), out.len(), "dot_u4_i8_split_gather: ids and out");
        let len = lo.len();
        for (o, &id) in out.iter_mut().zip(ids) {
            let at = id as usize * stride;
            *o = dot_u4_i8_split(&base[at..at + len], lo, hi);
        }
    }

    #[target_feature(enable = "neon")]
    pub(super) fn dot_u4_i8_split_gather_segs(
        base: &[u8],
        stride: usize,
        ids: &[u32],
        lo: &[i8],
        hi: &[i8],
        ends: &[u32],
        out: &mut [i32],
    ) {
        crate::scalar::gather_segs_with(
            |p, l, h| dot_u4_i8_split(p, l, h),
            base,
            stride,
            ids,
            lo,
            hi,
            ends,
            out,
        )
    }

    #[target_feature(enable = "neon")]
    pub(super) fn and_popcount_u64(a: &[u64], b: &[u64]) -> u32 {
        assert_eq!(a.len(), b.len());
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc32 = vdupq_n_u32(0);
        let mut i = 0;
        while i + 4 <= n {
            // Each step adds at most 2 * 8 * 2 = 32 to a u16 lane: flush every 1024 steps.
            let end = n.min(i + 4 * 1024);
            let mut acc16 = vdupq_n_u16(0);
            while i + 4 <= end {
                // SAFETY: words i .. i + 4 <= n of both slices.
                let (x0, y0, x1, y1) = unsafe {
                    (
                        vld1q_u64(pa.add(i)),
                        vld1q_u64(pb.add(i)),
                        vld1q_u64(pa.add(i + 2)),
                        vld1q_u64(pb.add(i + 2)),
                    )
                };
                let c0 = vcntq_u8(vreinterpretq_u8_u64(vandq_u64(x0, y0)));
                let c1 = vcntq_u8(vreinterpretq_u8_u64(vandq_u64(x1, y1)));
                acc16 = vpadalq_u8(acc16, vaddq_u8(c0, c1));
                i += 4;
            }
            acc32 = vpadalq_u16(acc32, acc16);
        }
        let mut total = vaddvq_u32(acc32);
        for (x, y) in a[i..].iter().zip(&b[i..]) {
            total = total.wrapping_add((x & y).count_ones());
        }
        total
    }

    #[target_feature(enable = "neon")]
    pub(super) fn fastscan_u16(codes: &[u8], luts: &[u8], out: &mut [u16; 32]) {
        let m = crate::scalar::fastscan_m(codes, luts);
        let (pc, pl) = (codes.as_ptr(), luts.as_ptr());
        let nib = vdupq_n_u8(0x0f);
        // acc[q] holds vectors 8q .. 8q + 8.
        let mut acc = [vdupq_n_u16(0); 4];
        for j in 0..m {
            // SAFETY: bytes 16j .. 16j + 16 <= 16m = codes.len() = luts.len().
            let (c, t) = unsafe { (vld1q_u8(pc.add(16 * j)), vld1q_u8(pl.add(16 * j))) };
            let rl = vqtbl1q_u8(t, vandq_u8(c, nib));
            let rh = vqtbl1q_u8(t, vshrq_n_u8::<4>(c));
            acc[0] = vaddw_u8(acc[0], vget_low_u8(rl));
            acc[1] = vaddw_high_u8(acc[1], rl);
            acc[2] = vaddw_u8(acc[2], vget_low_u8(rh));
            acc[3] = vaddw_high_u8(acc[3], rh);
        }
        let po = out.as_mut_ptr();
        for (q, v) in acc.into_iter().enumerate() {
            // SAFETY: 8q + 8 <= 32 = out.len().
            unsafe { vst1q_u16(po.add(8 * q), v) };
        }
    }

    /// Stages `h = 1, 2` inside each 4-lane register (`rev64` / `ext` pair `x[i]` with
    /// `x[i ^ h]`; lanes with bit `h` clear keep the sum, the others the difference), then
    /// `h >= 4` between registers.
    #[target_feature(enable = "neon")]
    pub(super) fn fwht_f32(x: &mut [f32]) {
        let n = crate::scalar::fwht_len(x);
        if n < 4 {
            return crate::scalar::fwht_f32(x);
        }
        let p = x.as_mut_ptr();
        let odd = vreinterpretq_u32_u64(vdupq_n_u64(0xffff_ffff_0000_0000));
        let high = vcombine_u32(vdup_n_u32(0), vdup_n_u32(u32::MAX));
        let mut i = 0;
        while i < n {
            // SAFETY: i + 4 <= n, as n is a multiple of 4.
            let mut v = unsafe { vld1q_f32(p.add(i)) };
            let s = vrev64q_f32(v);
            v = vbslq_f32(odd, vsubq_f32(s, v), vaddq_f32(v, s));
            let s = vextq_f32::<2>(v, v);
            v = vbslq_f32(high, vsubq_f32(s, v), vaddq_f32(v, s));
            // SAFETY: as above.
            unsafe { vst1q_f32(p.add(i), v) };
            i += 4;
        }
        let mut h = 4;
        while h < n {
            let mut b = 0;
            while b < n {
                let mut j = b;
                while j < b + h {
                    // SAFETY: j + 4 <= b + h and j + h + 4 <= b + 2h <= n.
                    unsafe {
                        let u = vld1q_f32(p.add(j));
                        let v = vld1q_f32(p.add(j + h));
                        vst1q_f32(p.add(j), vaddq_f32(u, v));
                        vst1q_f32(p.add(j + h), vsubq_f32(u, v));
                    }
                    j += 4;
                }
                b += 2 * h;
            }
            h *= 2;
        }
    }

    /// One group per step: nibbles `4q .. 4q + 4` in one register (their bits 0 and 1 vary by
    /// lane, bits 2 and 3 are those of `q`), the scalar reference's operation order, and
    /// `xtn` twice for the low bytes.
    #[target_feature(enable = "neon")]
    pub(super) fn fastscan_lut_u8(w: &[f32], scale: f32, out: &mut [u8]) {
        use crate::scalar::{lut_groups, lut_lo, ROUND_MAGIC};
        let m = lut_groups(w, out);
        let bits = |b: u32| {
            let lanes = [0u32, 1, 2, 3].map(|c| if c & b != 0 { u32::MAX } else { 0 });
            // SAFETY: `lanes` holds 4 u32.
            unsafe { vld1q_u32(lanes.as_ptr()) }
        };
        let (m0, m1) = (bits(1), bits(2));
        let sc = vdupq_n_f32(scale);
        let magic = vdupq_n_f32(ROUND_MAGIC);
        let top = vdupq_n_f32(ROUND_MAGIC + 255.0);
        for (j, g) in w.chunks_exact(4).enumerate().take(m) {
            let lo = vdupq_n_f32(lut_lo(g));
            let sel = |mask: uint32x4_t, x: f32| {
                vreinterpretq_f32_u32(vandq_u32(mask, vreinterpretq_u32_f32(vdupq_n_f32(x))))
            };
            let l = vaddq_f32(sel(m0, g[0]), sel(m1, g[1]));
            let a = vmulq_f32(vsubq_f32(l, lo), sc);
            let mut r = [vdupq_n_u32(0); 4];
            for (q, r) in r.iter_mut().enumerate() {
                let pick = |bit: usize, x: f32| if q & bit != 0 { x } else { 0.0 };
                // the same value in every lane, as the scalar reference computes it
                let h = vdupq_n_f32(pick(1, g[2]) + pick(2, g[3]));
                let x = vaddq_f32(a, vmulq_f32(h, sc));
                let v = vminq_f32(vmaxq_f32(vaddq_f32(x, magic), magic), top);
                *r = vreinterpretq_u32_f32(v);
            }
            let lo16 = vcombine_u16(vmovn_u32(r[0]), vmovn_u32(r[1]));
            let hi16 = vcombine_u16(vmovn_u32(r[2]), vmovn_u32(r[3]));
            let b = vcombine_u8(vmovn_u16(lo16), vmovn_u16(hi16));
            // SAFETY: 16j + 16 <= 16m = out.len().
            unsafe { vst1q_u8(out.as_mut_ptr().add(16 * j), b) };
        }
    }

    /// Points in lanes, four groups of 4 per step (independent dependency chains), each
    /// centroid coordinate multiplied by element (`fmul` by scalar, no FMA); every lane follows
    /// the reference order of operations, so the result is bit-identical. The best distance
    /// and index are selected with `bsl` (`fmin` would propagate NaN). The last `n % 16` points
    /// are padded to a full step.
    #[target_feature(enable = "neon")]
    pub(super) fn nearest_centroid_t(
        xt: &[f32],
        stride: usize,
        centroids: &[f32],
        norms: &[f32],
        out: &mut [u32],
    ) {
        use crate::scalar::nearest_t_dim;
        let dim = nearest_t_dim(xt, stride, centroids, norms, out);
        let w = 4 * GROUPS;
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
    #[target_feature(enable = "neon")]
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

    /// `out.len()` a multiple of `4 G`; `D == dim`, or `D == 0` for any `dim` (coordinates
    /// kept in a buffer instead of registers).
    #[target_feature(enable = "neon")]
    fn nearest_t_block<const D: usize, const G: usize>(
        xt: &[f32],
        stride: usize,
        dim: usize,
        centroids: &[f32],
        norms: &[f32],
        out: &mut [u32],
    ) {
        let m2 = vdupq_n_f32(-2.0);
        let inf = vdupq_n_f32(f32::INFINITY);
        let mut xd = vec![[m2; G]; dim];
        let mut xr = [[m2; G]; D];
        for (g, o) in out.chunks_exact_mut(4 * G).enumerate() {
            for (t, x) in xd.iter_mut().enumerate() {
                let row = &xt[t * stride + 4 * G * g..][..4 * G];
                for (l, x) in x.iter_mut().enumerate() {
                    // SAFETY: `row` holds 4 G floats.
                    *x = vmulq_f32(m2, unsafe { vld1q_f32(row.as_ptr().add(4 * l)) });
                }
            }
            if D > 0 {
                xr.copy_from_slice(&xd[..D]);
            }
            let mut best = [inf; G];
            let mut idx = [vdupq_n_u32(0); G];
            let mut jv = vdupq_n_u32(0);
            let one = vdupq_n_u32(1);
            for (c, &nj) in centroids.chunks_exact(dim).zip(norms) {
                let mut d = [vdupq_n_f32(nj); G];
                if D > 0 {
                    for t in 0..D {
                        for l in 0..G {
                            d[l] = vaddq_f32(d[l], vmulq_n_f32(xr[t][l], c[t]));
                        }
                    }
                } else {
                    for (t, &cv) in c.iter().enumerate() {
                        for l in 0..G {
                            d[l] = vaddq_f32(d[l], vmulq_n_f32(xd[t][l], cv));
                        }
                    }
                }
                for l in 0..G {
                    let m = vcltq_f32(d[l], best[l]);
                    best[l] = vbslq_f32(m, d[l], best[l]);
                    idx[l] = vbslq_u32(m, jv, idx[l]);
                }
                jv = vaddq_u32(jv, one);
            }
            for (l, v) in idx.iter().enumerate() {
                // SAFETY: `o` holds 4 G u32.
                unsafe { vst1q_u32(o.as_mut_ptr().add(4 * l), *v) };
            }
        }
    }

    /// One round of the 16x16 byte transpose: rows `i` and `i + 8` zipped into rows `2i`,
    /// `2i + 1` (a new array from literal indices, so the rows stay in registers).
    macro_rules! zip_round {
        ($r:expr) => {{
            let r = $r;
            [
                vzip1q_u8(r[0], r[8]),
                vzip2q_u8(r[0], r[8]),
                vzip1q_u8(r[1], r[9]),
                vzip2q_u8(r[1], r[9]),
                vzip1q_u8(r[2], r[10]),
                vzip2q_u8(r[2], r[10]),
                vzip1q_u8(r[3], r[11]),
                vzip2q_u8(r[3], r[11]),
                vzip1q_u8(r[4], r[12]),
                vzip2q_u8(r[4], r[12]),
                vzip1q_u8(r[5], r[13]),
                vzip2q_u8(r[5], r[13]),
                vzip1q_u8(r[6], r[14]),
                vzip2q_u8(r[6], r[14]),
                vzip1q_u8(r[7], r[15]),
                vzip2q_u8(r[7], r[15]),
            ]
        }};
    }

    /// Transposes 16 rows of 16 bytes: afterwards `r[k]` byte `i` is byte `k` of row `i`.
    /// Four rounds of "zip row `i` with row `i + 8`" (each rotates the 8-bit (row, column)
    /// index left by one).
    #[target_feature(enable = "neon")]
    fn transpose16x16(r: [uint8x16_t; 16]) -> [uint8x16_t; 16] {
        zip_round!(zip_round!(zip_round!(zip_round!(r))))
    }

    /// `fastscan_pack_u4`: 16 code bytes per step, codes 0..16 and 16..32 transposed
    /// separately, then combined nibble-wise.
    #[target_feature(enable = "neon")]
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
        let nib = vdupq_n_u8(0x0f);
        let full = nbytes / 16 * 16;
        for b0 in (0..full).step_by(16) {
            let mut lo = [vdupq_n_u8(0); 16];
            let mut hi = [vdupq_n_u8(0); 16];
            for i in 0..16 {
                // SAFETY: b0 + 16 <= nbytes bytes of each code `i < n`.
                unsafe {
                    if i < n {
                        lo[i] = vld1q_u8(p[i].add(b0));
                    }
                    if i + 16 < n {
                        hi[i] = vld1q_u8(p[i + 16].add(b0));
                    }
                }
            }
            let lo = transpose16x16(lo);
            let hi = transpose16x16(hi);
            for k in 0..16 {
                let even = vorrq_u8(vandq_u8(lo[k], nib), vshlq_n_u8::<4>(hi[k]));
                let odd = vorrq_u8(vshrq_n_u8::<4>(lo[k]), vbicq_u8(hi[k], nib));
                // SAFETY: 32 (b0 + k) + 32 <= 32 nbytes bytes of `out`.
                unsafe {
                    vst1q_u8(po.add(32 * (b0 + k)), even);
                    vst1q_u8(po.add(32 * (b0 + k) + 16), odd);
                }
            }
        }
        crate::scalar::fastscan_pack_range(base, stride, ids, full, nbytes, out);
    }
}
