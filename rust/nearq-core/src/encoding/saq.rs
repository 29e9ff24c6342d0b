//! SAQ: segmented code-adjustment quantization (ALGORITHMS.md §2).
//!
//! # Training
//!
//! 1. **PCA.** The data mean `μ` and the covariance of an evenly strided sample of at most
//!    [`PCA_SAMPLE`] rows; its eigen-decomposition ([`symmetric_eigen`]) gives the orthonormal
//!    rows of `W` in order of decreasing variance `λ_1 ≥ λ_2 ≥ ...`. A vector `x` becomes
//!    `y = W (x - μ)`, padded with zeros to `D = d` rounded up to a multiple of [`UNIT`] = 64
//!    (the padded coordinates have variance 0).
//! 2. **Segmentation and bit allocation** ([`allocate`]). The `D/64` units of 64 PCA
//!    coordinates are cut into contiguous segments, each with `b ∈ 0..=`[`MAX_SEG_BITS`] bits
//!    per coordinate (0 only for a trailing segment, whose coordinates are dropped). A segment
//!    of `L` coordinates costs `b·L` code bits plus its per-vector factors (32 bits for `b = 1`,
//!    48 for `b ≥ 2`, see the layout). The budget is `⌊B·D⌋ + 128` bits for an average of `B`
//!    bits per dimension ([`SaqConfig::bits`], fractional allowed); with the 8-byte header the
//!    code is never larger than Extended RaBitQ's `B·D/8 + 32` bytes. The modelled error of a
//!    segment is its variance `V_s = Σ_{j∈s} λ_j` times [`MODEL_ERROR`]`[b]`, the expected
//!    `1 - cos²` between a Gaussian vector and its `b`-bit code, so `V_s·h(b)` is the expected
//!    squared reconstruction error of the segment (`h(0) = 1`). A dynamic programme over
//!    (units covered, budget used) minimises `Σ_s V_s·h(b_s)` exactly, in
//!    `O(U²·T·B_max)` for `U = D/64` units and `T` budget steps of 16 bits. Since `h` falls
//!    about 4× per bit while PCA concentrates the variance in the leading units, the leading
//!    segments get more bits and a low-variance tail may get none.
//! 3. **A random rotation per segment** ([`super::rotation`], seeded): `z_s = R_s·y_s`, so the
//!    coordinates of a segment behave like those of a random direction and the RaBitQ
//!    estimator below is unbiased over the rotation. The rotation is folded into the
//!    projection at training time: the stored matrix ([`Saq::projection`], `head × d` for the
//!    `head` coordinates with bits) has the rows `R_s W_s`, so a vector or a query costs one
//!    matrix-vector product (`matvec_f32`) and no per-vector rotation; a dropped tail needs no
//!    rows at all (its norm is `‖x - μ‖²` minus the head's).
//!
//! PCA learns `d²` floats (576 KiB at `d = 384`) and the covariance of the sample costs
//! `O(s·d²)`; the eigen-decomposition is `O(d³)` ([`symmetric_eigen`]). Encoding a single
//! vector streams the projection once (memory-bound, more than half of the encoding time at
//! `d = 384`); [`Encoding::encode_batch`] (what the index build uses) projects blocks of 256
//! vectors with one matrix product (`matrixmultiply::sgemm`), which reuses each loaded row of
//! the projection across the block. The quantisation below is `O(d)`.
//!
//! # Query projection in half precision ([`Saq::set_half_queries`])
//!
//! A query is projected once, but the `head × d` projection (576 KiB at `d = 384`) is evicted
//! from the cache by the codes a search reads, so projecting the next query streams it again
//! (`matvec_f32` was about 13% of a single-query search on MiniLM at 8 bits, ef 32). With
//! half queries on, queries are projected by a copy rounded to IEEE binary16
//! (`matvec_f16`, f32 accumulation), half the bytes. Vectors are still encoded with the f32
//! projection, so the codes and the file do not change.
//!
//! The error this adds is far below the estimator's own. Rounding to nearest gives
//! `P̃ = P + Δ` with `|Δ_ji| ≤ u·|P_ji|`, `u = 2^-11` (entries below `2^-14`, subnormal in
//! f16, are off by at most `2^-25`). With `r = q - μ` the projected query moves by `e = Δr`;
//! the rows and the columns of `P` have norm at most 1 (orthonormal rows of a rotated
//! orthogonal matrix), and with rounding errors of independent signs (uniform on ±half an
//! ulp) `E‖e‖² ≤ (u²/3)·‖r‖²`, so `‖e‖ ≈ 2.8·10^-4·‖q - μ‖`. A full-code estimate is linear
//! in the query, `<x̂ - μ, q - μ>` for the reconstruction `x̂` (see `decode`), so it moves by
//! `<x̂ - μ, e>`; `e` does not depend on the code, so this is about
//! `u/sqrt(3·head)·‖x - μ‖·‖q - μ‖` (`1.4·10^-5·‖x - μ‖·‖q - μ‖` at `head = 384`). The
//! estimator's own deviation in a segment of `b` bits is about
//! `‖z_s‖·‖p_s‖·sqrt(h(b))/sqrt(L_s - 1)` (see the estimator below); for one segment over
//! the whole head the ratio of the two is `(u/sqrt(3))/sqrt(h(b))`: 1% at 6 bits, 5% at 8,
//! 10% at 9, 20% at 10, 70% at 12 bits per coordinate (standard deviations; the variance
//! added is the square, under 1% up to 9 bits). The interval half-width is `ε0 = 1.9`
//! deviations. Measured (the tests, every query × code pair): on MiniLM at 8 bits per
//! dimension (segments of 9 and 7 bits) the shift of the estimates is 2.1% of the half-width
//! RMS and 13% at most; on synthetic data up to 8 bits per segment at most 1.4% RMS and 9%,
//! with a segment of 10 bits 5% RMS and 34% at most. Layout 1's traversal estimate rounds the
//! query to i8 (a step of `max|p_s|/127`, far coarser than the f16 rounding), and the f16
//! shift can move a coordinate across a rounding boundary; that adds about 1% of the
//! half-width RMS. Recall@10 of ranking MiniLM by the fine estimate is unchanged. So the
//! change is noise well inside the error bounds, but it is not zero: distances estimated
//! from the codes differ from those of f32 queries in about the 5th significant digit. It is
//! the default since it measured 3-7% faster single-query search on the benchmark machine;
//! `NEARQ_SAQ_HALF_QUERIES=0` (or [`Saq::set_half_queries`]) gives the f32 path, bit for
//! bit the estimates of earlier releases.
//!
//! # Quantising one segment ([`caq`])
//!
//! The codebook is Extended RaBitQ's symmetric grid: `c_i ∈ 0..2^b`, reconstructed up to a
//! per-vector scale as `w_i = c_i - (2^b - 1)/2 ∈ {±½, ±3/2, ...}`; the objective is the
//! cosine `<z, w>/(‖z‖‖w‖)`.
//!
//! 1. Initial code ([`initial_codes`]): uniform scalar quantisation `c_i = clamp(⌊z_i/Δ⌋ +
//!    2^(b-1), 0, 2^b - 1)` with the step `Δ` picked among a few multiples of
//!    `max|z_i|/2^(b-1)` (the step of the plain `[-max, max]` grid) by the same cosine: a
//!    geometric grid of [`SCALE_CANDIDATES`] over the range where the optimum was measured to
//!    lie for that `b`, then a few halvings of the grid ratio around the best. Each candidate
//!    costs one vectorisable pass, O(L).
//! 2. Code adjustment ([`adjust_codes`]): coordinate descent on the cosine. For each
//!    coordinate try `c_i + 1` repeatedly, else `c_i - 1`, accepting a step when it raises the
//!    cosine by more than a relative [`ADJUST_EPS`] (`<z, w>` and `‖w‖²` are updated in O(1):
//!    `±z_i`, `±2w_i + 1`, and recomputed exactly after each round); at most [`ADJUST_ROUNDS`]
//!    rounds, stopping when a round changes nothing. With `ρ = <z,w>/‖w‖²` a step up can only
//!    help when `z_i/ρ - w_i > ½ - z_i²‖w‖²/(2<z,w>²)` (and symmetrically down), so a round
//!    first screens each coordinate with that cheap, vectorisable test and runs the exact
//!    test only on the few near a decision boundary. A step moves `ρ` a little, so a
//!    coordinate screened out earlier in the round may become improvable: the next round
//!    screens again, and the last round (no step, so no drift) clears every coordinate, so
//!    the fixed points are those of the unscreened descent. Every accepted step raises the
//!    cosine, so adjustment never increases the error.
//!
//! This is O(L) per candidate and per round instead of the O(2^b·L·log L) critical-value
//! search of Extended RaBitQ, and lands within about 0.5% (b ≤ 6) to 4% (b = 8, L = 64) of
//! that search's `1 - cos²` on Gaussian vectors (`tests/saq.rs`). From the plain
//! `[-max, max]` start of the reference implementation the same descent stopped 2-14% above
//! it (4 to 8 bits), because moving the whole scale takes many coordinated steps that no
//! single step pays for. Starting from a grid point with `sign(w_i) = sign(z_i)`, no step
//! crosses zero (it would lower `<z, w>` at equal `‖w‖`), so the top bit of `c_i` is the 1-bit
//! RaBitQ code of the segment.
//!
//! # Code layouts
//!
//! The layout number is stored in the parameter block (high half of the traversal-segments
//! field; files written before layouts existed read as layout 0). Both layouts hold the same
//! codes `c_i` and factors; only where the bits sit differs.
//!
//! Layout 0 ([`LAYOUT_PLANES`]):
//!
//! ```text
//! [a f32][‖y_tail‖² f32]                 a = ‖x - μ‖² (L2) or <x - μ, μ> (IP, cosine)
//! per segment: b = 1: [f1 f32];  b ≥ 2: [f f32][r u16]          then zeros to a multiple of 8
//! per segment: b planes of L/8 bytes, plane j = bit j of every c_i, the top bit last
//! ```
//!
//! A plane holds bit `i` of a segment at bit `i % 8` of byte `i / 8` (the layout of the
//! `dot_f32_bitplanes` kernel, which reads a float query against all planes of a segment in
//! one call, or against its top plane alone). The
//! full-code rescale `f = ‖z‖²/<z, w>` is stored in f32; the 1-bit rescale
//! `f1 = ‖z‖²/Σ|z_i|` of a segment with `b ≥ 2` bits follows from it as
//! `f1 = f·2^(b-1)·r/65536`, `r = round(65536·(<z,w>/Σ|z_i|)/2^(b-1))` (a weighted mean of
//! `|w_i|` over `2^(b-1)`, in `(0, 1)`; 16 bits keep it to ~1e-4, far below the 1-bit
//! estimator's own error). Per vector this is 8 bytes of header, 4 or 6 bytes of factors per
//! segment and the planes; the code is a multiple of 8 bytes.
//!
//! Layout 1 ([`LAYOUT_NIBBLE`], the default), for the graph traversal's integer kernels:
//!
//! ```text
//! per segment of b ≥ 4 bits: the top 4 bits u_i = c_i >> (b-4), nibble-packed (L/2 bytes)
//! [a f32][‖y_tail‖² f32]
//! per segment: b = 1: [f1 f32];  2 ≤ b ≤ 4: [f f32][r u16];  b > 4: [f f32][r u16][ρ u16]
//! zeros to a multiple of 8
//! per segment of b < 4 bits: b planes as in layout 0 (the top bit last)
//! per segment of b > 4 bits: the b - 4 low planes (plane j = bit j of every c_i)
//! ```
//!
//! Nibbles use the kernels' packed layout ([`nearq_kernels::scalar::u4_position`], per block
//! of 64 coordinates; segments are whole blocks), so the nibbles of all those segments start
//! at offset 0 and one `dot_u4_i8_split_gather_segs` pass (one read of each code, a sum per
//! segment) scores them all for up to 64 codes. The
//! top 4 bits are themselves a symmetric 4-bit grid: `w_i = 2^(b-4)·(u_i - 7.5) + e_i` with
//! `|e_i| < 2^(b-5)`, so `sign(w_i) = sign(u_i - 7.5)`; its rescale `F = ‖z‖²/<z, u - 7.5>`
//! is `f·2^(b-4)·ρ` with `ρ = <z, w>/(2^(b-4)·<z, u - 7.5>) ∈ (0, 2)`, stored as
//! `round(32768·ρ)` (16 bits per segment of more than 4 bits, which the bit allocation
//! charges in this layout).
//!
//! # Estimator
//!
//! With `p_s` the rotated segment of the query's `W (q - μ)` and `m` the top-bit plane,
//! RaBitQ's estimator per segment (unbiased over `R_s`; ALGORITHMS.md §1.3, §2.3) is
//!
//! ```text
//! full code:  <z_s, p_s> ≈ f ·(<c, p_s> - (2^b - 1)/2·Σp_s)
//! top bit:    <z_s, p_s> ≈ f1·(2<m, p_s> - Σp_s)
//! ```
//!
//! A dropped tail contributes 0. Summing over segments, `<x - μ, q - μ> ≈ Σ_s <z_s, p_s>`
//! (`W` is orthogonal), and
//!
//! ```text
//! L2:          ‖x - q‖² = ‖x - μ‖² + ‖q - μ‖² - 2<x - μ, q - μ>
//! IP, cosine:  <x, q>   = <x - μ, q - μ> + <x - μ, μ> + <μ, q>
//! ```
//!
//! (inputs are normalised for cosine before they arrive). The error of a segment's estimate
//! has standard deviation at most `‖z_s‖·‖p_s‖·sqrt((1 - cos²)/cos²)/sqrt(L_s - 1)` (RaBitQ,
//! ALGORITHMS.md §1.4). Rather than storing it per code, it is modelled: `cos²` of the 1-bit
//! code concentrates at `1 - h(1) ≈ 2/π` and that of the `b`-bit code at `1 - h(b)`, and
//! `‖z_s‖ = f1·cos_1·sqrt(L_s)`, so both deviations are a per-segment constant times
//! `f1·‖p_s‖`. Segments have independent rotations, so the interval half-width is
//! `ε0·sqrt(Σ_s sd_s²)` (twice that in L2 units). A dropped tail adds the deviation
//! `‖y_tail‖·‖p_tail‖/sqrt(L_eff)` of its (unestimated) inner product, `L_eff = (Σλ)²/Σλ²`
//! over the tail's variances (exact in expectation for independent Gaussian vectors) — a
//! model of the data, not a bound over the rotation; the tail holds a small
//! share of the variance by construction.
//!
//! Both `<c, p_s>` and `<m, p_s>` take the float query against the planes in place
//! (`dot_f32_bitplanes`: masked adds of the query per plane, weighted by `2^j`; in layout 1
//! the nibbles with `dot_f32_u4_split`), so no code is unpacked and the query is not
//! quantised; one kernel call per segment (two for a nibble segment of more than 4 bits).
//!
//! Layout 1's traversal estimate of a segment of 4+ bits reads only its nibbles, against the
//! query segment quantised once per query to i8 (`p_s ≈ ζ_s·w8`, `ζ_s = max|p_s|/127`):
//!
//! ```text
//! <z_s, p_s> ≈ F·ζ_s·(<u, w8> - 7.5·Σ w8)          (dot_u4_i8_split, exact in i32)
//! ```
//!
//! with the modelled deviation of a 4-bit code; segments of fewer bits are scored as in
//! layout 0's traversal.
//!
//! # Multi-stage estimate
//!
//! - [`Encoding::distance`] (graph traversal): the full code for the first
//!   [`Saq::traversal_segments`] segments and the top bit for the rest (layout 1: segments of
//!   4 or more bits on their top 4 bits with the i8 query, whatever their position;
//!   [`Encoding::distance_ids`] scores them for up to 64 codes per kernel call). PCA puts most of the
//!   variance in the leading segments, which also get the most bits, so scoring them fully
//!   removes most of the 1-bit error at a fraction of the full cost. The default
//!   ([`default_traversal_segments`]) is the shortest prefix holding half of the variance;
//!   [`Saq::set_traversal_segments`] changes it (0 = top bits only, like RaBitQ's traversal).
//! - [`Encoding::distance_fine`] (re-ranking without float vectors): the full code everywhere.
//! - [`Saq::distance_within`] (the paper's staged scan against a running threshold such as the
//!   current k-th distance): stage 1 scores the top bits of every segment with the interval
//!   above and stops when its lower end exceeds the threshold; stage 2 replaces, leading
//!   segment first, each top-bit estimate by the full-code one (narrowing the interval) and
//!   stops as soon as the lower end exceeds the threshold; survivors get the full estimate,
//!   equal to `distance_fine`. With `eps0 = ∞` nothing is pruned. The paper's stage 0 (a
//!   variance bound that reads only norms) is left out: it pays when whole 32-vector blocks of
//!   an IVF list are skipped, while here the first cache line of a code is read anyway.

use super::rabitq::SPREAD;
use super::rotation::{wide, Rotation, Wide};
use super::Encoding;
use crate::error::{Error, Result};
use crate::io::{Reader, Writer};
use crate::metric::{check_finite, Metric};
use crate::storage::CodeStore;
use nearq_kernels::scalar::{pack_u4, u4_split, MAX_SEGS};
use nearq_kernels::{kernels, Kernels};
use rayon::prelude::*;
use std::cell::RefCell;

/// Coordinates per segmentation unit (and the granularity of the per-segment rotations).
pub const UNIT: usize = 64;
/// Most bits per coordinate of one segment.
pub const MAX_SEG_BITS: u32 = 12;
/// Default confidence constant of the error bounds (as RaBitQ).
pub const DEFAULT_EPS0: f32 = 1.9;
/// Most code-adjustment rounds per segment (the reference implementation's default).
pub const ADJUST_ROUNDS: usize = 6;
/// A code-adjustment step must raise the cosine by more than this relative amount.
pub const ADJUST_EPS: f64 = 1e-8;
/// Candidate steps of the initial scale search (before the refinement halvings).
pub const SCALE_CANDIDATES: usize = 6;
/// Most rows used to estimate the covariance.
pub const PCA_SAMPLE: usize = 8192;
/// Default average bits per dimension.
pub const DEFAULT_BITS: f32 = 4.0;

/// Expected `1 - cos²` between a standard Gaussian vector of 64 coordinates and its `b`-bit
/// code from [`caq`] (index `b`; `b = 0` drops the coordinates). The DP's error model: a
/// segment of variance `V` coded with `b` bits is expected to leave a squared error `V·h(b)`
/// (checked against the encoder by the tests).
pub const MODEL_ERROR: [f64; MAX_SEG_BITS as usize + 1] = [
    1.0, 3.56e-1, 1.13e-1, 3.30e-2, 8.75e-3, 2.14e-3, 5.23e-4, 1.25e-4, 3.03e-5, 7.57e-6, 1.92e-6,
    5.21e-7, 1.45e-7,
];

/// Header bytes: `a`, `‖y_tail‖²`.
const HEADER: usize = 8;

/// Code layout 0: every segment as bit planes, traversal on a float query (the only layout of
/// files written before layouts existed, and the default below 4 bits).
pub const LAYOUT_PLANES: u32 = 0;
/// Code layout 1 (the default): the top 4 bits of every segment of `b >= 4` bits nibble-packed
/// at the start of the code, scored in traversal with an i8 query by the `u4 × i8` kernels,
/// their low `b - 4` bits as planes for re-ranking; segments of fewer bits as in layout 0.
pub const LAYOUT_NIBBLE: u32 = 1;
/// The layout number sits in the high half of the parameter block's `lead` field (0 in files
/// written before layouts existed).
const LAYOUT_SHIFT: u32 = 16;

/// Build-time options.
#[derive(Clone, Debug, PartialEq)]
pub struct SaqConfig {
    /// Average bits per dimension (fractional allowed, e.g. 1.5, 4, 6.5), in `(0, 12]`.
    pub bits: f32,
    /// Seed of the per-segment rotations.
    pub seed: u64,
    /// Code layout: [`LAYOUT_NIBBLE`] (the default) or [`LAYOUT_PLANES`].
    pub layout: u32,
}

impl SaqConfig {
    /// `bits` and `seed` with the default layout ([`LAYOUT_NIBBLE`]).
    pub fn new(bits: f32, seed: u64) -> Self {
        SaqConfig {
            bits,
            seed,
            layout: LAYOUT_NIBBLE,
        }
    }
}

impl Default for SaqConfig {
    fn default() -> Self {
        SaqConfig::new(DEFAULT_BITS, 0)
    }
}

// ---------------------------------------------------------------------------------------------
// Symmetric eigen-decomposition
// ---------------------------------------------------------------------------------------------

/// `Σ a_i b_i` with four independent partial sums, so the loop vectorises.
#[inline]
fn dot64(a: &[f64], b: &[f64]) -> f64 {
    let mut s = [0.0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..4 {
            s[l] += x[l] * y[l];
        }
    }
    let mut t = (s[0] + s[1]) + (s[2] + s[3]);
    for (x, y) in ta.iter().zip(tb) {
        t += x * y;
    }
    t
}

/// Eigen-decomposition of the symmetric `n × n` matrix `a` (row-major): the eigenvalues in
/// decreasing order and matching orthonormal eigenvectors as the rows of an `n × n` matrix
/// (each with its largest-magnitude component positive, so the result is deterministic).
///
/// 1. Householder reduction to a tridiagonal matrix `T = Qᵀ A Q` (`(4/3)n³` flops).
/// 2. Eigenvalues of `T` by implicit QL with Wilkinson shifts, without vectors (`O(n²)`).
/// 3. Eigenvectors of `T` by inverse iteration: three solves of `(T - λI) x = b` by tridiagonal
///    LU with partial pivoting from a seeded random start, equal eigenvalues separated by
///    `10·ε·‖T‖` and each vector re-orthogonalised against those of eigenvalues within
///    `1e-3·‖T‖` (LAPACK `dstein`'s rule), `O(n²)` plus the clusters.
/// 4. Back-transformation by the reflectors, `n³` multiply-adds, in parallel over vectors.
///
/// Accumulating the QL rotations instead costs about `6n³` and took most of the time (about
/// 0.1 s at `n = 384`); cyclic Jacobi needs several sweeps of that size. A linear-algebra
/// dependency was not worth it for one training step.
pub fn symmetric_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(a.len(), n * n, "symmetric_eigen: a must be n × n");
    if n == 0 {
        return (Vec::new(), Vec::new());
    }
    let mut m = a.to_vec();
    let (diag, off, refl) = tridiagonalize(&mut m, n);
    drop(m);
    let (mut vals, mut e) = (diag.clone(), off.clone());
    tridiagonal_ql(&mut vals, &mut e);
    vals.sort_by(|x, y| y.total_cmp(x));
    let mut vecs = match wide() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `wide()` answers `Avx2` only where AVX2 is available (see there).
        Wide::Avx2 => unsafe { tridiagonal_vectors_avx2(&diag, &off, &vals) },
        _ => tridiagonal_vectors(&diag, &off, &vals),
    };
    vecs.par_chunks_mut(4 * n).for_each(|rows| {
        match wide() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `wide()` answers `Avx2` only where AVX2 is available (see there).
            Wide::Avx2 => unsafe { back_transform_avx2(rows, n, &refl) },
            _ => back_transform(rows, n, &refl),
        }
    });
    vecs.par_chunks_mut(n).for_each(|row| {
        let norm = dot64(row, row).sqrt();
        let big = row
            .iter()
            .copied()
            .fold(0.0f64, |b, x| if x.abs() > b.abs() { x } else { b });
        let s = if big < 0.0 { -1.0 } else { 1.0 } / if norm > 0.0 { norm } else { 1.0 };
        row.iter_mut().for_each(|x| *x *= s);
    });
    (vals, vecs)
}

/// `[dot64(v, x_q)]` for four rows `x_q` at once (each the same sum in the same order as
/// [`dot64`]; four independent chains of additions instead of one).
#[inline(always)]
fn dot64x4(v: &[f64], x: [&[f64]; 4]) -> [f64; 4] {
    let (mut s0, mut s1, mut s2, mut s3) = ([0.0f64; 4], [0.0f64; 4], [0.0f64; 4], [0.0f64; 4]);
    let n = v.len();
    let body = n / 4 * 4;
    let (x0, x1, x2, x3) = (&x[0][..n], &x[1][..n], &x[2][..n], &x[3][..n]);
    let mut i = 0;
    while i < body {
        let a: &[f64; 4] = v[i..i + 4].try_into().unwrap();
        let b0: &[f64; 4] = x0[i..i + 4].try_into().unwrap();
        let b1: &[f64; 4] = x1[i..i + 4].try_into().unwrap();
        let b2: &[f64; 4] = x2[i..i + 4].try_into().unwrap();
        let b3: &[f64; 4] = x3[i..i + 4].try_into().unwrap();
        for l in 0..4 {
            s0[l] += a[l] * b0[l];
        }
        for l in 0..4 {
            s1[l] += a[l] * b1[l];
        }
        for l in 0..4 {
            s2[l] += a[l] * b2[l];
        }
        for l in 0..4 {
            s3[l] += a[l] * b3[l];
        }
        i += 4;
    }
    let xs = [x0, x1, x2, x3];
    let s = [s0, s1, s2, s3];
    std::array::from_fn(|q| {
        let mut t = (s[q][0] + s[q][1]) + (s[q][2] + s[q][3]);
        for (a, b) in v[body..].iter().zip(&xs[q][body..]) {
            t += a * b;
        }
        t
    })
}

/// The reflectors applied in reverse order (`Q x`) to each row of `rows` (at most four rows
/// of `n` values), four rows interleaved: bit-identical to applying them row by row.
#[inline(always)]
fn back_transform(rows: &mut [f64], n: usize, refl: &[(usize, f64, Vec<f64>)]) {
    if rows.len() != 4 * n {
        for row in rows.chunks_exact_mut(n) {
            for (start, beta, v) in refl.iter().rev() {
                let x = &mut row[*start..];
                let s = beta * dot64(v, x);
                for (xi, vi) in x.iter_mut().zip(v) {
                    *xi -= s * vi;
                }
            }
        }
        return;
    }
    let (r0, rest) = rows.split_at_mut(n);
    let (r1, rest) = rest.split_at_mut(n);
    let (r2, r3) = rest.split_at_mut(n);
    for (start, beta, v) in refl.iter().rev() {
        let st = *start;
        let d = dot64x4(v, [&r0[st..], &r1[st..], &r2[st..], &r3[st..]]);
        let s = d.map(|d| beta * d);
        let it = r0[st..].iter_mut().zip(r1[st..].iter_mut());
        let it = it.zip(r2[st..].iter_mut()).zip(r3[st..].iter_mut());
        for ((((x0, x1), x2), x3), &vj) in it.zip(v) {
            *x0 -= s[0] * vj;
            *x1 -= s[1] * vj;
            *x2 -= s[2] * vj;
            *x3 -= s[3] * vj;
        }
    }
}

/// `p_i = β·<row_i[start..], v>` for the rows of `rows` (at most four of `n` values; the
/// same sums as [`dot64`]).
#[inline(always)]
fn reflector_dots(rows: &[f64], n: usize, start: usize, v: &[f64], beta: f64, p: &mut [f64]) {
    if p.len() == 4 {
        let x: [&[f64]; 4] = std::array::from_fn(|q| &rows[q * n + start..(q + 1) * n]);
        let d = dot64x4(v, x);
        for (o, d) in p.iter_mut().zip(d) {
            *o = beta * d;
        }
    } else {
        for (o, row) in p.iter_mut().zip(rows.chunks_exact(n)) {
            *o = beta * dot64(&row[start..], v);
        }
    }
}

/// The rank-2 update `row_i[start..] -= v_i·w + w_i·v` of the rows of `rows` (`vw` holds the
/// pairs `(v_i, w_i)` of those rows).
#[inline(always)]
fn rank2_rows(rows: &mut [f64], n: usize, start: usize, v: &[f64], w: &[f64], vw: &[(f64, f64)]) {
    for (row, &(vi, wi)) in rows.chunks_exact_mut(n).zip(vw) {
        for ((r, &vj), &wj) in row[start..].iter_mut().zip(v).zip(w) {
            *r -= vi * wj + wi * vj;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn reflector_dots_avx2(
    rows: &[f64],
    n: usize,
    start: usize,
    v: &[f64],
    beta: f64,
    p: &mut [f64],
) {
    reflector_dots(rows, n, start, v, beta, p)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn rank2_rows_avx2(
    rows: &mut [f64],
    n: usize,
    start: usize,
    v: &[f64],
    w: &[f64],
    vw: &[(f64, f64)],
) {
    rank2_rows(rows, n, start, v, w, vw)
}

/// [`back_transform`] compiled with AVX2 enabled (the same operations in the same order).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn back_transform_avx2(rows: &mut [f64], n: usize, refl: &[(usize, f64, Vec<f64>)]) {
    back_transform(rows, n, refl)
}

/// Householder tridiagonalisation of the symmetric matrix `m` (destroyed). Returns the
/// diagonal, the off-diagonal (`off[i]` couples `i` and `i + 1`; `off[n - 1] = 0`) and the
/// reflectors `(start, β, v)`, each `I - β v vᵀ` acting on coordinates `start..n`, in the order
/// applied (`A = Q T Qᵀ` with `Q = H_0 H_1 ...`).
#[allow(clippy::type_complexity)]
fn tridiagonalize(m: &mut [f64], n: usize) -> (Vec<f64>, Vec<f64>, Vec<(usize, f64, Vec<f64>)>) {
    let mut diag = vec![0.0f64; n];
    let mut off = vec![0.0f64; n];
    let mut refl = Vec::new();
    for k in 0..n.saturating_sub(2) {
        let start = k + 1;
        // Column k below the diagonal, read as row k (the matrix stays symmetric).
        let x = m[k * n + start..(k + 1) * n].to_vec();
        let tail2 = dot64(&x[1..], &x[1..]);
        diag[k] = m[k * n + k];
        if tail2 == 0.0 {
            off[k] = x[0];
            continue;
        }
        let xnorm = (tail2 + x[0] * x[0]).sqrt();
        let alpha = if x[0] > 0.0 { -xnorm } else { xnorm };
        let mut v = x;
        v[0] -= alpha;
        let beta = 2.0 / (tail2 + v[0] * v[0]);
        // p = β·B·v, K = β/2·vᵀp, w = p - K·v, B -= v wᵀ + w vᵀ on the trailing block B.
        // Four rows per task: four independent sums (see `dot64x4`).
        let mut p = vec![0.0f64; n - start];
        p.par_chunks_mut(4)
            .zip(m[start * n..].par_chunks(4 * n))
            .for_each(|(p, rows)| match wide() {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `wide()` answers `Avx2` only where AVX2 is available (see there).
                Wide::Avx2 => unsafe { reflector_dots_avx2(rows, n, start, &v, beta, p) },
                _ => reflector_dots(rows, n, start, &v, beta, p),
            });
        let kk = 0.5 * beta * dot64(&v, &p);
        for (pi, vi) in p.iter_mut().zip(&v) {
            *pi -= kk * vi;
        }
        let vw: Vec<(f64, f64)> = v.iter().copied().zip(p.iter().copied()).collect();
        m[start * n..]
            .par_chunks_mut(4 * n)
            .zip(vw.par_chunks(4))
            .for_each(|(rows, vw)| match wide() {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: as above.
                Wide::Avx2 => unsafe { rank2_rows_avx2(rows, n, start, &v, &p, vw) },
                _ => rank2_rows(rows, n, start, &v, &p, vw),
            });
        off[k] = alpha;
        refl.push((start, beta, v));
    }
    if n >= 2 {
        diag[n - 2] = m[(n - 2) * n + n - 2];
        off[n - 2] = m[(n - 2) * n + n - 1];
    }
    diag[n - 1] = m[(n - 1) * n + n - 1];
    (diag, off, refl)
}

/// Eigenvalues of the symmetric tridiagonal matrix (`diag`, `off`) by implicit QL with
/// Wilkinson shifts, left in `diag` (unsorted); `off` is destroyed.
fn tridiagonal_ql(diag: &mut [f64], off: &mut [f64]) {
    let n = diag.len();
    for l in 0..n {
        let mut iter = 0;
        loop {
            // The first negligible off-diagonal element at or after l splits the matrix.
            let mut m = l;
            while m + 1 < n {
                let dd = diag[m].abs() + diag[m + 1].abs();
                if off[m].abs() <= f64::EPSILON * dd {
                    break;
                }
                m += 1;
            }
            if m == l {
                break;
            }
            iter += 1;
            if iter > 100 {
                // Never seen for symmetric input; keep what has converged.
                break;
            }
            let mut g = (diag[l + 1] - diag[l]) / (2.0 * off[l]);
            let mut r = g.hypot(1.0);
            g = diag[m] - diag[l] + off[l] / (g + r.copysign(g));
            let (mut s, mut c, mut p) = (1.0f64, 1.0f64, 0.0f64);
            let mut deflated = false;
            let mut i = m;
            while i > l {
                i -= 1;
                let f = s * off[i];
                let b = c * off[i];
                r = f.hypot(g);
                off[i + 1] = r;
                if r == 0.0 {
                    diag[i + 1] -= p;
                    off[m] = 0.0;
                    deflated = true;
                    break;
                }
                s = f / r;
                c = g / r;
                g = diag[i + 1] - p;
                r = (diag[i] - g) * s + 2.0 * c * b;
                p = s * r;
                diag[i + 1] = g + p;
                g = c * r - b;
            }
            if deflated {
                continue;
            }
            diag[l] -= p;
            off[l] = g;
            off[m] = 0.0;
        }
    }
}

/// [`tridiagonal_vectors`] compiled with AVX2 enabled (the same operations in the same order;
/// the re-orthogonalisation against the vectors of a cluster vectorises 4 wide).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn tridiagonal_vectors_avx2(diag: &[f64], off: &[f64], vals: &[f64]) -> Vec<f64> {
    tridiagonal_vectors(diag, off, vals)
}

/// Eigenvectors (rows) of the symmetric tridiagonal matrix (`diag`, `off`) for its sorted
/// eigenvalues `vals`, by inverse iteration (see [`symmetric_eigen`]).
#[inline(always)]
fn tridiagonal_vectors(diag: &[f64], off: &[f64], vals: &[f64]) -> Vec<f64> {
    let n = diag.len();
    let mut out = vec![0.0f64; n * n];
    let tnorm = (0..n)
        .map(|i| diag[i].abs() + off[i].abs() + if i > 0 { off[i - 1].abs() } else { 0.0 })
        .fold(0.0f64, f64::max);
    if n == 1 || tnorm == 0.0 {
        for i in 0..n {
            out[i * n + i] = 1.0;
        }
        return out;
    }
    let sep = 10.0 * f64::EPSILON * tnorm;
    let ortol = 1e-3 * tnorm;
    let tiny = f64::EPSILON * tnorm;
    let mut rng = super::rotation::SplitMix::new(0x51A7_E16E);
    let (mut d, mut du, mut du2, mut dl) = (vec![0.0; n], vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    let mut piv = vec![false; n];
    let mut x = vec![0.0f64; n];
    let mut shift_prev = f64::INFINITY;
    let mut first = 0; // first index of the run of eigenvalues within `ortol` of the current one
    for j in 0..n {
        // Separate (numerically) equal eigenvalues so the factorisations differ.
        let mut shift = vals[j];
        if shift_prev - shift < sep {
            shift = shift_prev - sep;
        }
        shift_prev = shift;
        while vals[first] - vals[j] > ortol {
            first += 1;
        }
        // LU of T - shift·I with partial pivoting (LAPACK dgttrf).
        d.copy_from_slice(diag);
        d.iter_mut().for_each(|v| *v -= shift);
        du[..n - 1].copy_from_slice(&off[..n - 1]);
        dl[..n - 1].copy_from_slice(&off[..n - 1]);
        du2.fill(0.0);
        for i in 0..n - 1 {
            if d[i].abs() >= dl[i].abs() {
                piv[i] = false;
                if d[i] != 0.0 {
                    let f = dl[i] / d[i];
                    dl[i] = f;
                    d[i + 1] -= f * du[i];
                } else {
                    dl[i] = 0.0;
                }
            } else {
                piv[i] = true;
                let f = d[i] / dl[i];
                d[i] = dl[i];
                dl[i] = f;
                let t = du[i];
                du[i] = d[i + 1];
                d[i + 1] = t - f * d[i + 1];
                if i + 2 < n {
                    du2[i] = du[i + 1];
                    du[i + 1] *= -f;
                }
            }
        }
        for v in d.iter_mut() {
            if v.abs() < tiny {
                *v = if *v < 0.0 { -tiny } else { tiny };
            }
        }
        x.iter_mut().for_each(|v| *v = rng.next_f64() - 0.5);
        for _ in 0..3 {
            // Solve L U x = b in place: forward with the row interchanges, then back.
            for i in 0..n - 1 {
                if piv[i] {
                    let t = x[i];
                    x[i] = x[i + 1];
                    x[i + 1] = t - dl[i] * x[i];
                } else {
                    x[i + 1] -= dl[i] * x[i];
                }
            }
            x[n - 1] /= d[n - 1];
            x[n - 2] = (x[n - 2] - du[n - 2] * x[n - 1]) / d[n - 2];
            for i in (0..n - 2).rev() {
                x[i] = (x[i] - du[i] * x[i + 1] - du2[i] * x[i + 2]) / d[i];
            }
            for k in first..j {
                let prev = &out[k * n..(k + 1) * n];
                let p = dot64(&x, prev);
                x.iter_mut().zip(prev).for_each(|(a, b)| *a -= p * b);
            }
            let norm = dot64(&x, &x).sqrt();
            if norm.is_finite() && norm > 0.0 {
                x.iter_mut().for_each(|v| *v /= norm);
            } else {
                x.iter_mut().for_each(|v| *v = rng.next_f64() - 0.5);
            }
        }
        out[j * n..(j + 1) * n].copy_from_slice(&x);
    }
    out
}

/// Covariance (`dim × dim`, row-major, divided by the row count) of the rows `rows` of `data`
/// around `mean`: per block of rows, the f32 products of the centred block with itself by
/// matrix products (`matrixmultiply::sgemm`) over stripes of [`COV_STRIPE`] rows of the
/// upper triangle (about 60% of the full product at `d = 384`), accumulated in f64 across
/// blocks.
fn covariance(data: &[f32], dim: usize, mean: &[f64], rows: &[usize]) -> Vec<f64> {
    const BLOCK: usize = 512;
    let mut cov = vec![0.0f64; dim * dim];
    let mut a = vec![0.0f32; dim * BLOCK.min(rows.len())];
    let mut c = vec![0.0f32; dim * dim];
    for chunk in rows.chunks(BLOCK) {
        let b = chunk.len();
        // Row-major block of centred rows.
        for (o, &i) in a.chunks_exact_mut(dim).zip(chunk) {
            let row = &data[i * dim..(i + 1) * dim];
            for ((o, &x), &mu) in o.iter_mut().zip(row).zip(mean) {
                *o = (x as f64 - mu) as f32;
            }
        }
        let a = &a[..b * dim];
        // Stripe `s` (rows s..s+h of the product): columns s..dim, i.e. every entry (i, j >= i)
        // of those rows.
        c.par_chunks_mut(COV_STRIPE * dim)
            .enumerate()
            .for_each(|(t, stripe)| {
                let s = t * COV_STRIPE;
                let (h, w) = (stripe.len() / dim, dim - s);
                // SAFETY: `a` is b × dim row-major; the left factor reads its columns s..s+h
                // transposed (row stride 1, column stride dim), the right factor its columns
                // s..dim (row stride dim, column stride 1), all within b × dim; the product
                // (h × w) goes to rows 0..h, columns s..dim of `stripe` (row stride dim),
                // within its h × dim values.
                unsafe {
                    matrixmultiply::sgemm(
                        h,
                        b,
                        w,
                        1.0,
                        a.as_ptr().add(s),
                        1,
                        dim as isize,
                        a.as_ptr().add(s),
                        dim as isize,
                        1,
                        0.0,
                        stripe.as_mut_ptr().add(s),
                        dim as isize,
                        1,
                    );
                }
            });
        for i in 0..dim {
            let (ci, ai) = (
                &mut cov[i * dim + i..(i + 1) * dim],
                &c[i * dim + i..(i + 1) * dim],
            );
            for (o, &v) in ci.iter_mut().zip(ai) {
                *o += v as f64;
            }
        }
    }
    let inv = 1.0 / rows.len().max(1) as f64;
    for i in 0..dim {
        for j in i..dim {
            let v = cov[i * dim + j] * inv;
            cov[i * dim + j] = v;
            cov[j * dim + i] = v;
        }
    }
    cov
}

/// Rows of the covariance per matrix product in [`covariance`].
const COV_STRIPE: usize = 64;

// ---------------------------------------------------------------------------------------------
// Bit allocation
// ---------------------------------------------------------------------------------------------

/// Code plus factor bits of a segment of `units` units with `bits` bits per coordinate, in
/// steps of 16 bits (a dropped segment costs nothing), in code layout `layout` (layout 1
/// stores a 16-bit traversal ratio for segments of more than 4 bits).
#[inline]
fn seg_cost(units: usize, bits: u32, layout: u32) -> u64 {
    match bits {
        0 => 0,
        1 => 4 * units as u64 + 2,
        b if b > 4 && layout == LAYOUT_NIBBLE => 4 * b as u64 * units as u64 + 4,
        b => 4 * b as u64 * units as u64 + 3,
    }
}

/// The budget in bits for an average of `bits` per dimension over `pad` padded dimensions:
/// `⌊bits·pad⌋` code bits plus 128 bits for per-segment factors.
pub fn budget_bits(bits: f32, pad: usize) -> u64 {
    (bits as f64 * pad as f64).floor().max(0.0) as u64 + 128
}

/// Code and factor bits per vector of a plan `[(units, bits), ...]` (the 8-byte header and
/// the alignment padding excluded) in code layout 0.
pub fn plan_bits(plan: &[(usize, u32)]) -> u64 {
    plan_bits_in(plan, LAYOUT_PLANES)
}

/// [`plan_bits`] in code layout `layout`.
pub fn plan_bits_in(plan: &[(usize, u32)], layout: u32) -> u64 {
    16 * plan
        .iter()
        .map(|&(u, b)| seg_cost(u, b, layout))
        .sum::<u64>()
}

/// Modelled error `Σ_s V_s·h(b_s)` of a plan over per-unit variances.
pub fn plan_error(unit_var: &[f64], plan: &[(usize, u32)]) -> f64 {
    let mut at = 0;
    let mut err = 0.0;
    for &(u, b) in plan {
        err += unit_var[at..at + u].iter().sum::<f64>() * MODEL_ERROR[b as usize];
        at += u;
    }
    err
}

/// The segmentation and bit allocation minimising [`plan_error`] within `budget_bits`
/// ([`plan_bits`] of the result never exceeds it), by dynamic programming over (units
/// covered, budget used in steps of 16 bits). Segments have 1..=`max_bits` bits, except an
/// optional trailing segment of 0 bits; at least one segment has bits. Among plans of equal
/// modelled error the cheapest is returned. `budget_bits` must be at least 96 (one unit at one
/// bit).
pub fn allocate(unit_var: &[f64], budget_bits: u64, max_bits: u32) -> Vec<(usize, u32)> {
    allocate_in(unit_var, budget_bits, max_bits, LAYOUT_PLANES)
}

/// [`allocate`] with the costs of code layout `layout` ([`plan_bits_in`]).
pub fn allocate_in(
    unit_var: &[f64],
    budget_bits: u64,
    max_bits: u32,
    layout: u32,
) -> Vec<(usize, u32)> {
    let u = unit_var.len();
    assert!(u > 0 && budget_bits >= 96 && (1..=MAX_SEG_BITS).contains(&max_bits));
    let t_max = (budget_bits / 16) as usize;
    let mut prefix = vec![0.0f64; u + 1];
    for (i, v) in unit_var.iter().enumerate() {
        prefix[i + 1] = prefix[i] + v;
    }
    let w = t_max + 1;
    // f[i*w + t]: least error covering units 0..i within t steps; how[...]: (start, bits).
    let mut f = vec![f64::INFINITY; (u + 1) * w];
    let mut how = vec![(0u32, 0u32); (u + 1) * w];
    f[..w].fill(0.0);
    for i in 1..=u {
        for t in 0..=t_max {
            let mut best = f64::INFINITY;
            let mut arg = (0u32, 0u32);
            for j in 0..i {
                let v = prefix[i] - prefix[j];
                for b in 1..=max_bits {
                    let c = seg_cost(i - j, b, layout) as usize;
                    if c > t {
                        break;
                    }
                    let e = f[j * w + t - c] + v * MODEL_ERROR[b as usize];
                    if e < best {
                        best = e;
                        arg = (j as u32, b);
                    }
                }
            }
            f[i * w + t] = best;
            how[i * w + t] = arg;
        }
    }
    let backtrack = |i: usize| -> Vec<(usize, u32)> {
        let (mut i, mut t) = (i, t_max);
        let mut out = Vec::new();
        while i > 0 {
            let (j, b) = how[i * w + t];
            let j = j as usize;
            out.push((i - j, b));
            t -= seg_cost(i - j, b, layout) as usize;
            i = j;
        }
        out.reverse();
        out
    };
    // Candidates: no tail, or a dropped tail from unit j >= 1.
    #[allow(clippy::type_complexity)]
    let mut best: Option<(f64, u64, Vec<(usize, u32)>)> = None;
    for j in (1..=u).rev() {
        if !f[j * w + t_max].is_finite() {
            continue;
        }
        let mut plan = backtrack(j);
        if j < u {
            plan.push((u - j, 0));
        }
        let err = plan_error(unit_var, &plan);
        let cost = plan_bits_in(&plan, layout);
        let better = match &best {
            None => true,
            Some((e, c, _)) => {
                let tol = 1e-12 * e.abs();
                err < e - tol || (err <= e + tol && cost < *c)
            }
        };
        if better {
            best = Some((err, cost, plan));
        }
    }
    best.expect("one unit at one bit always fits").2
}

// ---------------------------------------------------------------------------------------------
// Code search: initial scale and code adjustment
// ---------------------------------------------------------------------------------------------

/// `(<z, w>, ‖w‖²)` in f64 (eight partial sums, so the loop vectorises).
#[inline(always)]
fn ip_nn(z: &[f32], w: &[f32]) -> (f64, f64) {
    let (mut ip, mut nn) = ([0.0f64; 8], [0.0f64; 8]);
    let (cz, cw) = (z.chunks_exact(8), w.chunks_exact(8));
    let (tz, tw) = (cz.remainder(), cw.remainder());
    for (a, b) in cz.zip(cw) {
        for l in 0..8 {
            ip[l] += a[l] as f64 * b[l] as f64;
            nn[l] += b[l] as f64 * b[l] as f64;
        }
    }
    for (l, (&a, &b)) in tz.iter().zip(tw).enumerate() {
        ip[l] += a as f64 * b as f64;
        nn[l] += b as f64 * b as f64;
    }
    let sum = |v: [f64; 8]| ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]));
    (sum(ip), sum(nn))
}

/// `max_i |z_i|` (lane-wise maxima, so the loop vectorises).
#[inline(always)]
fn max_abs(z: &[f32]) -> f32 {
    let mut mx = [0.0f32; LANES];
    let cz = z.chunks_exact(LANES);
    let tail = cz.remainder();
    for c in cz {
        for l in 0..LANES {
            let a = c[l].abs();
            mx[l] = if a > mx[l] { a } else { mx[l] };
        }
    }
    for (l, &x) in tail.iter().enumerate() {
        let a = x.abs();
        mx[l] = if a > mx[l] { a } else { mx[l] };
    }
    mx.iter().fold(0.0f32, |a, &x| if x > a { x } else { a })
}

/// `wmax = (2^bits - 1)/2`: grid values are `w = c - wmax ∈ {-wmax, ..., -½, ½, ..., wmax}`.
#[inline(always)]
fn wmax(bits: u32) -> f32 {
    ((1u32 << bits) - 1) as f32 / 2.0
}

/// Cosine between `z` and the grid point `w_i = c_i - (2^bits - 1)/2` (0 when `z` is 0).
pub fn code_cosine(z: &[f32], bits: u32, codes: &[u16]) -> f64 {
    let m = wmax(bits);
    let w: Vec<f32> = codes.iter().map(|&c| c as f32 - m).collect();
    cosine(z, &w)
}

fn cosine(z: &[f32], w: &[f32]) -> f64 {
    let (ip, nn) = ip_nn(z, w);
    let n2: f64 = z.iter().map(|&x| x as f64 * x as f64).sum();
    if nn > 0.0 && n2 > 0.0 {
        ip / (nn * n2).sqrt()
    } else {
        0.0
    }
}

/// `1.5·2^23`: `(t + ROUND) - ROUND` rounds `t` to the nearest integer for `|t| < 2^22`.
const ROUND: f32 = 12_582_912.0;

/// Grid values `w_i = clamp(⌊z_i·inv⌋ + ½, -wmax, wmax)` for the step `1/inv`, written with
/// additions and comparisons only so the loop vectorises (`⌊t⌋ + ½` is computed as
/// `round(t - ½) + ½`, which differs only at exact ties).
#[inline(always)]
fn grid(z: &[f32], inv: f32, wmax: f32, w: &mut [f32]) {
    for (o, &x) in w.iter_mut().zip(z) {
        *o = grid1(x, inv, wmax);
    }
}

/// One value of [`grid`].
#[inline(always)]
fn grid1(x: f32, inv: f32, wmax: f32) -> f32 {
    let v = ((x * inv - 0.5) + ROUND - ROUND) + 0.5;
    let v = if v < wmax { v } else { wmax };
    if v > -wmax {
        v
    } else {
        -wmax
    }
}

/// Lanes of the f32 sums in [`grid_ip_nn`].
const LANES: usize = 16;

/// `(<z, w>, ‖w‖²)` in f32 for the [`grid`] values `w` of the step `1/inv`, in one pass that
/// does not store `w` ([`LANES`] partial sums, so the loop vectorises).
#[inline(always)]
fn grid_ip_nn(z: &[f32], inv: f32, wmax: f32) -> (f32, f32) {
    let (mut ip, mut nn) = ([0.0f32; LANES], [0.0f32; LANES]);
    let cz = z.chunks_exact(LANES);
    let tail = cz.remainder();
    for c in cz {
        for l in 0..LANES {
            let v = grid1(c[l], inv, wmax);
            ip[l] += c[l] * v;
            nn[l] += v * v;
        }
    }
    for (l, &x) in tail.iter().enumerate() {
        let v = grid1(x, inv, wmax);
        ip[l] += x * v;
        nn[l] += v * v;
    }
    (sum_lanes(&ip), sum_lanes(&nn))
}

/// Pairwise sum of the [`LANES`] partial sums.
#[inline(always)]
fn sum_lanes(a: &[f32; LANES]) -> f32 {
    let mut h = *a;
    let mut n = LANES;
    while n > 1 {
        n /= 2;
        for l in 0..n {
            h[l] += h[l + n];
        }
    }
    h[0]
}

/// Range of the optimal step as a multiple of `max|z_i|/2^(b-1)`, by bits: the 5th to 95th
/// percentiles of the exact (critical-value) optimum over Gaussian vectors of 64 to 384
/// coordinates, widened a little.
fn scale_range(bits: u32) -> (f32, f32) {
    match bits {
        1 | 2 => (0.45, 1.0),
        3 => (0.55, 1.07),
        4 => (0.65, 1.08),
        5 => (0.8, 1.12),
        _ => (0.92, 1.15),
    }
}

/// Initial grid values into `w` (see the module docs): the grid for the best of a few steps
/// by `<z, w>/‖w‖` (each candidate one fused pass, [`grid_ip_nn`]).
#[inline(always)]
fn initial_grid(z: &[f32], bits: u32, w: &mut [f32]) {
    let m = wmax(bits);
    let v = max_abs(z);
    if !(v > 0.0 && v.is_finite()) {
        w.fill(0.5);
        return;
    }
    let dmax = v / (1u32 << (bits - 1)) as f32;
    if bits == 1 {
        // Every step gives the sign code.
        grid(z, 1.0 / dmax, m, w);
        return;
    }
    let objective = |kk: f32| -> f32 {
        let (ip, nn) = grid_ip_nn(z, 1.0 / (kk * dmax), m);
        if nn > 0.0 {
            ip / nn.sqrt()
        } else {
            f32::NEG_INFINITY
        }
    };
    let (lo, hi) = scale_range(bits);
    let ratio = (hi / lo).powf(1.0 / (SCALE_CANDIDATES - 1) as f32);
    let mut best = (f32::NEG_INFINITY, lo);
    let mut kk = lo;
    for _ in 0..SCALE_CANDIDATES {
        let o = objective(kk);
        if o > best.0 {
            best = (o, kk);
        }
        kk *= ratio;
    }
    let mut step = ratio.sqrt();
    let refine = if bits <= 5 { 2 } else { 4 };
    for _ in 0..refine {
        let k0 = best.1;
        for kk in [k0 / step, k0 * step] {
            let o = objective(kk);
            if o > best.0 {
                best = (o, kk);
            }
        }
        step = step.sqrt();
    }
    grid(z, 1.0 / (best.1 * dmax), m, w);
}

/// Whether the step `(ip, nn) -> (ip2, nn2)` raises the cosine by more than [`ADJUST_EPS`].
#[inline(always)]
fn improves(ip: f64, nn: f64, ip2: f64, nn2: f64) -> bool {
    if ip > 0.0 {
        // cos' > cos·(1+ε) ⟺ ip'²·nn > ip²·nn'·(1+ε)² for ip, ip' > 0.
        ip2 > 0.0 && ip2 * ip2 * nn > ip * ip * nn2 * (1.0 + 2.0 * ADJUST_EPS)
    } else {
        nn2 > 0.0 && ip2 / nn2.sqrt() > ip / nn.sqrt() + ADJUST_EPS
    }
}

/// Code adjustment on grid values (see the module docs); `flags` has `z.len()` bytes.
#[inline(always)]
fn adjust_grid(z: &[f32], bits: u32, w: &mut [f32], rounds: usize, flags: &mut [u8]) {
    let m = wmax(bits);
    // max z_i² (squaring and rounding are monotone: the square of the largest |z_i|).
    let xmax = max_abs(z);
    let xmax2 = (xmax * xmax) as f64;
    for _ in 0..rounds {
        let (mut ip, mut nn) = ip_nn(z, w);
        // Screen: with u = z_i·‖w‖²/<z,w> - w_i, a step up needs u > ½ - z_i²‖w‖²/(2<z,w>²)
        // and a step down u < -½ + the same; 0.01 covers the f32 rounding of u. Steps taken
        // earlier in the round move ‖w‖²/<z,w> a little, so a coordinate screened out may
        // become improvable; the next round screens again, and the last round (no step, no
        // drift) checks every coordinate.
        if ip > 0.0 {
            let scale = (nn / ip) as f32;
            let band = (0.5 - xmax2 * nn / (2.0 * ip * ip) - 0.01) as f32;
            for ((f, &x), &v) in flags.iter_mut().zip(z).zip(w.iter()) {
                let u = x * scale - v;
                *f = ((u > band && v < m) || (u < -band && v > -m)) as u8;
            }
        } else {
            flags.fill(1);
        }
        let mut changed = false;
        // Few coordinates pass the screen: walk the set flags of each group of eight as the
        // bits of one byte.
        for (g, f8) in flags.chunks(8).enumerate() {
            let mut set = if f8.len() == 8 {
                gather_bit(u64::from_le_bytes(f8.try_into().unwrap()), 0)
            } else {
                f8.iter()
                    .enumerate()
                    .fold(0u8, |b, (l, &f)| b | (((f != 0) as u8) << l))
            };
            while set != 0 {
                let i = 8 * g + set.trailing_zeros() as usize;
                set &= set - 1;
                let x = z[i] as f64;
                let mut v = w[i] as f64;
                let mut moved = false;
                while v < m as f64 {
                    let (ip2, nn2) = (ip + x, nn + 2.0 * v + 1.0);
                    if !improves(ip, nn, ip2, nn2) {
                        break;
                    }
                    (ip, nn, v, moved) = (ip2, nn2, v + 1.0, true);
                }
                if !moved {
                    while v > -m as f64 {
                        let (ip2, nn2) = (ip - x, nn - 2.0 * v + 1.0);
                        if !improves(ip, nn, ip2, nn2) {
                            break;
                        }
                        (ip, nn, v, moved) = (ip2, nn2, v - 1.0, true);
                    }
                }
                if moved {
                    w[i] = v as f32;
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
}

fn to_grid(bits: u32, codes: &[u16]) -> Vec<f32> {
    assert!((1..=MAX_SEG_BITS).contains(&bits));
    let m = wmax(bits);
    codes.iter().map(|&c| c as f32 - m).collect()
}

fn to_codes(bits: u32, w: &[f32], codes: &mut [u16]) {
    let m = wmax(bits);
    for (c, &v) in codes.iter_mut().zip(w) {
        *c = (v + m) as u16;
    }
}

/// The plain uniform code on `[-max|z_i|, max|z_i|]` (the reference implementation's start):
/// `c_i = min(⌊(z_i + v)/Δ⌋, 2^b - 1)`, `Δ = 2v/2^b`.
pub fn uniform_codes(z: &[f32], bits: u32, codes: &mut [u16]) {
    assert!((1..=MAX_SEG_BITS).contains(&bits) && codes.len() == z.len());
    let v = z.iter().fold(0.0f32, |m, &x| m.max(x.abs()));
    let mut w = vec![0.5f32; z.len()];
    if v > 0.0 && v.is_finite() {
        grid(z, (1u32 << (bits - 1)) as f32 / v, wmax(bits), &mut w);
    }
    to_codes(bits, &w, codes);
}

/// Initial codes: the grid codes for the best of a few steps (see the module docs).
pub fn initial_codes(z: &[f32], bits: u32, codes: &mut [u16]) {
    assert!((1..=MAX_SEG_BITS).contains(&bits) && codes.len() == z.len());
    let mut w = vec![0.0f32; z.len()];
    initial_grid(z, bits, &mut w);
    to_codes(bits, &w, codes);
}

/// Code adjustment (see the module docs): up to `rounds` rounds of coordinate descent on the
/// cosine from the given codes (`c_i < 2^bits`). Returns [`code_cosine`] of the result, never
/// below that of the input.
pub fn adjust_codes(z: &[f32], bits: u32, codes: &mut [u16], rounds: usize) -> f64 {
    assert!(codes.len() == z.len());
    let mut w = to_grid(bits, codes);
    adjust_grid(z, bits, &mut w, rounds, &mut vec![0u8; z.len()]);
    to_codes(bits, &w, codes);
    cosine(z, &w)
}

/// Codes `c_i ∈ 0..2^bits` of `z` (`bits` in 1..=[`MAX_SEG_BITS`]): [`initial_codes`] then
/// [`adjust_codes`] with `rounds`. Returns the cosine of the result.
pub fn caq(z: &[f32], bits: u32, rounds: usize, codes: &mut [u16]) -> f64 {
    assert!((1..=MAX_SEG_BITS).contains(&bits) && codes.len() == z.len());
    let mut w = vec![0.0f32; z.len()];
    initial_grid(z, bits, &mut w);
    adjust_grid(z, bits, &mut w, rounds, &mut vec![0u8; z.len()]);
    to_codes(bits, &w, codes);
    cosine(z, &w)
}

// ---------------------------------------------------------------------------------------------
// The encoding
// ---------------------------------------------------------------------------------------------

/// Bit `j` of each of the 8 bytes of `v` gathered into one byte (byte `l` -> bit `l`).
#[inline(always)]
fn gather_bit(v: u64, j: u32) -> u8 {
    ((((v >> j) & 0x0101_0101_0101_0101).wrapping_mul(0x0102_0408_1020_4080)) >> 56) as u8
}

#[inline(always)]
fn rd_f32(code: &[u8], at: usize) -> f32 {
    // one bounds check and one load (indexing the four bytes apart compiles to four loads)
    f32::from_le_bytes(code[at..at + 4].try_into().unwrap())
}

#[inline(always)]
fn rd_u16(code: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(code[at..at + 2].try_into().unwrap())
}

#[inline(always)]
fn wr_f32(code: &mut [u8], at: usize, v: f32) {
    code[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// One segment of PCA coordinates `start..start+len` and where its parts sit in a code.
#[derive(Clone, Debug)]
struct Segment {
    start: usize,
    len: usize,
    bits: u32,
    /// Byte offsets of the factors and of the planes: layout 0 all `bits` planes (bit `j` at
    /// `planes + j·L/8`, the top bit last); layout 1 the `bits - 4` low planes (if any).
    fac: usize,
    planes: usize,
    /// Layout 1 with `bits >= 4`: the top 4 bits of every code are nibble-packed at `nib`
    /// (`L/2` bytes); above 4 bits the traversal ratio `ρ` (u16) follows the factors `f, r`.
    nibble: bool,
    nib: usize,
    tf: usize,
    /// `-(2^b - 1)/2`: `w = c + cb`.
    cb: f32,
    /// `f1 = f·r·r_scale` for `b >= 2` (`2^(b-1)/65536`).
    r_scale: f32,
    /// Error deviation per unit of `f1·‖p_s‖`: top bit, top 4 bits (nibble), full code.
    sd_top: f32,
    sd_mid: f32,
    sd_full: f32,
}

impl Segment {
    fn new(start: usize, len: usize, bits: u32) -> Self {
        // ‖z‖ ≈ f1·cos_1·sqrt(L); deviation ‖z‖‖p‖·sqrt((1 - cos²)/cos²)/sqrt(L - 1).
        let l = len as f64;
        let h1 = MODEL_ERROR[1];
        let c1 = (1.0 - h1).sqrt();
        let hb = MODEL_ERROR[bits as usize];
        let ht = MODEL_ERROR[bits.min(4) as usize];
        let per = (l / (l - 1.0)).sqrt();
        Segment {
            start,
            len,
            bits,
            fac: 0,
            planes: 0,
            nibble: false,
            nib: 0,
            tf: 0,
            cb: -(((1u32 << bits) - 1) as f32) / 2.0,
            r_scale: (1u32 << (bits - 1)) as f32 / 65536.0,
            sd_top: (per * h1.sqrt()) as f32,
            sd_mid: (per * c1 * (ht / (1.0 - ht)).sqrt()) as f32,
            sd_full: (per * c1 * (hb / (1.0 - hb)).sqrt()) as f32,
        }
    }
    /// The segment's nibbles in `code` (nibble segments).
    #[inline(always)]
    fn nibbles<'c>(&self, code: &'c [u8]) -> &'c [u8] {
        &code[self.nib..self.nib + self.len / 2]
    }
    /// The `bits - 4` low planes of a nibble segment (empty for 4 bits).
    #[inline(always)]
    fn low_planes<'c>(&self, code: &'c [u8]) -> &'c [u8] {
        let n = self.bits.saturating_sub(4) as usize * self.plane_bytes();
        &code[self.planes..self.planes + n]
    }
    #[inline(always)]
    fn plane_bytes(&self) -> usize {
        self.len / 8
    }
    /// All planes of the segment in `code`.
    #[inline(always)]
    fn all_planes<'c>(&self, code: &'c [u8]) -> &'c [u8] {
        &code[self.planes..self.planes + self.bits as usize * self.plane_bytes()]
    }
    /// The top-bit plane of the segment in `code`.
    #[inline(always)]
    fn top_plane<'c>(&self, code: &'c [u8]) -> &'c [u8] {
        let pb = self.plane_bytes();
        let at = self.planes + (self.bits as usize - 1) * pb;
        &code[at..at + pb]
    }
    #[inline(always)]
    fn factor_bytes(&self) -> usize {
        match self.bits {
            1 => 4,
            b if b > 4 && self.nibble => 8,
            _ => 6,
        }
    }
    /// The traversal factor of a nibble segment up to the constant `2^(b-4)/32768` (above 4
    /// bits) that the query folds in: `f·ρ16` above 4 bits, `f` at 4.
    #[inline(always)]
    fn trav_factor(&self, code: &[u8]) -> f32 {
        if self.bits > 4 {
            rd_f32(code, self.fac) * u16::from_le_bytes([code[self.tf], code[self.tf + 1]]) as f32
        } else {
            rd_f32(code, self.fac)
        }
    }
    /// The 1-bit rescale `f1`.
    #[inline(always)]
    fn f1(&self, code: &[u8]) -> f32 {
        if self.bits == 1 {
            rd_f32(code, self.fac)
        } else {
            let r = u16::from_le_bytes([code[self.fac + 4], code[self.fac + 5]]);
            rd_f32(code, self.fac) * r as f32 * self.r_scale
        }
    }
}

/// Working buffers of [`Saq::encode_projected`], reused across the vectors of a batch.
#[derive(Default)]
struct EncodeScratch {
    w: Vec<f32>,
    scratch: Vec<f32>,
    flags: Vec<u8>,
}

impl EncodeScratch {
    /// Room for segments of `len` coordinates.
    fn fit(&mut self, len: usize) {
        if self.w.len() < len {
            self.w.resize(len, 0.0);
            self.scratch.resize(len, 0.0);
            self.flags.resize(len, 0);
        }
    }
}

/// SAQ encoder (see the module docs).
pub struct Saq {
    dim: usize,
    metric: Metric,
    pad: usize,
    bits: f32,
    seed: u64,
    mean: Vec<f32>,
    /// `head × dim`: the rows `R_s W_s` of every segment, `W_s` the segment's principal
    /// directions (zero rows for padded coordinates) and `R_s` its rotation, so that
    /// `z_s = (R_s W_s)(x - μ)` in one matrix-vector product.
    proj: Vec<f32>,
    /// With [`Saq::set_half_queries`] on: `proj` rounded to half precision (IEEE binary16 bit
    /// patterns, to nearest even), what [`Encoding::prepare`] then projects queries with (see
    /// "Query projection in half precision" in the module docs). Empty when off. Built from
    /// `proj`, never stored.
    proj16: Vec<u16>,
    /// Variance along each principal direction (`dim` values, decreasing).
    var: Vec<f32>,
    /// Segments with bits, leading first (a dropped tail is not in the list).
    segs: Vec<Segment>,
    /// PCA coordinates covered by `segs` (`pad` when nothing is dropped).
    head: usize,
    lead: usize,
    eps0: f32,
    /// Effective dimension `(Σλ)²/Σλ²` of the dropped tail (0 without one).
    tail_dim: f32,
    code_size: usize,
    max_len: usize,
    /// Code layout ([`LAYOUT_PLANES`] or [`LAYOUT_NIBBLE`]).
    layout: u32,
    /// Byte offset of the header (`head/2` in layout 1, after the nibbles; 0 in layout 0).
    hdr: usize,
    /// Bytes that the traversal estimate reads (layout 1: nibbles, header and factors).
    trav_bytes: usize,
    k: &'static Kernels,
}

/// Per-segment part of a prepared query.
struct SegQuery {
    /// `Σ p_s,i`.
    sum: f32,
    /// `‖p_s‖`.
    norm: f32,
    /// Nibble segments: `ζ_s` of the i8 query `p_s ≈ ζ_s·w8` and `7.5·Σ w8`.
    kz: f32,
    mid8: f32,
}

/// A query prepared for scoring many codes.
pub struct SaqQuery {
    /// The rotated segments `p_s` of the query (the head, `head` values).
    z: Vec<f32>,
    per: Vec<SegQuery>,
    /// `‖q - μ‖²`.
    qn2: f32,
    /// `<μ, q>` (IP and cosine).
    g: f32,
    /// `‖p_tail‖/sqrt(L_eff)` (0 without a dropped tail, see [`Saq::tail_dim`]).
    tail_sd: f32,
    /// The stage scratch of `distance_within`.
    stage: RefCell<Vec<(f32, f32)>>,
    /// Scratch of [`Encoding::distance_ids`]: per-segment kernel sums of a chunk of codes.
    dots: RefCell<Vec<i32>>,
    /// Layout 1: the i8 query (per segment scale; 0 outside nibble segments) and the float
    /// query `z`, split into the weights of the low and high nibbles ([`u4_split`]; segments
    /// are whole nibble blocks, so segment `s` has its weights at `s.start/2..(s.start +
    /// s.len)/2`).
    w8_lo: Vec<i8>,
    w8_hi: Vec<i8>,
    wf_lo: Vec<f32>,
    wf_hi: Vec<f32>,
}

/// Leading segments that [`Encoding::distance`] scores with their full code by default: the
/// shortest prefix of the allocation (`(coordinates, bits)` per segment) holding at least half
/// of the variance `var` (per PCA coordinate), at least one segment.
pub fn default_traversal_segments(alloc: &[(usize, u32)], var: &[f32]) -> usize {
    let total: f64 = var.iter().map(|&v| v as f64).sum();
    let (mut acc, mut at, mut n) = (0.0f64, 0usize, 0usize);
    for &(len, bits) in alloc {
        if bits == 0 || (n >= 1 && acc >= 0.5 * total) {
            break;
        }
        let (a, b) = (at.min(var.len()), (at + len).min(var.len()));
        acc += var[a..b].iter().map(|&v| v as f64).sum::<f64>();
        at += len;
        n += 1;
    }
    n
}

impl Saq {
    /// Trains on `data` (row-major, `dim` columns, normalised for cosine): the mean, PCA on at
    /// most [`PCA_SAMPLE`] evenly strided rows, the bit allocation for `cfg.bits` and the
    /// per-segment rotations.
    pub fn train(data: &[f32], dim: usize, metric: Metric, cfg: &SaqConfig) -> Result<Saq> {
        if !(cfg.bits.is_finite() && cfg.bits > 0.0 && cfg.bits <= MAX_SEG_BITS as f32) {
            return Err(Error::param(
                "bits",
                format!(
                    "saq takes an average of more than 0 and at most {MAX_SEG_BITS} bits per dimension, not {}",
                    cfg.bits
                ),
            ));
        }
        if cfg.layout > LAYOUT_NIBBLE {
            return Err(Error::param(
                "layout",
                format!("saq has code layouts 0 and 1, not {}", cfg.layout),
            ));
        }
        if dim == 0 {
            return Err(Error::Empty("training data (no columns)"));
        }
        if !data.len().is_multiple_of(dim) {
            return Err(Error::InvalidInput(format!(
                "training data of {} values is not a whole number of rows of dimension {dim}",
                data.len()
            )));
        }
        let n = data.len() / dim;
        if n == 0 {
            return Err(Error::Empty("training data"));
        }
        check_finite("training data", data, dim)?;
        let mut acc = vec![0.0f64; dim];
        for row in data.chunks_exact(dim) {
            for (a, &x) in acc.iter_mut().zip(row) {
                *a += x as f64;
            }
        }
        let mean64: Vec<f64> = acc.iter().map(|s| s / n as f64).collect();
        let s = n.min(PCA_SAMPLE);
        let rows: Vec<usize> = (0..s).map(|i| i * n / s).collect();
        let cov = covariance(data, dim, &mean64, &rows);
        let (values, vectors) = symmetric_eigen(&cov, dim);
        let var: Vec<f32> = values.iter().map(|&v| v.max(0.0) as f32).collect();
        let comps: Vec<f32> = vectors.iter().map(|&v| v as f32).collect();
        let mean: Vec<f32> = mean64.iter().map(|&v| v as f32).collect();
        let pad = dim.div_ceil(UNIT) * UNIT;
        let plan = allocate_in(
            &unit_variances(&var, pad),
            budget_bits(cfg.bits, pad),
            MAX_SEG_BITS,
            cfg.layout,
        );
        let alloc: Vec<(usize, u32)> = plan.iter().map(|&(u, b)| (u * UNIT, b)).collect();
        let lead = default_traversal_segments(&alloc, &var);
        let proj = rotated_projection(&comps, dim, &alloc, cfg.seed);
        Ok(Self::assemble(
            dim,
            metric,
            cfg.bits,
            cfg.seed,
            mean,
            proj,
            var,
            &plan,
            lead,
            DEFAULT_EPS0,
            cfg.layout,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        dim: usize,
        metric: Metric,
        bits: f32,
        seed: u64,
        mean: Vec<f32>,
        proj: Vec<f32>,
        var: Vec<f32>,
        plan: &[(usize, u32)],
        lead: usize,
        eps0: f32,
        layout: u32,
    ) -> Saq {
        let pad = dim.div_ceil(UNIT) * UNIT;
        let mut segs = Vec::new();
        let mut start = 0;
        for &(units, b) in plan {
            if b > 0 {
                segs.push(Segment::new(start, units * UNIT, b));
            }
            start += units * UNIT;
        }
        let head = segs.last().map_or(0, |s| s.start + s.len);
        // Layout 1: the nibbles of the segments of 4 or more bits first (what the traversal
        // gathers from offset 0), then the header and the factors, then the planes of the
        // segments of fewer bits (whose top planes the traversal reads), then the low planes.
        let mut off = 0;
        for s in segs.iter_mut() {
            s.nibble = layout == LAYOUT_NIBBLE && s.bits >= 4;
            if s.nibble {
                s.nib = off;
                off += s.len / 2;
            }
        }
        let hdr = off;
        off += HEADER;
        for s in segs.iter_mut() {
            s.fac = off;
            s.tf = if s.bits > 4 { off + 6 } else { off };
            off += s.factor_bytes();
        }
        off = off.div_ceil(8) * 8;
        let mut trav_bytes = off;
        for s in segs.iter_mut().filter(|s| !s.nibble) {
            s.planes = off;
            off += s.bits as usize * s.plane_bytes();
            trav_bytes = off;
        }
        for s in segs.iter_mut().filter(|s| s.nibble) {
            s.planes = off;
            off += (s.bits - 4) as usize * s.plane_bytes();
        }
        let max_len = segs.iter().map(|s| s.len).max().unwrap_or(0);
        // For independent Gaussian x, q with covariance Λ on the tail, E<x,q>² = tr Λ², so
        // <x_t, q_t> has deviation ‖x_t‖‖q_t‖/sqrt(L_eff), L_eff = (tr Λ)²/tr Λ² ≤ L_tail.
        let tail = &var[head.min(var.len())..];
        let (s1, s2) = tail.iter().fold((0.0f64, 0.0f64), |(a, b), &v| {
            (a + v as f64, b + v as f64 * v as f64)
        });
        let tail_dim = if s2 > 0.0 { (s1 * s1 / s2) as f32 } else { 0.0 };
        let mut saq = Saq {
            dim,
            metric,
            pad,
            bits,
            seed,
            mean,
            proj,
            proj16: Vec::new(),
            var,
            lead: lead.min(segs.len()),
            segs,
            head,
            eps0,
            tail_dim,
            code_size: off,
            max_len,
            layout,
            hdr,
            trav_bytes,
            k: kernels(),
        };
        if half_queries_env() {
            saq.set_half_queries(true);
        }
        saq
    }

    /// The segmentation and bit allocation: `(coordinates, bits)` per segment in PCA order,
    /// leading (highest-variance) first; a dropped tail comes last with 0 bits.
    pub fn allocation(&self) -> Vec<(usize, u32)> {
        let mut out: Vec<(usize, u32)> = self.segs.iter().map(|s| (s.len, s.bits)).collect();
        if self.head < self.pad {
            out.push((self.pad - self.head, 0));
        }
        out
    }
    /// The configured average bits per dimension.
    pub fn bits(&self) -> f32 {
        self.bits
    }
    /// Padded dimension `D`.
    pub fn padded_dim(&self) -> usize {
        self.pad
    }
    pub fn seed(&self) -> u64 {
        self.seed
    }
    pub fn mean(&self) -> &[f32] {
        &self.mean
    }
    /// Variance along each principal direction, decreasing (`dim` values).
    pub fn variances(&self) -> &[f32] {
        &self.var
    }
    /// The projection, `head × dim` (`head` = coordinates with bits): per segment the rows
    /// `R_s W_s`, i.e. the segment's principal directions rotated by its random rotation.
    pub fn projection(&self) -> &[f32] {
        &self.proj
    }
    pub fn eps0(&self) -> f32 {
        self.eps0
    }
    pub fn set_eps0(&mut self, eps0: f32) {
        self.eps0 = eps0;
    }
    /// The code layout ([`LAYOUT_PLANES`] or [`LAYOUT_NIBBLE`]).
    pub fn layout(&self) -> u32 {
        self.layout
    }
    /// The same trained encoder (projection, allocation, options) with its codes in `layout`
    /// (tests: both layouts hold the same codes). The allocation is kept even where it exceeds
    /// `layout`'s budget (such an encoder's parameters would not load back).
    #[doc(hidden)]
    pub fn with_layout(&self, layout: u32) -> Saq {
        let plan: Vec<(usize, u32)> = self
            .allocation()
            .iter()
            .map(|&(l, b)| (l / UNIT, b))
            .collect();
        let mut saq = Self::assemble(
            self.dim,
            self.metric,
            self.bits,
            self.seed,
            self.mean.clone(),
            self.proj.clone(),
            self.var.clone(),
            &plan,
            self.lead,
            self.eps0,
            layout.min(LAYOUT_NIBBLE),
        );
        saq.set_half_queries(self.half_queries());
        saq
    }
    /// Whether queries are projected with a half-precision copy of the projection (see
    /// [`Saq::set_half_queries`]).
    pub fn half_queries(&self) -> bool {
        !self.proj16.is_empty()
    }
    /// Projects queries ([`Encoding::prepare`]) with a copy of the projection rounded to half
    /// precision (`matvec_f16`, half the bytes streamed per query; +2 bytes per entry of
    /// [`Saq::projection`] in [`Encoding::params_bytes`]; the default, see
    /// `NEARQ_SAQ_HALF_QUERIES`), or, when off, with the f32 projection. Vectors are always encoded with the f32 projection, so the codes do
    /// not change, and the setting is not stored. The estimates move by far less than their
    /// own error (module docs, "Query projection in half precision"), but they do move: the
    /// distances of a search without re-ranking vectors are not bit-identical to those of
    /// f32 queries.
    pub fn set_half_queries(&mut self, on: bool) {
        self.proj16 = if on {
            self.proj
                .iter()
                .map(|&x| half::f16::from_f32(x).to_bits())
                .collect()
        } else {
            Vec::new()
        };
    }
    /// Leading segments that [`Encoding::distance`] scores with their full code (in layout 1
    /// those of fewer than 4 bits; the others are scored on their top 4 bits, nibble-packed).
    pub fn traversal_segments(&self) -> usize {
        self.lead
    }
    /// Sets [`Saq::traversal_segments`] (capped at the number of segments with bits; 0 = top
    /// bits only).
    pub fn set_traversal_segments(&mut self, n: usize) {
        self.lead = n.min(self.segs.len());
    }

    /// The rotated segments `z = proj·(v - μ)` (length `head`; `r` receives `v - μ`);
    /// returns `(‖v - μ‖², <v - μ, μ>)`.
    fn project(&self, v: &[f32], r: &mut [f32], z: &mut [f32]) -> (f32, f32) {
        for ((o, &a), &m) in r.iter_mut().zip(v).zip(&self.mean) {
            *o = a - m;
        }
        (self.k.matvec_f32)(&self.proj, r, z);
        ((self.k.dot_f32)(r, r), (self.k.dot_f32)(r, &self.mean))
    }

    /// [`Saq::project`] of a query, with the half-precision projection when
    /// [`Saq::half_queries`] is on; returns `‖q - μ‖²`.
    fn project_query(&self, q: &[f32], r: &mut [f32], z: &mut [f32]) -> f32 {
        if !self.half_queries() {
            return self.project(q, r, z).0;
        }
        for ((o, &a), &m) in r.iter_mut().zip(q).zip(&self.mean) {
            *o = a - m;
        }
        (self.k.matvec_f16)(&self.proj16, r, z);
        (self.k.dot_f32)(r, r)
    }

    /// Encodes with `rounds` code-adjustment rounds ([`Encoding::encode`] uses
    /// [`ADJUST_ROUNDS`]; 0 keeps the initial codes).
    pub fn encode_with(&self, v: &[f32], out: &mut [u8], rounds: usize) {
        assert_eq!(v.len(), self.dim, "saq: vector length");
        assert_eq!(out.len(), self.code_size, "saq: code length");
        let mut r = vec![0.0f32; self.dim];
        let mut z = vec![0.0f32; self.head];
        let (norm2, ip_add) = self.project(v, &mut r, &mut z);
        self.encode_projected(
            &z,
            norm2,
            ip_add,
            out,
            rounds,
            &mut EncodeScratch::default(),
        );
    }

    /// Encodes blocks of rows of `data` with the projection as one matrix product per block
    /// (see [`Encoding::encode_batch`]); `rounds` as in [`Saq::encode_with`].
    pub fn encode_batch_with(&self, data: &[f32], out: &mut [u8], stride: usize, rounds: usize) {
        // Rows per matrix product: enough to amortise the packing of `proj` (`head × dim`).
        const B: usize = 256;
        let (dim, head) = (self.dim, self.head);
        assert_eq!(data.len() % dim, 0, "saq: data length");
        let n = data.len() / dim;
        assert!(
            stride >= self.code_size && (n == 0 || out.len() >= (n - 1) * stride + self.code_size),
            "saq: output length"
        );
        let mut r = vec![0.0f32; B.min(n) * dim];
        let mut z = vec![0.0f32; B.min(n) * head];
        let mut buf = EncodeScratch::default();
        for (b0, rows) in data.chunks(B * dim).enumerate() {
            let m = rows.len() / dim;
            for (rr, v) in r.chunks_exact_mut(dim).zip(rows.chunks_exact(dim)) {
                for ((o, &a), &mu) in rr.iter_mut().zip(v).zip(&self.mean) {
                    *o = a - mu;
                }
            }
            // z (m × head) = r (m × dim) · projᵀ (proj is head × dim, row-major).
            // SAFETY: r holds m × dim values (row stride dim), proj head × dim (read transposed:
            // row stride 1, column stride dim), z m × head (row stride head); all in bounds.
            unsafe {
                matrixmultiply::sgemm(
                    m,
                    dim,
                    head,
                    1.0,
                    r.as_ptr(),
                    dim as isize,
                    1,
                    self.proj.as_ptr(),
                    1,
                    dim as isize,
                    0.0,
                    z.as_mut_ptr(),
                    head as isize,
                    1,
                );
            }
            for j in 0..m {
                let rr = &r[j * dim..(j + 1) * dim];
                let (norm2, ip_add) = ((self.k.dot_f32)(rr, rr), (self.k.dot_f32)(rr, &self.mean));
                let at = (b0 * B + j) * stride;
                self.encode_projected(
                    &z[j * head..(j + 1) * head],
                    norm2,
                    ip_add,
                    &mut out[at..at + self.code_size],
                    rounds,
                    &mut buf,
                );
            }
        }
    }

    /// The code of a vector from its rotated segments `z` (length `head`), `‖v - μ‖²` and
    /// `<v - μ, μ>`.
    fn encode_projected(
        &self,
        z: &[f32],
        norm2: f32,
        ip_add: f32,
        out: &mut [u8],
        rounds: usize,
        buf: &mut EncodeScratch,
    ) {
        buf.fit(self.max_len);
        #[cfg(target_arch = "x86_64")]
        if self.k.level == nearq_kernels::SimdLevel::Avx512 {
            // SAFETY: the kernel table of that level is chosen only where AVX-512 F, BW and VL
            // are available.
            unsafe { self.encode_projected_avx512(z, norm2, ip_add, out, rounds, buf) };
            return;
        }
        match wide() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `wide()` answers `Avx2` only where AVX2 is available (see there).
            Wide::Avx2 => unsafe { self.encode_projected_avx2(z, norm2, ip_add, out, rounds, buf) },
            _ => self.encode_projected_in(z, norm2, ip_add, out, rounds, buf),
        }
    }

    /// [`Saq::encode_projected`] compiled with AVX2 enabled: the same operations in the same
    /// order (bit-identical codes, see `rotation::Wide`), vectorised 8 wide.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn encode_projected_avx2(
        &self,
        z: &[f32],
        norm2: f32,
        ip_add: f32,
        out: &mut [u8],
        rounds: usize,
        buf: &mut EncodeScratch,
    ) {
        self.encode_projected_in(z, norm2, ip_add, out, rounds, buf)
    }

    /// [`Saq::encode_projected`] compiled with AVX-512 enabled (the same operations in the same
    /// order), vectorised 16 wide.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
    unsafe fn encode_projected_avx512(
        &self,
        z: &[f32],
        norm2: f32,
        ip_add: f32,
        out: &mut [u8],
        rounds: usize,
        buf: &mut EncodeScratch,
    ) {
        self.encode_projected_in(z, norm2, ip_add, out, rounds, buf)
    }

    #[inline(always)]
    fn encode_projected_in(
        &self,
        z: &[f32],
        norm2: f32,
        ip_add: f32,
        out: &mut [u8],
        rounds: usize,
        buf: &mut EncodeScratch,
    ) {
        out.fill(0);
        let a = if self.metric == Metric::L2 {
            norm2
        } else {
            ip_add
        };
        wr_f32(out, self.hdr, a);
        if self.head < self.pad {
            let head2 = (self.k.dot_f32)(z, z);
            wr_f32(out, self.hdr + 4, (norm2 - head2).max(0.0));
        }
        for s in &self.segs {
            let (z, w, scratch, flags) = (
                &z[s.start..s.start + s.len],
                &mut buf.w[..s.len],
                &mut buf.scratch[..s.len],
                &mut buf.flags[..s.len],
            );
            initial_grid(z, s.bits, w);
            adjust_grid(z, s.bits, w, rounds, flags);
            self.write_segment(s, z, w, scratch, out);
        }
    }

    /// Writes the planes and factors of one segment from its grid values `w` (`scratch` has
    /// `s.len` values).
    #[inline(always)]
    fn write_segment(
        &self,
        s: &Segment,
        z: &[f32],
        w: &[f32],
        scratch: &mut [f32],
        out: &mut [u8],
    ) {
        let pb = s.plane_bytes();
        let b = s.bits;
        let m = wmax(b);
        // A nibble segment keeps the low `b - 4` bits as planes (bit j of the code in plane j).
        let nplanes = if s.nibble {
            self.write_nibbles(s, z, w, out);
            b - 4
        } else {
            b
        };
        for (g, eight) in w.chunks_exact(8).enumerate().filter(|_| nplanes > 0) {
            let c: [u16; 8] = std::array::from_fn(|l| (eight[l] + m) as u16);
            let lo = u64::from_le_bytes(c.map(|c| c as u8));
            let hi = if nplanes > 8 {
                u64::from_le_bytes(c.map(|c| (c >> 8) as u8))
            } else {
                0
            };
            for j in 0..nplanes {
                out[s.planes + j as usize * pb + g] = if j < 8 {
                    gather_bit(lo, j)
                } else {
                    gather_bit(hi, j - 8)
                };
            }
        }
        // Σ|z_i| over the top-bit signs: <z, sign(w)>.
        for (o, &v) in scratch.iter_mut().zip(w) {
            *o = if v > 0.0 { 1.0 } else { -1.0 };
        }
        let n2 = (self.k.dot_f32)(z, z) as f64;
        let s1 = (self.k.dot_f32)(z, scratch) as f64;
        if b == 1 {
            wr_f32(out, s.fac, if s1 > 0.0 { (n2 / s1) as f32 } else { 0.0 });
            return;
        }
        let ip = (self.k.dot_f32)(z, w) as f64;
        if ip > 0.0 && s1 > 0.0 {
            let half = (1u32 << (b - 1)) as f64;
            wr_f32(out, s.fac, (n2 / ip) as f32);
            let r = (65536.0 * ip / s1 / half).round().clamp(1.0, 65535.0) as u16;
            out[s.fac + 4..s.fac + 6].copy_from_slice(&r.to_le_bytes());
        }
    }

    /// The top 4 bits of every code of a nibble segment `s`, nibble-packed by 64-dimension
    /// blocks, and (above 4 bits) the ratio `ρ = <z, w>/(2^(b-4)·<z, u - 7.5>)` of the full to
    /// the truncated code `u` (a symmetric 4-bit grid: `w = 2^(b-4)(u - 7.5) + e`, `|e| <
    /// 2^(b-5)`, so `ρ ∈ (0, 2)` when the signs agree), stored as `round(32768·ρ)`: the
    /// traversal factor of `u - 7.5` is `F = ‖z‖²/<z, u - 7.5> = f·2^(b-4)·ρ`.
    #[inline(always)]
    fn write_nibbles(&self, s: &Segment, z: &[f32], w: &[f32], out: &mut [u8]) {
        let m = wmax(s.bits);
        let shift = s.bits - 4;
        let mut u = [0u8; UNIT];
        // <z, u - 7.5> (above 4 bits) in eight partial sums, so the loop vectorises.
        let mut acc = [0.0f64; 8];
        for (blk, (wb, zb)) in w.chunks_exact(UNIT).zip(z.chunks_exact(UNIT)).enumerate() {
            for (o, &v) in u.iter_mut().zip(wb) {
                *o = ((v + m) as u16 >> shift) as u8;
            }
            if s.bits > 4 {
                for (u8s, x8) in u.chunks_exact(8).zip(zb.chunks_exact(8)) {
                    for l in 0..8 {
                        acc[l] += x8[l] as f64 * (u8s[l] as f64 - 7.5);
                    }
                }
            }
            let at = s.nib + blk * UNIT / 2;
            pack_u4(&u, &mut out[at..at + UNIT / 2]);
        }
        if s.bits > 4 {
            let ip4 =
                ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
            let ip = (self.k.dot_f32)(z, w) as f64;
            let r = if ip > 0.0 && ip4 > 0.0 {
                (32768.0 * ip / ((1u32 << shift) as f64 * ip4))
                    .round()
                    .clamp(1.0, 65535.0) as u16
            } else {
                0
            };
            out[s.tf..s.tf + 2].copy_from_slice(&r.to_le_bytes());
        }
    }

    /// Unpacks segment `s`'s codes (decode and tests).
    fn unpack(&self, code: &[u8], s: &Segment, out: &mut [u16]) {
        let pb = s.plane_bytes();
        out[..s.len].fill(0);
        if s.nibble {
            let shift = s.bits - 4;
            let mut u = [0u8; UNIT];
            for (blk, o) in out[..s.len].chunks_exact_mut(UNIT).enumerate() {
                let at = s.nib + blk * UNIT / 2;
                nearq_kernels::scalar::unpack_u4(&code[at..at + UNIT / 2], &mut u);
                for (c, &x) in o.iter_mut().zip(&u) {
                    *c = (x as u16) << shift;
                }
            }
            for j in 0..shift as usize {
                let plane = &code[s.planes + j * pb..s.planes + (j + 1) * pb];
                for (g, o) in out[..s.len].chunks_exact_mut(8).enumerate() {
                    let v = SPREAD[plane[g] as usize];
                    for (l, c) in o.iter_mut().enumerate() {
                        *c |= (((v >> (8 * l)) & 1) as u16) << j;
                    }
                }
            }
            return;
        }
        for j in 0..s.bits as usize {
            let plane = &code[s.planes + j * pb..s.planes + (j + 1) * pb];
            for (g, o) in out[..s.len].chunks_exact_mut(8).enumerate() {
                let v = SPREAD[plane[g] as usize];
                for (l, c) in o.iter_mut().enumerate() {
                    *c |= (((v >> (8 * l)) & 1) as u16) << j;
                }
            }
        }
    }

    /// Estimate of `<z_s, p_s>` from segment `i`'s full code.
    #[inline]
    fn ip_full(&self, q: &SaqQuery, code: &[u8], i: usize) -> f32 {
        let s = &self.segs[i];
        let p = &q.z[s.start..s.start + s.len];
        let dot = if s.nibble {
            let (o, h) = (s.start / 2, s.len / 2);
            let hi =
                (self.k.dot_f32_u4_split)(s.nibbles(code), &q.wf_lo[o..o + h], &q.wf_hi[o..o + h]);
            if s.bits > 4 {
                let lo = (self.k.dot_f32_bitplanes)(p, s.low_planes(code));
                (1u32 << (s.bits - 4)) as f32 * hi + lo
            } else {
                hi
            }
        } else {
            (self.k.dot_f32_bitplanes)(p, s.all_planes(code))
        };
        let sum = q.per[i].sum;
        if s.bits == 1 {
            rd_f32(code, s.fac) * (2.0 * dot - sum)
        } else {
            rd_f32(code, s.fac) * (dot + s.cb * sum)
        }
    }

    /// Estimate of `<z_s, p_s>` from segment `i`'s top-bit plane.
    #[inline]
    fn ip_top(&self, q: &SaqQuery, code: &[u8], i: usize) -> f32 {
        let s = &self.segs[i];
        let p = &q.z[s.start..s.start + s.len];
        let dot = if s.nibble {
            // The top bit is bit 3 of each nibble: gathered into a plane per block.
            let t = 3;
            let mut dot = 0.0f32;
            for (blk, pb) in p.chunks_exact(UNIT).enumerate() {
                let nb = &s.nibbles(code)[blk * UNIT / 2..(blk + 1) * UNIT / 2];
                let mut plane = [0u8; UNIT / 8];
                for (j, &x) in nb.iter().enumerate() {
                    plane[j / 8] |= ((x >> t) & 1) << (j % 8);
                    plane[UNIT / 16 + j / 8] |= ((x >> (4 + t)) & 1) << (j % 8);
                }
                dot += (self.k.dot_f32_bitplanes)(pb, &plane);
            }
            dot
        } else {
            (self.k.dot_f32_bitplanes)(p, s.top_plane(code))
        };
        s.f1(code) * (2.0 * dot - q.per[i].sum)
    }

    /// Estimate of `<z_s, p_s>` from nibble segment `i`'s top 4 bits and the i8 query,
    /// `F·ζ_s·(<u, w8> - 7.5·Σw8)`.
    #[inline(always)]
    fn ip_trav(&self, q: &SaqQuery, code: &[u8], i: usize) -> f32 {
        let s = &self.segs[i];
        let (o, h) = (s.start / 2, s.len / 2);
        let dot = (self.k.dot_u4_i8_split)(s.nibbles(code), &q.w8_lo[o..o + h], &q.w8_hi[o..o + h]);
        let sq = &q.per[i];
        s.trav_factor(code) * sq.kz * (dot as f32 - sq.mid8)
    }

    /// Layout 1's traversal term of segment `i`: the top 4 bits of a nibble segment; for the
    /// others, as in layout 0, the full code among the first [`Saq::traversal_segments`]
    /// segments and the top bit after them.
    #[inline(always)]
    fn ip_trav_any(&self, q: &SaqQuery, code: &[u8], i: usize) -> f32 {
        if self.segs[i].nibble {
            self.ip_trav(q, code, i)
        } else if i < self.lead {
            self.ip_full(q, code, i)
        } else {
            self.ip_top(q, code, i)
        }
    }

    /// Layout 1: the traversal estimate of `<x - μ, q - μ>` and its modelled error variance.
    fn trav(&self, q: &SaqQuery, code: &[u8]) -> (f32, f32) {
        let (mut ip, mut var) = (0.0f32, self.tail_var(q, code));
        for (i, s) in self.segs.iter().enumerate() {
            ip += self.ip_trav_any(q, code, i);
            let k = if s.nibble {
                s.sd_mid
            } else if i < self.lead {
                s.sd_full
            } else {
                s.sd_top
            };
            let sd = k * s.f1(code).abs() * q.per[i].norm;
            var += sd * sd;
        }
        (ip, var)
    }

    /// Modelled error deviation of segment `i`'s estimate (top bit or full code).
    #[inline]
    fn sd(&self, q: &SaqQuery, code: &[u8], i: usize, full: bool) -> f32 {
        let s = &self.segs[i];
        let k = if full { s.sd_full } else { s.sd_top };
        k * s.f1(code).abs() * q.per[i].norm
    }

    /// Error variance of the dropped tail.
    #[inline]
    fn tail_var(&self, q: &SaqQuery, code: &[u8]) -> f32 {
        if q.tail_sd == 0.0 {
            return 0.0;
        }
        rd_f32(code, self.hdr + 4).max(0.0) * q.tail_sd * q.tail_sd
    }

    /// The distance for an estimate `ip` of `<x - μ, q - μ>`.
    #[inline(always)]
    fn finish(&self, q: &SaqQuery, code: &[u8], ip: f32) -> f32 {
        match self.metric {
            Metric::L2 => (rd_f32(code, self.hdr) + q.qn2 - 2.0 * ip).max(0.0),
            m => m.from_dot(q.g + rd_f32(code, self.hdr) + ip),
        }
    }

    /// The first `full` segments on their full code, the rest on their top bit: returns the
    /// estimate of `<x - μ, q - μ>` and its error variance.
    fn staged(&self, q: &SaqQuery, code: &[u8], full: usize) -> (f32, f32) {
        let (mut ip, mut var) = (0.0f32, self.tail_var(q, code));
        for i in 0..self.segs.len() {
            let f = i < full;
            ip += if f {
                self.ip_full(q, code, i)
            } else {
                self.ip_top(q, code, i)
            };
            let sd = self.sd(q, code, i, f);
            var += sd * sd;
        }
        (ip, var)
    }

    /// `(estimate, lower, upper)` at `eps0` for an estimate and its error variance.
    fn interval(&self, q: &SaqQuery, code: &[u8], ip: f32, var: f32) -> (f32, f32, f32) {
        let h = self.eps0 * var.max(0.0).sqrt();
        let (a, b) = (self.finish(q, code, ip + h), self.finish(q, code, ip - h));
        (self.finish(q, code, ip), a.min(b), a.max(b))
    }

    /// The traversal estimate ([`Encoding::distance`]) with its interval
    /// `(estimate, lower, upper)` at `eps0`.
    pub fn bound(&self, q: &SaqQuery, code: &[u8]) -> (f32, f32, f32) {
        let (ip, var) = if self.layout == LAYOUT_NIBBLE {
            self.trav(q, code)
        } else {
            self.staged(q, code, self.lead)
        };
        self.interval(q, code, ip, var)
    }

    /// The top-bit estimate of every segment (stage 1) with its interval.
    pub fn bound_top(&self, q: &SaqQuery, code: &[u8]) -> (f32, f32, f32) {
        let (ip, var) = self.staged(q, code, 0);
        self.interval(q, code, ip, var)
    }

    /// The full-code estimate ([`Encoding::distance_fine`]) with its interval.
    pub fn bound_fine(&self, q: &SaqQuery, code: &[u8]) -> (f32, f32, f32) {
        let (ip, var) = self.staged(q, code, self.segs.len());
        self.interval(q, code, ip, var)
    }

    /// The top-bit estimate of every segment (stage 1 alone).
    pub fn distance_top(&self, q: &SaqQuery, code: &[u8]) -> f32 {
        let (ip, _) = self.staged(q, code, 0);
        self.finish(q, code, ip)
    }

    /// Staged estimate against `threshold` (see the module docs): `None` when the lower end of
    /// the interval at `eps0` exceeds `threshold` after the top-bit stage or after refining
    /// some leading segments; otherwise the full-code estimate (equal to `distance_fine`).
    /// [`Encoding::distance_ids`] in layout 1 with one kernel call per nibble segment (when
    /// the nibble segments do not lead, or there are more than [`MAX_SEGS`] of them).
    fn distance_ids_per_segment(
        &self,
        q: &SaqQuery,
        codes: &CodeStore,
        ids: &[u32],
        out: &mut [f32],
    ) {
        const B: usize = 64;
        let (bytes, stride) = (codes.bytes(), codes.stride());
        let (mut dots, mut ip) = ([0i32; B], [0f32; B]);
        for (ids, out) in ids.chunks(B).zip(out.chunks_mut(B)) {
            let n = ids.len();
            ip[..n].fill(0.0);
            for (i, s) in self.segs.iter().enumerate() {
                if !s.nibble {
                    for (a, &id) in ip[..n].iter_mut().zip(ids) {
                        *a += self.ip_trav_any(q, codes.get(id as usize), i);
                    }
                    continue;
                }
                let (o, h) = (s.start / 2, s.len / 2);
                (self.k.dot_u4_i8_split_gather)(
                    &bytes[s.nib..],
                    stride,
                    ids,
                    &q.w8_lo[o..o + h],
                    &q.w8_hi[o..o + h],
                    &mut dots[..n],
                );
                let sq = &q.per[i];
                for ((a, &d), &id) in ip[..n].iter_mut().zip(&dots[..n]).zip(ids) {
                    let c = &bytes[id as usize * stride..];
                    *a += s.trav_factor(c) * sq.kz * (d as f32 - sq.mid8);
                }
            }
            for ((o, &a), &id) in out.iter_mut().zip(&ip[..n]).zip(ids) {
                let at = id as usize * stride;
                *o = self.finish(q, &bytes[at..at + self.code_size], a);
            }
        }
    }

    pub fn distance_within(&self, q: &SaqQuery, code: &[u8], threshold: f32) -> Option<f32> {
        let n = self.segs.len();
        let mut stage = q.stage.borrow_mut();
        stage.clear();
        let (mut rest, mut var) = (0.0f32, self.tail_var(q, code));
        for i in 0..n {
            let e = self.ip_top(q, code, i);
            let sd = self.sd(q, code, i, false);
            stage.push((e, sd * sd));
            rest += e;
            var += sd * sd;
        }
        if self.interval(q, code, rest, var).1 > threshold {
            return None;
        }
        // `full` sums the refined segments in order, as `distance_fine` does.
        let mut full = 0.0f32;
        for (i, &(e1, v1)) in stage.iter().enumerate() {
            let sd = self.sd(q, code, i, true);
            full += self.ip_full(q, code, i);
            rest -= e1;
            var = (var + sd * sd - v1).max(0.0);
            if i + 1 < n && self.interval(q, code, full + rest, var).1 > threshold {
                return None;
            }
        }
        Some(self.finish(q, code, full))
    }

    /// Cosine between each segment's rotated vector and its code (diagnostics and tests).
    pub fn segment_cosines(&self, v: &[f32]) -> Vec<f64> {
        let mut r = vec![0.0f32; self.dim];
        let mut z = vec![0.0f32; self.head];
        self.project(v, &mut r, &mut z);
        self.segs
            .iter()
            .map(|s| {
                let mut codes = vec![0u16; s.len];
                caq(
                    &z[s.start..s.start + s.len],
                    s.bits,
                    ADJUST_ROUNDS,
                    &mut codes,
                )
            })
            .collect()
    }
}

/// `NEARQ_SAQ_HALF_QUERIES` unset (or not `0`) when an SAQ encoder is trained or loaded
/// keeps [`Saq::set_half_queries`] on (the default), `NEARQ_SAQ_HALF_QUERIES=0` turns it off
/// (f32 query projection, the estimates of earlier releases bit for bit). Read at every
/// training or load, so configurations built in one process can differ.
fn half_queries_env() -> bool {
    !std::env::var("NEARQ_SAQ_HALF_QUERIES").is_ok_and(|v| v.trim() == "0")
}

/// Per-segment constants of [`Encoding::distance_ids`]'s scalar part: factor offsets, `ρ`
/// offsets (`usize::MAX` for a segment without one), the query's scale and midpoint term.
struct SegFactors<'a> {
    fo: &'a [usize; MAX_SEGS],
    to: &'a [usize; MAX_SEGS],
    kz: &'a [f32; MAX_SEGS],
    mid: &'a [f32; MAX_SEGS],
}

impl SegFactors<'_> {
    /// `ip[i] = Σ_t f_t(code) · kz_t · (dots[i·NS + t] - mid_t)` for `NS` segments that all
    /// have a `ρ` (`RHO`) or none has.
    #[inline(always)]
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
    fn sums<const NS: usize, const RHO: bool>(
        &self,
        bytes: &[u8],
        stride: usize,
        cs: usize,
        ids: &[u32],
        dots: &[i32],
        ip: &mut [f32],
    ) {
        let fo: [usize; NS] = std::array::from_fn(|t| self.fo[t]);
        let to: [usize; NS] = std::array::from_fn(|t| self.to[t]);
        let kz: [f32; NS] = std::array::from_fn(|t| self.kz[t]);
        let mid: [f32; NS] = std::array::from_fn(|t| self.mid[t]);
        for ((a, &id), d) in ip.iter_mut().zip(ids).zip(dots.chunks_exact(NS)) {
            let c = &bytes[id as usize * stride..][..cs];
            let mut x = 0.0f32;
            for t in 0..NS {
                let f = if RHO {
                    rd_f32(c, fo[t]) * rd_u16(c, to[t]) as f32
                } else {
                    rd_f32(c, fo[t])
                };
                x += f * kz[t] * (d[t] as f32 - mid[t]);
            }
            *a = x;
        }
    }

    // one index over five per-segment arrays reads better than a five-way zip
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
    fn sums_any(
        &self,
        ns: usize,
        bytes: &[u8],
        stride: usize,
        cs: usize,
        ids: &[u32],
        dots: &[i32],
        ip: &mut [f32],
    ) {
        for ((a, &id), d) in ip.iter_mut().zip(ids).zip(dots.chunks_exact(ns)) {
            let c = &bytes[id as usize * stride..][..cs];
            let mut x = 0.0f32;
            for t in 0..ns {
                let f = if self.to[t] == usize::MAX {
                    rd_f32(c, self.fo[t])
                } else {
                    rd_f32(c, self.fo[t]) * rd_u16(c, self.to[t]) as f32
                };
                x += f * self.kz[t] * (d[t] as f32 - self.mid[t]);
            }
            *a = x;
        }
    }
}

/// Variance of each unit of 64 PCA coordinates (padded coordinates have variance 0).
fn unit_variances(var: &[f32], pad: usize) -> Vec<f64> {
    (0..pad / UNIT)
        .map(|u| {
            let a = (u * UNIT).min(var.len());
            let b = ((u + 1) * UNIT).min(var.len());
            var[a..b].iter().map(|&v| v as f64).sum()
        })
        .collect()
}

fn segment_seed(seed: u64, i: usize) -> u64 {
    seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The projection `R_s W_s` of every segment with bits (`alloc` in coordinates), `W` the
/// `dim × dim` principal directions (rows) and `R_s` a seeded structured rotation of the
/// segment (rows of `W_s` past `dim` are zero).
fn rotated_projection(comps: &[f32], dim: usize, alloc: &[(usize, u32)], seed: u64) -> Vec<f32> {
    let head: usize = alloc.iter().filter(|a| a.1 > 0).map(|a| a.0).sum();
    let mut proj = vec![0.0f32; head * dim];
    let mut start = 0;
    for (i, &(len, bits)) in alloc.iter().enumerate() {
        if bits == 0 {
            break;
        }
        let rot = Rotation::new(len, segment_seed(seed, i));
        let rows = dim.saturating_sub(start).min(len);
        let (mut col, mut out) = (vec![0.0f32; len], vec![0.0f32; len]);
        for j in 0..dim {
            for (r, c) in col[..rows].iter_mut().enumerate() {
                *c = comps[(start + r) * dim + j];
            }
            col[rows..].fill(0.0);
            rot.apply(&col, &mut out);
            for (r, &o) in out.iter().enumerate() {
                proj[(start + r) * dim + j] = o;
            }
        }
        start += len;
    }
    proj
}

impl Encoding for Saq {
    type Query = SaqQuery;
    const NAME: &'static str = "saq";
    const TAG: u8 = 6;
    const EXACT: bool = false;
    const HAS_FINE: bool = true;

    fn dim(&self) -> usize {
        self.dim
    }
    fn metric(&self) -> Metric {
        self.metric
    }
    fn code_size(&self) -> usize {
        self.code_size
    }
    fn encode(&self, v: &[f32], out: &mut [u8]) {
        self.encode_with(v, out, ADJUST_ROUNDS)
    }
    fn encode_batch(&self, data: &[f32], out: &mut [u8], stride: usize) {
        self.encode_batch_with(data, out, stride, ADJUST_ROUNDS)
    }
    /// `μ + Σ_s (R_s W_s)ᵀ(f_s·w_s)`: the vector whose inner product with `q - μ` is the full-code
    /// estimate of `<x - μ, q - μ>` (a dropped tail decodes to 0 along its directions).
    fn decode(&self, code: &[u8], out: &mut [f32]) -> bool {
        let mut y = vec![0.0f32; self.head];
        let mut c = vec![0u16; self.max_len];
        for s in &self.segs {
            self.unpack(code, s, &mut c);
            // One bit: f1·(2m - 1) = 2·f1·(m - ½).
            let f = rd_f32(code, s.fac) * if s.bits == 1 { 2.0 } else { 1.0 };
            for (o, &c) in y[s.start..s.start + s.len].iter_mut().zip(&c) {
                *o = f * (c as f32 + s.cb);
            }
        }
        out.copy_from_slice(&self.mean);
        for (&yj, row) in y.iter().zip(self.proj.chunks_exact(self.dim)) {
            for (o, &c) in out.iter_mut().zip(row) {
                *o += yj * c;
            }
        }
        true
    }
    fn prepare(&self, q: &[f32]) -> SaqQuery {
        let mut r = vec![0.0f32; self.dim];
        let mut z = vec![0.0f32; self.head];
        let qn2 = self.project_query(q, &mut r, &mut z);
        let g = match self.metric {
            Metric::L2 => 0.0,
            _ => (self.k.dot_f32)(q, &self.mean),
        };
        let tail_sd = if self.tail_dim > 0.0 {
            let head2 = (self.k.dot_f32)(&z, &z);
            ((qn2 - head2).max(0.0) / self.tail_dim).sqrt()
        } else {
            0.0
        };
        let nibble = self.layout == LAYOUT_NIBBLE;
        let mut w8 = vec![0i8; if nibble { self.head } else { 0 }];
        let per = self
            .segs
            .iter()
            .map(|s| {
                let p = &z[s.start..s.start + s.len];
                let (mut kz, mut mid8) = (0.0, 0.0);
                if s.nibble {
                    // `p` to i8 by rounding to nearest on `ζ = max|p|/127` (a zero segment:
                    // ζ = 1, w8 = 0).
                    let pmax = p.iter().fold(0f32, |m, x| m.max(x.abs()));
                    let zeta = if pmax > 0.0 && pmax.is_finite() {
                        pmax / 127.0
                    } else {
                        1.0
                    };
                    let inv = 1.0 / zeta;
                    let mut s8 = 0i32;
                    for (o, &x) in w8[s.start..s.start + s.len].iter_mut().zip(p) {
                        let v = (x * inv).clamp(-127.0, 127.0);
                        *o = (v + 0.5f32.copysign(v)) as i8;
                        s8 += *o as i32;
                    }
                    kz = if s.bits > 4 {
                        zeta * (1u32 << (s.bits - 4)) as f32 / 32768.0
                    } else {
                        zeta
                    };
                    mid8 = 7.5 * s8 as f32;
                }
                SegQuery {
                    sum: p.iter().sum(),
                    norm: (self.k.dot_f32)(p, p).sqrt(),
                    kz,
                    mid8,
                }
            })
            .collect();
        let (w8_lo, w8_hi) = u4_split(&w8);
        let (wf_lo, wf_hi) = if nibble {
            u4_split(&z)
        } else {
            (Vec::new(), Vec::new())
        };
        SaqQuery {
            z,
            per,
            qn2,
            g,
            tail_sd,
            stage: RefCell::new(Vec::with_capacity(self.segs.len())),
            dots: RefCell::new(Vec::new()),
            w8_lo,
            w8_hi,
            wf_lo,
            wf_hi,
        }
    }
    #[inline]
    fn distance(&self, q: &SaqQuery, code: &[u8]) -> f32 {
        let mut ip = 0.0f32;
        if self.layout == LAYOUT_NIBBLE {
            for i in 0..self.segs.len() {
                ip += self.ip_trav_any(q, code, i);
            }
            return self.finish(q, code, ip);
        }
        for i in 0..self.segs.len() {
            ip += if i < self.lead {
                self.ip_full(q, code, i)
            } else {
                self.ip_top(q, code, i)
            };
        }
        self.finish(q, code, ip)
    }
    fn distance_fine(&self, q: &SaqQuery, code: &[u8]) -> f32 {
        let mut ip = 0.0f32;
        for i in 0..self.segs.len() {
            ip += self.ip_full(q, code, i);
        }
        self.finish(q, code, ip)
    }
    /// Layout 1: one pass of the segmented gather kernel scores the nibbles of every nibble
    /// segment of up to 64 codes; equal to `distance` code by code (the same terms summed in the same order).
    fn distance_ids(&self, q: &SaqQuery, codes: &CodeStore, ids: &[u32], out: &mut [f32]) {
        if self.layout != LAYOUT_NIBBLE {
            for (o, &id) in out.iter_mut().zip(ids) {
                *o = self.distance(q, codes.get(id as usize));
            }
            return;
        }
        const B: usize = 64;
        let (bytes, stride) = (codes.bytes(), codes.stride());
        // The nibble segments lead (the bit allocation gives the leading segments the most
        // bits), so their nibbles and query bytes both start at 0: one pass of the segmented
        // kernel scores all of them per code. Otherwise, one kernel call per segment.
        let mut ends = [0u32; MAX_SEGS];
        let mut ns = 0;
        for s in &self.segs {
            if !s.nibble {
                break;
            }
            if ns == MAX_SEGS || s.nib != s.start / 2 {
                ns = 0;
                break;
            }
            ends[ns] = ((s.start + s.len) / 2) as u32;
            ns += 1;
        }
        if ns == 0 || self.segs[ns..].iter().any(|s| s.nibble) {
            return self.distance_ids_per_segment(q, codes, ids, out);
        }
        let ends = &ends[..ns];
        let h = ends[ns - 1] as usize;
        // Factor offsets of the nibble segments, hoisted out of the per-code loop.
        let (mut fo, mut to, mut kz, mut mid) = (
            [0usize; MAX_SEGS],
            [0usize; MAX_SEGS],
            [0f32; MAX_SEGS],
            [0f32; MAX_SEGS],
        );
        for (t, (s, sq)) in self.segs[..ns].iter().zip(&q.per).enumerate() {
            // A segment of 4 bits keeps no ρ: read a constant 1 in its place below.
            (fo[t], to[t]) = (s.fac, if s.bits > 4 { s.tf } else { usize::MAX });
            (kz[t], mid[t]) = (sq.kz, sq.mid8);
        }
        let (hdr_at, cs) = (self.hdr, self.code_size);
        let rest = self.segs.len() > ns;
        let mut dots = q.dots.borrow_mut();
        dots.resize(B * ns, 0);
        let mut ip = [0f32; B];
        for (ids, out) in ids.chunks(B).zip(out.chunks_mut(B)) {
            let n = ids.len();
            (self.k.dot_u4_i8_split_gather_segs)(
                bytes,
                stride,
                ids,
                &q.w8_lo[..h],
                &q.w8_hi[..h],
                ends,
                &mut dots[..n * ns],
            );
            let f = SegFactors {
                fo: &fo,
                to: &to,
                kz: &kz,
                mid: &mid,
            };
            let dots = &dots[..n * ns];
            // Unrolled for the usual shapes (two segments of more than 4 bits: SAQ at 8 bits
            // per dimension), the general loop otherwise; the same operations in the same
            // order either way, so the estimates stay bit-identical to `distance`.
            let all_rho = to[..ns].iter().all(|&t| t != usize::MAX);
            match (ns, all_rho) {
                (1, true) => f.sums::<1, true>(bytes, stride, cs, ids, dots, &mut ip),
                (2, true) => f.sums::<2, true>(bytes, stride, cs, ids, dots, &mut ip),
                (2, false) if to[1] == usize::MAX && to[0] == usize::MAX => {
                    f.sums::<2, false>(bytes, stride, cs, ids, dots, &mut ip)
                }
                _ => f.sums_any(ns, bytes, stride, cs, ids, dots, &mut ip),
            }
            if rest {
                for (a, &id) in ip[..n].iter_mut().zip(ids) {
                    let c = &bytes[id as usize * stride..][..self.code_size];
                    for i in ns..self.segs.len() {
                        *a += self.ip_trav_any(q, c, i);
                    }
                }
            }
            for ((o, &a), &id) in out.iter_mut().zip(&ip[..n]).zip(ids) {
                let h = rd_f32(&bytes[id as usize * stride..][..cs], hdr_at);
                *o = match self.metric {
                    Metric::L2 => (h + q.qn2 - 2.0 * a).max(0.0),
                    m => m.from_dot(q.g + h + a),
                };
            }
        }
    }
    fn traversal_bytes(&self) -> usize {
        if self.layout == LAYOUT_NIBBLE {
            self.trav_bytes
        } else {
            self.code_size
        }
    }
    fn params_bytes(&self) -> usize {
        (self.mean.len() + self.proj.len() + self.var.len()) * 4 + self.proj16.len() * 2
    }
    fn write_params(&self, w: &mut Writer) {
        w.f32(self.bits);
        w.u64(self.seed);
        w.u32(self.pad as u32);
        w.f32(self.eps0);
        w.u32(self.lead as u32 | self.layout << LAYOUT_SHIFT);
        w.f32s(&self.mean);
        w.f32s(&self.var);
        let alloc = self.allocation();
        w.u32(alloc.len() as u32);
        for &(len, bits) in &alloc {
            w.u32((len / UNIT) as u32);
            w.u32(bits);
        }
        w.f32s(&self.proj);
    }
    fn read_params(r: &mut Reader, dim: usize, metric: Metric) -> Result<Self> {
        let bad = |m: String| Error::Format(format!("saq: {m}"));
        if dim == 0 {
            return Err(bad("dimension 0".into()));
        }
        let bits = r.f32()?;
        if !(bits.is_finite() && bits > 0.0 && bits <= MAX_SEG_BITS as f32) {
            return Err(bad(format!("average bits {bits} out of range")));
        }
        let seed = r.u64()?;
        let pad = r.u32()? as usize;
        if pad != dim.div_ceil(UNIT) * UNIT {
            return Err(bad(format!(
                "padded dimension {pad} does not match dimension {dim}"
            )));
        }
        let eps0 = r.f32()?;
        if !(eps0.is_finite() && eps0 > 0.0) {
            return Err(bad("eps0 must be finite and positive".into()));
        }
        let raw = r.u32()?;
        let (lead, layout) = (
            (raw & ((1 << LAYOUT_SHIFT) - 1)) as usize,
            raw >> LAYOUT_SHIFT,
        );
        if layout > LAYOUT_NIBBLE {
            return Err(bad(format!("unknown code layout {layout}")));
        }
        let mean = r.f32s(dim)?;
        if mean.iter().any(|x| !x.is_finite()) {
            return Err(bad("mean is not finite".into()));
        }
        let var = r.f32s(dim)?;
        if var.iter().any(|x| !(x.is_finite() && *x >= 0.0)) {
            return Err(bad("variances must be finite and non-negative".into()));
        }
        let nseg = r.u32()? as usize;
        let units = pad / UNIT;
        if !(1..=units).contains(&nseg) {
            return Err(bad(format!("{nseg} segments out of range 1..={units}")));
        }
        let mut plan = Vec::with_capacity(nseg);
        let mut covered = 0usize;
        for i in 0..nseg {
            let u = r.u32()? as usize;
            let b = r.u32()?;
            if u == 0 || u > units - covered {
                return Err(bad(format!("segment {i} of {u} units does not fit")));
            }
            if b > MAX_SEG_BITS || (b == 0 && (i == 0 || i + 1 < nseg)) {
                return Err(bad(format!("segment {i} has invalid bits {b}")));
            }
            covered += u;
            plan.push((u, b));
        }
        if covered != units {
            return Err(bad(format!("segments cover {covered} of {units} units")));
        }
        if plan_bits_in(&plan, layout) > budget_bits(bits, pad) {
            return Err(bad("allocation exceeds the bit budget".into()));
        }
        let nbits = plan.iter().filter(|p| p.1 > 0).count();
        if lead > nbits {
            return Err(bad(format!(
                "{lead} traversal segments but {nbits} segments with bits"
            )));
        }
        let head: usize = plan.iter().filter(|p| p.1 > 0).map(|p| p.0 * UNIT).sum();
        let proj = r.f32s(head * dim)?;
        // Rows are unit vectors, or shorter where a segment holds padded coordinates.
        for row in proj.chunks_exact(dim) {
            let n2: f64 = row.iter().map(|&x| x as f64 * x as f64).sum();
            let ok = n2 <= 1.0 + 1e-3;
            if !ok {
                return Err(bad(
                    "projection rows must be finite with norm at most 1".into()
                ));
            }
        }
        Ok(Self::assemble(
            dim, metric, bits, seed, mean, proj, var, &plan, lead, eps0, layout,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::rotation::SplitMix;

    #[test]
    fn eigen_reconstructs_random_symmetric_matrices() {
        for n in [1usize, 2, 3, 7, 40] {
            let mut rng = SplitMix::new(n as u64);
            let mut a = vec![0.0f64; n * n];
            for i in 0..n {
                for j in 0..=i {
                    let v = rng.gauss();
                    a[i * n + j] = v;
                    a[j * n + i] = v;
                }
            }
            let (vals, vecs) = symmetric_eigen(&a, n);
            assert!(vals.windows(2).all(|w| w[0] >= w[1]));
            for i in 0..n {
                for j in 0..n {
                    let d: f64 = (0..n).map(|k| vecs[i * n + k] * vecs[j * n + k]).sum();
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!((d - want).abs() < 1e-10, "n={n}: <v{i}, v{j}> = {d}");
                    let rec: f64 = (0..n)
                        .map(|k| vals[k] * vecs[k * n + i] * vecs[k * n + j])
                        .sum();
                    assert!((rec - a[i * n + j]).abs() < 1e-9, "n={n}: A[{i}][{j}]");
                }
            }
        }
    }

    /// `|estimate(f16 query) - estimate(f32 query)| / half-width of the f32 interval` for the
    /// traversal and the fine estimate of every query × code pair: (max, RMS, pairs that
    /// moved at all).
    fn half_query_shift(saq: &Saq, base: &[f32], queries: &[f32]) -> (f64, f64, usize) {
        let d = saq.dim();
        // the f32 path (half queries are the default) against the half one
        let mut full = saq.with_layout(saq.layout());
        full.set_half_queries(false);
        let saq = &full;
        let mut half = saq.with_layout(saq.layout());
        half.set_half_queries(true);
        assert!(half.half_queries() && !saq.half_queries());
        assert_eq!(half.params_bytes(), saq.params_bytes() + saq.proj.len() * 2);
        let mut codes = vec![0u8; saq.code_size() * (base.len() / d)];
        saq.encode_batch(base, &mut codes, saq.code_size());
        // Vectors are encoded with the f32 projection either way, and nothing is stored.
        let mut same = vec![0u8; codes.len()];
        half.encode_batch(base, &mut same, saq.code_size());
        assert!(same == codes, "half queries changed the codes");
        let (mut w, mut wh) = (Writer::default(), Writer::default());
        saq.write_params(&mut w);
        half.write_params(&mut wh);
        assert!(
            w.buf == wh.buf,
            "half queries changed the stored parameters"
        );
        let (mut max, mut sum2, mut n, mut moved) = (0.0f64, 0.0f64, 0usize, 0usize);
        for q in queries.chunks_exact(d) {
            let (q32, q16) = (saq.prepare(q), half.prepare(q));
            for code in codes.chunks_exact(saq.code_size()) {
                for bound in [Saq::bound, Saq::bound_fine] {
                    let (e32, lo, hi) = bound(saq, &q32, code);
                    let (e16, _, _) = bound(&half, &q16, code);
                    let r = (e16 - e32).abs() as f64 / (0.5 * (hi - lo) as f64).max(1e-30);
                    max = max.max(r);
                    sum2 += r * r;
                    n += 1;
                    moved += usize::from(e16 != e32);
                }
            }
        }
        let rms = (sum2 / n as f64).sqrt();
        // The module docs' model: per standard deviation of the estimate, the f16 rounding
        // moves it by about (u/sqrt(3))/sqrt(h(b)) for segments of b bits (u = 2^-11), largest
        // for the segment of most bits; per half-width of the interval, that over eps0. The
        // traversal estimate of layout 1 adds jumps of one step of its i8 query (an offset).
        let bmax = saq.segs.iter().map(|s| s.bits).max().unwrap() as usize;
        let model = 2f64.powi(-11) / 3f64.sqrt() / MODEL_ERROR[bmax].sqrt() / saq.eps0 as f64;
        eprintln!(
            "{:?} layout {} {:?}: shift / half-width max {max:.4} rms {rms:.4} (model {model:.4}), \
             {moved} of {n} estimates moved",
            saq.metric,
            saq.layout,
            saq.allocation()
        );
        // The f16 path is taken (estimates move), and the shift is noise well inside the
        // interval, as the model says.
        assert!(moved > 0);
        assert!(rms < model + 0.015, "rms {rms} vs model {model}");
        assert!(max < 5.0 * model + 0.08, "max {max} vs model {model}");
        (max, rms, moved)
    }

    /// Rows of dimension `d` with a decaying spectrum (coordinate `j` scaled by `0.985^j`).
    fn decaying_rows(n: usize, d: usize, seed: u64) -> Vec<f32> {
        let mut rng = SplitMix::new(seed);
        (0..n * d)
            .map(|i| (rng.gauss() * 0.985f64.powi((i % d) as i32)) as f32)
            .collect()
    }

    #[test]
    fn half_queries_move_estimates_far_less_than_the_bound() {
        let d = 200; // padded to 256
        let (base, queries) = (decaying_rows(1500, d, 5), decaying_rows(12, d, 6));
        for metric in [Metric::L2, Metric::InnerProduct, Metric::Cosine] {
            let norm = |v: &[f32]| {
                let mut v = v.to_vec();
                if metric == Metric::Cosine {
                    v.chunks_exact_mut(d).for_each(crate::metric::normalize);
                }
                v
            };
            let (base, queries) = (norm(&base), norm(&queries));
            for bits in [2.5f32, 4.0, 6.0, 8.0] {
                let saq = Saq::train(&base, d, metric, &SaqConfig::new(bits, 1)).unwrap();
                for layout in [LAYOUT_PLANES, LAYOUT_NIBBLE] {
                    let saq = saq.with_layout(layout);
                    let (max, rms, _) = half_query_shift(&saq, &base, &queries);
                    // Up to segments of 8 bits (bits 6 here), a few percent at most.
                    if saq.segs.iter().all(|s| s.bits <= 8) {
                        assert!(rms < 0.02 && max < 0.1, "bits {bits}: rms {rms}, max {max}");
                    }
                }
            }
        }
    }

    /// The first `n` train and `nq` test rows of the MiniLM file (ann-benchmarks HDF5, read
    /// through python3 + h5py), normalised; `None` when the file, python3 or h5py is missing.
    fn minilm_rows(n: usize, nq: usize) -> Option<(Vec<f32>, Vec<f32>, usize)> {
        let path = std::env::var("NEARQ_DATA").unwrap_or_else(|_| {
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../../shared/data/pypi-minilm-384-angular-50k.hdf5"
            )
            .to_string()
        });
        let path = [
            path.as_str(),
            "/work/shared/data/pypi-minilm-384-angular-50k.hdf5",
        ]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())?
        .to_string();
        let script = format!(
            "import sys, h5py, numpy as np\n\
             f = h5py.File({path:?}, 'r')\n\
             sys.stdout.buffer.write(np.ascontiguousarray(f['train'][:{n}], dtype='<f4').tobytes())\n\
             sys.stdout.buffer.write(np.ascontiguousarray(f['test'][:{nq}], dtype='<f4').tobytes())"
        );
        let out = std::process::Command::new("python3")
            .args(["-c", &script])
            .output()
            .ok()?;
        if !out.status.success() || out.stdout.len() % (4 * (n + nq)) != 0 {
            eprintln!("skipped: {}", String::from_utf8_lossy(&out.stderr));
            return None;
        }
        let d = out.stdout.len() / 4 / (n + nq);
        let mut v: Vec<f32> = out
            .stdout
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        v.chunks_exact_mut(d).for_each(crate::metric::normalize);
        let test = v.split_off(n * d);
        Some((v, test, d))
    }

    /// Recall@10 of ranking every code by its fine estimate, against the exact neighbours.
    fn fine_recall(saq: &Saq, codes: &[u8], base: &[f32], queries: &[f32]) -> f64 {
        let (d, cs) = (saq.dim(), saq.code_size());
        let mut hits = 0usize;
        for q in queries.chunks_exact(d) {
            let top = |dist: &mut dyn FnMut(usize) -> f32| {
                let mut v: Vec<(f32, usize)> = (0..base.len() / d).map(|i| (dist(i), i)).collect();
                v.sort_by(|a, b| a.0.total_cmp(&b.0));
                v.truncate(10);
                v.into_iter().map(|p| p.1).collect::<Vec<_>>()
            };
            let exact = top(&mut |i| 1.0 - (saq.k.dot_f32)(q, &base[i * d..(i + 1) * d]));
            let pq = saq.prepare(q);
            let est = top(&mut |i| saq.distance_fine(&pq, &codes[i * cs..(i + 1) * cs]));
            hits += est.iter().filter(|i| exact.contains(i)).count();
        }
        hits as f64 / (queries.len() / d * 10) as f64
    }

    #[test]
    fn half_queries_on_real_data() {
        let Some((base, queries, d)) = minilm_rows(5000, 200) else {
            eprintln!("skipped: MiniLM data not available");
            return;
        };
        for bits in [4.0f32, 8.0] {
            let saq = Saq::train(&base, d, Metric::Cosine, &SaqConfig::new(bits, 0)).unwrap();
            let (max, rms, _) = half_query_shift(&saq, &base, &queries[..20 * d]);
            assert!(rms < 0.03 && max < 0.2, "bits {bits}: rms {rms}, max {max}");
            let mut codes = vec![0u8; saq.code_size() * 5000];
            saq.encode_batch(&base, &mut codes, saq.code_size());
            let mut half = saq.with_layout(saq.layout());
            half.set_half_queries(true);
            let (r32, r16) = (
                fine_recall(&saq, &codes, &base, &queries),
                fine_recall(&half, &codes, &base, &queries),
            );
            eprintln!("MiniLM bits {bits}: recall@10 of the fine estimate f32 {r32}, f16 {r16}");
            assert!(r16 >= r32, "f16 queries: recall {r16} below f32's {r32}");
        }
    }

    #[test]
    fn packing_round_trips_every_width() {
        let mut rng = SplitMix::new(3);
        for bits in 1..=MAX_SEG_BITS {
            let mut s = Segment::new(0, 128, bits);
            s.fac = HEADER;
            s.planes = 16;
            let saq_codes: Vec<u16> = (0..128)
                .map(|_| (rng.next_u64() % (1u64 << bits)) as u16)
                .collect();
            let mut out = vec![0u8; 16 + bits as usize * 16];
            let enc = Saq::assemble(
                64,
                Metric::L2,
                1.0,
                0,
                vec![0.0; 64],
                vec![0.0; 64 * 64],
                vec![0.0; 64],
                &[(1, 1)],
                0,
                1.0,
                LAYOUT_PLANES,
            );
            let z = vec![0.0f32; 128];
            let w: Vec<f32> = saq_codes.iter().map(|&c| c as f32 - wmax(bits)).collect();
            enc.write_segment(&s, &z, &w, &mut vec![0.0; 128], &mut out);
            let mut back = vec![0u16; 128];
            enc.unpack(&out, &s, &mut back);
            assert_eq!(back, saq_codes, "bits {bits}");
            // The kernel reads the same codes.
            let a: Vec<f32> = (0..128).map(|i| (i % 7) as f32 - 3.0).collect();
            let want: f32 = a.iter().zip(&saq_codes).map(|(x, &c)| x * c as f32).sum();
            let got = (enc.k.dot_f32_bitplanes)(&a, s.all_planes(&out));
            assert!(
                (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                "bits {bits}"
            );
        }
    }
}
