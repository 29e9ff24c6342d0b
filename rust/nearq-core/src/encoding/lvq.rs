//! LVQ: locally-adaptive vector quantization, one level (LVQ-B) or two (LVQ-B1xB2).
//!
//! # Encoding (ALGORITHMS.md §3.2)
//!
//! Training takes the dataset mean `μ` and a global power-of-two pre-scale `s` that brings the
//! largest centred coordinate near 1024, so the per-vector constants below are normal float16
//! numbers whatever the data's scale (`s` is exact to apply and to undo). A vector `x` becomes
//! `y = s·(x - μ)`; with `lo = min_j y_j`, `hi = max_j y_j` and `L = 2^B1 - 1`:
//!
//! ```text
//! l = f16 rounded down from lo,  Δ = f16 rounded up from (hi - l)/L (raised until l + Δ·L ≥ hi)
//! c_j = clamp(round((y_j - l)/Δ), 0, L)                   primary, B1 ∈ {4, 8} bits
//! e_j = clamp(round((y_j - Δ·c_j - l + Δ/2)/Δ2), 0, L2)   residual, Δ2 = Δ/L2, L2 = 2^B2 - 1
//! decode: x̃ = μ + (Δ·c + l)/s                              one level,  |x̃_j - x_j| ≤ Δ/(2s)
//!         x̃ = μ + (Δ·c + Δ2·e - Δ/2 + l)/s                 two levels, |x̃_j - x_j| ≤ Δ2/(2s)
//! ```
//!
//! Rounding `l` down and `Δ` up (rather than to nearest, as SVS does) keeps every coordinate
//! inside the grid, so the bounds hold without an f16 slack term. The f16 conversions are
//! local (no dependency): a vector's constants are converted once at encode time and, in the
//! distance, by a shift and one multiply by `2^112` (exact for normal and subnormal halves).
//!
//! # Code layout
//!
//! ```text
//! [Δ f16][l f16]  [‖x̃₁ - μ‖² f32: L2 only]  [primary codes]  [residual codes]  [‖x̃₂ - μ‖² f32: L2, two levels]
//! ```
//!
//! 8-bit codes are one byte per dimension; 4-bit codes use the kernels' packed layout
//! ([`nearq_kernels::scalar::u4_position`]: blocks of 64 dimensions, byte `j` holds dimension
//! `j` in its low nibble and `j + 32` in its high nibble), so one 32-byte load of codes lines up
//! with two plain loads of the query. Traversal reads only the prefix up to the primary codes.
//! Per vector at d = 384 (cosine / IP; L2 adds 4 bytes per level): LVQ-4 196, LVQ-8 388,
//! LVQ-4x4 388, LVQ-4x8 580, LVQ-8x8 772 bytes.
//!
//! # Distances on codes
//!
//! Let `z = q - μ` for L2 and `z = q` for IP / cosine (queries arrive normalised for cosine),
//! and `x̃' = x̃ - μ = (Δ·c + l)/s` (one level). Then
//!
//! ```text
//! S = <z, x̃'> = (Δ·<z, c> + l·Σz)/s
//! IP:      <q, x̃> = <q, μ> + S                       → -<q, x̃>, or 1 - <q, x̃> for cosine
//! L2: ‖q - x̃‖² = ‖z - x̃'‖² = ‖z‖² - 2S + ‖x̃'‖²       (‖x̃'‖² stored in the code)
//! two levels: S = (Δ·(<z, c> + <z, e>/L2 - Σz/2) + l·Σz)/s
//! ```
//!
//! `Σz`, `‖z‖²` and `<q, μ>` are computed once per query, so a code costs one integer or float
//! dot product and a few multiply-adds with its two constants.
//!
//! - `distance` (traversal): `z` is quantised once per query to i8, `z ≈ ζ·z8` with
//!   `ζ = max|z|/127`, and `<z, c> ≈ ζ·<z8, c> + m·(Σz - ζ·Σz8)` with `m = L/2`: one exact
//!   integer kernel (`dot_u8_i8`, or `dot_u4_i8` on the packed 4-bit codes) plus a per-query
//!   constant. The error is `Σ_j (ζ·z8_j - z_j)·(c_j - m)`, at most `ζ/2·Σ_j |c_j - m|` times
//!   `Δ/s` (twice that for L2). Only the primary level is read.
//! - `distance_fine` (re-ranking when no float vectors are kept, and the pre-filter before
//!   exact re-scoring when they are, from 8 bits in all): the float `z` against the primary
//!   codes and, with two levels, the residual codes. It equals the distance to the decoded
//!   vector up to float rounding.

use super::Encoding;
use crate::error::{Error, Result};
use crate::io::{Reader, Writer};
use crate::metric::Metric;
use crate::storage::CodeStore;
use nearq_kernels::scalar::u4_split;
use nearq_kernels::{kernels, Kernels};

/// Default `(primary, residual)` bits: LVQ-4x8, SVS's default and its advice for d > 200.
pub const DEFAULT_BITS: (u32, u32) = (4, 8);

/// Whether `bits` is a supported `(primary, residual)` pair (`residual` 0 = one level).
pub fn valid_bits(bits: u32, residual: u32) -> bool {
    matches!(bits, 4 | 8) && matches!(residual, 0 | 4 | 8)
}

/// Largest centred coordinate after the pre-scale, about: keeps `l` and `Δ` normal f16.
const PRESCALE_TARGET: f32 = 1024.0;

pub struct Lvq {
    dim: usize,
    metric: Metric,
    bits: u32,
    residual: u32,
    mean: Vec<f32>,
    prescale: f32,
    /// Byte offsets of the primary codes, the residual codes and the end of the code.
    off1: usize,
    off2: usize,
    end2: usize,
    k: &'static Kernels,
}

pub struct LvqQuery {
    z: Vec<f32>,
    /// `z8` in dimension order (8-bit primary), or the weights of the low and high nibbles of
    /// the packed 4-bit codes ([`nearq_kernels::scalar::u4_split_weights`]; 4-bit primary).
    z8: Vec<i8>,
    z8_hi: Vec<i8>,
    /// `z` split like `z8` for the float products with 4-bit levels (empty without one).
    zf_lo: Vec<f32>,
    zf_hi: Vec<f32>,
    /// `ζ/s`: scales the integer dot product `<z8, c>` to `<z, c>/s`.
    zeta_s: f32,
    /// `m·(Σz - ζ·Σz8)/s` with `m = (2^B1 - 1)/2`: centres the rounding error (see `distance`).
    zeta_fix: f32,
    /// `Σz/s` and `Σz`.
    sumz_s: f32,
    sumz: f32,
    /// `‖z‖²` (L2) or `<q, μ>` (IP / cosine).
    base: f32,
}

impl Lvq {
    /// Learns the mean and pre-scale from `data` (row-major, `dim` columns).
    ///
    /// `bits` is the primary level (4 or 8), `residual` the second level (0 = none, 4 or 8);
    /// see [`valid_bits`].
    pub fn train(data: &[f32], dim: usize, metric: Metric, bits: u32, residual: u32) -> Self {
        assert!(
            valid_bits(bits, residual),
            "lvq: unsupported bits {bits}x{residual}"
        );
        let n = data.len() / dim.max(1);
        let mut sum = vec![0f64; dim];
        for row in data.chunks_exact(dim) {
            for (s, &x) in sum.iter_mut().zip(row) {
                *s += x as f64;
            }
        }
        let mean: Vec<f32> = sum.iter().map(|s| (s / n.max(1) as f64) as f32).collect();
        let mut m = 0f32;
        for row in data.chunks_exact(dim) {
            for (&x, &mu) in row.iter().zip(&mean) {
                m = m.max((x - mu).abs());
            }
        }
        Self::with_params(dim, metric, bits, residual, mean, prescale_for(m))
    }

    fn with_params(
        dim: usize,
        metric: Metric,
        bits: u32,
        residual: u32,
        mean: Vec<f32>,
        prescale: f32,
    ) -> Self {
        let off1 = if metric == Metric::L2 { 8 } else { 4 };
        let off2 = off1 + level_bytes(dim, bits);
        let end2 = off2 + level_bytes(dim, residual);
        Lvq {
            dim,
            metric,
            bits,
            residual,
            mean,
            prescale,
            off1,
            off2,
            end2,
            k: kernels(),
        }
    }

    /// `(primary, residual)` bits; residual 0 means one level.
    pub fn bits(&self) -> (u32, u32) {
        (self.bits, self.residual)
    }

    /// The dataset mean the codes are centred on.
    pub fn mean(&self) -> &[f32] {
        &self.mean
    }

    /// A code's quantisation steps in the data's units: `(Δ/s, Δ2/s)` (`Δ2 = 0` for one
    /// level). Decoding is within half of the finest of them per coordinate.
    pub fn steps(&self, code: &[u8]) -> (f32, f32) {
        let (delta, _) = self.constants(code);
        let d = delta / self.prescale;
        let d2 = if self.residual > 0 {
            delta / levels(self.residual) / self.prescale
        } else {
            0.0
        };
        (d, d2)
    }

    /// Decodes the primary level only (what traversal estimates against).
    pub fn decode_primary(&self, code: &[u8], out: &mut [f32]) {
        let (delta, l) = self.constants(code);
        let inv_s = 1.0 / self.prescale;
        let mut c = vec![0u8; self.dim];
        self.get_level(&code[self.off1..self.off2], self.bits, &mut c);
        for ((o, &cj), &m) in out.iter_mut().zip(&c).zip(&self.mean) {
            *o = (delta * cj as f32 + l) * inv_s + m;
        }
    }

    #[inline(always)]
    fn constants(&self, code: &[u8]) -> (f32, f32) {
        (
            f16_to_f32(u16::from_le_bytes([code[0], code[1]])),
            f16_to_f32(u16::from_le_bytes([code[2], code[3]])),
        )
    }

    #[inline(always)]
    fn norm(code: &[u8], at: usize) -> f32 {
        f32::from_le_bytes([code[at], code[at + 1], code[at + 2], code[at + 3]])
    }

    /// `<z, c>` for one level's codes, with the float query.
    #[inline]
    fn dot_float(&self, q: &LvqQuery, codes: &[u8], bits: u32) -> f32 {
        if bits == 8 {
            (self.k.dot_f32_u8)(&q.z, codes)
        } else {
            (self.k.dot_f32_u4_split)(codes, &q.zf_lo, &q.zf_hi)
        }
    }

    /// The traversal distance from the integer product `<z8, c>` of a code.
    #[inline(always)]
    fn finish_dot(&self, q: &LvqQuery, dot: i32, code: &[u8]) -> f32 {
        let (delta, l) = self.constants(code);
        let s = delta * (q.zeta_s * dot as f32 + q.zeta_fix) + l * q.sumz_s;
        self.finish(q, s, code, 4)
    }

    /// [`Encoding::distance`] to several codes of one array: code `i` is
    /// `codes[ids[i] * stride ..][.. code_size]`, its distance goes to `out[i]`. Equal to
    /// `distance` code by code; 4-bit codes go through one gather kernel call.
    pub fn distance_gather(
        &self,
        q: &LvqQuery,
        codes: &[u8],
        stride: usize,
        ids: &[u32],
        out: &mut [f32],
    ) {
        assert_eq!(ids.len(), out.len());
        if self.bits == 4 && codes.len() >= self.off1 {
            const B: usize = 64;
            let (mut dots, mut consts, mut norms) = ([0i32; B], [0u32; B], [0f32; B]);
            let l2 = self.metric == Metric::L2;
            for (ids, out) in ids.chunks(B).zip(out.chunks_mut(B)) {
                let n = ids.len();
                (self.k.dot_u4_i8_split_gather)(
                    &codes[self.off1..],
                    stride,
                    ids,
                    &q.z8,
                    &q.z8_hi,
                    &mut dots[..n],
                );
                // The constants (and L2 norms) gathered first, so that the arithmetic below
                // runs over plain arrays and vectorises.
                for (i, &id) in ids.iter().enumerate() {
                    let c = &codes[id as usize * stride..][..self.off1];
                    consts[i] = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                    if l2 {
                        norms[i] = Self::norm(c, 4);
                    }
                }
                let (zs, zf, ss) = (q.zeta_s, q.zeta_fix, q.sumz_s);
                let sc = dots[..n].iter().zip(&consts[..n]).map(|(&dot, &c)| {
                    let (delta, l) = (f16_to_f32(c as u16), f16_to_f32((c >> 16) as u16));
                    delta * (zs * dot as f32 + zf) + l * ss
                });
                match self.metric {
                    Metric::L2 => {
                        for ((o, s), &nm) in out.iter_mut().zip(sc).zip(&norms[..n]) {
                            *o = (q.base - 2.0 * s + nm).max(0.0);
                        }
                    }
                    m => {
                        for (o, s) in out.iter_mut().zip(sc) {
                            *o = m.from_dot(q.base + s);
                        }
                    }
                }
            }
        } else {
            for (o, &id) in out.iter_mut().zip(ids) {
                let at = id as usize * stride;
                *o = self.distance(q, &codes[at..at + self.off2]);
            }
        }
    }

    #[inline(always)]
    fn finish(&self, q: &LvqQuery, s: f32, code: &[u8], norm_at: usize) -> f32 {
        match self.metric {
            Metric::L2 => (q.base - 2.0 * s + Self::norm(code, norm_at)).max(0.0),
            m => m.from_dot(q.base + s),
        }
    }

    /// Writes one level's codes (`vals[j] ≤ 2^bits - 1`) into `out`.
    fn put_level(vals: &[u8], bits: u32, out: &mut [u8]) {
        if bits == 8 {
            out.copy_from_slice(vals);
        } else {
            nearq_kernels::scalar::pack_u4(vals, out);
        }
    }

    fn get_level(&self, codes: &[u8], bits: u32, out: &mut [u8]) {
        if bits == 8 {
            out.copy_from_slice(codes);
        } else {
            nearq_kernels::scalar::unpack_u4(codes, out);
        }
    }
}

/// `Σ v` accumulated in f64 over 8 interleaved partial sums (no long dependency chain).
fn sum_f64(v: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let mut chunks = v.chunks_exact(8);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x as f64;
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|&x| x as f64).sum();
    acc.iter().sum::<f64>() + tail
}

/// `2^bits - 1` as f32.
fn levels(bits: u32) -> f32 {
    ((1u32 << bits) - 1) as f32
}

/// Bytes of one level's codes (`bits = 0`: no level).
fn level_bytes(dim: usize, bits: u32) -> usize {
    match bits {
        0 => 0,
        4 => dim.div_ceil(2),
        _ => dim,
    }
}

/// The power of two `s` with `s·m` in `(PRESCALE_TARGET/2, PRESCALE_TARGET]`, or 1.
fn prescale_for(m: f32) -> f32 {
    if !(m.is_finite() && m > 0.0) {
        return 1.0;
    }
    let e = (PRESCALE_TARGET / m).log2().floor().clamp(-100.0, 100.0) as i32;
    2f32.powi(e)
}

// ---- float16, only what LVQ's constants need: finite values, directed rounding ----

const F16_MAX_FINITE: u16 = 0x7bff;

/// Exact value of a finite half (normal or subnormal): the bits moved into an f32's place
/// read as `2^-112` times the value.
#[inline(always)]
fn f16_to_f32(h: u16) -> f32 {
    let mag = f32::from_bits(((h & 0x7fff) as u32) << 13) * f32::from_bits(0x7780_0000); // 2^112
    f32::from_bits(mag.to_bits() | ((h as u32 & 0x8000) << 16))
}

/// `x` rounded toward zero to a half, saturating at the largest finite half.
fn f16_trunc(x: f32) -> u16 {
    let sign = ((x.to_bits() >> 16) & 0x8000) as u16;
    let a = x.abs();
    if a.is_nan() || a < 2f32.powi(-24) {
        return sign;
    }
    if a >= 65504.0 {
        return sign | F16_MAX_FINITE;
    }
    let e = (a.to_bits() >> 23) as i32 - 127;
    let man = a.to_bits() & 0x7f_ffff;
    if e >= -14 {
        sign | (((e + 15) as u16) << 10) | ((man >> 13) as u16)
    } else {
        // Subnormal half: units of 2^-24; e in -24..=-15.
        sign | (((0x80_0000 | man) >> (-e - 1)) as u16)
    }
}

/// The next half toward +inf (saturating at the largest finite half).
fn f16_next_up(h: u16) -> u16 {
    match h {
        0x8000 => 0x0001,
        _ if h & 0x8000 != 0 => h - 1,
        _ => (h + 1).min(F16_MAX_FINITE),
    }
}

/// The next half toward -inf (saturating at the most negative finite half).
fn f16_next_down(h: u16) -> u16 {
    match h {
        0x0000 => 0x8001,
        _ if h & 0x8000 == 0 => h - 1,
        _ => (h + 1).min(0x8000 | F16_MAX_FINITE),
    }
}

/// The largest half `≤ x` (saturating).
fn f16_down(x: f32) -> u16 {
    let mut h = f16_trunc(x);
    if f16_to_f32(h) > x {
        h = f16_next_down(h);
    }
    h
}

/// The smallest half `≥ x` (saturating).
fn f16_up(x: f32) -> u16 {
    let mut h = f16_trunc(x);
    if f16_to_f32(h) < x {
        h = f16_next_up(h);
    }
    h
}

impl Encoding for Lvq {
    type Query = LvqQuery;
    const NAME: &'static str = "lvq";
    const TAG: u8 = 3;
    const EXACT: bool = false;

    fn dim(&self) -> usize {
        self.dim
    }
    fn metric(&self) -> Metric {
        self.metric
    }
    fn code_size(&self) -> usize {
        let norm2 = if self.metric == Metric::L2 && self.residual > 0 {
            4
        } else {
            0
        };
        self.end2 + norm2
    }

    fn encode(&self, v: &[f32], out: &mut [u8]) {
        let d = self.dim;
        let s = self.prescale;
        let inv_s = 1.0 / s;
        let y: Vec<f32> = v
            .iter()
            .zip(&self.mean)
            .map(|(&x, &m)| (x - m) * s)
            .collect();
        let (lo, hi) = y
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| {
                (a.min(x), b.max(x))
            });
        let lv = levels(self.bits);
        let lh = f16_down(lo);
        let l = f16_to_f32(lh);
        let mut dh = f16_up((hi - l) / lv);
        while f16_to_f32(dh) * lv + l < hi && dh != F16_MAX_FINITE {
            dh = f16_next_up(dh);
        }
        if dh == 0 {
            dh = 0x0400; // 2^-14, smallest normal half: a constant vector.
        }
        let delta = f16_to_f32(dh);
        out[0..2].copy_from_slice(&dh.to_le_bytes());
        out[2..4].copy_from_slice(&lh.to_le_bytes());

        let mut c = vec![0u8; d];
        let mut rec = vec![0f32; d];
        let mut n1 = 0f64;
        for j in 0..d {
            let cj = ((y[j] - l) / delta).round().clamp(0.0, lv);
            c[j] = cj as u8;
            rec[j] = delta * cj + l;
            let r = (rec[j] * inv_s) as f64;
            n1 += r * r;
        }
        Self::put_level(&c, self.bits, &mut out[self.off1..self.off2]);
        if self.metric == Metric::L2 {
            out[4..8].copy_from_slice(&(n1 as f32).to_le_bytes());
        }
        if self.residual > 0 {
            let l2 = levels(self.residual);
            let delta2 = delta / l2;
            let half = 0.5 * delta;
            let mut n2 = 0f64;
            for j in 0..d {
                let ej = ((y[j] - rec[j] + half) / delta2).round().clamp(0.0, l2);
                c[j] = ej as u8;
                let r = ((rec[j] + delta2 * ej - half) * inv_s) as f64;
                n2 += r * r;
            }
            Self::put_level(&c, self.residual, &mut out[self.off2..self.end2]);
            if self.metric == Metric::L2 {
                out[self.end2..self.end2 + 4].copy_from_slice(&(n2 as f32).to_le_bytes());
            }
        }
    }

    fn decode(&self, code: &[u8], out: &mut [f32]) -> bool {
        let d = self.dim;
        let (delta, l) = self.constants(code);
        let inv_s = 1.0 / self.prescale;
        let mut c = vec![0u8; d];
        self.get_level(&code[self.off1..self.off2], self.bits, &mut c);
        for j in 0..d {
            out[j] = delta * c[j] as f32 + l;
        }
        if self.residual > 0 {
            let delta2 = delta / levels(self.residual);
            let half = 0.5 * delta;
            self.get_level(&code[self.off2..self.end2], self.residual, &mut c);
            for j in 0..d {
                out[j] = out[j] + delta2 * c[j] as f32 - half;
            }
        }
        for (o, &m) in out.iter_mut().zip(&self.mean) {
            *o = *o * inv_s + m;
        }
        true
    }

    fn prepare(&self, q: &[f32]) -> LvqQuery {
        let z: Vec<f32> = if self.metric == Metric::L2 {
            q.iter().zip(&self.mean).map(|(a, m)| a - m).collect()
        } else {
            q.to_vec()
        };
        let zmax = z.iter().fold(0f32, |m, x| m.max(x.abs()));
        let zeta = if zmax > 0.0 { zmax / 127.0 } else { 1.0 };
        // Rounded half away from zero (`as` truncates toward zero), without a libm call.
        let inv_zeta = 1.0 / zeta;
        let z8: Vec<i8> = z
            .iter()
            .map(|&x| {
                let v = (x * inv_zeta).clamp(-127.0, 127.0);
                (v + 0.5f32.copysign(v)) as i8
            })
            .collect();
        let inv_s = 1.0 / self.prescale;
        let sumz = sum_f64(&z) as f32;
        let sumz8: i64 = z8.iter().map(|&x| x as i64).sum();
        let mid = 0.5 * levels(self.bits);
        let base = if self.metric == Metric::L2 {
            (self.k.dot_f32)(&z, &z)
        } else {
            (self.k.dot_f32)(q, &self.mean)
        };
        let (z8, z8_hi) = if self.bits == 4 {
            u4_split(&z8)
        } else {
            (z8, Vec::new())
        };
        let (zf_lo, zf_hi) = if self.bits == 4 || self.residual == 4 {
            u4_split(&z)
        } else {
            (Vec::new(), Vec::new())
        };
        LvqQuery {
            z,
            z8,
            z8_hi,
            zf_lo,
            zf_hi,
            zeta_s: zeta * inv_s,
            zeta_fix: mid * (sumz - zeta * sumz8 as f32) * inv_s,
            sumz_s: sumz * inv_s,
            sumz,
            base,
        }
    }

    /// Traversal estimate from the primary codes with the i8 query (one integer kernel).
    ///
    /// `<z, c> ≈ ζ·<z8, c> + m·(Σz - ζ·Σz8)`, `m = (2^B1 - 1)/2`, is `ζ·<z8, c - m> + m·Σz`:
    /// the rounding error of `z8` meets the centred codes `c - m` rather than `c ≥ 0`, which
    /// makes it 2-3 times smaller at no per-code cost.
    #[inline]
    fn distance(&self, q: &LvqQuery, code: &[u8]) -> f32 {
        let c = &code[self.off1..self.off2];
        let dot = if self.bits == 8 {
            (self.k.dot_u8_i8)(c, &q.z8)
        } else {
            (self.k.dot_u4_i8_split)(c, &q.z8, &q.z8_hi)
        };
        self.finish_dot(q, dot, code)
    }

    const HAS_FINE: bool = true;
    /// At 8 bits or more in all (LVQ-8, 4x4 and finer) the fine distance is precise enough to
    /// pick the few candidates that need their float vectors; LVQ-4 alone is not.
    fn fine_prefilters(&self) -> bool {
        self.bits + self.residual >= 8
    }
    /// The distance to the decoded vector (all levels, float query), up to float rounding.
    #[inline]
    fn distance_fine(&self, q: &LvqQuery, code: &[u8]) -> f32 {
        let (delta, l) = self.constants(code);
        let inv_s = 1.0 / self.prescale;
        let mut t = self.dot_float(q, &code[self.off1..self.off2], self.bits);
        let norm_at = if self.residual > 0 {
            let t2 = self.dot_float(q, &code[self.off2..self.end2], self.residual);
            t += t2 / levels(self.residual) - 0.5 * q.sumz;
            self.end2
        } else {
            4
        };
        let s = (delta * t + l * q.sumz) * inv_s;
        self.finish(q, s, code, norm_at)
    }

    /// 4-bit primaries: one gather kernel call for all the codes.
    fn distance_ids(&self, q: &LvqQuery, codes: &CodeStore, ids: &[u32], out: &mut [f32]) {
        self.distance_gather(q, codes.bytes(), codes.stride(), ids, out);
    }
    /// Traversal reads the constants (and, for L2, the norm) and the primary codes.
    fn traversal_bytes(&self) -> usize {
        self.off2
    }

    fn params_bytes(&self) -> usize {
        self.dim * 4
    }
    fn write_params(&self, w: &mut Writer) {
        w.u32(self.bits);
        w.u32(self.residual);
        w.f32(self.prescale);
        w.f32s(&self.mean);
    }
    fn read_params(r: &mut Reader, dim: usize, metric: Metric) -> Result<Self> {
        let bits = r.u32()?;
        let residual = r.u32()?;
        if !valid_bits(bits, residual) {
            return Err(Error::Format(format!(
                "lvq: unsupported bits {bits}x{residual}"
            )));
        }
        let prescale = r.f32()?;
        let is_pow2 = prescale.is_finite()
            && prescale > 0.0
            && prescale.to_bits() & 0x7f_ffff == 0
            && prescale.is_normal();
        if !is_pow2 {
            return Err(Error::Format(format!(
                "lvq: pre-scale {prescale} is not a power of two"
            )));
        }
        let mean = r.f32s(dim)?;
        if mean.iter().any(|x| !x.is_finite()) {
            return Err(Error::Format("lvq: mean is not finite".into()));
        }
        Ok(Self::with_params(
            dim, metric, bits, residual, mean, prescale,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_round_trip_and_directed_rounding() {
        for h in (0u16..0x7c00).chain(0x8000..0xfc00) {
            let x = f16_to_f32(h);
            assert_eq!(f16_trunc(x), h, "{h:#x} {x}");
            assert_eq!(f16_down(x), h);
            assert_eq!(f16_up(x), h);
        }
        for x in [
            1e-3f32, -1e-3, 3.3, -3.3, 1e-6, -1e-6, 1000.1, -1000.1, 7e-8, -7e-8,
        ] {
            let (d, u) = (f16_to_f32(f16_down(x)), f16_to_f32(f16_up(x)));
            assert!(d < x && x < u, "{d} {x} {u}");
            assert_eq!(f16_next_up(f16_down(x)), f16_up(x), "{x}");
        }
        assert_eq!(f16_to_f32(f16_up(1e9)), 65504.0);
        assert_eq!(f16_to_f32(f16_down(-1e9)), -65504.0);
    }

    #[test]
    fn prescale_is_a_power_of_two_near_the_target() {
        for m in [1e-6f32, 0.3, 1.0, 700.0, 1e7] {
            let s = prescale_for(m);
            assert_eq!(s.to_bits() & 0x7f_ffff, 0);
            assert!(
                s * m <= PRESCALE_TARGET && s * m > PRESCALE_TARGET / 2.0,
                "{m} {s}"
            );
        }
        assert_eq!(prescale_for(0.0), 1.0);
    }
}
