//! Scalar reference kernels: the ground truth every SIMD kernel is tested against.
//!
//! These are written for clarity, not speed. Integer kernels use wrapping arithmetic so that
//! their result is defined for every input; the SIMD kernels produce the same bits.

/// Squared Euclidean distance: `sum_i (a[i] - b[i])^2`.
pub fn l2sq_f32(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Inner product: `sum_i a[i] * b[i]`.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Inner product of f32 weights with u8 codes: `sum_i a[i] * (b[i] as f32)`.
pub fn dot_f32_u8(a: &[f32], b: &[u8]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, &y)| x * y as f32).sum()
}

/// Exact integer inner product of unsigned and signed bytes (wrapping on i32 overflow).
pub fn dot_u8_i8(a: &[u8], b: &[i8]) -> i32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .fold(0i32, |s, (&x, &y)| s.wrapping_add(x as i32 * y as i32))
}

/// Exact integer inner product of unsigned bytes (wrapping on u32 overflow).
pub fn dot_u8(a: &[u8], b: &[u8]) -> u32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .fold(0u32, |s, (&x, &y)| s.wrapping_add(x as u32 * y as u32))
}

/// Number of bits set in `a & b`: `sum_i popcount(a[i] & b[i])` (wrapping on u32 overflow).
pub fn and_popcount_u64(a: &[u64], b: &[u64]) -> u32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .fold(0u32, |s, (&x, &y)| s.wrapping_add((x & y).count_ones()))
}

/// Number of sub-quantizers in a FastScan block, checking the slice lengths.
///
/// `luts.len()` must be a multiple of 16 and `codes.len()` must equal it.
#[inline]
pub(crate) fn fastscan_m(codes: &[u8], luts: &[u8]) -> usize {
    assert!(
        luts.len().is_multiple_of(16),
        "fastscan: luts.len() must be a multiple of 16"
    );
    assert_eq!(
        codes.len(),
        luts.len(),
        "fastscan: codes.len() must equal luts.len()"
    );
    luts.len() / 16
}

/// 4-bit FastScan look-up accumulate over one block of 32 codes.
///
/// With `m = luts.len() / 16` sub-quantizers, bytes `codes[16 j .. 16 j + 16]` hold the codes
/// of sub-quantizer `j` for all 32 vectors: the low nibble of byte `i` is vector `i`'s code and
/// the high nibble is vector `i + 16`'s. `luts[16 j + c]` is the table entry for code `c`.
///
/// `out[v] = sum_j luts[16 j + code(v, j)]`, with wrapping u16 additions.
pub fn fastscan_u16(codes: &[u8], luts: &[u8], out: &mut [u16; 32]) {
    let m = fastscan_m(codes, luts);
    *out = [0; 32];
    for j in 0..m {
        let lut = &luts[16 * j..16 * j + 16];
        for (i, &c) in codes[16 * j..16 * j + 16].iter().enumerate() {
            out[i] = out[i].wrapping_add(lut[(c & 15) as usize] as u16);
            out[i + 16] = out[i + 16].wrapping_add(lut[(c >> 4) as usize] as u16);
        }
    }
}
