//! Quantized graph (SymphonyQG layout, ALGORITHMS.md §6.4): every node's row holds its own
//! float vector and the 1-bit RaBitQ codes of its neighbours in the 4-bit FastScan layout, so
//! expanding a node is one contiguous read that scores all its neighbours together.
//!
//! # Row layout (fixed size, one per node)
//! ```text
//! [vector: d f32][R/32 FastScan blocks: D/4 sub-quantizers x 16 bytes][f_add: R f32][f_rescale: R f32][ids: R u32]
//! ```
//! `R` (the degree) is a multiple of 32; empty slots have id `u32::MAX`.
//!
//! # Estimator
//! The code of neighbour `u` of node `v` quantizes the rotated residual `y = P(u - v)` to
//! `b_i = [y_i > 0]`, `x̄ = (2b - 1)/√D`. RaBitQ's unbiased estimate of `<r, z>` for `r = u - v`
//! is `||r|| <x̄, P z> / <x̄, ŷ>`, with `<x̄, ŷ> = Σ|y_i| / (√D ||r||)`. With `z = q - v` and
//! linearity (`P(q - v) = q' - v'`),
//! ```text
//! ||q - u||^2 = ||r||^2 + ||q - v||^2 - 2 <r, q - v>
//!            ≈ f_add + ||q - v||^2 - 2 f_rescale (2 <b, q'> - Σ q'_i)
//! f_rescale = ||r||^2 / Σ|y_i|,   f_add = ||r||^2 + 2 f_rescale (2 <b, v'> - Σ v'_i)
//! ```
//! `||q - v||^2` is exact (the node's vector is in its row, and the distance is needed anyway:
//! every expanded node is re-ranked exactly, which is where the results come from), and
//! `<b, q'>` is one FastScan pass: sub-quantizer `j` covers dimensions `4j..4j+4`, its table
//! holds `Σ_t bit_t(c) q'_{4j+t}` for the 16 nibbles `c`, quantised to u8 once per query.
//! Squared L2 is searched; cosine indexes store unit vectors and report `||q - u||^2 / 2`.

use crate::encoding::rotation::Rotation;
use crate::error::{Error, Result};
use crate::graph::search::{prefetch_ptr, Pool, Visited};
use crate::io::{Reader, Writer};
use crate::metric::Metric;
use crate::storage::CodeStore;
use crate::Index;
use nearq_kernels::{kernels, Kernels};
use rayon::prelude::*;
use std::cell::RefCell;

const EMPTY: u32 = u32::MAX;
/// First payload byte of a quantized graph file (index payloads start with a metric tag < 3).
const PAYLOAD_KIND: u8 = 0xA0;

/// A graph whose rows carry their neighbours' FastScan codes.
pub struct QgIndex {
    dim: usize,
    pad: usize,
    degree: usize,
    metric: Metric,
    rot: Rotation,
    row_bytes: usize,
    /// Rows in 64-byte aligned storage (the row size is a multiple of 64).
    rows: CodeStore,
    entry: u32,
    n: usize,
    k: &'static Kernels,
}

struct Scratch {
    visited: Visited,
    pool: Pool,
    res: Vec<(f32, u32)>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch {
        visited: Visited::new(),
        pool: Pool::default(),
        res: Vec::new(),
    });
}

impl QgIndex {
    fn code_bytes(&self) -> usize {
        self.pad / 4 * 16
    }
    fn off_codes(&self) -> usize {
        self.dim * 4
    }
    fn off_fadd(&self) -> usize {
        self.off_codes() + self.degree / 32 * self.code_bytes()
    }
    fn off_fres(&self) -> usize {
        self.off_fadd() + self.degree * 4
    }
    fn off_ids(&self) -> usize {
        self.off_fres() + self.degree * 4
    }

    /// Builds the quantized graph from a float index's graph over the same `data`
    /// (row-major, `dim` columns). L2 and cosine only; the degree is rounded up to 32.
    pub fn from_graph(index: &Index, data: &[f32], seed: u64) -> Result<QgIndex> {
        let metric = index.metric();
        if metric == Metric::InnerProduct {
            return Err(Error::param(
                "metric",
                "the quantized graph supports l2 and cosine",
            ));
        }
        let dim = index.dim();
        let n = data.len() / dim;
        if n != index.len() {
            return Err(Error::InvalidInput("data and index sizes differ".into()));
        }
        let g = index.graph();
        let degree = g.degree().div_ceil(32) * 32;
        let pad = dim.div_ceil(64) * 64;
        let rot = Rotation::new(pad, seed);
        let mut data = data.to_vec();
        if metric.normalizes() {
            data.par_chunks_mut(dim).for_each(crate::metric::normalize);
        }
        // Rotated vectors, once.
        let rotated: Vec<f32> = data
            .par_chunks(dim)
            .flat_map_iter(|x| {
                let mut xp = vec![0f32; pad];
                xp[..dim].copy_from_slice(x);
                let mut y = vec![0f32; pad];
                rot.apply(&xp, &mut y);
                y
            })
            .collect();
        let mut q = QgIndex {
            dim,
            pad,
            degree,
            metric,
            rot,
            row_bytes: 0,
            rows: CodeStore::new(64),
            entry: index.entry_point(),
            n,
            k: kernels(),
        };
        q.row_bytes = (q.off_ids() + degree * 4).div_ceil(64) * 64;
        let rb = q.row_bytes;
        let kern = q.k;
        let mut rows = CodeStore::with_len(rb, n);
        let (cb, oc, ofa, ofr, oid) = (
            q.code_bytes(),
            q.off_codes(),
            q.off_fadd(),
            q.off_fres(),
            q.off_ids(),
        );
        rows.bytes_mut()
            .par_chunks_mut(rb)
            .enumerate()
            .for_each(|(v, row)| {
                let x = &data[v * dim..(v + 1) * dim];
                for (i, f) in x.iter().enumerate() {
                    row[i * 4..i * 4 + 4].copy_from_slice(&f.to_le_bytes());
                }
                let vr = &rotated[v * pad..(v + 1) * pad];
                let nb = full_row(g, v as u32, degree, &data, dim, kern);
                for slot in 0..degree {
                    let (fadd, fres, id) = match nb.get(slot) {
                        Some(&u) => {
                            let ur = &rotated[u as usize * pad..(u as usize + 1) * pad];
                            let mut sum_abs = 0f32;
                            let mut r2 = 0f32;
                            let mut bv = 0f32;
                            let mut sv = 0f32;
                            let block = &mut row[oc + slot / 32 * cb..oc + (slot / 32 + 1) * cb];
                            let lane = slot % 32;
                            for i in 0..pad {
                                let y = ur[i] - vr[i];
                                sum_abs += y.abs();
                                r2 += y * y;
                                sv += vr[i];
                                if y > 0.0 {
                                    bv += vr[i];
                                    let j = i / 4;
                                    let bit = 1u8 << (i % 4);
                                    let byte = &mut block[j * 16 + lane % 16];
                                    *byte |= if lane < 16 { bit } else { bit << 4 };
                                }
                            }
                            let fres = if sum_abs > 0.0 { r2 / sum_abs } else { 0.0 };
                            (r2 + 2.0 * fres * (2.0 * bv - sv), fres, u)
                        }
                        None => (f32::INFINITY, 0.0, EMPTY),
                    };
                    row[ofa + slot * 4..ofa + slot * 4 + 4].copy_from_slice(&fadd.to_le_bytes());
                    row[ofr + slot * 4..ofr + slot * 4 + 4].copy_from_slice(&fres.to_le_bytes());
                    row[oid + slot * 4..oid + slot * 4 + 4].copy_from_slice(&id.to_le_bytes());
                }
            });
        q.rows = rows;
        Ok(q)
    }

    /// Builds the float graph over `data` and then the quantized rows, on `threads` threads.
    pub fn build(
        data: &[f32],
        dim: usize,
        metric: Metric,
        build: crate::BuildParams,
        threads: Option<usize>,
    ) -> Result<QgIndex> {
        let seed = build.seed;
        let p = crate::IndexParams {
            metric,
            encoding: crate::EncodingSpec::Flat,
            keep_vectors: true,
            build,
        };
        let index = Index::build(data, dim, &p, threads, &|_, _| {})?;
        crate::parallel::with_threads(threads, || QgIndex::from_graph(&index, data, seed))
    }

    pub fn dim(&self) -> usize {
        self.dim
    }
    pub fn metric(&self) -> Metric {
        self.metric
    }

    /// Searches `queries` (row-major); `k` (id, distance) pairs per query, padded with
    /// (-1, +inf). Batches run in parallel on `threads` threads.
    pub fn search_batch(
        &self,
        queries: &[f32],
        k: usize,
        ef: usize,
        threads: Option<usize>,
    ) -> Result<(Vec<i64>, Vec<f32>)> {
        let dim = self.dim;
        if k == 0 || ef == 0 {
            return Err(Error::param("k", "k and ef must be at least 1"));
        }
        if queries.is_empty() || !queries.len().is_multiple_of(dim) {
            return Err(Error::DimensionMismatch {
                expected: dim,
                got: queries.len() % dim.max(1),
            });
        }
        crate::metric::check_finite("queries", queries, dim)?;
        let nq = queries.len() / dim;
        let mut ids = vec![-1i64; nq * k];
        let mut dists = vec![f32::INFINITY; nq * k];
        let run = |qi: usize, oi: &mut [i64], od: &mut [f32]| {
            for (j, (d, id)) in self
                .search(&queries[qi * dim..(qi + 1) * dim], k, ef)
                .into_iter()
                .enumerate()
            {
                oi[j] = id as i64;
                od[j] = d;
            }
        };
        if nq == 1 || threads == Some(1) {
            for (qi, (oi, od)) in ids.chunks_mut(k).zip(dists.chunks_mut(k)).enumerate() {
                run(qi, oi, od);
            }
        } else {
            crate::parallel::with_threads(threads, || {
                ids.par_chunks_mut(k)
                    .zip(dists.par_chunks_mut(k))
                    .enumerate()
                    .for_each(|(qi, (oi, od))| run(qi, oi, od));
            });
        }
        Ok((ids, dists))
    }

    pub fn len(&self) -> usize {
        self.n
    }

    /// Serialises the graph (inside the same container as [`Index`] files, see [`crate::io`]).
    pub fn to_payload(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(PAYLOAD_KIND);
        w.u8(self.metric.tag());
        w.u32(self.dim as u32);
        w.u32(self.pad as u32);
        w.u32(self.degree as u32);
        w.u32(self.entry);
        w.u64(self.n as u64);
        w.u64(self.row_bytes as u64);
        for &x in self.rot.sign_words() {
            w.u64(x);
        }
        for v in 0..self.n {
            w.bytes(self.rows.get(v));
        }
        w.buf
    }

    /// Reads a payload written by [`QgIndex::to_payload`], checking every field and every
    /// neighbour id so that a damaged file can never make a search read out of bounds.
    pub fn from_payload(payload: &[u8]) -> Result<QgIndex> {
        let bad = |m: &str| Error::Format(format!("quantized graph: {m}"));
        let mut r = Reader::new(payload);
        if r.u8()? != PAYLOAD_KIND {
            return Err(bad("not a quantized graph file"));
        }
        let metric = Metric::from_tag(r.u8()?).ok_or_else(|| bad("unknown metric"))?;
        let dim = r.u32()? as usize;
        let pad = r.u32()? as usize;
        let degree = r.u32()? as usize;
        let entry = r.u32()?;
        let n = r.count("vector count", u32::MAX as u64 - 1)?;
        let row_bytes = r.count("row size", 1 << 30)?;
        if metric == Metric::InnerProduct
            || dim == 0
            || dim > crate::index::MAX_DIM
            || pad != dim.div_ceil(64) * 64
            || degree == 0
            || !degree.is_multiple_of(32)
            || degree > crate::index::MAX_DEGREE
            || (n > 0 && entry as usize >= n)
        {
            return Err(bad("inconsistent header"));
        }
        let words = r.take_array(crate::encoding::rotation::ROUNDS * pad / 64, 8)?;
        let words = words
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let rot = Rotation::from_sign_words(pad, words).ok_or_else(|| bad("bad rotation"))?;
        let mut q = QgIndex {
            dim,
            pad,
            degree,
            metric,
            rot,
            row_bytes,
            rows: CodeStore::new(64),
            entry,
            n,
            k: kernels(),
        };
        if row_bytes != (q.off_ids() + degree * 4).div_ceil(64) * 64 {
            return Err(bad("row size does not match the header"));
        }
        let raw = r.take_array(n, row_bytes)?;
        r.finish()?;
        let mut rows = CodeStore::with_len(row_bytes, n);
        rows.bytes_mut().copy_from_slice(raw);
        q.rows = rows;
        for v in 0..n as u32 {
            let row = q.row(v);
            let x: &[f32] = bytemuck::cast_slice(&row[..dim * 4]);
            let ids: &[u32] = bytemuck::cast_slice(&row[q.off_ids()..q.off_ids() + degree * 4]);
            if x.iter().any(|f| !f.is_finite())
                || ids.iter().any(|&u| u != EMPTY && u as usize >= n)
            {
                return Err(bad("a row holds a non-finite value or an out-of-range id"));
            }
        }
        Ok(q)
    }

    /// Writes the graph to `path` atomically.
    pub fn save(&self, path: &std::path::Path) -> Result<()> {
        crate::io::write_file(path, &self.to_payload())
    }

    /// Loads a graph written by [`QgIndex::save`].
    pub fn load(path: &std::path::Path) -> Result<QgIndex> {
        Self::from_payload(&crate::io::read_file(path)?)
    }

    /// The ids in node `v`'s row (empty slots excluded).
    pub fn neighbors(&self, v: u32) -> Vec<u32> {
        let row = self.row(v);
        let o = self.off_ids();
        (0..self.degree)
            .map(|s| u32::from_le_bytes(row[o + s * 4..o + s * 4 + 4].try_into().unwrap()))
            .filter(|&u| u != EMPTY)
            .collect()
    }
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
    /// Bytes held in RAM.
    pub fn memory_bytes(&self) -> usize {
        self.rows.memory_bytes() + self.rot.memory_bytes()
    }

    #[inline(always)]
    fn row(&self, v: u32) -> &[u8] {
        self.rows.get(v as usize)
    }

    /// Searches one query; returns up to `k` (distance, id) pairs nearest first.
    pub fn search(&self, query: &[f32], k: usize, ef: usize) -> Vec<(f32, u32)> {
        let (dim, pad) = (self.dim, self.pad);
        let mut q = query.to_vec();
        if self.metric.normalizes() {
            crate::metric::normalize(&mut q);
        }
        let mut qp = vec![0f32; pad];
        qp[..dim].copy_from_slice(&q);
        let mut qr = vec![0f32; pad];
        self.rot.apply(&qp, &mut qr);
        // u8 look-up tables: entry c of sub-quantizer j is Σ_t bit_t(c) q'_{4j+t}.
        let m = pad / 4;
        let mut lut_f = vec![0f32; m * 16];
        let mut lo_sum = 0f32;
        let mut width = 0f32;
        for j in 0..m {
            let t = &mut lut_f[j * 16..j * 16 + 16];
            // Subset sums: nibble c adds its lowest set bit's coordinate to c without that bit.
            for c in 1..16usize {
                t[c] = t[c & (c - 1)] + qr[4 * j + c.trailing_zeros() as usize];
            }
            let lo = t.iter().copied().fold(f32::INFINITY, f32::min);
            let hi = t.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            lo_sum += lo;
            width = width.max(hi - lo);
        }
        let delta = if width > 0.0 { width / 255.0 } else { 1.0 };
        let mut lut = vec![0u8; m * 16];
        for j in 0..m {
            let t = &lut_f[j * 16..j * 16 + 16];
            let lo = t.iter().copied().fold(f32::INFINITY, f32::min);
            for c in 0..16 {
                lut[j * 16 + c] = ((t[c] - lo) / delta).round().clamp(0.0, 255.0) as u8;
            }
        }
        let sum_q: f32 = qr.iter().sum();
        let kern = self.k;
        let ef = ef.max(k);
        let (cb, oc, ofa, ofr, oid) = (
            self.code_bytes(),
            self.off_codes(),
            self.off_fadd(),
            self.off_fres(),
            self.off_ids(),
        );
        let lines = self.row_bytes / 64;
        SCRATCH.with(|s| {
            let s = &mut *s.borrow_mut();
            s.visited.reset(self.n);
            s.pool.reset(ef);
            s.res.clear();
            let e = self.entry;
            s.visited.check_and_mark(e);
            s.pool.insert(0.0, e);
            let mut acc = [0u16; 32];
            while let Some(v) = s.pool.pop() {
                if let Some(nx) = s.pool.peek() {
                    let p = self.row(nx).as_ptr();
                    for l in 0..lines {
                        prefetch_ptr(p.wrapping_add(64 * l));
                    }
                }
                let row = self.row(v);
                let x: &[f32] = bytemuck::cast_slice(&row[..dim * 4]);
                let g_add = (kern.l2sq_f32)(&q, x);
                // exact result
                if s.res.len() < k || g_add < s.res[s.res.len() - 1].0 {
                    let pos = s.res.partition_point(|r| r.0 <= g_add);
                    s.res.insert(pos, (g_add, v));
                    s.res.truncate(k);
                }
                let fadd: &[f32] = bytemuck::cast_slice(&row[ofa..ofa + self.degree * 4]);
                let fres: &[f32] = bytemuck::cast_slice(&row[ofr..ofr + self.degree * 4]);
                let ids: &[u32] = bytemuck::cast_slice(&row[oid..oid + self.degree * 4]);
                let mut est = [0f32; 32];
                for blk in 0..self.degree / 32 {
                    (kern.fastscan_u16)(&row[oc + blk * cb..oc + (blk + 1) * cb], &lut, &mut acc);
                    let (fa, fr) = (
                        &fadd[blk * 32..blk * 32 + 32],
                        &fres[blk * 32..blk * 32 + 32],
                    );
                    for l in 0..32 {
                        let bq = delta * acc[l] as f32 + lo_sum;
                        est[l] = fa[l] + g_add - 2.0 * fr[l] * (2.0 * bq - sum_q);
                    }
                    for (l, &e) in est.iter().enumerate() {
                        let u = ids[blk * 32 + l];
                        // Empty slots carry f_add = +inf.
                        if e.is_infinite() || s.visited.check_and_mark(u) {
                            continue;
                        }
                        s.pool.insert(e, u);
                    }
                }
            }
            let scale = if self.metric.normalizes() { 0.5 } else { 1.0 };
            s.res.iter().map(|&(d, id)| (d * scale, id)).collect()
        })
    }
}

/// Node `v`'s pruned neighbours, then (a FastScan block scores all its slots at the same cost)
/// the nearest of its two-hop neighbours until the row holds `degree` ids.
fn full_row(
    g: &crate::graph::Graph,
    v: u32,
    degree: usize,
    data: &[f32],
    dim: usize,
    k: &Kernels,
) -> Vec<u32> {
    let mut out: Vec<u32> = g.neighbors(v).to_vec();
    if out.len() >= degree {
        out.truncate(degree);
        return out;
    }
    let row = |i: u32| &data[i as usize * dim..(i as usize + 1) * dim];
    let mut cands: Vec<(f32, u32)> = out
        .iter()
        .flat_map(|&u| g.neighbors(u).iter().copied())
        .filter(|&w| w != v && !out.contains(&w))
        .map(|w| ((k.l2sq_f32)(row(v), row(w)), w))
        .collect();
    cands.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    cands.dedup_by_key(|c| c.1);
    for (_, w) in cands {
        if out.len() >= degree {
            break;
        }
        if !out.contains(&w) {
            out.push(w);
        }
    }
    out
}
