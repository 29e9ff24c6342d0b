//! Deterministic parallel graph construction (batched Vamana insertion with prefix doubling).

use super::prune::{robust_prune, sort_dedup};
use super::search::{beam_search, Scorer, SearchScratch};
use super::Graph;
use crate::metric::Metric;
use nearq_kernels::{kernels, Kernels};
use rayon::prelude::*;
use std::cell::RefCell;

/// Graph construction parameters.
#[derive(Clone, Debug)]
pub struct BuildParams {
    /// Maximum out-degree R.
    pub degree: usize,
    /// Beam width of the searches that find each point's candidates.
    pub build_ef: usize,
    /// Pruning factor α (>= 1) on the build distance (squared L2, see [`build_graph`]).
    pub alpha: f32,
    /// Seed of the insertion order.
    pub seed: u64,
}

impl Default for BuildParams {
    fn default() -> Self {
        BuildParams {
            degree: 32,
            build_ef: 128,
            alpha: 1.1,
            seed: 0,
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<SearchScratch> = RefCell::new(SearchScratch::default());
}

/// The distance the graph is built with: squared L2 (for cosine, between unit vectors, which
/// is `2 (1 - cos)`; the α rule and the order of neighbours do not depend on the scale).
///
/// For inner product, each vector `x` gets an extra coordinate `e(x) = sqrt(M^2 - ||x||^2)`
/// (M the largest norm), so that squared L2 between augmented vectors is a true metric whose
/// nearest neighbours of a query `[q, 0]` are exactly the maximum-inner-product neighbours of
/// `q` (Bachrach et al., 2014). The graph is then a proper α-pruned graph, and searching it
/// with `-<q, x>` follows the same order.
///
/// Build distances dominate construction time, so when the data allows it they are computed
/// on 8-bit codes of the mean-centred vectors with one global step `s` (ALGORITHMS.md §6.7,
/// "build on compressed vectors"): `||a - b||^2 ≈ s^2 (Σa_i^2 + Σb_i^2 - 2 Σa_i b_i)` with an
/// exact integer dot product (u8×i8 kernel, VNNI where present) over a quarter of the bytes.
/// The codes are used only if the step is at most a tenth of the components' RMS, which keeps
/// the distance noise far below the gaps between neighbours; otherwise floats are used.
struct BuildSpace<'a> {
    data: &'a [f32],
    dim: usize,
    /// `e(x)` per vector, for inner product only.
    extra: Option<Vec<f32>>,
    q8: Option<Q8>,
    k: &'static Kernels,
}

/// 8-bit codes `c = round((x - mean) / s)` in [-127, 127], stored both as i8 and as u8 `c + 128`
/// (the kernel multiplies u8 by i8), with per-vector `Σc` and `Σc²`.
struct Q8 {
    u: Vec<u8>,
    i: Vec<i8>,
    sum: Vec<i64>,
    sq: Vec<i64>,
    s2: f32,
}

impl Q8 {
    fn new(data: &[f32], dim: usize) -> Option<Q8> {
        if dim > 16_384 {
            return None; // keeps the i32 dot product of the kernel far from overflow
        }
        let n = data.len() / dim;
        let mut mean = vec![0f64; dim];
        for row in data.chunks_exact(dim) {
            for (m, &x) in mean.iter_mut().zip(row) {
                *m += x as f64;
            }
        }
        let mean: Vec<f32> = mean.iter().map(|&m| (m / n as f64) as f32).collect();
        let (mut max_abs, mut sum_sq) = (0f32, 0f64);
        for row in data.chunks_exact(dim) {
            for (&x, &m) in row.iter().zip(&mean) {
                let c = x - m;
                max_abs = max_abs.max(c.abs());
                sum_sq += (c as f64) * (c as f64);
            }
        }
        let rms = (sum_sq / data.len().max(1) as f64).sqrt() as f32;
        let s = max_abs / 127.0;
        if !(s > 0.0 && s <= 0.1 * rms) {
            return None;
        }
        let i: Vec<i8> = data
            .par_chunks(dim)
            .flat_map_iter(|row| {
                row.iter()
                    .zip(&mean)
                    .map(move |(&x, &m)| ((x - m) / s).round().clamp(-127.0, 127.0) as i8)
            })
            .collect();
        let u: Vec<u8> = i.par_iter().map(|&c| (c as i16 + 128) as u8).collect();
        let sum = i
            .par_chunks(dim)
            .map(|r| r.iter().map(|&c| c as i64).sum())
            .collect();
        let sq = i
            .par_chunks(dim)
            .map(|r| r.iter().map(|&c| (c as i64) * (c as i64)).sum())
            .collect();
        Some(Q8 {
            u,
            i,
            sum,
            sq,
            s2: s * s,
        })
    }
}

impl BuildSpace<'_> {
    #[inline(always)]
    fn row(&self, i: u32) -> &[f32] {
        &self.data[i as usize * self.dim..(i as usize + 1) * self.dim]
    }
    #[inline(always)]
    fn dist(&self, a: u32, b: u32) -> f32 {
        let (ai, bi) = (a as usize, b as usize);
        let d = match &self.q8 {
            Some(q) => {
                let d = self.dim;
                let ub = &q.u[bi * d..(bi + 1) * d];
                let ia = &q.i[ai * d..(ai + 1) * d];
                // Σ a b = Σ (b + 128) a - 128 Σ a
                let dot = (self.k.dot_u8_i8)(ub, ia) as i64 - 128 * q.sum[ai];
                (q.sq[ai] + q.sq[bi] - 2 * dot) as f32 * q.s2
            }
            None => (self.k.l2sq_f32)(self.row(a), self.row(b)),
        };
        match &self.extra {
            Some(e) => {
                let t = e[ai] - e[bi];
                d + t * t
            }
            None => d,
        }
    }
    #[inline(always)]
    fn prefetch(&self, i: u32) {
        let (p, lines) = match &self.q8 {
            Some(q) => (q.u[i as usize * self.dim..].as_ptr(), self.dim.div_ceil(64)),
            None => (
                self.row(i).as_ptr() as *const u8,
                (self.dim * 4).div_ceil(64),
            ),
        };
        for l in 0..lines.min(8) {
            super::search::prefetch_ptr(p.wrapping_add(64 * l));
        }
    }
}

struct PointScorer<'a, 'b> {
    space: &'b BuildSpace<'a>,
    p: u32,
}

impl Scorer for PointScorer<'_, '_> {
    #[inline(always)]
    fn dist(&self, id: u32) -> f32 {
        self.space.dist(self.p, id)
    }
    #[inline(always)]
    fn prefetch(&self, id: u32) {
        self.space.prefetch(id);
    }
}

/// splitmix64: a small, well-mixed generator for the seeded insertion order.
pub(crate) struct SplitMix(pub u64);
impl SplitMix {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Index of the point nearest to the centroid (the medoid used as entry point).
pub fn medoid(data: &[f32], dim: usize, metric: Metric) -> u32 {
    let n = data.len() / dim;
    let mut c = vec![0f64; dim];
    for row in data.chunks_exact(dim) {
        for (a, &x) in c.iter_mut().zip(row) {
            *a += x as f64;
        }
    }
    let mut c: Vec<f32> = c.iter().map(|&x| (x / n as f64) as f32).collect();
    if metric.normalizes() {
        crate::metric::normalize(&mut c);
    }
    let k = kernels();
    let dist = |i: usize| {
        let row = &data[i * dim..(i + 1) * dim];
        match metric {
            // The geometric centre is what matters for an entry point, whatever the metric.
            Metric::InnerProduct => (k.l2sq_f32)(&c, row),
            m => m.distance(k, &c, row),
        }
    };
    (0..n)
        .into_par_iter()
        .map(|i| (dist(i), i as u32))
        .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
        .map(|x| x.1)
        .unwrap_or(0)
}

/// Builds the graph over `data` (row-major, normalised for cosine) in the current rayon pool.
/// Returns the graph and its entry point. `progress(done, total)` is called between batches.
pub fn build_graph(
    data: &[f32],
    dim: usize,
    metric: Metric,
    p: &BuildParams,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> (Graph, u32) {
    let n = data.len() / dim;
    let r = p.degree;
    let alpha = p.alpha;
    // Rows may hold up to `cap` edges during the build and are pruned back to `r` only when
    // they overflow (DiskANN's graph slack), which makes reverse-edge prunes rare.
    let cap = r + (r * 3).div_ceil(10);
    let mut graph = Graph::new(cap, n);
    if n == 0 {
        return (Graph::new(r, 0), 0);
    }
    let entry = medoid(data, dim, metric);
    let k = kernels();
    let extra = (metric == Metric::InnerProduct).then(|| {
        let norms: Vec<f32> = data.par_chunks(dim).map(|x| (k.dot_f32)(x, x)).collect();
        let m = norms.iter().copied().fold(0.0f32, f32::max);
        norms.iter().map(|&n2| (m - n2).max(0.0).sqrt()).collect()
    });
    let q8 = Q8::new(data, dim);
    let space = BuildSpace {
        data,
        dim,
        extra,
        q8,
        k,
    };
    let dist = |a: u32, b: u32| space.dist(a, b);

    let mut order: Vec<u32> = (0..n as u32).filter(|&i| i != entry).collect();
    let mut rng = SplitMix(p.seed ^ 0x6E65_6172_715F_6772);
    for i in (1..order.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }

    let max_batch = (n / 50).max(1);
    let mut start = 0usize;
    let mut batch = 1usize;
    while start < order.len() {
        let end = (start + batch).min(order.len());
        let pts = &order[start..end];
        // 1. Every point of the batch searches the graph as it stands and prunes its candidates.
        let out_edges: Vec<Vec<u32>> = pts
            .par_iter()
            .map(|&pt| {
                SCRATCH.with(|s| {
                    let s = &mut *s.borrow_mut();
                    let scorer = PointScorer {
                        space: &space,
                        p: pt,
                    };
                    beam_search(&graph, &[entry], &scorer, p.build_ef, s);
                    let mut cands: Vec<(f32, u32)> = s.pool.iter().collect();
                    sort_dedup(&mut cands, pt);
                    let mut out = Vec::with_capacity(r);
                    robust_prune(&cands, alpha, r, dist, &mut out);
                    out
                })
            })
            .collect();
        for (&pt, nb) in pts.iter().zip(&out_edges) {
            graph.set_neighbors(pt, nb);
        }
        // 2. Reverse edges, grouped by target in a fixed order, pruned when a row overflows.
        let mut rev: Vec<(u32, u32)> = pts
            .iter()
            .zip(&out_edges)
            .flat_map(|(&pt, nb)| nb.iter().map(move |&j| (j, pt)))
            .collect();
        rev.sort_unstable();
        let groups: Vec<&[(u32, u32)]> = rev.chunk_by(|a, b| a.0 == b.0).collect();
        let updates: Vec<(u32, Vec<u32>)> = groups
            .par_iter()
            .map(|g| {
                let j = g[0].0;
                let cur = graph.neighbors(j);
                let mut ids: Vec<u32> = cur.to_vec();
                for &(_, src) in g.iter() {
                    if !ids.contains(&src) {
                        ids.push(src);
                    }
                }
                if ids.len() <= cap {
                    return (j, ids);
                }
                let mut cands: Vec<(f32, u32)> = ids.iter().map(|&i| (dist(j, i), i)).collect();
                sort_dedup(&mut cands, j);
                let mut out = Vec::with_capacity(r);
                robust_prune(&cands, alpha, r, dist, &mut out);
                (j, out)
            })
            .collect();
        for (j, nb) in updates {
            graph.set_neighbors(j, &nb);
        }
        start = end;
        batch = (batch * 2).min(max_batch);
        progress(start + 1, n);
    }
    // Final pass: prune the rows that used the slack back to the target degree.
    let rows: Vec<Vec<u32>> = (0..n as u32)
        .into_par_iter()
        .map(|j| {
            let nb = graph.neighbors(j);
            if nb.len() <= r {
                return nb.to_vec();
            }
            let mut cands: Vec<(f32, u32)> = nb.iter().map(|&i| (dist(j, i), i)).collect();
            sort_dedup(&mut cands, j);
            let mut out = Vec::with_capacity(r);
            robust_prune(&cands, alpha, r, dist, &mut out);
            out
        })
        .collect();
    let mut fin = Graph::new(r, n);
    for (j, nb) in rows.iter().enumerate() {
        fin.set_neighbors(j as u32, nb);
    }
    ensure_reachable(&mut fin, entry, &space, p.build_ef);
    (fin, entry)
}

/// Nodes reachable from `entry`.
fn reachable(g: &Graph, entry: u32) -> Vec<bool> {
    let mut seen = vec![false; g.len()];
    let mut stack = vec![entry];
    seen[entry as usize] = true;
    while let Some(v) = stack.pop() {
        for &u in g.neighbors(v) {
            if !seen[u as usize] {
                seen[u as usize] = true;
                stack.push(u);
            }
        }
    }
    seen
}

/// Pruning can remove every in-edge of a node, which then can never be found. Each such node
/// gets an in-edge from its nearest reachable node with a free slot (or, if the nearest ones
/// are all full, replaces the farthest edge of the nearest), until everything is reachable.
fn ensure_reachable(g: &mut Graph, entry: u32, space: &BuildSpace<'_>, ef: usize) {
    for _round in 0..8 {
        let seen = reachable(g, entry);
        let orphans: Vec<u32> = (0..g.len() as u32).filter(|&i| !seen[i as usize]).collect();
        if orphans.is_empty() {
            return;
        }
        SCRATCH.with(|s| {
            let s = &mut *s.borrow_mut();
            for &u in &orphans {
                beam_search(g, &[entry], &PointScorer { space, p: u }, ef, s);
                let cands: Vec<u32> = s
                    .pool
                    .iter()
                    .map(|(_, id)| id)
                    .filter(|&v| v != u)
                    .collect();
                let Some(&nearest) = cands.first() else {
                    continue;
                };
                let host = cands
                    .iter()
                    .copied()
                    .find(|&v| g.neighbors(v).len() < g.degree());
                match host {
                    Some(v) => {
                        let mut nb = g.neighbors(v).to_vec();
                        nb.push(u);
                        g.set_neighbors(v, &nb);
                    }
                    None => {
                        let mut nb = g.neighbors(nearest).to_vec();
                        *nb.last_mut().expect("a full row is not empty") = u;
                        g.set_neighbors(nearest, &nb);
                    }
                }
            }
        });
    }
}
