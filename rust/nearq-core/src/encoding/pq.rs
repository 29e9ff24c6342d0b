//! Product quantization (PQ) with 8-bit or 4-bit sub-quantizers, optionally after a learned
//! rotation (OPQ). ALGORITHMS.md section 5.
//!
//! # Encoding
//!
//! A vector `x ∈ R^d` (rotated first, `x ← R·x`, with OPQ) is split into `M` contiguous
//! sub-vectors. When `M` divides `d` every sub-vector has `d/M` dimensions (FAISS's split);
//! otherwise the first `d mod M` sub-vectors get one more, so any `1 <= M <= d` works without
//! padding. Sub-space `j` has a codebook of `K = 2^bits` centroids trained by k-means on the
//! `j`-th slices ([`super::kmeans`], 25 iterations, at most 256 points per centroid); the code
//! of `x` is `code_j = argmin_k ||x_j - c_{j,k}||^2`, the decoded vector the concatenation of
//! the chosen centroids (rotated back with `Rᵀ`).
//!
//! Code layout: 8 bits: `M` bytes, one per sub-quantizer. 4 bits: `⌈M/2⌉` bytes, sub-quantizer
//! `2i` in the low nibble of byte `i`, `2i + 1` in its high nibble.
//!
//! # Distances (ADC)
//!
//! `prepare` builds one look-up table per query: `LUT[j][k] = ||q_j - c_{j,k}||^2` for L2 and
//! `-<q_j, c_{j,k}>` for inner product and cosine; the distance to a code is
//! `bias + Σ_j LUT[j][code_j]` with `bias = 1` for cosine (inputs are unit vectors) and 0
//! otherwise (computed from a dimension-major copy of each codebook, one `K`-wide step per
//! dimension). This is exactly the metric distance to the decoded vector (the rotation is
//! orthogonal, so it preserves both), up to float rounding.
//!
//! With float vectors kept (or memory-mapped), candidates are re-ranked exactly. Without
//! them, the float ADC above is the final distance: [`Encoding::distance_fine`] is the float
//! ADC ([`Encoding::HAS_FINE`] is true), so the best candidates of the traversal, which with
//! 4-bit codes used the u8 estimate below, are re-scored with it.
//!
//! # 4-bit FastScan (graph traversal and batch path)
//!
//! For `bits = 4`, [`Encoding::distance_ids`] (the graph's per-node neighbour scoring) and
//! [`Encoding::distance_batch`] quantise the LUT to u8 (ALGORITHMS.md 5.4: each sub-table
//! minus its minimum, one common scale `a = 255 / max span`, `b = Σ minima`), gather and
//! transpose each group of up to 32 codes into the block layout of
//! `nearq_kernels::fastscan_u16` (the `fastscan_pack_u4` kernel: a 16×16 byte transpose per
//! 16 code bytes, then the nibbles of codes `i` and `i + 16` merged into one byte) and
//! accumulate in u16 (at most 256 sub-quantizers per kernel call, so no overflow); the
//! estimate is `acc / a + b`, within `M·0.5/a` of the float ADC. With `M` odd, the table is
//! padded with a zero sub-table for the unused high nibble of the last byte.
//! [`Encoding::distance`] on a single code uses the float LUT. `NEARQ_PQ_FASTSCAN=0` (read
//! once per process) makes the traversal use the float LUT too, for A/B measurements.
//!
//! # OPQ
//!
//! Non-parametric OPQ (Ge et al.): starting from `R = I`, alternate (i) train the codebooks on
//! `R·X` (a few warm-started k-means iterations) and (ii) with the reconstructions `Y` fixed,
//! solve the orthogonal Procrustes problem `min_R Σ||R x_i - y_i||^2`, whose solution is the
//! orthogonal polar factor `U·Vᵀ` of `M = Yᵀ X = U S Vᵀ`. The SVD is a one-sided Jacobi
//! iteration in f64 started from the previous `V` (so after the first round the columns are
//! nearly orthogonal and one or two sweeps suffice). After the rotation is learned, the final
//! codebooks are trained from scratch on the rotated sample, as FAISS does after `OPQMatrix`.

use super::kmeans::{self, KMeansConfig, Nearest};
use super::Encoding;
use crate::error::{Error, Result};
use crate::io::{Reader, Writer};
use crate::metric::Metric;
use crate::storage::CodeStore;
use nearq_kernels::{kernels, Kernels};
use rayon::prelude::*;
use std::cell::RefCell;

/// Default bits per sub-quantizer.
pub const DEFAULT_BITS: u32 = 8;
/// OPQ outer iterations (FAISS uses 50 with a BLAS-backed SVD; the rotation changes little
/// after the first few rounds).
pub const DEFAULT_OPQ_ITERS: usize = 8;
/// k-means iterations per OPQ round (the first round starts from scratch and runs longer).
const OPQ_PQ_ITERS: usize = 4;
const OPQ_PQ_ITERS_FIRST: usize = 10;
/// Rows used to learn the OPQ rotation.
const OPQ_MAX_SAMPLE: usize = 16_384;
/// Sub-quantizers per u16 FastScan accumulation (256 · 255 < 2^16).
const FASTSCAN_CHUNK: usize = 256;

/// Whether 4-bit graph traversal uses FastScan (`distance_ids`); `NEARQ_PQ_FASTSCAN=0` (read
/// once per process) falls back to the float LUT one code at a time, for A/B measurements.
fn fastscan_traversal() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("NEARQ_PQ_FASTSCAN").map_or(true, |v| v.trim() != "0"))
}

/// The default number of sub-quantizers for `dim` dimensions: one per 4 dimensions for 8-bit
/// codes and one per 2 for 4-bit codes, i.e. 2 bits per dimension either way (`d/4` bytes).
pub fn default_subspaces(dim: usize, bits: u32) -> usize {
    let per = if bits == 4 { 2 } else { 4 };
    (dim / per).max(1)
}

/// Build-time options.
#[derive(Clone, Debug)]
pub struct PqConfig {
    /// Sub-quantizers `M` (`None`: [`default_subspaces`]); `1 <= M <= dim`.
    pub m: Option<usize>,
    /// Bits per sub-quantizer: 4 or 8.
    pub bits: u32,
    /// Learn an OPQ rotation first.
    pub opq: bool,
    pub seed: u64,
    /// k-means iterations of the final codebooks.
    pub iters: usize,
    pub max_points_per_centroid: usize,
    pub opq_iters: usize,
}

impl PqConfig {
    pub fn new(m: Option<usize>, bits: u32, opq: bool, seed: u64) -> Self {
        PqConfig {
            m,
            bits,
            opq,
            seed,
            iters: kmeans::DEFAULT_ITERS,
            max_points_per_centroid: kmeans::DEFAULT_MAX_POINTS_PER_CENTROID,
            opq_iters: DEFAULT_OPQ_ITERS,
        }
    }

    /// Checks the options against the dimension and resolves the default `M`.
    pub fn subspaces(&self, dim: usize) -> Result<usize> {
        if self.bits != 4 && self.bits != 8 {
            return Err(Error::param(
                "bits",
                format!(
                    "pq supports 4 or 8 bits per sub-quantizer, got {}",
                    self.bits
                ),
            ));
        }
        let m = self.m.unwrap_or_else(|| default_subspaces(dim, self.bits));
        if m == 0 || m > dim {
            return Err(Error::param(
                "subspaces",
                format!("must be in 1..={dim} (the dimension), got {m}"),
            ));
        }
        Ok(m)
    }
}

pub struct Pq {
    dim: usize,
    metric: Metric,
    m: usize,
    bits: u32,
    /// Sub-space boundaries (`m + 1` entries).
    offsets: Vec<usize>,
    /// Codebooks: sub-space `j`'s centroid `k` starts at `K·offsets[j] + k·ds_j`.
    codebooks: Vec<f32>,
    /// `d × d` row-major OPQ rotation (`x ← R·x`).
    rotation: Option<Vec<f32>>,
    /// Nearest-centroid search per sub-space (for encoding).
    nearest: Vec<Nearest>,
    /// The codebooks transposed per sub-space (dimension-major: sub-space `j`'s dimension `t`
    /// of centroid `k` at `K·offsets[j] + t·K + k`), so `prepare` computes a sub-table as
    /// `K`-wide vector operations.
    books_t: Vec<f32>,
    k: &'static Kernels,
}

/// A prepared query: the ADC look-up tables.
pub struct PqQuery {
    /// `M × K` table.
    lut: Vec<f32>,
    /// 1 for cosine, else 0.
    bias: f32,
    /// 4-bit only: u8 tables (`2⌈M/2⌉ × 16`, a zero table last when `M` is odd), their
    /// scale `a` and summed minima `b`.
    lut8: Vec<u8>,
    scale: f32,
    base: f32,
    /// 4-bit only: one FastScan block of transposed codes, and (`distance_batch`) the codes
    /// of one block gathered contiguously.
    block: RefCell<Vec<u8>>,
    gathered: RefCell<Vec<u8>>,
}

impl PqQuery {
    /// Largest difference between the 4-bit FastScan estimate (`distance_batch`) and the float
    /// ADC (`distance`) from rounding the u8 table: `M·0.5/a` (0 for 8-bit codes).
    pub fn fastscan_error_bound(&self) -> f32 {
        if self.lut8.is_empty() {
            0.0
        } else {
            (self.lut.len() / 16) as f32 * 0.5 / self.scale
        }
    }
}

fn offsets(dim: usize, m: usize) -> Vec<usize> {
    let (q, r) = (dim / m, dim % m);
    let mut o = Vec::with_capacity(m + 1);
    o.push(0);
    for j in 0..m {
        o.push(o[j] + q + usize::from(j < r));
    }
    o
}

/// `rows × d` times `Rᵀ` (each row `x` becomes `R·x`).
fn rotate_rows(k: &Kernels, r: &[f32], data: &[f32], d: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; data.len()];
    out.par_chunks_mut(d)
        .zip(data.par_chunks(d))
        .for_each(|(o, x)| {
            for (oa, ra) in o.iter_mut().zip(r.chunks_exact(d)) {
                *oa = (k.dot_f32)(ra, x);
            }
        });
    out
}

impl Pq {
    /// Trains on `data` (row-major, `dim` columns, normalised for cosine).
    pub fn train(data: &[f32], dim: usize, metric: Metric, cfg: &PqConfig) -> Result<Self> {
        Self::train_with_progress(data, dim, metric, cfg, &|_, _| {})
    }

    /// [`Pq::train`] calling `progress(done, total)` as OPQ rounds and sub-quantizer
    /// codebooks finish (`total` = OPQ rounds + M).
    pub fn train_with_progress(
        data: &[f32],
        dim: usize,
        metric: Metric,
        cfg: &PqConfig,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<Self> {
        let m = cfg.subspaces(dim)?;
        let total = m + if cfg.opq { cfg.opq_iters } else { 0 };
        let done = std::sync::atomic::AtomicUsize::new(0);
        let step = || {
            let d = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            progress(d, total);
        };
        let ksub = 1usize << cfg.bits;
        let k = kernels();
        let sample = kmeans::sample_rows(
            data,
            dim,
            ksub * cfg.max_points_per_centroid.max(1),
            cfg.seed,
        );
        let offs = offsets(dim, m);
        let rotation = if cfg.opq {
            Some(train_opq(&sample, dim, &offs, ksub, cfg, k, &step))
        } else {
            None
        };
        let sample = match &rotation {
            Some(r) => rotate_rows(k, r, &sample, dim),
            None => sample,
        };
        let codebooks =
            train_codebooks(&sample, dim, &offs, ksub, None, cfg.iters, cfg.seed, &step);
        Ok(Self::from_parts(
            dim, metric, m, cfg.bits, codebooks, rotation,
        ))
    }

    fn from_parts(
        dim: usize,
        metric: Metric,
        m: usize,
        bits: u32,
        codebooks: Vec<f32>,
        rotation: Option<Vec<f32>>,
    ) -> Self {
        let offsets = offsets(dim, m);
        let ksub = 1usize << bits;
        let nearest = (0..m)
            .map(|j| {
                let ds = offsets[j + 1] - offsets[j];
                Nearest::new(&codebooks[ksub * offsets[j]..][..ksub * ds], ds)
            })
            .collect();
        let books_t = transpose_books(&codebooks, &offsets, ksub);
        Pq {
            dim,
            metric,
            m,
            bits,
            offsets,
            codebooks,
            rotation,
            nearest,
            books_t,
            k: kernels(),
        }
    }

    pub fn subspaces(&self) -> usize {
        self.m
    }
    pub fn bits(&self) -> u32 {
        self.bits
    }
    /// The OPQ rotation (`d × d`, row-major), if any.
    pub fn rotation(&self) -> Option<&[f32]> {
        self.rotation.as_deref()
    }

    fn ksub(&self) -> usize {
        1 << self.bits
    }

    /// `R·v` (or `v` without OPQ).
    fn rotated<'a>(&self, v: &'a [f32], buf: &'a mut Vec<f32>) -> &'a [f32] {
        match &self.rotation {
            Some(r) => {
                buf.clear();
                buf.extend(r.chunks_exact(self.dim).map(|ra| (self.k.dot_f32)(ra, v)));
                buf
            }
            None => v,
        }
    }

    /// The sub-quantizer codes of `v` (already rotated).
    fn codes_of(&self, v: &[f32], out: &mut [u8]) {
        let mut buf = Vec::new();
        for j in 0..self.m {
            let (c, _) =
                self.nearest[j].nearest(&v[self.offsets[j]..self.offsets[j + 1]], &mut buf);
            out[j] = c as u8;
        }
    }

    #[inline(always)]
    fn code_at(&self, code: &[u8], j: usize) -> usize {
        if self.bits == 8 {
            code[j] as usize
        } else {
            ((code[j / 2] >> (4 * (j & 1))) & 15) as usize
        }
    }

    /// 4-bit FastScan estimates of up to 32 codes `base[ids[i] * stride ..]` into `out`
    /// (`out.len() == ids.len()`): gather + transpose (`fastscan_pack_u4`), u16 look-up
    /// accumulation per chunk of 256 sub-quantizers, then `bias + b + acc / a`.
    fn fastscan_ids(&self, q: &PqQuery, base: &[u8], stride: usize, ids: &[u32], out: &mut [f32]) {
        debug_assert!(ids.len() <= 32 && out.len() == ids.len());
        let nb = self.code_size();
        let mut block = q.block.borrow_mut();
        block.resize(32 * nb, 0);
        (self.k.fastscan_pack_u4)(base, stride, ids, nb, &mut block);
        self.fastscan_packed(q, &block, out);
    }

    /// Estimates of the first `out.len()` codes of one packed FastScan block (`32 · nb`
    /// bytes, the layout of `fastscan_pack_u4`): u16 look-up accumulation per chunk of 256
    /// sub-quantizers, then `bias + b + acc / a`.
    #[inline]
    fn fastscan_packed(&self, q: &PqQuery, block: &[u8], out: &mut [f32]) {
        let m2 = 2 * self.code_size();
        debug_assert!(out.len() <= 32 && block.len() == 16 * m2);
        let mut acc = [0u16; 32];
        let estimate = |t: u32| q.bias + q.base + t as f32 / q.scale;
        if m2 <= FASTSCAN_CHUNK {
            (self.k.fastscan_u16)(block, &q.lut8, &mut acc);
            for (o, &a) in out.iter_mut().zip(&acc) {
                *o = estimate(a as u32);
            }
        } else {
            let mut total = [0u32; 32];
            for s in (0..m2).step_by(FASTSCAN_CHUNK) {
                let e = (s + FASTSCAN_CHUNK).min(m2);
                (self.k.fastscan_u16)(&block[16 * s..16 * e], &q.lut8[16 * s..16 * e], &mut acc);
                for (t, &a) in total.iter_mut().zip(&acc) {
                    *t += a as u32;
                }
            }
            for (o, &t) in out.iter_mut().zip(&total) {
                *o = estimate(t);
            }
        }
    }

    /// Distances of up to 32 codes with the u8 LUT and the FastScan kernel.
    fn fastscan_block(&self, q: &PqQuery, codes: &[&[u8]], out: &mut [f32]) {
        let nb = self.code_size();
        let mut g = q.gathered.borrow_mut();
        g.clear();
        for c in codes {
            g.extend_from_slice(&c[..nb]);
        }
        const IOTA: [u32; 32] = {
            let mut a = [0u32; 32];
            let mut i = 0;
            while i < 32 {
                a[i] = i as u32;
                i += 1;
            }
            a
        };
        let n = codes.len();
        self.fastscan_ids(q, &g, nb, &IOTA[..n], &mut out[..n]);
    }
}

/// The smallest and largest of 16 values (not NaN), as a tree of pairwise compare-selects
/// (which vectorises; the result does not depend on the order).
#[inline(always)]
fn min_max16(t: &[f32; 16]) -> (f32, f32) {
    let mut lo = *t;
    let mut hi = *t;
    for w in [8, 4, 2, 1] {
        for i in 0..w {
            let (a, b) = (lo[i], lo[i + w]);
            lo[i] = if b < a { b } else { a };
            let (a, b) = (hi[i], hi[i + w]);
            hi[i] = if b > a { b } else { a };
        }
    }
    (lo[0], hi[0])
}

/// [`Pq::books_t`]: each sub-space's `K × ds` codebook as `ds × K`.
fn transpose_books(books: &[f32], offsets: &[usize], ksub: usize) -> Vec<f32> {
    let mut t = vec![0.0f32; books.len()];
    for w in offsets.windows(2) {
        let (a, ds) = (w[0], w[1] - w[0]);
        for k in 0..ksub {
            for d in 0..ds {
                t[ksub * a + d * ksub + k] = books[ksub * a + k * ds + d];
            }
        }
    }
    t
}

/// Trains the codebooks of every sub-space on `sample` (already rotated), in parallel over
/// sub-spaces; `init` warm-starts from previous codebooks.
#[allow(clippy::too_many_arguments)]
fn train_codebooks(
    sample: &[f32],
    dim: usize,
    offs: &[usize],
    ksub: usize,
    init: Option<&[f32]>,
    iters: usize,
    seed: u64,
    on_done: &(dyn Fn() + Sync),
) -> Vec<f32> {
    let n = sample.len() / dim;
    let m = offs.len() - 1;
    let books: Vec<Vec<f32>> = (0..m)
        .into_par_iter()
        .map(|j| {
            let (a, b) = (offs[j], offs[j + 1]);
            let ds = b - a;
            let sub: Vec<f32> = (0..n)
                .flat_map(|i| sample[i * dim + a..i * dim + b].iter().copied())
                .collect();
            let book = match init {
                Some(c) => kmeans::train_from(&sub, ds, c[ksub * a..ksub * b].to_vec(), iters),
                None => {
                    let mut cfg = KMeansConfig::new(ksub, seed.wrapping_add(j as u64));
                    cfg.iters = iters;
                    cfg.max_points_per_centroid = usize::MAX;
                    kmeans::train(&sub, ds, &cfg)
                }
            }
            .centroids;
            on_done();
            book
        })
        .collect();
    books.concat()
}

/// Reconstructions of the rows of `sample` (rotated space).
fn reconstruct(sample: &[f32], dim: usize, offs: &[usize], ksub: usize, books: &[f32]) -> Vec<f32> {
    let m = offs.len() - 1;
    let nearest: Vec<Nearest> = (0..m)
        .map(|j| {
            let ds = offs[j + 1] - offs[j];
            Nearest::new(&books[ksub * offs[j]..][..ksub * ds], ds)
        })
        .collect();
    let mut out = vec![0.0f32; sample.len()];
    out.par_chunks_mut(dim)
        .zip(sample.par_chunks(dim))
        .for_each(|(o, x)| {
            let mut buf = Vec::new();
            for j in 0..m {
                let (a, b) = (offs[j], offs[j + 1]);
                let (c, _) = nearest[j].nearest(&x[a..b], &mut buf);
                let ds = b - a;
                o[a..b].copy_from_slice(&books[ksub * a + c as usize * ds..][..ds]);
            }
        });
    out
}

/// Learns the OPQ rotation on (a subsample of) `sample`.
fn train_opq(
    sample: &[f32],
    dim: usize,
    offs: &[usize],
    ksub: usize,
    cfg: &PqConfig,
    k: &Kernels,
    on_round: &(dyn Fn() + Sync),
) -> Vec<f32> {
    let x = kmeans::sample_rows(sample, dim, OPQ_MAX_SAMPLE, cfg.seed ^ 0x0B0);
    let n = x.len() / dim;
    let xt = transpose(&x, n, dim);
    let mut r: Vec<f32> = (0..dim * dim)
        .map(|i| if i / dim == i % dim { 1.0 } else { 0.0 })
        .collect();
    let mut v: Vec<f64> = r.iter().map(|&a| a as f64).collect();
    let mut books: Option<Vec<f32>> = None;
    for it in 0..cfg.opq_iters {
        let xr = rotate_rows(k, &r, &x, dim);
        let iters = if it == 0 {
            OPQ_PQ_ITERS_FIRST
        } else {
            OPQ_PQ_ITERS
        };
        let b = train_codebooks(
            &xr,
            dim,
            offs,
            ksub,
            books.as_deref(),
            iters,
            cfg.seed,
            &|| {},
        );
        let y = reconstruct(&xr, dim, offs, ksub, &b);
        books = Some(b);
        // M = Yᵀ X: M[a][c] = Σ_i y_i[a] x_i[c].
        let yt = transpose(&y, n, dim);
        let mut mm = vec![0.0f64; dim * dim];
        mm.par_chunks_mut(dim).enumerate().for_each(|(a, row)| {
            let ya = &yt[a * n..(a + 1) * n];
            for (c, o) in row.iter_mut().enumerate() {
                *o = (k.dot_f32)(ya, &xt[c * n..(c + 1) * n]) as f64;
            }
        });
        let (polar, vnext) = polar_factor(&mm, dim, &v);
        r = polar.iter().map(|&a| a as f32).collect();
        v = vnext;
        on_round();
    }
    r
}

fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0f32; x.len()];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = x[i * cols + j];
        }
    }
    t
}

/// The orthogonal polar factor `U·Vᵀ` of the `d × d` matrix `a = U S Vᵀ` (row-major), by
/// one-sided Jacobi on `a·V0` (`v0` a guess of `V`, row-major, orthogonal). Returns the factor
/// and the `V` found (the next call's guess). Columns of `U` for zero singular values are
/// completed to an orthonormal basis.
pub fn polar_factor(a: &[f64], d: usize, v0: &[f64]) -> (Vec<f64>, Vec<f64>) {
    // Rows of `w` are the columns of a·V0; rows of `vt` the columns of V.
    let mut w = vec![0.0f64; d * d];
    w.par_chunks_mut(d).enumerate().for_each(|(i, wi)| {
        for r in 0..d {
            wi[r] = (0..d).map(|c| a[r * d + c] * v0[c * d + i]).sum();
        }
    });
    let mut vt = transpose64(v0, d);
    let dot = |x: &[f64], y: &[f64]| -> f64 { x.iter().zip(y).map(|(a, b)| a * b).sum() };
    for _sweep in 0..40 {
        let mut rotated = false;
        for p in 0..d {
            for q in p + 1..d {
                let (wp, wq) = (&w[p * d..(p + 1) * d], &w[q * d..(q + 1) * d]);
                let alpha = dot(wp, wp);
                let beta = dot(wq, wq);
                let gamma = dot(wp, wq);
                if gamma.abs() <= 1e-13 * (alpha * beta).sqrt() || gamma == 0.0 {
                    continue;
                }
                rotated = true;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                for m in [&mut w, &mut vt] {
                    let (lo, hi) = m.split_at_mut(q * d);
                    let (xp, xq) = (&mut lo[p * d..(p + 1) * d], &mut hi[..d]);
                    for (u, v) in xp.iter_mut().zip(xq.iter_mut()) {
                        let (a, b) = (*u, *v);
                        *u = c * a - s * b;
                        *v = s * a + c * b;
                    }
                }
            }
        }
        if !rotated {
            break;
        }
    }
    // U's columns: the normalised rows of w; completed where the singular value vanishes.
    let norms: Vec<f64> = w.chunks_exact(d).map(|r| dot(r, r).sqrt()).collect();
    let top = norms.iter().cloned().fold(0.0, f64::max);
    let mut ut = vec![0.0f64; d * d];
    let mut missing = Vec::new();
    for i in 0..d {
        if norms[i] > 1e-10 * top && top > 0.0 {
            for (u, x) in ut[i * d..(i + 1) * d]
                .iter_mut()
                .zip(&w[i * d..(i + 1) * d])
            {
                *u = x / norms[i];
            }
        } else {
            missing.push(i);
        }
    }
    let mut basis = 0;
    for i in missing {
        loop {
            let mut e = vec![0.0f64; d];
            e[basis % d] = 1.0;
            basis += 1;
            for _ in 0..2 {
                for j in 0..d {
                    let uj = &ut[j * d..(j + 1) * d];
                    let p = dot(&e, uj);
                    if p != 0.0 {
                        e.iter_mut().zip(uj).for_each(|(x, u)| *x -= p * u);
                    }
                }
            }
            let n = dot(&e, &e).sqrt();
            if n > 1e-6 {
                ut[i * d..(i + 1) * d]
                    .iter_mut()
                    .zip(&e)
                    .for_each(|(u, x)| *u = x / n);
                break;
            }
        }
    }
    // R = U Vᵀ: R[a][b] = Σ_i ut[i][a] · vt[i][b].
    let mut r = vec![0.0f64; d * d];
    r.par_chunks_mut(d).enumerate().for_each(|(ra, row)| {
        for i in 0..d {
            let u = ut[i * d + ra];
            if u != 0.0 {
                row.iter_mut()
                    .zip(&vt[i * d..(i + 1) * d])
                    .for_each(|(o, v)| *o += u * v);
            }
        }
    });
    (r, transpose64(&vt, d))
}

fn transpose64(x: &[f64], d: usize) -> Vec<f64> {
    let mut t = vec![0.0f64; d * d];
    for i in 0..d {
        for j in 0..d {
            t[j * d + i] = x[i * d + j];
        }
    }
    t
}

impl Encoding for Pq {
    type Query = PqQuery;
    const NAME: &'static str = "pq";
    const TAG: u8 = 4;
    const EXACT: bool = false;
    const HAS_FINE: bool = true;

    fn dim(&self) -> usize {
        self.dim
    }
    fn metric(&self) -> Metric {
        self.metric
    }
    fn code_size(&self) -> usize {
        if self.bits == 8 {
            self.m
        } else {
            self.m.div_ceil(2)
        }
    }
    fn encode(&self, v: &[f32], out: &mut [u8]) {
        let mut buf = Vec::new();
        let x = self.rotated(v, &mut buf);
        if self.bits == 8 {
            self.codes_of(x, out);
        } else {
            let mut c = vec![0u8; self.m];
            self.codes_of(x, &mut c);
            out.fill(0);
            for (j, &cj) in c.iter().enumerate() {
                out[j / 2] |= cj << (4 * (j & 1));
            }
        }
    }
    fn decode(&self, code: &[u8], out: &mut [f32]) -> bool {
        let ksub = self.ksub();
        let mut y = vec![0.0f32; self.dim];
        for j in 0..self.m {
            let (a, b) = (self.offsets[j], self.offsets[j + 1]);
            let ds = b - a;
            let c = self.code_at(code, j);
            y[a..b].copy_from_slice(&self.codebooks[ksub * a + c * ds..][..ds]);
        }
        match &self.rotation {
            // x = Rᵀ y.
            Some(r) => {
                out.fill(0.0);
                for (ra, &ya) in r.chunks_exact(self.dim).zip(&y) {
                    out.iter_mut().zip(ra).for_each(|(o, &x)| *o += ya * x);
                }
            }
            None => out.copy_from_slice(&y),
        }
        true
    }
    fn prepare(&self, q: &[f32]) -> PqQuery {
        let mut buf = Vec::new();
        let q = self.rotated(q, &mut buf);
        let ksub = self.ksub();
        let l2 = self.metric == Metric::L2;
        let mut lut = vec![0.0f32; self.m * ksub];
        // Sub-table j from the transposed codebook: one K-wide step per dimension, summed in
        // dimension order (the same sums as term by term per centroid).
        for (j, table) in lut.chunks_exact_mut(ksub).enumerate() {
            let (a, b) = (self.offsets[j], self.offsets[j + 1]);
            let book = &self.books_t[ksub * a..ksub * b];
            for (&x, col) in q[a..b].iter().zip(book.chunks_exact(ksub)) {
                if l2 {
                    for (t, &c) in table.iter_mut().zip(col) {
                        *t += (x - c) * (x - c);
                    }
                } else {
                    for (t, &c) in table.iter_mut().zip(col) {
                        *t += x * c;
                    }
                }
            }
            if !l2 {
                table.iter_mut().for_each(|t| *t = -*t);
            }
        }
        let bias = if self.metric == Metric::Cosine {
            1.0
        } else {
            0.0
        };
        let (mut lut8, mut scale, mut base) = (Vec::new(), 1.0f32, 0.0f32);
        if self.bits == 4 {
            let (tables, _) = lut.as_chunks::<16>();
            let mut mins = Vec::with_capacity(tables.len());
            let mut span = 0.0f32;
            for t in tables {
                let (lo, hi) = min_max16(t);
                mins.push(lo);
                span = span.max(hi - lo);
            }
            scale = if span > 0.0 { 255.0 / span } else { 1.0 };
            base = mins.iter().sum();
            // The high nibble of the last byte of an odd-M code looks up zeros (the tail).
            lut8 = vec![0u8; 32 * self.m.div_ceil(2)];
            let (tables, _) = lut.as_chunks::<16>();
            let (out, _) = lut8.as_chunks_mut::<16>();
            for ((o, t), &lo) in out.iter_mut().zip(tables).zip(&mins) {
                for (o, &x) in o.iter_mut().zip(t) {
                    // x - lo >= 0: adding 0.5 and truncating rounds half up; `as`
                    // saturates at 255.
                    *o = ((x - lo) * scale + 0.5) as u8;
                }
            }
        }
        PqQuery {
            lut,
            bias,
            lut8,
            scale,
            base,
            block: RefCell::new(Vec::new()),
            gathered: RefCell::new(Vec::new()),
        }
    }
    #[inline]
    fn distance(&self, q: &PqQuery, code: &[u8]) -> f32 {
        if self.bits == 8 {
            let (tables, _) = q.lut.as_chunks::<256>();
            let code = &code[..self.m];
            let mut acc = [0.0f32; 4];
            let (t4, tt) = tables.as_chunks::<4>();
            let (c4, ct) = code.as_chunks::<4>();
            for (t, c) in t4.iter().zip(c4) {
                acc[0] += t[0][c[0] as usize];
                acc[1] += t[1][c[1] as usize];
                acc[2] += t[2][c[2] as usize];
                acc[3] += t[3][c[3] as usize];
            }
            for (t, &c) in tt.iter().zip(ct) {
                acc[0] += t[c as usize];
            }
            q.bias + (acc[0] + acc[1]) + (acc[2] + acc[3])
        } else {
            let (tables, _) = q.lut.as_chunks::<16>();
            let mut acc = [0.0f32; 2];
            let (pairs, last) = tables.as_chunks::<2>();
            for (t, &c) in pairs.iter().zip(code) {
                acc[0] += t[0][(c & 15) as usize];
                acc[1] += t[1][(c >> 4) as usize];
            }
            if let Some(t) = last.first() {
                acc[0] += t[(code[pairs.len()] & 15) as usize];
            }
            q.bias + acc[0] + acc[1]
        }
    }
    /// The float ADC: the final distance without float vectors (4-bit traversal uses the
    /// coarser u8 estimate).
    fn distance_fine(&self, q: &PqQuery, code: &[u8]) -> f32 {
        self.distance(q, code)
    }
    /// 4 bits: u8 LUT + FastScan over blocks of 32 codes (see the module docs), within
    /// [`PqQuery::fastscan_error_bound`] of [`Encoding::distance`]; 8 bits: one code at a
    /// time.
    fn distance_ids(&self, q: &PqQuery, codes: &CodeStore, ids: &[u32], out: &mut [f32]) {
        if self.bits == 4 && fastscan_traversal() {
            let (base, stride) = (codes.bytes(), codes.stride());
            for (c, o) in ids.chunks(32).zip(out.chunks_mut(32)) {
                self.fastscan_ids(q, base, stride, c, o);
            }
        } else {
            for (o, &id) in out.iter_mut().zip(ids) {
                *o = self.distance(q, codes.get(id as usize));
            }
        }
    }
    /// 4 bits: u8 LUT + FastScan over blocks of 32 codes (see the module docs); 8 bits: one
    /// code at a time.
    fn distance_batch(&self, q: &PqQuery, codes: &[&[u8]], out: &mut [f32]) {
        if self.bits == 4 {
            for (c, o) in codes.chunks(32).zip(out.chunks_mut(32)) {
                self.fastscan_block(q, c, o);
            }
        } else {
            for (o, c) in out.iter_mut().zip(codes) {
                *o = self.distance(q, c);
            }
        }
    }
    /// 4 bits with FastScan traversal: one FastScan block of 32 codes (`32 · ⌈M/2⌉` bytes);
    /// otherwise 0 (no neighbour blocks).
    fn neighbor_block_bytes(&self) -> usize {
        if self.bits == 4 && fastscan_traversal() {
            32 * self.code_size()
        } else {
            0
        }
    }
    /// The gather + transpose of [`Encoding::distance_ids`] (`fastscan_pack_u4`), done once
    /// per neighbour list instead of once per expansion; empty slots are zero codes.
    fn pack_neighbors(&self, codes: &CodeStore, ids: &[u32], out: &mut [u8]) {
        (self.k.fastscan_pack_u4)(codes.bytes(), codes.stride(), ids, self.code_size(), out);
    }
    /// The FastScan accumulation of [`Encoding::distance_ids`] on a packed block, so the
    /// estimates are bit-identical.
    #[inline]
    fn distance_packed(&self, q: &PqQuery, block: &[u8], out: &mut [f32]) {
        self.fastscan_packed(q, block, out);
    }
    fn params_bytes(&self) -> usize {
        4 * (self.codebooks.len() + self.books_t.len() + self.rotation.as_ref().map_or(0, Vec::len))
    }
    fn write_params(&self, w: &mut Writer) {
        w.u32(self.m as u32);
        w.u32(self.bits);
        w.u8(self.rotation.is_some() as u8);
        w.f32s(&self.codebooks);
        if let Some(r) = &self.rotation {
            w.f32s(r);
        }
    }
    fn read_params(r: &mut Reader, dim: usize, metric: Metric) -> Result<Self> {
        let m = r.u32()? as usize;
        let bits = r.u32()?;
        if m == 0 || m > dim || (bits != 4 && bits != 8) {
            return Err(Error::Format(format!(
                "pq parameters out of range: {m} sub-quantizers of {bits} bits for dimension {dim}"
            )));
        }
        let has_rotation = match r.u8()? {
            0 => false,
            1 => true,
            f => return Err(Error::Format(format!("pq rotation flag {f} is not 0 or 1"))),
        };
        let codebooks = r.f32s(dim << bits)?;
        let rotation = if has_rotation {
            Some(
                r.f32s(
                    dim.checked_mul(dim)
                        .ok_or_else(|| Error::Format("pq rotation size overflows".into()))?,
                )?,
            )
        } else {
            None
        };
        if codebooks
            .iter()
            .chain(rotation.iter().flatten())
            .any(|x| !x.is_finite())
        {
            return Err(Error::Format("pq parameters are not finite".into()));
        }
        Ok(Self::from_parts(dim, metric, m, bits, codebooks, rotation))
    }
}
