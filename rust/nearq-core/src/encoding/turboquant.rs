//! TurboQuant (ALGORITHMS.md §4): a random rotation followed by a per-coordinate Lloyd–Max
//! scalar quantiser computed from the distribution of a rotated unit vector's coordinates.
//!
//! # Encoding
//!
//! A seeded structured rotation `P` of `R^D` ([`super::rotation`], `D = d` rounded up to a
//! multiple of 64) maps `v` to `y = P·[v, 0...] / ||v||`, a unit vector whose coordinates each
//! follow `f(x) ∝ (1 − x²)^((D−3)/2)` on `[−1, 1]` (≈ N(0, 1/D)). Every coordinate is quantised
//! independently with the `m`-bit codebook that minimises `∫ (x − c(x))² f(x) dx`
//! ([`codebook`]: Lloyd–Max on the exact law for this `D`, by numerical integration, cached
//! per `(D, m)`). Nothing is learnt from the data: encoding is online and needs only the seed.
//!
//! - `mse` variant (`m = b`): `ỹ_j = c[idx_j]`, and `x̃ = ||v||·Pᵀ ỹ` (DeQuant).
//! - `prod` variant (`m = b − 1`, plus one bit): the residual `r = y − ỹ` is sketched with a
//!   second, independent rotation `S` (QJL with orthogonal instead of Gaussian rows):
//!   `s_j = sign((S r)_j)`, `γ = ||r||`. For a Haar-random `S`, `E[<S z, s>] = m_D·<z, r̂>` with
//!   `m_D = D·E|u_1| = D·Γ(D/2) / (√π·Γ((D+1)/2))` (≈ √(2D/π)), so
//!   `<z, r> ≈ γ/m_D · <S z, s>` is unbiased, and so is `<z, y> ≈ <z, ỹ> + γ/m_D·<S z, s>`.
//!   For `b = 1` the MSE stage is empty and this is plain QJL.
//!
//! Code layout (index fields of `m` bits: coordinates `8g..8g+8` packed little-endian into the
//! `m` bytes at `g·m`, coordinate `8g + l` at bits `m·l..m·l+m`; the QJL plane has coordinate
//! `i` at bit `i % 64` of little-endian word `i / 64`):
//!
//! ```text
//! mse:  [indices b·D/8][||v|| f32]
//! prod: [QJL signs D/8][indices (b−1)·D/8][||v|| f32][γ f32]   (a multiple of 8 bytes)
//! ```
//!
//! # Estimator
//!
//! With `q' = P q` prepared once per query, `<q, v> ≈ ||v||·e` where
//!
//! ```text
//! mse:  e = <q', ỹ> / (1 − D_mse(b))
//! prod: e = <q', ỹ> + γ/m_D · (2<z', s01> − Σz'),    z' = S q',  s01 = [s_j > 0]
//! L2:   ||q − v||^2 ≈ ||q||^2 + ||v||^2 − 2||v||·e;   IP / cosine: from `<q, v>`
//! ```
//!
//! The MSE codebook is biased for inner products: because each centroid is its cell's
//! conditional mean, `E[<q', ỹ>] = (1 − D_mse)·<q', y>` over the rotation (`2/π` at 1 bit),
//! and dividing by the codebook's `1 − D_mse` makes the estimate unbiased. That constant does
//! not change rankings for IP or cosine, but for L2 it keeps `||v||^2` and the cross term
//! consistent (the distance to the decoded vector would add a bias that grows with `<q, v>`).
//!
//! # Float and traversal estimates
//!
//! [`TurboQuant::inner_product`] and [`Encoding::distance_fine`] compute `<q', ỹ>` by
//! dequantise-and-FMA over the float codebook and the QJL term from the float `z'`.
//!
//! [`Encoding::distance`] (graph traversal) at 1–4 index bits replaces the codebook by the line
//! through the index, `c_k ≈ λ·t_k` with `t_k = k − (2^m − 1)/2`, and quantises `q'` to i8
//! (`q8_j = round(q'_j/δ)`, `δ = max|q'_j|/127`), so that `<q', ỹ>` is one exact integer dot
//! product of the stored indices with `q8`:
//!
//! ```text
//! <q', ỹ> ≈ (λ/2)·δ·(2·Σ_j q8_j·k_j − (2^m − 1)·Σ_j q8_j)
//! ```
//!
//! computed by the u4×i8 kernel (`dot_u4_i8`, VNNI on AVX-512) directly on the packed 4-bit
//! indices, with `q8` laid out once per query in the kernel's nibble order (1–3-bit indices are
//! widened to nibbles by shifts and masks first). `λ = Σ P_k c_k² / Σ P_k c_k t_k`, with `P_k`
//! the cell probabilities under the coordinate law, gives the line the codebook's correlation
//! with the coordinate, `E[y·λ·t(y)] = E[y·c(y)]`, so both variants stay unbiased (for prod,
//! the QJL term still sketches the residual from the codebook). The line costs accuracy where
//! the codebook is not uniform: it adds `E[(λt − c)²]` to the per-coordinate error (orthogonal
//! to the code's own, since each centroid is its cell's mean), which multiplies the error
//! variance of the mse estimate by 1.00 / 1.01 / 1.19 / 2.0 at 1 / 2 / 3 / 4 bits. Graph search
//! tolerates that, because the candidates are re-ranked with the float vectors or
//! `distance_fine`: on 50k MiniLM-384 vectors (cosine, 4 bits, float re-ranking) recall@10 fell
//! by 0.013–0.017 at ef = 10 and moved by at most 0.003 from ef = 24 on, while `distance` went
//! from about 150 to 18 ns per cached code (`examples/tq_speed.rs`). Codes of 5–8 index bits
//! keep the float codebook (there the line would be coarser than a 4-bit code).
//!
//! Looking the codebook up instead (nibble → int8 value through a 256-entry table of byte pairs,
//! then the u8×i8 kernel) keeps the codebook, but in portable Rust the expansion costs a load
//! and a store per two coordinates: about 110 ns per 384-d code against 200–250 ns for the float
//! path and 6–11 ns for the u8×i8 kernel alone (measured on the same machine). A shuffle-based
//! (`pshufb`/`vpermb`) 16-entry look-up inside a kernel would give the exact codebook at the
//! kernel's speed.
//!
//! The QJL term of `distance` uses `z'` quantised to 4 bits and bit-plane popcounts
//! (`and_popcount_u64`), as RaBitQ's 1-bit path. `HAS_FINE` is set: an index without float
//! vectors re-ranks its candidates with `distance_fine`.

use super::rabitq::{bitplane_dot, sum_min_max};
use super::rotation::{wide, Rotation, ROUNDS};
use super::Encoding;
use crate::error::{Error, Result};
use crate::io::{Reader, Writer};
use crate::metric::Metric;
use crate::storage::CodeStore;
use nearq_kernels::{kernels, Kernels};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Default bits per coordinate.
pub const DEFAULT_BITS: u32 = 4;
/// Bits per query coordinate for the traversal estimate of the QJL term.
pub const QUERY_BITS: u32 = 4;
/// Seed offset of the QJL rotation `S` (independent of `P`).
const QJL_SEED: u64 = 0x0051_AC7E_715E_ED00;

/// Which TurboQuant quantiser.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Variant {
    /// `b`-bit MSE-optimal codes (TurboQuant_mse).
    Mse,
    /// `(b−1)`-bit MSE codes plus a 1-bit QJL sketch of the residual (TurboQuant_prod):
    /// unbiased inner products.
    Prod,
}

impl Variant {
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "mse" => Ok(Variant::Mse),
            "prod" | "ip" => Ok(Variant::Prod),
            _ => Err(Error::param(
                "variant",
                format!("unknown turboquant variant {s:?}; expected \"mse\" or \"prod\""),
            )),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Variant::Mse => "mse",
            Variant::Prod => "prod",
        }
    }
    fn tag(self) -> u8 {
        match self {
            Variant::Mse => 0,
            Variant::Prod => 1,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Codebooks

/// The Lloyd–Max codebook of one coordinate of a uniform unit vector in `R^dim`, in units of
/// `1/√dim` (so the values are comparable across dimensions with the Gaussian-limit table).
#[derive(Clone, Debug)]
pub struct Codebook {
    pub dim: usize,
    pub bits: u32,
    /// `2^bits` ascending centroids × √dim (symmetric about 0).
    pub centroids: Vec<f64>,
    /// `2^bits − 1` ascending cell boundaries × √dim (midpoints of consecutive centroids).
    pub boundaries: Vec<f64>,
    /// `dim·C(f_X, bits)`: the expected `||x − x̃||^2` of a unit vector.
    pub mse: f64,
    /// Largest `|c_i − E[x | cell i]|` (× √dim) at exit: the fixed-point residual.
    pub residual: f64,
    pub iterations: usize,
}

/// Cumulative moments `∫_0^u t^k g(t) dt` (k = 0, 1, 2) of the unnormalised density
/// `g(u) = (1 − u²/dim)^((dim−3)/2)` of `u = x·√dim` on a fine grid of `[0, upper]`.
struct HalfDensity {
    dim: f64,
    upper: f64,
    h: f64,
    cum: Vec<[f64; 3]>,
}

/// 3-point Gauss–Legendre nodes and weights on `[−1, 1]` (exact to degree 5).
const GL3: [(f64, f64); 3] = [
    (-0.774_596_669_241_483_4, 5.0 / 9.0),
    (0.0, 8.0 / 9.0),
    (0.774_596_669_241_483_4, 5.0 / 9.0),
];
const GRID: usize = 1 << 16;

impl HalfDensity {
    fn new(dim: usize) -> Self {
        let d = dim as f64;
        // Beyond 20 standard deviations the Gaussian-like tail is below e^-200.
        let upper = d.sqrt().min(20.0);
        let h = upper / GRID as f64;
        let mut s = HalfDensity {
            dim: d,
            upper,
            h,
            cum: Vec::with_capacity(GRID + 1),
        };
        let mut acc = [0.0f64; 3];
        s.cum.push(acc);
        for k in 0..GRID {
            let m = s.segment(k as f64 * h, (k + 1) as f64 * h);
            for (a, x) in acc.iter_mut().zip(m) {
                *a += x;
            }
            s.cum.push(acc);
        }
        s
    }

    #[inline]
    fn g(&self, u: f64) -> f64 {
        let t = -u * u / self.dim;
        if t <= -1.0 {
            0.0
        } else {
            (0.5 * (self.dim - 3.0) * t.ln_1p()).exp()
        }
    }

    fn segment(&self, a: f64, b: f64) -> [f64; 3] {
        let (m, r) = (0.5 * (a + b), 0.5 * (b - a));
        let mut out = [0.0; 3];
        for &(x, w) in &GL3 {
            let u = m + r * x;
            let f = w * r * self.g(u);
            out[0] += f;
            out[1] += f * u;
            out[2] += f * u * u;
        }
        out
    }

    /// `∫_0^t u^k g(u) du` for k = 0, 1, 2.
    fn at(&self, t: f64) -> [f64; 3] {
        let t = t.clamp(0.0, self.upper);
        let k = ((t / self.h) as usize).min(GRID - 1);
        let base = self.cum[k];
        let p = self.segment(k as f64 * self.h, t);
        [base[0] + p[0], base[1] + p[1], base[2] + p[2]]
    }
}

/// Solves the Lloyd–Max fixed point for `bits` bits in dimension `dim` (`dim >= 3`).
///
/// The optimum is symmetric, so only the positive half is solved (the middle boundary is 0).
/// It starts from the high-resolution (Panter–Dite) allocation — cell boundaries at equal
/// quantiles of `g^(1/3)` — and alternates conditional means and midpoints until the centroids
/// move less than `1e-12`.
pub fn lloyd_max(dim: usize, bits: u32) -> Codebook {
    assert!(dim >= 3 && bits <= 8, "lloyd_max: dim >= 3 and bits <= 8");
    if bits == 0 {
        return Codebook {
            dim,
            bits,
            centroids: vec![0.0],
            boundaries: vec![],
            mse: 1.0,
            residual: 0.0,
            iterations: 0,
        };
    }
    let dens = HalfDensity::new(dim);
    let n = 1usize << (bits - 1);
    // Panter–Dite start: quantiles of g^(1/3) on the grid.
    let mut t = vec![0.0f64; n + 1];
    {
        let mut c13 = Vec::with_capacity(GRID + 1);
        let mut acc = 0.0;
        c13.push(0.0);
        for k in 0..GRID {
            acc += dens.g((k as f64 + 0.5) * dens.h).cbrt() * dens.h;
            c13.push(acc);
        }
        let mut k = 0;
        for (i, ti) in t.iter_mut().enumerate().take(n).skip(1) {
            let target = acc * i as f64 / n as f64;
            while c13[k + 1] < target {
                k += 1;
            }
            let frac = (target - c13[k]) / (c13[k + 1] - c13[k]).max(f64::MIN_POSITIVE);
            *ti = (k as f64 + frac) * dens.h;
        }
        t[n] = dens.upper;
    }
    let mut bounds: Vec<[f64; 3]> = t.iter().map(|&x| dens.at(x)).collect();
    let cond_mean = |b: &[[f64; 3]], lo: f64, hi: f64, i: usize| -> f64 {
        let m0 = b[i + 1][0] - b[i][0];
        if m0 > 0.0 {
            (b[i + 1][1] - b[i][1]) / m0
        } else {
            0.5 * (lo + hi)
        }
    };
    let mut c: Vec<f64> = (0..n)
        .map(|i| cond_mean(&bounds, t[i], t[i + 1], i))
        .collect();
    let mut residual = f64::INFINITY;
    let mut iterations = 0;
    while iterations < 200_000 && residual > 1e-12 {
        iterations += 1;
        for i in 1..n {
            t[i] = 0.5 * (c[i - 1] + c[i]);
            bounds[i] = dens.at(t[i]);
        }
        residual = 0.0;
        for i in 0..n {
            let m = cond_mean(&bounds, t[i], t[i + 1], i);
            residual = f64::max(residual, (m - c[i]).abs());
            c[i] = m;
        }
    }
    // Distortion: 2·Σ ∫_cell (u − c)^2 g / (2·∫_0^upper g).
    let total = bounds[n][0];
    let mut err = 0.0;
    for i in 0..n {
        let (lo, hi) = (bounds[i], bounds[i + 1]);
        let (m0, m1, m2) = (hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]);
        err += m2 - 2.0 * c[i] * m1 + c[i] * c[i] * m0;
    }
    let mut centroids: Vec<f64> = c.iter().rev().map(|x| -x).collect();
    centroids.extend_from_slice(&c);
    let mut boundaries: Vec<f64> = t[1..n].iter().rev().map(|x| -x).collect();
    boundaries.push(0.0);
    boundaries.extend_from_slice(&t[1..n]);
    Codebook {
        dim,
        bits,
        centroids,
        boundaries,
        mse: err / total,
        residual,
        iterations,
    }
}

/// The codebook for `(dim, bits)`, solved once per process and cached.
pub fn codebook(dim: usize, bits: u32) -> Arc<Codebook> {
    type Cache = Mutex<HashMap<(usize, u32), Arc<Codebook>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(cb) = cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&(dim, bits))
    {
        return cb.clone();
    }
    let cb = Arc::new(lloyd_max(dim, bits));
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry((dim, bits))
        .or_insert(cb)
        .clone()
}

/// `m_D = D·E|u_1|` for `u` uniform on the unit sphere of `R^D`:
/// `D·Γ(D/2) / (√π·Γ((D+1)/2))`, by the recursion `R(D+2) = R(D)·D/(D+1)` on
/// `R(D) = Γ(D/2)/Γ((D+1)/2)`.
pub fn sign_mean(dim: usize) -> f64 {
    let sqrt_pi = std::f64::consts::PI.sqrt();
    let (mut r, mut d) = if dim % 2 == 1 {
        (sqrt_pi, 1usize)
    } else {
        (2.0 / sqrt_pi, 2usize)
    };
    while d < dim {
        r *= d as f64 / (d + 1) as f64;
        d += 2;
    }
    dim as f64 * r / sqrt_pi
}

// ---------------------------------------------------------------------------------------------
// The encoding

pub struct TurboQuant {
    dim: usize,
    metric: Metric,
    bits: u32,
    variant: Variant,
    pad: usize,
    seed: u64,
    rot: Rotation,
    /// The QJL rotation `S` (prod only).
    qjl: Option<Rotation>,
    /// Bits of the MSE index per coordinate (`bits` or `bits − 1`).
    mbits: u32,
    /// Centroids divided by `√pad` (the values of unit-vector coordinates), padded to 256
    /// entries so an 8-bit index needs no bounds check.
    table: Box<[f32; 256]>,
    /// `2^mbits − 1` boundaries divided by `√pad`.
    bounds: Vec<f32>,
    /// The bounds of a code of at most 4 index bits padded with +inf to 16: a cell is then the
    /// count of bounds below the coordinate, 16 compares that vectorise, instead of a binary
    /// search whose branches mispredict on every coordinate.
    bounds16: Option<[f32; 16]>,
    /// Traversal at `mbits` 1..=4 (see the module docs): the codebook replaced by the line
    /// `λ·(idx − (2^mbits − 1)/2)` through the index, so that
    /// `<q', ỹ> ≈ lin_scale·q8_step·(2·Σ q8_j·idx_j − (2^mbits − 1)·Σ q8_j)` with
    /// `lin_scale = λ/2`. 0 where traversal uses the float codebook (5–8 bits).
    lin_scale: f32,
    /// `1/(1 − D_mse)` for mse (the inner-product debiasing factor), 1 for prod.
    ip_scale: f32,
    /// `1/m_D` (prod).
    qjl_scale: f32,
    k: &'static Kernels,
}

/// A query prepared for scoring many codes.
pub struct TurboQuantQuery {
    /// `q' = P q` (length `pad`).
    qr: Vec<f32>,
    /// `q'` quantised to i8 with step `q8_step`, in the dimension order of the u4×i8 kernel
    /// (see `prepare`); empty where traversal uses the float codebook.
    q8: Vec<i8>,
    q8_step: f32,
    /// The same weights split by nibble for the gather kernel (mse at 4 bits): `q8_lo[j]`
    /// multiplies the low nibble of index byte `j` (coordinate `2j`), `q8_hi[j]` the high one
    /// (coordinate `2j + 1`).
    q8_lo: Vec<i8>,
    q8_hi: Vec<i8>,
    /// `Σ q8`.
    q8_sum: i32,
    /// The traversal estimate of the mse variant at 4 bits in one step:
    /// `e = lin_mul·(2·Σ q8_j·idx_j − lin_off)`.
    lin_mul: f32,
    lin_off: i64,
    /// The indices of one code widened to 4 bits (traversal at 1–3 bits).
    nibbles: RefCell<Vec<u8>>,
    /// `||q||^2`.
    qn2: f32,
    /// `z' = S q'` (prod; empty for mse).
    z: Vec<f32>,
    sum_z: f32,
    /// 4-bit planes of `z'` quantised on `[vl, vl + 15·delta]`.
    planes: Vec<u64>,
    delta: f32,
    vl: f32,
}

#[inline(always)]
fn rd_f32(code: &[u8], at: usize) -> f32 {
    f32::from_le_bytes([code[at], code[at + 1], code[at + 2], code[at + 3]])
}

/// `Σ_j table[idx_j]·q_j` over `m`-bit indices packed 8 coordinates per `m` bytes.
#[inline(always)]
fn dot_packed<const M: usize>(table: &[f32; 256], q: &[f32], idx: &[u8]) -> f32 {
    let mask = (1u64 << M) - 1;
    let mut acc = [0.0f32; 8];
    for (g, qc) in idx.chunks_exact(M).zip(q.chunks_exact(8)) {
        let mut buf = [0u8; 8];
        buf[..M].copy_from_slice(g);
        let w = u64::from_le_bytes(buf);
        for l in 0..8 {
            acc[l] += table[((w >> (M * l)) & mask) as usize] * qc[l];
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// Widens `M`-bit indices (M = 1, 2, 3; 8 coordinates per `M` bytes, see the code layout) to
/// the 4-bit layout (coordinate `2i` in the low and `2i + 1` in the high nibble of byte `i`),
/// 16 coordinates per step by shifts and masks: each step moves the upper half of every lane
/// into the lower half of the next, doubling the field spacing.
#[inline(always)]
fn widen_to_nibbles<const M: usize>(idx: &[u8], out: &mut [u8]) {
    for (g, o) in idx.chunks_exact(2 * M).zip(out.chunks_exact_mut(8)) {
        let mut buf = [0u8; 8];
        buf[..2 * M].copy_from_slice(g);
        let mut t = u64::from_le_bytes(buf);
        match M {
            1 => {
                // 2 × 8 one-bit fields → 32-bit lanes → 16 → 8 → 4-bit fields.
                t = (t | t << 24) & 0x0000_00FF_0000_00FF;
                t = (t | t << 12) & 0x000F_000F_000F_000F;
                t = (t | t << 6) & 0x0303_0303_0303_0303;
                t = (t | t << 3) & 0x1111_1111_1111_1111;
            }
            2 => {
                t = (t | t << 16) & 0x0000_FFFF_0000_FFFF;
                t = (t | t << 8) & 0x00FF_00FF_00FF_00FF;
                t = (t | t << 4) & 0x0F0F_0F0F_0F0F_0F0F;
                t = (t | t << 2) & 0x3333_3333_3333_3333;
            }
            _ => {
                t = (t & 0x00FF_FFFF) | (t & 0xFFFF_FF00_0000) << 8;
                t = (t & 0x0000_0FFF_0000_0FFF) | (t & 0x00FF_F000_00FF_F000) << 4;
                t = (t & 0x003F_003F_003F_003F) | (t & 0x0FC0_0FC0_0FC0_0FC0) << 2;
                t = (t & 0x0707_0707_0707_0707) | (t & 0x3838_3838_3838_3838) << 1;
            }
        }
        o.copy_from_slice(&t.to_le_bytes());
    }
}

/// Probability of each cell of `centroids` (unit-vector coordinate values, ascending; cells
/// bounded by the midpoints) under the law of one coordinate of a uniform unit vector in
/// `R^pad`: composite Simpson integration of `(1 − u²/pad)^((pad−3)/2)` in `u = x·√pad`
/// (cut at 20 standard deviations, like [`lloyd_max`]).
fn cell_probs(pad: usize, centroids: &[f32]) -> Vec<f64> {
    let d = pad as f64;
    let upper = d.sqrt().min(20.0);
    let g = |u: f64| {
        let t = -u * u / d;
        if t <= -1.0 {
            0.0
        } else {
            (0.5 * (d - 3.0) * t.ln_1p()).exp()
        }
    };
    let simpson = |a: f64, b: f64| {
        const N: usize = 512;
        let h = (b - a) / N as f64;
        let inner: f64 = (1..N)
            .map(|i| if i % 2 == 1 { 4.0 } else { 2.0 } * g(a + i as f64 * h))
            .sum();
        (g(a) + g(b) + inner) * h / 3.0
    };
    let sq = d.sqrt();
    let mut edges = vec![-upper];
    edges.extend(
        centroids
            .windows(2)
            .map(|w| (0.5 * (w[0] as f64 + w[1] as f64) * sq).clamp(-upper, upper)),
    );
    edges.push(upper);
    let p: Vec<f64> = edges.windows(2).map(|e| simpson(e[0], e[1])).collect();
    let total: f64 = p.iter().sum();
    p.into_iter().map(|x| x / total).collect()
}

/// `Σ_j s_j·z_j` with `s_j = ±1` from the bit plane (`2<s01, z> − Σz`), in float.
fn signed_sum(plane: &[u8], z: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (&byte, zc) in plane.iter().zip(z.chunks_exact(8)) {
        for l in 0..8 {
            let v = zc[l];
            acc[l] += if (byte >> l) & 1 == 1 { v } else { -v };
        }
    }
    acc.iter().sum()
}

impl TurboQuant {
    /// An encoder for `dim`-dimensional vectors with `bits` (1..=8) bits per coordinate.
    pub fn new(dim: usize, metric: Metric, bits: u32, variant: Variant, seed: u64) -> Self {
        assert!((1..=8).contains(&bits), "TurboQuant bits must be in 1..=8");
        assert!(dim > 0);
        let pad = dim.div_ceil(64) * 64;
        let rot = Rotation::new(pad, seed);
        let qjl = (variant == Variant::Prod).then(|| Rotation::new(pad, seed ^ QJL_SEED));
        let mbits = match variant {
            Variant::Mse => bits,
            Variant::Prod => bits - 1,
        };
        let cb = codebook(pad, mbits);
        let s = 1.0 / (pad as f64).sqrt();
        let centroids: Vec<f32> = cb.centroids.iter().map(|&c| (c * s) as f32).collect();
        let ip_scale = match variant {
            Variant::Mse => (1.0 / (1.0 - cb.mse)) as f32,
            Variant::Prod => 1.0,
        };
        Self::assemble(
            dim, metric, bits, variant, seed, rot, qjl, &centroids, ip_scale,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        dim: usize,
        metric: Metric,
        bits: u32,
        variant: Variant,
        seed: u64,
        rot: Rotation,
        qjl: Option<Rotation>,
        centroids: &[f32],
        ip_scale: f32,
    ) -> Self {
        let pad = rot.pad();
        let mbits = match variant {
            Variant::Mse => bits,
            Variant::Prod => bits - 1,
        };
        let mut table = Box::new([0.0f32; 256]);
        table[..centroids.len()].copy_from_slice(centroids);
        let bounds: Vec<f32> = centroids.windows(2).map(|w| 0.5 * (w[0] + w[1])).collect();
        // The line `lin·t_k`, `t_k = k − (2^m − 1)/2`, with the same correlation with the
        // coordinate as the codebook: E[y·lin·t(y)] = E[y·c(y)] = Σ P_k c_k² (each centroid is
        // its cell's mean), so every expectation the estimators rely on is unchanged.
        let lin_scale = if (1..=4).contains(&mbits) {
            let p = cell_probs(pad, centroids);
            let mid = ((1u32 << mbits) - 1) as f64 / 2.0;
            let (mut cc, mut ct) = (0.0f64, 0.0f64);
            for (k, (&pk, &c)) in p.iter().zip(centroids).enumerate() {
                cc += pk * c as f64 * c as f64;
                ct += pk * c as f64 * (k as f64 - mid);
            }
            (0.5 * cc / ct) as f32
        } else {
            0.0
        };
        TurboQuant {
            dim,
            metric,
            bits,
            variant,
            pad,
            seed,
            rot,
            qjl,
            mbits,
            table,
            bounds16: (bounds.len() <= 16).then(|| {
                let mut b = [f32::INFINITY; 16];
                b[..bounds.len()].copy_from_slice(&bounds);
                b
            }),
            bounds,
            lin_scale,
            ip_scale,
            qjl_scale: (1.0 / sign_mean(pad)) as f32,
            k: kernels(),
        }
    }

    pub fn bits(&self) -> u32 {
        self.bits
    }
    pub fn variant(&self) -> Variant {
        self.variant
    }
    pub fn seed(&self) -> u64 {
        self.seed
    }
    /// Padded (rotated) dimension `D`.
    pub fn padded_dim(&self) -> usize {
        self.pad
    }
    /// The MSE-stage centroids in use (values of unit-vector coordinates, ascending).
    pub fn centroids(&self) -> &[f32] {
        &self.table[..1 << self.mbits]
    }

    #[inline(always)]
    fn plane_bytes(&self) -> usize {
        if self.variant == Variant::Prod {
            self.pad / 8
        } else {
            0
        }
    }
    #[inline(always)]
    fn idx_bytes(&self) -> usize {
        self.mbits as usize * self.pad / 8
    }
    #[inline(always)]
    fn norm_offset(&self) -> usize {
        self.plane_bytes() + self.idx_bytes()
    }

    /// `<q', ỹ>` from the packed indices.
    #[inline(always)]
    fn dot_mse(&self, q: &[f32], code: &[u8]) -> f32 {
        let idx = &code[self.plane_bytes()..self.norm_offset()];
        let t = &*self.table;
        match self.mbits {
            0 => 0.0,
            1 => dot_packed::<1>(t, q, idx),
            2 => dot_packed::<2>(t, q, idx),
            3 => dot_packed::<3>(t, q, idx),
            4 => dot_packed::<4>(t, q, idx),
            5 => dot_packed::<5>(t, q, idx),
            6 => dot_packed::<6>(t, q, idx),
            7 => dot_packed::<7>(t, q, idx),
            _ => dot_packed::<8>(t, q, idx),
        }
    }

    /// `<q', ỹ>` for traversal, on the line through the index (see the module docs): one exact
    /// u4×i8 kernel call over the packed 4-bit indices (1–3-bit indices are widened to 4 bits
    /// first). Codes of 5–8 bits use the float codebook.
    #[inline(always)]
    fn dot_mse_fast(&self, q: &TurboQuantQuery, code: &[u8]) -> f32 {
        if self.lin_scale == 0.0 {
            return self.dot_mse(&q.qr, code);
        }
        let idx = &code[self.plane_bytes()..self.norm_offset()];
        let dot = if self.mbits == 4 {
            (self.k.dot_u4_i8)(idx, &q.q8)
        } else {
            let mut nib = q.nibbles.borrow_mut();
            match self.mbits {
                1 => widen_to_nibbles::<1>(idx, &mut nib),
                2 => widen_to_nibbles::<2>(idx, &mut nib),
                _ => widen_to_nibbles::<3>(idx, &mut nib),
            }
            (self.k.dot_u4_i8)(&nib, &q.q8)
        };
        let top = (1i64 << self.mbits) - 1;
        let s = 2 * dot as i64 - top * q.q8_sum as i64;
        self.lin_scale * q.q8_step * s as f32
    }

    /// The rotated-space inner-product estimate `e` (see the module docs).
    #[inline(always)]
    fn estimate(&self, q: &TurboQuantQuery, code: &[u8], fine: bool) -> f32 {
        let mse = if fine {
            self.dot_mse(&q.qr, code)
        } else {
            self.dot_mse_fast(q, code)
        };
        match self.variant {
            Variant::Mse => self.ip_scale * mse,
            Variant::Prod => {
                let pb = self.pad / 8;
                let plane = &code[..pb];
                let signed = if fine {
                    signed_sum(plane, &q.z)
                } else {
                    let w = self.pad / 64;
                    let bq = bitplane_dot(self.k, plane, &q.planes, w);
                    let pop: u32 = plane.iter().map(|b| b.count_ones()).sum();
                    2.0 * (q.delta * bq as f32 + q.vl * pop as f32) - q.sum_z
                };
                let gamma = rd_f32(code, self.norm_offset() + 4);
                mse + gamma * self.qjl_scale * signed
            }
        }
    }

    #[inline(always)]
    fn finish(&self, q: &TurboQuantQuery, code: &[u8], e: f32) -> f32 {
        let norm = rd_f32(code, self.norm_offset());
        let ip = norm * e;
        match self.metric {
            Metric::L2 => (q.qn2 + norm * norm - 2.0 * ip).max(0.0),
            m => m.from_dot(ip),
        }
    }

    /// [`Encoding::distance`] for every case but mse at 4 bits.
    #[inline(never)]
    fn distance_other(&self, q: &TurboQuantQuery, code: &[u8]) -> f32 {
        let e = self.estimate(q, code, false);
        self.finish(q, code, e)
    }

    /// Unbiased (prod) or debiased (mse) estimate of `<q, v>` from the float query (for tests
    /// and diagnostics).
    pub fn inner_product(&self, q: &TurboQuantQuery, code: &[u8]) -> f32 {
        rd_f32(code, self.norm_offset()) * self.estimate(q, code, true)
    }

    /// [`Encoding::encode`] compiled with AVX2 enabled: the same operations in the same order
    /// (bit-identical codes, see `rotation::Wide`), vectorised 8 wide.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn encode_avx2(&self, v: &[f32], out: &mut [u8]) {
        self.encode_with(v, out)
    }

    /// The encoder (see the module docs). Cells of codes of at most 4 index bits are counted
    /// against the sorted bounds eight coordinates at a time (vectorised compares, the same
    /// counts as [`TurboQuant::cell`]); the rotation runs in a stack buffer.
    #[inline(always)]
    fn encode_with(&self, v: &[f32], out: &mut [u8]) {
        let d = self.pad;
        let mut stack = [0.0f32; 1024];
        let mut heap = Vec::new();
        let y: &mut [f32] = if d <= stack.len() {
            &mut stack[..d]
        } else {
            heap.resize(d, 0.0f32);
            &mut heap
        };
        self.rot.apply(v, y);
        let norm = y.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
        if norm > 0.0 {
            let inv = (1.0 / norm) as f32;
            y.iter_mut().for_each(|x| *x *= inv);
        }
        out.fill(0);
        let (pb, m) = (self.plane_bytes(), self.mbits as usize);
        let mut resid = Vec::new();
        if self.variant == Variant::Prod {
            resid.resize(d, 0.0f32);
        }
        if m > 0 {
            let counted = self.bounds16.as_ref().map(|b| &b[..(1 << m) - 1]);
            for (g, yc) in y.chunks_exact(8).enumerate() {
                let yc: &[f32; 8] = yc.try_into().expect("pad is a multiple of 8");
                let mut c = [0u32; 8];
                match counted {
                    Some(bounds) => {
                        for &b in bounds {
                            for (c, &x) in c.iter_mut().zip(yc) {
                                *c += (b < x) as u32;
                            }
                        }
                    }
                    None => {
                        for (c, &x) in c.iter_mut().zip(yc) {
                            *c = self.bounds.partition_point(|&b| b < x) as u32;
                        }
                    }
                }
                let mut w = 0u64;
                for (l, &c) in c.iter().enumerate() {
                    w |= (c as u64) << (m * l);
                }
                if let Some(r) = resid.get_mut(8 * g..8 * g + 8) {
                    for ((r, &x), &c) in r.iter_mut().zip(yc).zip(&c) {
                        *r = x - self.table[c as usize];
                    }
                }
                out[pb + g * m..pb + (g + 1) * m].copy_from_slice(&w.to_le_bytes()[..m]);
            }
        } else {
            resid.copy_from_slice(y);
        }
        self.write_tail(norm as f32, &resid, out);
    }

    /// Writes the norm and, for the inner-product variant, the QJL sign bits of the residual
    /// `resid` (in the rotated space) and its norm `gamma`.
    fn write_tail(&self, norm: f32, resid: &[f32], out: &mut [u8]) {
        let no = self.norm_offset();
        out[no..no + 4].copy_from_slice(&norm.to_le_bytes());
        if let Some(s) = &self.qjl {
            let gamma = resid
                .iter()
                .map(|&x| x as f64 * x as f64)
                .sum::<f64>()
                .sqrt();
            let mut sr = vec![0.0f32; resid.len()];
            s.apply(resid, &mut sr);
            for (i, &x) in sr.iter().enumerate() {
                if x > 0.0 {
                    out[i / 8] |= 1 << (i % 8);
                }
            }
            out[no + 4..no + 8].copy_from_slice(&(gamma as f32).to_le_bytes());
        }
    }

    /// [`Encoding::prepare`] compiled with AVX2 enabled (the same operations, see
    /// `rotation::Wide`).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn prepare_avx2(&self, q: &[f32]) -> TurboQuantQuery {
        self.prepare_with(q)
    }

    /// The query preparation (see [`TurboQuantQuery`]).
    #[inline(always)]
    fn prepare_with(&self, q: &[f32]) -> TurboQuantQuery {
        let d = self.pad;
        let mut qr = vec![0.0f32; d];
        self.rot.apply(q, &mut qr);
        let qn2 = (self.k.dot_f32)(q, q);
        let (mut q8, mut q8_step, mut q8_sum, mut nibbles) = (Vec::new(), 0.0, 0, Vec::new());
        let (mut q8_lo, mut q8_hi) = (Vec::new(), Vec::new());
        if self.lin_scale != 0.0 {
            // Eight running maxima (independent, so they vectorise); the maximum does not depend
            // on the order (NaN is skipped by `max` either way).
            let mut m8 = [0.0f32; 8];
            for c in qr.chunks_exact(8) {
                for (m, x) in m8.iter_mut().zip(c) {
                    *m = m.max(x.abs());
                }
            }
            let qmax = m8.iter().fold(0.0f32, |m, &x| m.max(x));
            q8_step = if qmax > 0.0 && qmax.is_finite() {
                qmax / 127.0
            } else {
                1.0
            };
            let inv = 1.0 / q8_step;
            // |x·inv| <= 127; rounds half away from zero without a libm call (`round` is not
            // an instruction before SSE4.1).
            let quant = |x: f32| {
                let v = x * inv;
                (v + 0.5f32.copysign(v)) as i32 as i8
            };
            // The u4 kernel's dimension order ([`nearq_kernels::scalar::u4_position`]: byte `j`
            // of a 64-dimension block holds dimensions `j` and `j + 32`) against the code's
            // (byte `j` holds coordinates `2j` and `2j + 1`): per 64-coordinate block (`pad` is
            // a multiple of 64), the even coordinates, then the odd ones.
            q8 = vec![0i8; d];
            for (o, x) in q8.chunks_exact_mut(64).zip(qr.chunks_exact(64)) {
                let (lo, hi) = o.split_at_mut(32);
                for (j, (l, h)) in lo.iter_mut().zip(hi.iter_mut()).enumerate() {
                    *l = quant(x[2 * j]);
                    *h = quant(x[2 * j + 1]);
                }
            }
            q8_sum = q8.iter().map(|&v| v as i32).sum();
            if self.variant == Variant::Mse && self.mbits == 4 {
                // `q8` is in the kernel's dimension order already, so this pairs weight `j`
                // with the low nibble of byte `j` and weight `j + 32` (of its block) with the
                // high one: coordinates `2j` and `2j + 1` of the code.
                (q8_lo, q8_hi) = nearq_kernels::scalar::u4_split(&q8);
            }
            if self.mbits < 4 {
                nibbles = vec![0u8; d / 2];
            }
        }
        let lin_mul = self.lin_scale * q8_step * self.ip_scale;
        let lin_off = ((1i64 << self.mbits) - 1) * q8_sum as i64;
        let mut out = TurboQuantQuery {
            qr,
            q8,
            q8_step,
            q8_lo,
            q8_hi,
            q8_sum,
            lin_mul,
            lin_off,
            nibbles: RefCell::new(nibbles),
            qn2,
            z: Vec::new(),
            sum_z: 0.0,
            planes: Vec::new(),
            delta: 0.0,
            vl: 0.0,
        };
        if let Some(s) = &self.qjl {
            let mut z = vec![0.0f32; d];
            s.apply(&out.qr, &mut z);
            let (sum_z, vl, vr) = sum_min_max(&z);
            let levels = ((1u32 << QUERY_BITS) - 1) as f32;
            let delta = (vr - vl) / levels;
            let delta = if delta > 0.0 && delta.is_finite() {
                delta
            } else {
                0.0
            };
            let w = d / 64;
            let mut planes = vec![0u64; QUERY_BITS as usize * w];
            if delta > 0.0 {
                let inv = 1.0 / delta;
                for (i, &x) in z.iter().enumerate() {
                    // x − vl ≥ 0: adding ½ and truncating rounds to nearest.
                    let u = (((x - vl) * inv + 0.5) as u32).min(levels as u32);
                    for (b, p) in planes.chunks_exact_mut(w).enumerate() {
                        p[i / 64] |= ((u >> b) as u64 & 1) << (i % 64);
                    }
                }
            }
            out.z = z;
            out.sum_z = sum_z;
            out.planes = planes;
            out.delta = delta;
            out.vl = vl;
        }
        out
    }

    /// Index of the cell of `x` (a unit-vector coordinate), one coordinate at a time (the
    /// definition the encoder's counted cells are tested against).
    #[cfg(test)]
    #[inline(always)]
    fn cell(&self, x: f32) -> u8 {
        match &self.bounds16 {
            // The bounds are sorted, so the count is the partition point (NaN: 0 either way).
            Some(b) => b.iter().map(|&b| (b < x) as u8).sum(),
            None => self.bounds.partition_point(|&b| b < x) as u8,
        }
    }
}

impl Encoding for TurboQuant {
    type Query = TurboQuantQuery;
    const NAME: &'static str = "turboquant";
    const TAG: u8 = 5;
    const EXACT: bool = false;

    fn dim(&self) -> usize {
        self.dim
    }
    fn metric(&self) -> Metric {
        self.metric
    }
    fn code_size(&self) -> usize {
        self.norm_offset()
            + match self.variant {
                Variant::Mse => 4,
                Variant::Prod => 8,
            }
    }
    fn encode(&self, v: &[f32], out: &mut [u8]) {
        match wide() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `wide()` answers `Avx2` only where AVX2 is available (see there).
            super::rotation::Wide::Avx2 => unsafe { self.encode_avx2(v, out) },
            _ => self.encode_with(v, out),
        }
    }
    /// `x̃ = ||v||·Pᵀ ỹ`, with `ỹ = c[idx]` (+ `γ/m_D·Sᵀ s` for prod: the QJL reconstruction).
    fn decode(&self, code: &[u8], out: &mut [f32]) -> bool {
        let d = self.pad;
        let (pb, m) = (self.plane_bytes(), self.mbits as usize);
        let mut y = vec![0.0f32; d];
        if m > 0 {
            let mask = (1u64 << m) - 1;
            for (g, yc) in y.chunks_exact_mut(8).enumerate() {
                let mut buf = [0u8; 8];
                buf[..m].copy_from_slice(&code[pb + g * m..pb + (g + 1) * m]);
                let w = u64::from_le_bytes(buf);
                for (l, o) in yc.iter_mut().enumerate() {
                    *o = self.table[((w >> (m * l)) & mask) as usize];
                }
            }
        }
        let no = self.norm_offset();
        if let Some(s) = &self.qjl {
            let a = rd_f32(code, no + 4) * self.qjl_scale;
            let signs: Vec<f32> = (0..d)
                .map(|i| {
                    if code[i / 8] >> (i % 8) & 1 == 1 {
                        a
                    } else {
                        -a
                    }
                })
                .collect();
            let mut r = vec![0.0f32; d];
            s.apply_inverse(&signs, &mut r);
            y.iter_mut().zip(&r).for_each(|(o, x)| *o += x);
        }
        let mut x = vec![0.0f32; d];
        self.rot.apply_inverse(&y, &mut x);
        let norm = rd_f32(code, no);
        for (o, v) in out.iter_mut().zip(&x[..self.dim]) {
            *o = norm * v;
        }
        true
    }
    fn prepare(&self, q: &[f32]) -> TurboQuantQuery {
        match wide() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `wide()` answers `Avx2` only where AVX2 is available.
            super::rotation::Wide::Avx2 => unsafe { self.prepare_avx2(q) },
            _ => self.prepare_with(q),
        }
    }
    #[inline]
    fn distance(&self, q: &TurboQuantQuery, code: &[u8]) -> f32 {
        if self.variant == Variant::Mse && self.mbits == 4 {
            // The hot case, kept small: one kernel call on the indices, then the norm.
            let nb = self.pad / 2;
            let dot = (self.k.dot_u4_i8)(&code[..nb], &q.q8);
            let e = q.lin_mul * (2 * dot as i64 - q.lin_off) as f32;
            return self.finish(q, code, e);
        }
        self.distance_other(q, code)
    }
    /// Mse at 4 bits: the indices of up to 64 codes at a time through the gather kernel
    /// (one call scores all of an expanded node's new neighbours, as for LVQ-4), with the same
    /// values as [`Encoding::distance`].
    fn distance_ids(&self, q: &TurboQuantQuery, codes: &CodeStore, ids: &[u32], out: &mut [f32]) {
        if !(self.variant == Variant::Mse && self.mbits == 4 && !q.q8_lo.is_empty()) {
            for (o, &id) in out.iter_mut().zip(ids) {
                *o = self.distance(q, codes.get(id as usize));
            }
            return;
        }
        const B: usize = 64;
        let mut dots = [0i32; B];
        let (base, stride) = (codes.bytes(), codes.stride());
        for (ids, out) in ids.chunks(B).zip(out.chunks_mut(B)) {
            let dots = &mut dots[..ids.len()];
            (self.k.dot_u4_i8_split_gather)(base, stride, ids, &q.q8_lo, &q.q8_hi, dots);
            for ((o, &id), &dot) in out.iter_mut().zip(ids).zip(dots.iter()) {
                let e = q.lin_mul * (2 * dot as i64 - q.lin_off) as f32;
                *o = self.finish(q, codes.get(id as usize), e);
            }
        }
    }
    /// The traversal estimate replaces the codebook by a line (1–4 bits) and uses a quantised
    /// query; the finer one uses the float query and codebook (as
    /// [`TurboQuant::inner_product`]).
    const HAS_FINE: bool = true;
    #[inline]
    fn distance_fine(&self, q: &TurboQuantQuery, code: &[u8]) -> f32 {
        let e = self.estimate(q, code, true);
        self.finish(q, code, e)
    }
    fn params_bytes(&self) -> usize {
        self.rot.memory_bytes()
            + self.qjl.as_ref().map_or(0, |s| s.memory_bytes())
            + 256 * 4
            + self.bounds.len() * 4
    }
    fn write_params(&self, w: &mut Writer) {
        w.u32(self.bits);
        w.u8(self.variant.tag());
        w.u32(self.pad as u32);
        w.u64(self.seed);
        w.f32(self.ip_scale);
        w.f32s(self.centroids());
        for r in std::iter::once(&self.rot).chain(&self.qjl) {
            for &s in r.sign_words() {
                w.u64(s);
            }
        }
    }
    fn read_params(r: &mut Reader, dim: usize, metric: Metric) -> Result<Self> {
        let bits = r.u32()?;
        if !(1..=8).contains(&bits) {
            return Err(Error::Format(format!(
                "turboquant: bits {bits} out of range 1..=8"
            )));
        }
        let variant = match r.u8()? {
            0 => Variant::Mse,
            1 => Variant::Prod,
            v => return Err(Error::Format(format!("turboquant: unknown variant {v}"))),
        };
        let pad = r.u32()? as usize;
        if pad != dim.div_ceil(64) * 64 {
            return Err(Error::Format(format!(
                "turboquant: padded dimension {pad} does not match dimension {dim}"
            )));
        }
        let seed = r.u64()?;
        let ip_scale = r.f32()?;
        if !(ip_scale.is_finite() && ip_scale >= 1.0) {
            return Err(Error::Format("turboquant: bad inner-product scale".into()));
        }
        let mbits = if variant == Variant::Mse {
            bits
        } else {
            bits - 1
        };
        let centroids = r.f32s(1 << mbits)?;
        if centroids.iter().any(|x| !x.is_finite()) || centroids.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::Format(
                "turboquant: centroids are not finite and ascending".into(),
            ));
        }
        let mut read_rot = || -> Result<Rotation> {
            let mut words = Vec::with_capacity(ROUNDS * pad / 64);
            for _ in 0..ROUNDS * pad / 64 {
                words.push(r.u64()?);
            }
            Rotation::from_sign_words(pad, words)
                .ok_or_else(|| Error::Format("turboquant: bad rotation".into()))
        };
        let rot = read_rot()?;
        let qjl = match variant {
            Variant::Prod => Some(read_rot()?),
            Variant::Mse => None,
        };
        Ok(Self::assemble(
            dim, metric, bits, variant, seed, rot, qjl, &centroids, ip_scale,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Index `i` of `m`-bit indices in this encoding's code layout.
    fn field(idx: &[u8], m: usize, i: usize) -> u8 {
        let (g, l) = (i / 8, i % 8);
        let mut buf = [0u8; 8];
        buf[..m].copy_from_slice(&idx[g * m..g * m + m]);
        ((u64::from_le_bytes(buf) >> (m * l)) & ((1 << m) - 1)) as u8
    }

    /// The encoder as first written (per-coordinate cells, heap buffer): the codes of existing
    /// indexes were made by it, so the encoder in use must give the same bytes.
    fn encode_reference(tq: &TurboQuant, v: &[f32], out: &mut [u8]) {
        let d = tq.pad;
        let mut y = vec![0.0f32; d];
        tq.rot.apply(v, &mut y);
        let norm = y.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
        if norm > 0.0 {
            let inv = (1.0 / norm) as f32;
            y.iter_mut().for_each(|x| *x *= inv);
        }
        out.fill(0);
        let (pb, m) = (tq.plane_bytes(), tq.mbits as usize);
        let mut resid = Vec::new();
        if tq.variant == Variant::Prod {
            resid.resize(d, 0.0f32);
        }
        if m > 0 {
            for (g, yc) in y.chunks_exact(8).enumerate() {
                let mut w = 0u64;
                for (l, &x) in yc.iter().enumerate() {
                    let c = tq.cell(x);
                    w |= (c as u64) << (m * l);
                    if let Some(r) = resid.get_mut(8 * g + l) {
                        *r = x - tq.table[c as usize];
                    }
                }
                out[pb + g * m..pb + (g + 1) * m].copy_from_slice(&w.to_le_bytes()[..m]);
            }
        } else {
            resid.copy_from_slice(&y);
        }
        tq.write_tail(norm as f32, &resid, out);
    }

    #[test]
    fn encoder_gives_the_codes_of_the_reference_encoder() {
        let mut rng = super::super::rotation::SplitMix::new(21);
        for (dim, bits, variant) in [
            (384, 4, Variant::Mse),
            (384, 2, Variant::Mse),
            (384, 1, Variant::Mse),
            (100, 3, Variant::Mse),
            (384, 8, Variant::Mse),
            (200, 5, Variant::Mse),
            (384, 4, Variant::Prod),
            (64, 1, Variant::Prod),
            (1100, 4, Variant::Mse),
        ] {
            let tq = TurboQuant::new(dim, Metric::Cosine, bits, variant, 8);
            let cs = tq.code_size();
            let (mut a, mut b) = (vec![0u8; cs], vec![0u8; cs]);
            for i in 0..300 {
                let mut v: Vec<f32> = (0..dim).map(|_| rng.gauss() as f32).collect();
                if i == 0 {
                    v.fill(0.0);
                }
                if i == 1 {
                    v[dim / 2] = f32::NAN;
                }
                tq.encode(&v, &mut a);
                encode_reference(&tq, &v, &mut b);
                assert_eq!(a, b, "dim={dim} bits={bits} {variant:?} vector {i}");
            }
        }
    }

    #[test]
    fn dispatched_and_portable_query_preparation_agree() {
        let mut rng = super::super::rotation::SplitMix::new(31);
        for (bits, variant) in [(4, Variant::Mse), (2, Variant::Mse), (4, Variant::Prod)] {
            let tq = TurboQuant::new(384, Metric::Cosine, bits, variant, 2);
            for i in 0..50 {
                let mut q: Vec<f32> = (0..384).map(|_| rng.gauss() as f32).collect();
                if i == 0 {
                    q[7] = f32::NAN;
                }
                let (a, b) = (tq.prepare(&q), tq.prepare_with(&q));
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&a.qr), bits(&b.qr));
                assert_eq!((&a.q8, &a.q8_lo, &a.q8_hi), (&b.q8, &b.q8_lo, &b.q8_hi));
                assert_eq!(a.q8_step.to_bits(), b.q8_step.to_bits());
                assert_eq!((a.q8_sum, a.lin_off), (b.q8_sum, b.lin_off));
                assert_eq!(a.lin_mul.to_bits(), b.lin_mul.to_bits());
                assert_eq!(bits(&a.z), bits(&b.z));
                assert_eq!(a.planes, b.planes);
                // The step is the largest |q'_j| over 127, as a fold in coordinate order gives.
                let qmax = a.qr.iter().fold(0.0f32, |m, x| m.max(x.abs()));
                if qmax > 0.0 && qmax.is_finite() {
                    assert_eq!(a.q8_step.to_bits(), (qmax / 127.0).to_bits());
                }
            }
        }
    }

    #[test]
    fn counted_cells_equal_the_binary_search() {
        let mut rng = super::super::rotation::SplitMix::new(5);
        for bits in 1..=4 {
            let tq = TurboQuant::new(384, Metric::L2, bits, Variant::Mse, 1);
            assert!(tq.bounds16.is_some());
            let mut xs: Vec<f32> = (0..20_000).map(|_| (rng.gauss() * 0.08) as f32).collect();
            xs.extend_from_slice(&tq.bounds); // ties: a bound itself
            xs.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0]);
            for x in xs {
                let want = tq.bounds.partition_point(|&b| b < x) as u8;
                assert_eq!(tq.cell(x), want, "bits={bits} x={x}");
            }
        }
        assert!(TurboQuant::new(384, Metric::L2, 5, Variant::Mse, 1)
            .bounds16
            .is_none());
    }

    #[test]
    fn gathered_distances_equal_single_code_distances() {
        let mut rng = super::super::rotation::SplitMix::new(11);
        for (dim, metric) in [
            (384, Metric::Cosine),
            (100, Metric::L2),
            (64, Metric::InnerProduct),
        ] {
            let tq = TurboQuant::new(dim, metric, 4, Variant::Mse, 5);
            let n = 150;
            let mut codes = CodeStore::with_len(tq.code_size(), n);
            for i in 0..n {
                let v: Vec<f32> = (0..dim).map(|_| rng.gauss() as f32).collect();
                tq.encode(&v, codes.get_mut(i));
            }
            let q: Vec<f32> = (0..dim).map(|_| rng.gauss() as f32).collect();
            let pq = tq.prepare(&q);
            // More than one gather block, repeated and unordered ids.
            let ids: Vec<u32> = (0..130).map(|i| ((i * 37) % n) as u32).collect();
            let mut got = vec![0f32; ids.len()];
            tq.distance_ids(&pq, &codes, &ids, &mut got);
            for (&id, &g) in ids.iter().zip(&got) {
                let want = tq.distance(&pq, codes.get(id as usize));
                assert_eq!(
                    g.to_bits(),
                    want.to_bits(),
                    "dim={dim} id={id}: {g} vs {want}"
                );
            }
        }
    }

    #[test]
    fn widening_keeps_every_index_in_place() {
        let mut rng = super::super::rotation::SplitMix::new(3);
        let pad = 192;
        for m in 1..=3usize {
            let idx: Vec<u8> = (0..m * pad / 8).map(|_| rng.next_u64() as u8).collect();
            let mut out = vec![0u8; pad / 2];
            match m {
                1 => widen_to_nibbles::<1>(&idx, &mut out),
                2 => widen_to_nibbles::<2>(&idx, &mut out),
                _ => widen_to_nibbles::<3>(&idx, &mut out),
            }
            for i in 0..pad {
                assert_eq!(field(&out, 4, i), field(&idx, m, i), "m={m} i={i}");
            }
        }
    }

    /// Position, in the dimension order of the kernels' packed 4-bit layout
    /// ([`nearq_kernels::scalar::u4_position`]: byte `j` of a 64-dimension block holds dimensions
    /// `j` and `j + 32`), of coordinate `i` of a code in this encoding's 4-bit layout (byte `j`
    /// holds coordinates `2j` and `2j + 1`). `pad` is a multiple of 64, so every block is full.
    fn u4_query_order(i: usize) -> usize {
        let (b, t) = (i / 64, i % 64);
        64 * b + t / 2 + 32 * (t % 2)
    }

    #[test]
    fn reordered_query_matches_the_u4_kernel_layout() {
        // Σ q_i·idx_i over a code in this encoding's 4-bit layout, by every kernel table.
        let mut rng = super::super::rotation::SplitMix::new(4);
        for pad in [64, 384] {
            let idx: Vec<u8> = (0..pad / 2).map(|_| rng.next_u64() as u8).collect();
            let q: Vec<i8> = (0..pad).map(|_| rng.next_u64() as i8).collect();
            let want: i32 = (0..pad)
                .map(|i| q[i] as i32 * field(&idx, 4, i) as i32)
                .sum();
            let mut qo = vec![0i8; pad];
            for (i, &v) in q.iter().enumerate() {
                qo[u4_query_order(i)] = v;
            }
            for k in nearq_kernels::all_variants() {
                assert_eq!((k.dot_u4_i8)(&idx, &qo), want, "{} pad={pad}", k.isa);
            }
        }
    }

    #[test]
    fn cell_probabilities_sum_to_one_and_match_the_codebook() {
        // E[y·c(y)] = Σ P_k c_k² = (1 − D_mse)/pad at the Lloyd–Max fixed point.
        for (pad, bits) in [(64, 2), (384, 4), (1024, 3)] {
            let cb = codebook(pad, bits);
            let c: Vec<f32> = cb
                .centroids
                .iter()
                .map(|&x| (x / (pad as f64).sqrt()) as f32)
                .collect();
            let p = cell_probs(pad, &c);
            assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            let cc: f64 = p.iter().zip(&c).map(|(p, &c)| p * (c as f64).powi(2)).sum();
            let want = (1.0 - cb.mse) / pad as f64;
            assert!(
                (cc - want).abs() < 1e-4 * want,
                "pad={pad} b={bits}: {cc} vs {want}"
            );
        }
    }
}
