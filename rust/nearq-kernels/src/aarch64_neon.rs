//! NEON (Advanced SIMD) kernels for aarch64.
//!
//! The `#[target_feature]` functions in `imp` are reachable only through [`TABLE`], which
//! [`table`] returns only after detecting NEON.
//!
//! - f32 kernels: four 4-lane FMA accumulators (16 elements per iteration).
//! - `dot_u8_i8`: widen to i16 and multiply-accumulate into i32 (`smlal`), exact.
//!   `dot_u8`: `umull` (255^2 fits u16) and pairwise accumulate into u32 (`uadalp`).
//! - `dot_u4_i8`: a 64-dimension block is two 16-byte loads whose low nibbles are dimensions
//!   0..16 and 16..32 and whose high nibbles are 32..48 and 48..64; 4-bit codes are valid i8,
//!   so `smull`/`smlal` multiply them into i16 lanes (4 products of at most 15 * 128 per lane)
//!   and `sadalp` accumulates pairs into i32.
//! - Popcount: `cnt` per byte, pairwise accumulated into u16 (`uadalp`), flushed into u32
//!   lanes before a u16 lane can overflow.
//! - FastScan: `tbl` (`vqtbl1q_u8`) looks up one sub-quantizer per op, widened into u16 lanes.

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
    dot_f32_u8,
    dot_u8_i8,
    dot_u8,
    dot_u4_i8,
    and_popcount_u64,
    fastscan_u16,
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

fn and_popcount_u64(a: &[u64], b: &[u64]) -> u32 {
    // SAFETY: only reachable through TABLE, handed out after detecting neon.
    unsafe { imp::and_popcount_u64(a, b) }
}

fn fastscan_u16(codes: &[u8], luts: &[u8], out: &mut [u16; 32]) {
    // SAFETY: only reachable through TABLE, handed out after detecting neon.
    unsafe { imp::fastscan_u16(codes, luts, out) }
}

mod imp {
    use core::arch::aarch64::*;

    #[target_feature(enable = "neon")]
    pub(super) fn l2sq_f32(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [vdupq_n_f32(0.0); 4];
        let mut i = 0;
        while i + 16 <= n {
            for (k, acc) in acc.iter_mut().enumerate() {
                // SAFETY: i + 4k + 4 <= i + 16 <= n = a.len() = b.len().
                let d = unsafe {
                    vsubq_f32(vld1q_f32(pa.add(i + 4 * k)), vld1q_f32(pb.add(i + 4 * k)))
                };
                *acc = vfmaq_f32(*acc, d, d);
            }
            i += 16;
        }
        while i + 4 <= n {
            // SAFETY: i + 4 <= n = a.len() = b.len().
            let d = unsafe { vsubq_f32(vld1q_f32(pa.add(i)), vld1q_f32(pb.add(i))) };
            acc[0] = vfmaq_f32(acc[0], d, d);
            i += 4;
        }
        let mut s = vaddvq_f32(vaddq_f32(
            vaddq_f32(acc[0], acc[1]),
            vaddq_f32(acc[2], acc[3]),
        ));
        for (x, y) in a[i..].iter().zip(&b[i..]) {
            s += (x - y) * (x - y);
        }
        s
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
}
