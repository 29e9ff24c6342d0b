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

/// Dimensions per block of the packed 4-bit layout (see [`pack_u4`]).
pub const U4_BLOCK: usize = 64;

/// Byte index and nibble (`false` = low, `true` = high) of dimension `i` among `n` dimensions
/// in the packed 4-bit layout.
///
/// Dimensions are grouped into blocks of [`U4_BLOCK`] (the last block may hold `r < 64`); a
/// block of `r` dimensions occupies `h = ceil(r / 2)` bytes, and byte `j` of the block holds
/// dimension `j` in its low nibble and dimension `j + h` in its high nibble (a full block:
/// `j` and `j + 32`). So the low nibbles of one 32-byte load are 32 consecutive dimensions and
/// the high nibbles the next 32, aligned with two plain loads of the other operand: no
/// interleaving shuffles. An unused high nibble (odd `r`) is written as 0 and never read.
/// A vector of `n` dimensions takes `ceil(n / 2)` bytes.
#[inline]
pub fn u4_position(n: usize, i: usize) -> (usize, bool) {
    debug_assert!(i < n);
    let base = i / U4_BLOCK * U4_BLOCK;
    let h = (n - base).min(U4_BLOCK).div_ceil(2);
    let t = i - base;
    if t < h {
        (base / 2 + t, false)
    } else {
        (base / 2 + t - h, true)
    }
}

/// Packs 4-bit codes (`codes[i] < 16`, one per dimension) into `out` (`ceil(n / 2)` bytes) in
/// the layout of [`u4_position`].
pub fn pack_u4(codes: &[u8], out: &mut [u8]) {
    assert_eq!(out.len(), codes.len().div_ceil(2));
    for (c, o) in codes.chunks(U4_BLOCK).zip(out.chunks_mut(U4_BLOCK / 2)) {
        let (lo, hi) = c.split_at(o.len());
        for (j, o) in o.iter_mut().enumerate() {
            *o = (lo[j] & 15) | (hi.get(j).map_or(0, |x| x & 15) << 4);
        }
    }
}

/// Inverse of [`pack_u4`]: writes the `out.len()` codes held in `packed`.
pub fn unpack_u4(packed: &[u8], out: &mut [u8]) {
    assert_eq!(packed.len(), out.len().div_ceil(2));
    for (p, o) in packed.chunks(U4_BLOCK / 2).zip(out.chunks_mut(U4_BLOCK)) {
        let (lo, hi) = o.split_at_mut(p.len());
        for (l, &x) in lo.iter_mut().zip(p) {
            *l = x & 15;
        }
        for (h, &x) in hi.iter_mut().zip(p) {
            *h = x >> 4;
        }
    }
}

/// Exact inner product of packed 4-bit codes with signed bytes: `sum_i code(i) * b[i]`, where
/// `code(i)` is dimension `i` of `packed` in the layout of [`u4_position`] and
/// `packed.len() == ceil(b.len() / 2)` (wrapping on i32 overflow).
pub fn dot_u4_i8(packed: &[u8], b: &[i8]) -> i32 {
    let n = b.len();
    assert_eq!(
        packed.len(),
        n.div_ceil(2),
        "dot_u4_i8: packed.len() must be ceil(n / 2)"
    );
    let mut s = 0i32;
    for (blk, q) in b.chunks(U4_BLOCK).enumerate() {
        let h = q.len().div_ceil(2);
        let p = &packed[blk * U4_BLOCK / 2..blk * U4_BLOCK / 2 + h];
        for (j, &x) in p.iter().enumerate() {
            s = s.wrapping_add((x & 15) as i32 * q[j] as i32);
            if let Some(&y) = q.get(j + h) {
                s = s.wrapping_add((x >> 4) as i32 * y as i32);
            }
        }
    }
    s
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
