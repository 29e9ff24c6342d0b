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

/// The weights of the low and high nibbles of packed 4-bit codes: with `b` one weight per
/// dimension (in the layout of [`u4_position`] for `n = b.len()` dimensions), `lo[j]` and
/// `hi[j]` are the weights of the dimensions held in the low and the high nibble of byte `j`
/// (0 for an unused high nibble), so `dot_u4_i8(p, b) == dot_u4_i8_split(p, lo, hi)`.
/// `lo` and `hi` have `ceil(n / 2)` entries.
pub fn u4_split_weights(b: &[i8], lo: &mut [i8], hi: &mut [i8]) {
    let n = b.len();
    assert!(
        lo.len() == n.div_ceil(2) && hi.len() == lo.len(),
        "u4_split_weights: lo and hi must have ceil(n / 2) entries"
    );
    hi.fill(0);
    for (i, &w) in b.iter().enumerate() {
        match u4_position(n, i) {
            (j, false) => lo[j] = w,
            (j, true) => hi[j] = w,
        }
    }
}

/// Per-dimension values (weights of a query, any type) split into those of the low and of the
/// high nibbles of the packed 4-bit layout ([`u4_position`]), one pair of slices of
/// `ceil(n / 2)` entries: per block of [`U4_BLOCK`] dimensions, the first half goes to the low
/// nibbles and the rest to the high ones (an unused high nibble of an odd last block gets
/// `T::default()`). The same as [`u4_split_weights`] for any `T`, by block copies.
pub fn u4_split<T: Copy + Default>(w: &[T]) -> (Vec<T>, Vec<T>) {
    let h = w.len().div_ceil(2);
    let (mut lo, mut hi) = (Vec::with_capacity(h), Vec::with_capacity(h));
    for b in w.chunks(U4_BLOCK) {
        let (l, r) = b.split_at(b.len().div_ceil(2));
        lo.extend_from_slice(l);
        hi.extend_from_slice(r);
        hi.resize(lo.len(), T::default());
    }
    (lo, hi)
}

/// Exact inner product of packed nibbles with one weight per nibble:
/// `sum_j (p[j] & 15) * lo[j] + (p[j] >> 4) * hi[j]` (wrapping on i32 overflow). All three
/// slices have the same length. With the weights of [`u4_split_weights`] it equals
/// [`dot_u4_i8`] whatever the layout, and SIMD versions need no shuffles or query reloads.
pub fn dot_u4_i8_split(p: &[u8], lo: &[i8], hi: &[i8]) -> i32 {
    assert!(
        p.len() == lo.len() && p.len() == hi.len(),
        "dot_u4_i8_split: slices of different lengths"
    );
    let mut s = 0i32;
    for ((&x, &l), &h) in p.iter().zip(lo).zip(hi) {
        s = s
            .wrapping_add((x & 15) as i32 * l as i32)
            .wrapping_add((x >> 4) as i32 * h as i32);
    }
    s
}

/// Inner product of packed nibbles with one f32 weight per nibble:
/// `sum_j (p[j] & 15) * lo[j] + (p[j] >> 4) * hi[j]`, the float counterpart of
/// [`dot_u4_i8_split`] (SIMD versions differ only in summation order). Equal lengths.
pub fn dot_f32_u4_split(p: &[u8], lo: &[f32], hi: &[f32]) -> f32 {
    assert!(
        p.len() == lo.len() && p.len() == hi.len(),
        "dot_f32_u4_split: slices of different lengths"
    );
    let mut s = 0f32;
    for ((&x, &l), &h) in p.iter().zip(lo).zip(hi) {
        s += (x & 15) as f32 * l + (x >> 4) as f32 * h;
    }
    s
}

/// [`dot_u4_i8_split`] of several codes of one array: code `i` is
/// `base[ids[i] * stride ..][.. lo.len()]` and `out[i]` its product with `lo`, `hi`.
/// Panics if a code does not lie inside `base` or if `out.len() != ids.len()`.
pub fn dot_u4_i8_split_gather(
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

/// Most segments [`dot_u4_i8_split_gather_segs`] takes.
pub const MAX_SEGS: usize = 8;

/// Checks the segment ends of [`dot_u4_i8_split_gather_segs`]: 1 to [`MAX_SEGS`] ends,
/// strictly increasing multiples of 4, the last one `len`.
pub fn check_segment_ends(ends: &[u32], len: usize) {
    assert!(
        !ends.is_empty() && ends.len() <= MAX_SEGS,
        "dot_u4_i8_split_gather_segs: 1 to {MAX_SEGS} segments"
    );
    let mut prev = 0usize;
    for &e in ends {
        let e = e as usize;
        assert!(
            e > prev && e.is_multiple_of(4),
            "dot_u4_i8_split_gather_segs: segment ends must be increasing multiples of 4"
        );
        prev = e;
    }
    assert_eq!(
        prev, len,
        "dot_u4_i8_split_gather_segs: the last end must be lo.len()"
    );
}

/// [`dot_u4_i8_split_gather`] split into segments: with `S = ends.len()` segments, segment `s`
/// covering bytes `ends[s - 1] .. ends[s]` (`ends[-1] = 0`) of the codes and of `lo`, `hi`,
/// `out[i * S + s]` is the product of segment `s` of code `i` (`base[ids[i] * stride ..]`)
/// with the same bytes of `lo`, `hi`. One pass over each code instead of one call per segment
/// (SAQ's traversal, whose segments have their own factors). `ends` holds 1 to [`MAX_SEGS`]
/// strictly increasing multiples of 4, the last `lo.len()`; `out.len() == ids.len() * S`.
pub fn dot_u4_i8_split_gather_segs(
    base: &[u8],
    stride: usize,
    ids: &[u32],
    lo: &[i8],
    hi: &[i8],
    ends: &[u32],
    out: &mut [i32],
) {
    gather_segs_with(dot_u4_i8_split, base, stride, ids, lo, hi, ends, out)
}

/// The argument checks of [`dot_u4_i8_split_gather_segs`] (every table's version): equal
/// weight lengths, valid segment ends, one output per code and segment.
pub fn check_segs_args(ids: &[u32], lo: &[i8], hi: &[i8], ends: &[u32], out: &[i32]) {
    assert_eq!(
        lo.len(),
        hi.len(),
        "dot_u4_i8_split: slices of different lengths"
    );
    check_segment_ends(ends, lo.len());
    assert_eq!(
        ids.len() * ends.len(),
        out.len(),
        "dot_u4_i8_split_gather_segs: ids and out"
    );
}

/// [`dot_u4_i8_split_gather_segs`] with `single` as the product of one segment of one code
/// (the same checks and loop; the SIMD tables without a fused version pass their own
/// `dot_u4_i8_split`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn gather_segs_with(
    single: impl Fn(&[u8], &[i8], &[i8]) -> i32,
    base: &[u8],
    stride: usize,
    ids: &[u32],
    lo: &[i8],
    hi: &[i8],
    ends: &[u32],
    out: &mut [i32],
) {
    check_segs_args(ids, lo, hi, ends, out);
    let s = ends.len();
    let len = lo.len();
    for (o, &id) in out.chunks_exact_mut(s).zip(ids) {
        let at = id as usize * stride;
        let code = &base[at..at + len];
        let mut a = 0usize;
        for (o, &e) in o.iter_mut().zip(ends) {
            let e = e as usize;
            *o = single(&code[a..e], &lo[a..e], &hi[a..e]);
            a = e;
        }
    }
}

/// Matrix-vector product: `out[r] = sum_i m[r * n + i] * x[i]` with `n = x.len()`, `m` row-major
/// with `out.len()` rows (`m.len() == out.len() * n`).
pub fn matvec_f32(m: &[f32], x: &[f32], out: &mut [f32]) {
    assert_eq!(
        m.len(),
        out.len() * x.len(),
        "matvec_f32: m must be out.len() × x.len()"
    );
    if x.is_empty() {
        out.fill(0.0);
        return;
    }
    for (o, row) in out.iter_mut().zip(m.chunks_exact(x.len())) {
        *o = dot_f32(row, x);
    }
}

/// The f32 value of an IEEE 754 binary16 bit pattern (exact: every f16 value, subnormals,
/// infinities and NaNs included, is an f32; a NaN keeps its sign and payload, quietened as
/// the hardware conversions do).
#[inline]
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h & 0x8000) as u32) << 16;
    let exp = (h >> 10) & 0x1f;
    let man = (h & 0x3ff) as u32;
    match exp {
        // ±0 and subnormals: man · 2^-24, exact in f32.
        0 => f32::from_bits(sign | (man as f32 * f32::from_bits(0x3380_0000)).to_bits()),
        0x1f if man == 0 => f32::from_bits(sign | 0x7f80_0000),
        0x1f => f32::from_bits(sign | 0x7fc0_0000 | man << 13),
        // Rebias the exponent from 15 to 127.
        _ => f32::from_bits(sign | (exp as u32 + 112) << 23 | man << 13),
    }
}

/// Matrix-vector product with the matrix in half precision: `out[r] = sum_i f16(m[r * n + i])
/// * x[i]` with `n = x.len()`, `m` row-major IEEE binary16 bit patterns with `out.len()` rows
/// (`m.len() == out.len() * n`), converted exactly ([`f16_to_f32`]) and accumulated in f32.
/// Half the bytes of [`matvec_f32`] for a memory-bound product.
pub fn matvec_f16(m: &[u16], x: &[f32], out: &mut [f32]) {
    assert_eq!(
        m.len(),
        out.len() * x.len(),
        "matvec_f16: m must be out.len() × x.len()"
    );
    if x.is_empty() {
        out.fill(0.0);
        return;
    }
    for (o, row) in out.iter_mut().zip(m.chunks_exact(x.len())) {
        *o = row.iter().zip(x).map(|(&h, &y)| f16_to_f32(h) * y).sum();
    }
}

/// Squared Euclidean distance from `a` to the half-precision vector `b` (bit patterns,
/// converted exactly with [`f16_to_f32`], accumulated in f32): the exact distance of a query
/// to a vector stored in half the bytes.
pub fn l2sq_f32_f16(a: &[f32], b: &[u16]) -> f32 {
    assert_eq!(
        a.len(),
        b.len(),
        "l2sq_f32_f16: slices of different lengths"
    );
    a.iter()
        .zip(b)
        .map(|(&x, &h)| {
            let d = x - f16_to_f32(h);
            d * d
        })
        .sum()
}

/// Most bit planes [`dot_f32_bitplanes`] takes (weights up to `2^15` are exact in f32).
pub const MAX_BITPLANES: usize = 16;

/// Number of bit planes of `n` values held in `planes` (see [`dot_f32_bitplanes`]), checking
/// the slice lengths.
#[inline]
pub(crate) fn bitplane_count(n: usize, planes: &[u8]) -> usize {
    if n == 0 {
        assert!(
            planes.is_empty(),
            "dot_f32_bitplanes: planes of an empty vector"
        );
        return 0;
    }
    let pb = n.div_ceil(8);
    assert!(
        planes.len().is_multiple_of(pb) && planes.len() / pb <= MAX_BITPLANES,
        "dot_f32_bitplanes: planes.len() must be k * ceil(n / 8) with k <= {MAX_BITPLANES}"
    );
    planes.len() / pb
}

/// Inner product of f32 weights with unsigned codes stored as bit planes:
/// `sum_i a[i] * c_i`, `c_i = sum_j 2^j * bit j of c_i`.
///
/// With `n = a.len()` and `pb = ceil(n / 8)`, `planes` holds `k <= 16` planes of `pb` bytes
/// each, plane `j` (bit `j` of every code) at `planes[j * pb .. (j + 1) * pb]`, the bit of
/// element `i` at bit `i % 8` of byte `i / 8` (so a plane is also a sequence of little-endian
/// u64 words when `n` is a multiple of 64). Bits past `n` in the last byte are ignored.
pub fn dot_f32_bitplanes(a: &[f32], planes: &[u8]) -> f32 {
    let k = bitplane_count(a.len(), planes);
    let pb = a.len().div_ceil(8);
    let mut s = 0.0f32;
    for j in 0..k {
        let p = &planes[j * pb..(j + 1) * pb];
        let t: f32 = a
            .iter()
            .enumerate()
            .filter(|(i, _)| (p[i / 8] >> (i % 8)) & 1 == 1)
            .map(|(_, &x)| x)
            .sum();
        s += (1u32 << j) as f32 * t;
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

/// Rounds of a structured random rotation of `x` (length `d`, a multiple of 64), in place:
/// round `r` flips signs (`x_i ^= masks[r d + i]`, sign-bit masks), applies the unnormalised
/// Walsh–Hadamard transform to the block of `t` entries (the largest power of two <= `d`)
/// starting at 0 (even rounds) or `d - t` (odd rounds) and multiplies that block by `scale`,
/// then, when `t < d`, mixes the halves: `(a, b) <- ((a + b) s, (a - b) s)` with
/// `s = 1/sqrt(2)`. `masks.len()` is a multiple of `d` (the number of rounds).
pub fn rotate_rounds_f32(x: &mut [f32], masks: &[u32], t: usize, scale: f32) {
    rotate_rounds_with(x, masks, t, scale, fwht_f32);
}

/// [`rotate_rounds_f32`] with the given transform (each instruction set's `fwht_f32`, which is
/// bit-identical to the scalar one, so the results are too).
pub(crate) fn rotate_rounds_with(
    x: &mut [f32],
    masks: &[u32],
    t: usize,
    scale: f32,
    fwht: impl Fn(&mut [f32]),
) {
    let d = x.len();
    assert!(
        d > 0
            && d.is_multiple_of(64)
            && masks.len().is_multiple_of(d)
            && t.is_power_of_two()
            && t <= d
            && 2 * t > d,
        "rotate_rounds_f32: bad sizes"
    );
    for (r, m) in masks.chunks_exact(d).enumerate() {
        for (o, &m) in x.iter_mut().zip(m) {
            *o = f32::from_bits(o.to_bits() ^ m);
        }
        let start = if r % 2 == 0 { 0 } else { d - t };
        let block = &mut x[start..start + t];
        fwht(block);
        for v in block.iter_mut() {
            *v *= scale;
        }
        if t < d {
            let (a, b) = x.split_at_mut(d / 2);
            let s = std::f32::consts::FRAC_1_SQRT_2;
            for (u, v) in a.iter_mut().zip(b.iter_mut()) {
                let (p, q) = (*u, *v);
                *u = (p + q) * s;
                *v = (p - q) * s;
            }
        }
    }
}

/// In-place unnormalised Walsh–Hadamard transform, `x <- H x`; `x.len()` must be a power of
/// two (or 0).
///
/// Stage `h = 1, 2, 4, ...` replaces every pair `(x[i], x[i + h])` with `i & h == 0` by
/// `(x[i] + x[i + h], x[i] - x[i + h])`. The SIMD variants perform the same additions in the
/// same stage order, so their results are bit-identical to this one.
pub fn fwht_f32(x: &mut [f32]) {
    let n = fwht_len(x);
    let mut h = 1;
    while h < n {
        for block in x.chunks_exact_mut(2 * h) {
            let (a, b) = block.split_at_mut(h);
            for (u, v) in a.iter_mut().zip(b.iter_mut()) {
                let (p, q) = (*u, *v);
                *u = p + q;
                *v = p - q;
            }
        }
        h *= 2;
    }
}

/// `x.len()`, checked to be a power of two or 0.
#[inline]
pub(crate) fn fwht_len(x: &[f32]) -> usize {
    let n = x.len();
    assert!(
        n == 0 || n.is_power_of_two(),
        "fwht: the length must be a power of two"
    );
    n
}

/// `1.5 * 2^23`: adding it to a float in `[0, 2^22)` leaves the value rounded to an integer
/// (ties to even) in the low mantissa bits.
pub(crate) const ROUND_MAGIC: f32 = 12_582_912.0;

/// Checks the lengths of [`fastscan_lut_u8`]'s arguments; returns the number of groups.
#[inline]
pub(crate) fn lut_groups(w: &[f32], out: &[u8]) -> usize {
    assert!(
        w.len().is_multiple_of(4),
        "fastscan_lut: w.len() must be a multiple of 4"
    );
    assert_eq!(
        out.len(),
        4 * w.len(),
        "fastscan_lut: out.len() must be 4 * w.len()"
    );
    w.len() / 4
}

/// `lo` of one group of [`fastscan_lut_u8`], in the order every variant uses.
#[inline(always)]
pub(crate) fn lut_lo(g: &[f32]) -> f32 {
    ((g[0].min(0.0) + g[1].min(0.0)) + g[2].min(0.0)) + g[3].min(0.0)
}

/// 4-bit FastScan look-up tables from float weights (e.g. a rotated query for 1-bit codes).
///
/// For group `j` (weights `g = w[4j .. 4j + 4]`) and nibble `c`, with `s_t = g[t]` if bit `t`
/// of `c` is set and `0` otherwise, and `lo = min(g0, 0) + .. + min(g3, 0)` (the smallest
/// subset sum):
///
/// ```text
/// x = ((s0 + s1) - lo) * scale + (s2 + s3) * scale
/// out[16 j + c] = x rounded to an integer (ties to even), clamped to [0, 255]
/// ```
///
/// evaluated in exactly this order (the rounding adds `1.5 * 2^23`, so `x` must be finite and
/// below `2^22`), which the SIMD variants follow, so their results are bit-identical.
/// `w.len()` must be a multiple of 4 and `out.len() == 4 * w.len()`.
pub fn fastscan_lut_u8(w: &[f32], scale: f32, out: &mut [u8]) {
    lut_groups(w, out);
    for (g, t) in w.chunks_exact(4).zip(out.chunks_exact_mut(16)) {
        let lo = lut_lo(g);
        let sel = |c: usize, bit: usize, x: f32| if c & bit != 0 { x } else { 0.0 };
        for (c, o) in t.iter_mut().enumerate() {
            let l = sel(c, 1, g[0]) + sel(c, 2, g[1]);
            let h = sel(c, 4, g[2]) + sel(c, 8, g[3]);
            let x = (l - lo) * scale + h * scale;
            let v = (x + ROUND_MAGIC).clamp(ROUND_MAGIC, ROUND_MAGIC + 255.0);
            *o = v.to_bits() as u8;
        }
    }
}

/// Checks the arguments of [`nearest_centroid_t`]; returns the dimension.
#[inline]
pub(crate) fn nearest_t_dim(
    xt: &[f32],
    stride: usize,
    centroids: &[f32],
    norms: &[f32],
    out: &[u32],
) -> usize {
    let k = norms.len();
    assert!(
        k > 0 && k <= u32::MAX as usize,
        "nearest_centroid: need 1..=u32::MAX centroids"
    );
    assert!(
        !centroids.is_empty() && centroids.len().is_multiple_of(k),
        "nearest_centroid: centroids.len() must be a positive multiple of norms.len()"
    );
    let dim = centroids.len() / k;
    if !out.is_empty() {
        assert!(
            stride >= out.len()
                && (dim - 1)
                    .checked_mul(stride)
                    .and_then(|s| s.checked_add(out.len()))
                    .is_some_and(|need| xt.len() >= need),
            "nearest_centroid: xt too short for out.len() points of {dim} coordinates at this stride"
        );
    }
    dim
}

/// Nearest centroid of point `i` for [`nearest_centroid_t`]: the exact reference order.
#[inline]
pub(crate) fn nearest_t_one(
    xt: &[f32],
    stride: usize,
    i: usize,
    dim: usize,
    centroids: &[f32],
    norms: &[f32],
) -> u32 {
    let mut best = (0u32, f32::INFINITY);
    for (j, (c, &nj)) in centroids.chunks_exact(dim).zip(norms).enumerate() {
        let mut d = nj;
        for (t, &ct) in c.iter().enumerate() {
            d += (-2.0 * xt[t * stride + i]) * ct;
        }
        if d < best.1 {
            best = (j as u32, d);
        }
    }
    best.0
}

/// Nearest-centroid assignment of points stored transposed (k-means on short vectors, such as
/// PQ sub-spaces).
///
/// There are `k = norms.len()` centroids, `centroids` is `k × dim` row-major
/// (`dim = centroids.len() / k`) and `norms[j]` is meant to be `||c_j||^2`. Point `i`
/// (`i < out.len()`) has coordinate `t` at `xt[t * stride + i]`, so `stride >= out.len()`.
/// `out[i]` is the smallest `j` minimising
///
/// ```text
/// d_j = (((norms[j] + (-2 x_0) c_j0) + (-2 x_1) c_j1) + ...) + (-2 x_{dim-1}) c_j,dim-1
/// ```
///
/// (`||x - c_j||^2 - ||x||^2`), each product and sum rounded separately in exactly this order
/// (no fused multiply-add), a `NaN` never chosen and `0` when no `d_j` is below `+inf`. The
/// SIMD variants put points in lanes and follow the same order, so they are bit-identical.
/// Panics when `k == 0`, `centroids.len()` is not a positive multiple of `k`, or `xt` is too
/// short.
pub fn nearest_centroid_t(
    xt: &[f32],
    stride: usize,
    centroids: &[f32],
    norms: &[f32],
    out: &mut [u32],
) {
    let dim = nearest_t_dim(xt, stride, centroids, norms, out);
    for (i, o) in out.iter_mut().enumerate() {
        *o = nearest_t_one(xt, stride, i, dim, centroids, norms);
    }
}

/// Checks the arguments of [`fastscan_pack_u4`]: at most 32 ids, `out.len() == 32 * nbytes`,
/// and every code `base[ids[i] * stride ..][.. nbytes]` inside `base`. Returns `ids.len()`.
#[inline]
pub(crate) fn fastscan_pack_check(
    base: &[u8],
    stride: usize,
    ids: &[u32],
    nbytes: usize,
    out: &[u8],
) -> usize {
    assert!(ids.len() <= 32, "fastscan_pack: at most 32 codes per block");
    assert_eq!(
        Some(out.len()),
        nbytes.checked_mul(32),
        "fastscan_pack: out.len() must be 32 * nbytes"
    );
    for &id in ids {
        let end = (id as usize)
            .checked_mul(stride)
            .and_then(|a| a.checked_add(nbytes));
        assert!(
            end.is_some_and(|e| e <= base.len()),
            "fastscan_pack: code {id} lies outside the array"
        );
    }
    ids.len()
}

/// Bytes `from..to` of [`fastscan_pack_u4`] (arguments already checked): the tail loop of
/// every variant.
#[inline]
pub(crate) fn fastscan_pack_range(
    base: &[u8],
    stride: usize,
    ids: &[u32],
    from: usize,
    to: usize,
    out: &mut [u8],
) {
    let x = |i: usize, b: usize| -> u8 {
        match ids.get(i) {
            Some(&id) => base[id as usize * stride + b],
            None => 0,
        }
    };
    for b in from..to {
        let row = &mut out[32 * b..32 * b + 32];
        for i in 0..16 {
            let (lo, hi) = (x(i, b), x(i + 16, b));
            row[i] = (lo & 15) | (hi << 4);
            row[16 + i] = (lo >> 4) | (hi & 0xf0);
        }
    }
}

/// Gathers up to 32 packed 4-bit codes and transposes them into the block layout of
/// [`fastscan_u16`].
///
/// Code `i` is `base[ids[i] * stride ..][.. nbytes]`, sub-quantizer `2b` in the low nibble of
/// its byte `b` and `2b + 1` in the high nibble; codes `i >= ids.len()` count as all zeros.
/// With `x(i, b)` byte `b` of code `i`, for every `b < nbytes` and `i < 16`:
///
/// ```text
/// out[32 b + i]      = (x(i, b) & 15) | (x(i + 16, b) & 15) << 4   // sub-quantizer 2b
/// out[32 b + 16 + i] = (x(i, b) >> 4) | (x(i + 16, b) & 0xf0)      // sub-quantizer 2b + 1
/// ```
///
/// so `out` is the `codes` argument of [`fastscan_u16`] for `2 * nbytes` sub-quantizers.
/// Panics if `ids.len() > 32`, `out.len() != 32 * nbytes` or a code lies outside `base`.
pub fn fastscan_pack_u4(base: &[u8], stride: usize, ids: &[u32], nbytes: usize, out: &mut [u8]) {
    fastscan_pack_check(base, stride, ids, nbytes, out);
    fastscan_pack_range(base, stride, ids, 0, nbytes, out);
}
