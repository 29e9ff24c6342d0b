//! Seeded k-means (Lloyd's algorithm) for codebooks and coarse quantizers.
//!
//! Defaults follow FAISS's `Clustering` (ALGORITHMS.md 5.1): 25 iterations, the training set
//! subsampled to at most 256 points per centroid, initial centroids drawn at random from the
//! sample (or k-means++ seeding), one run.
//!
//! Each iteration assigns every point to its nearest centroid (in parallel) and moves each
//! centroid to the mean of its points. A centroid left without points is moved onto the point
//! that is farthest from its own centroid (a different point for each empty cluster): that
//! point's distance drops to 0 and nobody else's grows, so the objective
//! `Σ_i min_j ||x_i - c_j||^2`, recorded at every assignment step, never increases (up to
//! float rounding in the nearest-centroid search).
//!
//! Nearest-centroid search uses `||x - c||^2 = ||x||^2 + ||c||^2 - 2<x, c>`. For short vectors
//! (PQ sub-spaces of a few dimensions) training stores the sample transposed once and assigns
//! it with the run-time dispatched `nearest_centroid_t` kernel, which puts points in SIMD
//! lanes and broadcasts each centroid (no horizontal argmin); it is bit-identical to the
//! scalar order of operations, so codebooks do not depend on the instruction set. A single
//! short vector ([`Nearest::nearest`]) uses centroids stored transposed, so the inner loop runs
//! over centroids and vectorises; long vectors use the dot-product kernel per centroid.

use super::rotation::SplitMix;
use nearq_kernels::{kernels, Kernels, SimdLevel};
use rayon::prelude::*;

/// Default Lloyd iterations.
pub const DEFAULT_ITERS: usize = 25;
/// Default cap on training points per centroid (the sample is at most `k` times this).
pub const DEFAULT_MAX_POINTS_PER_CENTROID: usize = 256;
/// Vectors up to this length use the transposed (vectorised over centroids) search.
const SHORT_DIM: usize = 32;

/// How the initial centroids are chosen.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Init {
    /// `k` distinct sample points drawn uniformly (FAISS's default).
    Random,
    /// k-means++: each next centroid drawn with probability proportional to the squared
    /// distance to the nearest centroid chosen so far.
    PlusPlus,
}

/// Training options.
#[derive(Clone, Debug)]
pub struct KMeansConfig {
    pub k: usize,
    pub iters: usize,
    pub seed: u64,
    pub max_points_per_centroid: usize,
    pub init: Init,
}

impl KMeansConfig {
    pub fn new(k: usize, seed: u64) -> Self {
        KMeansConfig {
            k,
            iters: DEFAULT_ITERS,
            seed,
            max_points_per_centroid: DEFAULT_MAX_POINTS_PER_CENTROID,
            init: Init::Random,
        }
    }
}

/// Trained centroids.
#[derive(Clone, Debug)]
pub struct KMeans {
    pub dim: usize,
    /// `k × dim`, row-major.
    pub centroids: Vec<f32>,
    /// The objective `Σ_i min_j ||x_i - c_j||^2` over the sample at each iteration's
    /// assignment step (before that iteration's update).
    pub objective: Vec<f64>,
}

/// Centroids prepared for nearest-centroid queries.
pub struct Nearest {
    dim: usize,
    k: usize,
    centroids: Vec<f32>,
    norms: Vec<f32>,
    /// `dim × k` transposed centroids (short vectors only).
    transposed: Vec<f32>,
    kern: &'static Kernels,
}

impl Nearest {
    /// `centroids` is `k × dim`, row-major, `k >= 1` (copied).
    pub fn new(centroids: &[f32], dim: usize) -> Self {
        assert!(dim > 0 && !centroids.is_empty() && centroids.len().is_multiple_of(dim));
        let k = centroids.len() / dim;
        let norms = centroids
            .chunks_exact(dim)
            .map(|c| c.iter().map(|x| x * x).sum())
            .collect();
        let mut transposed = Vec::new();
        if dim <= SHORT_DIM {
            transposed = vec![0.0; dim * k];
            for (j, c) in centroids.chunks_exact(dim).enumerate() {
                for (t, &x) in c.iter().enumerate() {
                    transposed[t * k + j] = x;
                }
            }
        }
        Nearest {
            dim,
            k,
            centroids: centroids.to_vec(),
            norms,
            transposed,
            kern: kernels(),
        }
    }

    /// Index of the nearest centroid to `x` and the squared distance to it. `buf` is scratch
    /// space (resized as needed).
    #[inline]
    pub fn nearest(&self, x: &[f32], buf: &mut Vec<f32>) -> (u32, f32) {
        let k = self.k;
        let mut best = (0usize, f32::INFINITY);
        if self.transposed.is_empty() {
            for (j, (c, &n)) in self
                .centroids
                .chunks_exact(self.dim)
                .zip(&self.norms)
                .enumerate()
            {
                let d = n - 2.0 * (self.kern.dot_f32)(x, c);
                if d < best.1 {
                    best = (j, d);
                }
            }
        } else {
            buf.clear();
            buf.extend_from_slice(&self.norms);
            for (t, &xt) in x.iter().enumerate() {
                let m2x = -2.0 * xt;
                for (b, &c) in buf.iter_mut().zip(&self.transposed[t * k..(t + 1) * k]) {
                    *b += m2x * c;
                }
            }
            for (j, &d) in buf.iter().enumerate() {
                if d < best.1 {
                    best = (j, d);
                }
            }
        }
        let c = &self.centroids[best.0 * self.dim..(best.0 + 1) * self.dim];
        let exact = x.iter().zip(c).map(|(a, b)| (a - b) * (a - b)).sum();
        (best.0 as u32, exact)
    }

    /// Nearest centroid of every row of `data` (in parallel on the current rayon pool).
    pub fn assign(&self, data: &[f32]) -> Vec<(u32, f32)> {
        let mut out = vec![(0u32, 0f32); data.len() / self.dim];
        out.par_chunks_mut(256)
            .zip(data.par_chunks(256 * self.dim))
            .for_each(|(o, rows)| {
                let mut buf = Vec::with_capacity(self.k);
                for (o, x) in o.iter_mut().zip(rows.chunks_exact(self.dim)) {
                    *o = self.nearest(x, &mut buf);
                }
            });
        out
    }
}

/// A seeded sample of at most `max` rows of `data` (all rows, in order, when there are fewer).
pub fn sample_rows(data: &[f32], dim: usize, max: usize, seed: u64) -> Vec<f32> {
    let n = data.len() / dim;
    if n <= max {
        return data.to_vec();
    }
    let mut idx: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix::new(seed ^ 0x5A3F_1E2B);
    for i in 0..max {
        let j = i + (rng.next_u64() % (n - i) as u64) as usize;
        idx.swap(i, j);
    }
    let mut pick = idx[..max].to_vec();
    pick.sort_unstable();
    pick.iter()
        .flat_map(|&i| data[i * dim..(i + 1) * dim].iter().copied())
        .collect()
}

/// Trains `cfg.k` centroids on the rows of `data` (`dim` columns). With fewer rows than
/// centroids the rows are repeated, so the result always has `k` centroids.
pub fn train(data: &[f32], dim: usize, cfg: &KMeansConfig) -> KMeans {
    assert!(dim > 0 && cfg.k > 0, "k-means needs dim > 0 and k > 0");
    let sample = sample_rows(
        data,
        dim,
        cfg.k.saturating_mul(cfg.max_points_per_centroid.max(1)),
        cfg.seed,
    );
    let init = init_centroids(&sample, dim, cfg);
    train_from(&sample, dim, init, cfg.iters)
}

/// Runs `iters` Lloyd iterations on all rows of `sample`, starting from `centroids`
/// (`k × dim`); used directly to warm-start (OPQ re-trains codebooks after each rotation).
pub fn train_from(sample: &[f32], dim: usize, centroids: Vec<f32>, iters: usize) -> KMeans {
    // The scalar table has no lanes to fill; `Nearest` is faster there and gives the same bits.
    let transposed = dim <= SHORT_DIM && kernels().level != SimdLevel::Scalar;
    lloyd(sample, dim, centroids, iters, transposed)
}

/// Lloyd iterations; `transposed` assigns with the transposed-sample kernel (short vectors),
/// otherwise with [`Nearest::assign`]; both give the same result bit for bit.
fn lloyd(
    sample: &[f32],
    dim: usize,
    mut centroids: Vec<f32>,
    iters: usize,
    transposed: bool,
) -> KMeans {
    let n = sample.len() / dim;
    let k = centroids.len() / dim;
    let mut objective = Vec::with_capacity(iters);
    if n == 0 {
        return KMeans {
            dim,
            centroids,
            objective,
        };
    }
    let mut sums = vec![0.0f64; k * dim];
    let mut counts = vec![0usize; k];
    let xt = if transposed {
        transpose(sample, n, dim)
    } else {
        Vec::new()
    };
    let mut assign = vec![(0u32, 0f32); n];
    for _ in 0..iters {
        if transposed {
            assign_transposed(&xt, sample, dim, &centroids, &mut assign);
        } else {
            assign = Nearest::new(&centroids, dim).assign(sample);
        }
        objective.push(assign.iter().map(|&(_, d)| d as f64).sum());
        sums.fill(0.0);
        counts.fill(0);
        for (x, &(j, _)) in sample.chunks_exact(dim).zip(&assign) {
            let j = j as usize;
            counts[j] += 1;
            for (s, &v) in sums[j * dim..(j + 1) * dim].iter_mut().zip(x) {
                *s += v as f64;
            }
        }
        for j in 0..k {
            if counts[j] > 0 {
                let inv = 1.0 / counts[j] as f64;
                for (c, s) in centroids[j * dim..(j + 1) * dim]
                    .iter_mut()
                    .zip(&sums[j * dim..(j + 1) * dim])
                {
                    *c = (s * inv) as f32;
                }
            }
        }
        // Empty clusters take the points farthest from their centroids.
        let empty: Vec<usize> = (0..k).filter(|&j| counts[j] == 0).collect();
        if !empty.is_empty() {
            let mut far: Vec<usize> = (0..n).filter(|&i| assign[i].1 > 0.0).collect();
            far.sort_unstable_by(|&a, &b| assign[b].1.total_cmp(&assign[a].1).then(a.cmp(&b)));
            for (&j, &i) in empty.iter().zip(&far) {
                centroids[j * dim..(j + 1) * dim].copy_from_slice(&sample[i * dim..(i + 1) * dim]);
            }
        }
    }
    KMeans {
        dim,
        centroids,
        objective,
    }
}

/// Points per parallel task of [`assign_transposed`].
const ASSIGN_CHUNK: usize = 2048;

/// `n × dim` row-major to `dim × n`.
fn transpose(x: &[f32], n: usize, dim: usize) -> Vec<f32> {
    let mut t = vec![0.0f32; x.len()];
    for (i, row) in x.chunks_exact(dim).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            t[c * n + i] = v;
        }
    }
    t
}

/// Nearest centroid of every row of `sample` and the squared distance to it, like
/// [`Nearest::assign`] (the same centroid and distance bit for bit), from `xt` (`sample`
/// transposed, `dim × n`) with the `nearest_centroid_t` kernel, in parallel over chunks of
/// points.
fn assign_transposed(
    xt: &[f32],
    sample: &[f32],
    dim: usize,
    centroids: &[f32],
    out: &mut [(u32, f32)],
) {
    let n = out.len();
    let kern = kernels();
    let norms: Vec<f32> = centroids
        .chunks_exact(dim)
        .map(|c| c.iter().map(|x| x * x).sum())
        .collect();
    out.par_chunks_mut(ASSIGN_CHUNK)
        .zip(sample.par_chunks(ASSIGN_CHUNK * dim))
        .enumerate()
        .for_each(|(g, (o, rows))| {
            let mut idx = vec![0u32; o.len()];
            (kern.nearest_centroid_t)(&xt[g * ASSIGN_CHUNK..], n, centroids, &norms, &mut idx);
            for ((o, &j), x) in o.iter_mut().zip(&idx).zip(rows.chunks_exact(dim)) {
                let c = &centroids[j as usize * dim..(j as usize + 1) * dim];
                let d = x.iter().zip(c).map(|(a, b)| (a - b) * (a - b)).sum();
                *o = (j, d);
            }
        });
}

/// Initial centroids: `k` rows of `sample` (repeated when it has fewer).
fn init_centroids(sample: &[f32], dim: usize, cfg: &KMeansConfig) -> Vec<f32> {
    let n = sample.len() / dim;
    let k = cfg.k;
    let mut rng = SplitMix::new(cfg.seed ^ 0x0C3A_72E5);
    if n <= k {
        return (0..k)
            .flat_map(|j| sample[(j % n.max(1)) * dim..][..dim].iter().copied())
            .collect();
    }
    let mut out = Vec::with_capacity(k * dim);
    match cfg.init {
        Init::Random => {
            let mut idx: Vec<usize> = (0..n).collect();
            for i in 0..k {
                let j = i + (rng.next_u64() % (n - i) as u64) as usize;
                idx.swap(i, j);
                out.extend_from_slice(&sample[idx[i] * dim..(idx[i] + 1) * dim]);
            }
        }
        Init::PlusPlus => {
            let first = (rng.next_u64() % n as u64) as usize;
            out.extend_from_slice(&sample[first * dim..(first + 1) * dim]);
            let sq = |x: &[f32], c: &[f32]| -> f64 {
                x.iter()
                    .zip(c)
                    .map(|(a, b)| ((a - b) * (a - b)) as f64)
                    .sum()
            };
            let mut dist: Vec<f64> = sample.par_chunks(dim).map(|x| sq(x, &out[..dim])).collect();
            for _ in 1..k {
                let total: f64 = dist.iter().sum();
                let pick = if total > 0.0 {
                    let mut r = rng.next_f64() * total;
                    let mut p = n - 1;
                    for (i, &d) in dist.iter().enumerate() {
                        r -= d;
                        if r < 0.0 {
                            p = i;
                            break;
                        }
                    }
                    p
                } else {
                    (rng.next_u64() % n as u64) as usize
                };
                let c = sample[pick * dim..(pick + 1) * dim].to_vec();
                dist.par_iter_mut()
                    .zip(sample.par_chunks(dim))
                    .for_each(|(d, x)| *d = d.min(sq(x, &c)));
                out.extend_from_slice(&c);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut rng = SplitMix::new(seed);
        (0..n * dim)
            .map(|_| (rng.next_f64() * 2.0 - 1.0) as f32)
            .collect()
    }

    #[test]
    fn transposed_assignment_is_bit_identical_to_nearest() {
        // Sizes around the chunk and SIMD block boundaries, dims with and without a
        // register-resident kernel, few and many centroids (empty clusters included).
        for (n, dim, k) in [
            (5000usize, 4usize, 256usize),
            (ASSIGN_CHUNK + 37, 2, 16),
            (999, 3, 64),
            (300, 8, 256),
            (1000, 12, 32),
            (40, 1, 16),
        ] {
            let x = data(n, dim, (n * dim + k) as u64);
            let init = x[..k.min(n) * dim].to_vec();
            let init: Vec<f32> = init.iter().cycle().take(k * dim).copied().collect();
            let a = lloyd(&x, dim, init.clone(), 6, true);
            let b = lloyd(&x, dim, init, 6, false);
            assert_eq!(
                a.centroids.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                b.centroids.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "n={n} dim={dim} k={k}"
            );
            assert_eq!(a.objective, b.objective, "n={n} dim={dim} k={k}");
            let mut out = vec![(0u32, 0f32); n];
            assign_transposed(&transpose(&x, n, dim), &x, dim, &a.centroids, &mut out);
            assert_eq!(out, Nearest::new(&a.centroids, dim).assign(&x));
        }
    }
}
