//! Quantized graph (SymphonyQG layout, ALGORITHMS.md §6.4): every node's row holds its own
//! vector and the RaBitQ codes of its neighbours in the 4-bit FastScan layout, so expanding a
//! node is one contiguous read that scores all its neighbours together.
//!
//! An [`Index`] with encoding RaBitQ, float vectors kept and metric L2 or cosine carries one
//! over its own graph (built with `QgIndex::from_parts`, kept in step with
//! `QgIndex::sync`; see `index/qg_glue.rs`); `QgIndex::build` / `from_graph` build a
//! stand-alone one (`nearq.experimental.QuantizedGraph`).
//!
//! # Row layout (fixed size, one per node)
//! ```text
//! [vector: d f32 or f16][R/32 blocks: B planes of D/4 sub-quantizers x 16 bytes][f_add: R f32][f_rescale: R f32][ids: R u32]
//! ```
//! `R` (the degree) is a multiple of 32; empty slots have id `u32::MAX`. `B` is the code
//! width: 1 (the sign plane) or 2 (the sign plane, then the low bit of the extended code).
//!
//! # Estimator
//! The code of neighbour `u` of node `v` quantizes the rotated residual `y = P(u - v)`: one
//! bit, `w_i = ±1` by the sign of `y_i` (RaBitQ), or two, `w_i = sign(y_i) (m_i + 1/2)` with
//! `m ∈ {0, 1}^D` chosen by the exact critical-value search to maximise `cos(w, y)` (extended
//! RaBitQ). RaBitQ's unbiased estimate of `<r, z>` for `r = u - v` is then
//! `||y||² <w, P z> / <w, y>`. With `z = q - v` and linearity (`P(q - v) = q' - v'`),
//! ```text
//! ||q - u||^2 = ||r||^2 + ||q - v||^2 - 2 <r, q - v>
//!            ≈ f_add + ||q - v||^2 - 2 f_rescale <w, q'>
//! f_rescale = ||y||^2 / <w, y>,   f_add = ||y||^2 + 2 f_rescale <w, v'>
//! ```
//! `||q - v||^2` comes from the node's vector (the distance is needed anyway: every expanded
//! node is a result candidate), and `<w, q'>` is an affine function of one FastScan pass per
//! bit plane: sub-quantizer `j` covers dimensions `4j..4j+4`, its table holds
//! `Σ_t bit_t(c) q'_{4j+t}` for the 16 nibbles `c`, quantised to u8 once per query, and the
//! 2-bit grid index is `2 · sign bit + low bit`. Two bits halve the estimates' error (tested),
//! which cut the expansions for recall@10 0.95 on 50k MiniLM vectors from 46.7 to 34.5.
//! Squared L2 is searched; cosine indexes store unit vectors and report `||q - u||^2 / 2`.
//! With f16 vectors in the rows, the caller re-ranks the final candidates exactly
//! (`index/qg_glue.rs`): not from the f32 vectors (random reads of `4d` bytes each at the end
//! of every query), but from a record per node holding the f32 vector's rounding residual
//! `x - f16(x)` as 8-bit codes with one step (`d` bytes plus three factors; see
//! [`QgIndex::exact_l2sq`]), which corrects the rows' f16 distance to within f32 rounding.
//!
//! # Search cost
//! A query is rotated and tabled once (`fwht_f32` and `fastscan_lut_u8` kernels); then each
//! expansion is one row (4224 bytes at d = 384, R = 32, 2-bit codes, f16 vector): a distance,
//! one FastScan pass per plane, 32 estimates compared with the beam's threshold in one go, and
//! insertions for the few that pass. The rows live in storage advised to use transparent huge
//! pages (a row per 4 KiB page would cost a TLB miss per expansion), and the next expansion's
//! row is prefetched into L2 while the current one is processed: in lookahead order (the
//! default) the next expansion is fixed when the current one starts, so its row has a whole
//! expansion to arrive, its prefetches spread over the expansion (see `search_in`). The candidate pool is a sorted array whose insertions count
//! (vectorised) rather than binary-search and shift inline rather than call `memmove`.

use crate::encoding::rotation::Rotation;
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::io::{Reader, Writer};
use crate::metric::Metric;
use crate::storage::{advise_huge, HUGE_PAGE};
use crate::Index;
use nearq_kernels::{kernels, Kernels};
use rayon::prelude::*;
use std::cell::RefCell;

const EMPTY: u32 = u32::MAX;
/// Node ids stay below 2^31: the search pool keeps an "expanded" flag in bit 31.
pub(crate) const MAX_NODES: usize = 1 << 31;
/// First payload byte of a quantized graph file (index payloads start with a metric tag < 3):
/// `PAYLOAD_KIND | half << 0 | (bits - 1) << 1`, i.e. 0xA0 (f32 vectors, 1-bit codes), 0xA1
/// (f16 vectors, format version 5 and later), 0xA2 and 0xA3 (2-bit codes, version 6 and later).
const PAYLOAD_KIND: u8 = 0xA0;
/// Bits per dimension of the neighbour codes of a new quantized graph.
pub const DEFAULT_BITS: usize = 2;

/// A graph whose rows carry their neighbours' FastScan codes.
pub struct QgIndex {
    dim: usize,
    pad: usize,
    degree: usize,
    metric: Metric,
    /// The rows hold the nodes' vectors in half precision (IEEE binary16) rather than f32.
    half: bool,
    /// Bits per dimension of the neighbour codes: 1 (sign) or 2 (extended RaBitQ, whose
    /// estimates err half as much and cut the expansions a search needs by a quarter).
    bits: usize,
    rot: Rotation,
    qrot: QueryRot,
    row_bytes: usize,
    /// Rows in 64-byte aligned storage (the row size is a multiple of 64).
    rows: Rows,
    entry: u32,
    n: usize,
    k: &'static Kernels,
    /// How the search orders expansions and prefetches rows (defaults; experiment switches).
    knobs: SearchKnobs,
    /// With half-precision rows: per node, the f32 vector's rounding residual against its
    /// row copy as an 8-bit code ([`QgIndex::exact_l2sq`]). Built by [`QgIndex::sync`] (from
    /// the f32 vectors), not saved.
    resid: Residuals,
}

/// Search settings of a [`QgIndex`]: the defaults, changed only by experiment switches.
struct SearchKnobs {
    /// Lines of a row prefetched ahead of its expansion (at most the row's), every
    /// `pf_stride`-th line from the start (see [`QgIndex::set_prefetch`]).
    pf_lines: usize,
    pf_stride: usize,
    /// Parts the next row's prefetches are issued in: 3, or 1.
    pf_chunks: usize,
    /// The next expansion is chosen before the current one's neighbours are scored (see
    /// `search_in`).
    lookahead: bool,
}

impl Default for SearchKnobs {
    fn default() -> Self {
        SearchKnobs {
            pf_lines: usize::MAX,
            pf_stride: 1,
            pf_chunks: 3,
            lookahead: true,
        }
    }
}

/// Residual records (see [`QgIndex::exact_l2sq`]): `n` of them filled.
#[derive(Default)]
struct Residuals {
    rows: Rows,
    n: usize,
}

#[derive(Default)]
struct Scratch {
    visited: Visited,
    pool: Pool,
    res: Vec<(f32, u32)>,
    q: Vec<f32>,
    qr: Vec<f32>,
    lut: Vec<u8>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

impl QgIndex {
    fn code_bytes(&self) -> usize {
        self.pad / 4 * 16
    }
    fn off_codes(&self) -> usize {
        self.dim * if self.half { 2 } else { 4 }
    }
    fn off_fadd(&self) -> usize {
        self.off_codes() + self.degree / 32 * self.code_bytes() * self.bits
    }
    fn off_fres(&self) -> usize {
        self.off_fadd() + self.degree * 4
    }
    fn off_ids(&self) -> usize {
        self.off_fres() + self.degree * 4
    }

    /// Builds the quantized graph from a float index's graph over the same `data`
    /// (row-major, `dim` columns) with `bits`-bit neighbour codes (1 or 2) and the rows'
    /// vectors in half precision if `half` (see [`QgIndex::half_fits`]). L2 and cosine only;
    /// the degree is rounded up to 32.
    pub fn from_graph(
        index: &Index,
        data: &[f32],
        seed: u64,
        bits: usize,
        half: bool,
    ) -> Result<QgIndex> {
        let metric = index.metric();
        let dim = index.dim();
        if data.len() / dim.max(1) != index.len() {
            return Err(Error::InvalidInput("data and index sizes differ".into()));
        }
        if half && !Self::half_fits(data) {
            return Err(Error::param(
                "half",
                "half precision does not represent these vectors (see QgIndex::half_fits)",
            ));
        }
        let mut data = data.to_vec();
        if metric.normalizes() {
            data.par_chunks_mut(dim).for_each(crate::metric::normalize);
        }
        Self::from_parts(
            index.graph(),
            index.entry_point(),
            &data,
            dim,
            metric,
            seed,
            half,
            bits,
        )
    }

    /// Builds the quantized graph over `graph` (entry point `entry`) and its nodes' vectors
    /// `data` (row-major, `dim` columns, already normalised for cosine); `half`: the rows
    /// hold the vectors in half precision (see [`QgIndex::half_fits`]); `bits`: 1 or 2 bits
    /// per dimension in the neighbour codes.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_parts(
        g: &Graph,
        entry: u32,
        data: &[f32],
        dim: usize,
        metric: Metric,
        seed: u64,
        half: bool,
        bits: usize,
    ) -> Result<QgIndex> {
        if !(1..=2).contains(&bits) {
            return Err(Error::param(
                "bits",
                "quantized graph codes have 1 or 2 bits",
            ));
        }
        if metric == Metric::InnerProduct {
            return Err(Error::param(
                "metric",
                "the quantized graph supports l2 and cosine",
            ));
        }
        let n = data.len() / dim;
        if n != g.len() {
            return Err(Error::InvalidInput("data and graph sizes differ".into()));
        }
        if n > MAX_NODES {
            return Err(Error::InvalidInput(format!(
                "the quantized graph holds at most {MAX_NODES} vectors"
            )));
        }
        let degree = g.degree().div_ceil(32) * 32;
        let pad = dim.div_ceil(64) * 64;
        let rot = Rotation::new(pad, seed);
        let mut q = QgIndex {
            dim,
            pad,
            degree,
            metric,
            half,
            bits,
            qrot: QueryRot::new(&rot),
            rot,
            row_bytes: 0,
            rows: Rows::default(),
            entry,
            n: 0,
            k: kernels(),
            knobs: SearchKnobs::default(),
            resid: Residuals::default(),
        };
        q.row_bytes = (q.off_ids() + degree * 4).div_ceil(64) * 64;
        q.sync(g, entry, data, None);
        Ok(q)
    }

    /// Brings the rows in line with `g` (and `entry`) over `data` (the nodes' vectors,
    /// normalised for cosine): after a consolidation `remap` gives every old row's new
    /// position (`u32::MAX` for dropped rows); rows are then appended for new nodes, and every
    /// row whose pruned neighbours differ from the graph's (or that names a dropped node) is
    /// re-encoded. Returns the number of rows written.
    pub(crate) fn sync(
        &mut self,
        g: &Graph,
        entry: u32,
        data: &[f32],
        remap: Option<&[u32]>,
    ) -> usize {
        let (dim, rb, oid, deg) = (self.dim, self.row_bytes, self.off_ids(), self.degree);
        let (half, bits) = (self.half, self.bits);
        let n = g.len();
        assert!(n <= MAX_NODES && data.len() == n * dim && deg >= g.degree());
        let mut dirty = vec![false; n];
        // 1. Dropped rows go, the others move to their new positions with renumbered ids.
        if let Some(new_id) = remap {
            let mut rows = Rows::zeroed(rb * n);
            {
                let out = rows.bytes_mut();
                for (p, &np) in new_id.iter().enumerate().take(self.n) {
                    if np == u32::MAX {
                        continue;
                    }
                    let np = np as usize;
                    let dst = &mut out[np * rb..(np + 1) * rb];
                    dst.copy_from_slice(self.row(p as u32));
                    let ids: &mut [u32] = bytemuck::cast_slice_mut(&mut dst[oid..oid + deg * 4]);
                    for id in ids.iter_mut().filter(|id| **id != EMPTY) {
                        *id = new_id.get(*id as usize).copied().unwrap_or(u32::MAX);
                        if *id == u32::MAX {
                            dirty[np] = true;
                        }
                    }
                }
            }
            self.n = new_id.iter().filter(|&&x| x != u32::MAX).count().min(n);
            self.rows = rows;
        }
        // 2. New nodes get rows.
        if n > self.n {
            self.rows.grow(rb * n);
            dirty[self.n..].fill(true);
        }
        self.n = n;
        self.entry = entry;
        self.sync_residuals(data, remap.is_some());
        // 3. Rows whose pruned neighbours changed. (The fill after them, the nearest two-hop
        //    neighbours when the graph's row is not full, is computed when a row is written
        //    and kept while the pruned neighbours stay: refreshing it whenever a neighbour's
        //    row changes would rewrite most rows after any change.)
        {
            let rows = self.rows.bytes();
            dirty.par_iter_mut().enumerate().for_each(|(v, d)| {
                if !*d {
                    let ids: &[u32] =
                        bytemuck::cast_slice(&rows[v * rb + oid..v * rb + oid + deg * 4]);
                    let nb = g.neighbors(v as u32);
                    *d = ids[..nb.len()] != *nb;
                }
            });
        }
        let todo: Vec<u32> = (0..n as u32).filter(|&v| dirty[v as usize]).collect();
        if todo.is_empty() {
            return 0;
        }
        let t0 = std::time::Instant::now();
        let kern = self.k;
        // Neighbour lists, then the rotated vectors of every node they involve, once each.
        let lists: Vec<Vec<u32>> = todo
            .par_iter()
            .map(|&v| full_row(g, v, deg, data, dim, kern))
            .collect();
        let t_lists = t0.elapsed().as_secs_f64();
        let mut slot = vec![u32::MAX; n];
        let mut need = Vec::new();
        for (&v, nb) in todo.iter().zip(&lists) {
            for &u in std::iter::once(&v).chain(nb) {
                if slot[u as usize] == u32::MAX {
                    slot[u as usize] = need.len() as u32;
                    need.push(u);
                }
            }
        }
        let pad = self.pad;
        let mut rotated = vec![0f32; need.len() * pad];
        rotated
            .par_chunks_mut(pad)
            .zip(need.par_iter())
            .for_each_init(
                || vec![0f32; pad],
                |xp, (y, &u)| {
                    xp[..dim].copy_from_slice(&data[u as usize * dim..(u as usize + 1) * dim]);
                    self.rot.apply(xp, y);
                },
            );
        let t_rot = t0.elapsed().as_secs_f64();
        let mut list_of = vec![u32::MAX; n];
        for (i, &v) in todo.iter().enumerate() {
            list_of[v as usize] = i as u32;
        }
        let (cb, oc, ofa, ofr) = (
            self.code_bytes(),
            self.off_codes(),
            self.off_fadd(),
            self.off_fres(),
        );
        let rot_of = |u: u32| {
            let s = slot[u as usize] as usize;
            &rotated[s * pad..(s + 1) * pad]
        };
        let mut rows = std::mem::take(&mut self.rows);
        rows.bytes_mut()
            .par_chunks_mut(rb)
            .enumerate()
            .filter(|(v, _)| list_of[*v] != u32::MAX)
            .for_each_init(ResidualCoder::default, |enc, (v, row)| {
                row.fill(0);
                let nb = &lists[list_of[v] as usize];
                let x = &data[v * dim..(v + 1) * dim];
                if half {
                    for (i, f) in x.iter().enumerate() {
                        let h = half::f16::from_f32(*f).to_bits();
                        row[i * 2..i * 2 + 2].copy_from_slice(&h.to_le_bytes());
                    }
                } else {
                    for (i, f) in x.iter().enumerate() {
                        row[i * 4..i * 4 + 4].copy_from_slice(&f.to_le_bytes());
                    }
                }
                let vr = rot_of(v as u32);
                let sv: f32 = vr.iter().sum();
                for slot in 0..deg {
                    let (fadd, fres, id) = match nb.get(slot) {
                        Some(&u) => {
                            let b0 = oc + slot / 32 * cb * bits;
                            let planes = &mut row[b0..b0 + cb * bits];
                            let (fadd, fres) =
                                enc.encode(rot_of(u), vr, sv, bits, planes, slot % 32);
                            (fadd, fres, u)
                        }
                        None => (f32::INFINITY, 0.0, EMPTY),
                    };
                    row[ofa + slot * 4..ofa + slot * 4 + 4].copy_from_slice(&fadd.to_le_bytes());
                    row[ofr + slot * 4..ofr + slot * 4 + 4].copy_from_slice(&fres.to_le_bytes());
                    row[oid + slot * 4..oid + slot * 4 + 4].copy_from_slice(&id.to_le_bytes());
                }
            });
        self.rows = rows;
        if std::env::var_os("NEARQ_QG_TRACE").is_some() {
            eprintln!(
                "qg sync: {} rows, lists {t_lists:.3}s, rotations {:.3}s, rows {:.3}s",
                todo.len(),
                t_rot - t_lists,
                t0.elapsed().as_secs_f64() - t_rot
            );
        }
        todo.len()
    }

    /// Builds the float graph over `data` and then the quantized rows ([`DEFAULT_BITS`]-bit
    /// codes, f32 vectors), on `threads` threads.
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
        crate::parallel::with_threads(threads, || {
            QgIndex::from_graph(&index, data, seed, DEFAULT_BITS, false)
        })
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
        crate::parallel::for_each_query(&mut ids, &mut dists, k, threads, run);
        Ok((ids, dists))
    }

    pub fn len(&self) -> usize {
        self.n
    }
    /// Slots per row (the graph's degree rounded up to a multiple of 32).
    pub fn degree(&self) -> usize {
        self.degree
    }

    /// Serialises the graph (inside the same container as [`Index`] files, see [`crate::io`]).
    pub fn to_payload(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(PAYLOAD_KIND | self.half as u8 | ((self.bits as u8 - 1) << 1));
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
            w.bytes(self.row(v as u32));
        }
        w.buf
    }

    /// Reads a payload written by [`QgIndex::to_payload`], checking every field and every
    /// neighbour id so that a damaged file can never make a search read out of bounds.
    pub fn from_payload(payload: &[u8]) -> Result<QgIndex> {
        let bad = |m: &str| Error::Format(format!("quantized graph: {m}"));
        let mut r = Reader::new(payload);
        let kind = r.u8()?;
        if kind & !3 != PAYLOAD_KIND {
            return Err(bad("not a quantized graph file"));
        }
        let (half, bits) = (kind & 1 != 0, 1 + (kind >> 1 & 1) as usize);
        let metric = Metric::from_tag(r.u8()?).ok_or_else(|| bad("unknown metric"))?;
        let dim = r.u32()? as usize;
        let pad = r.u32()? as usize;
        let degree = r.u32()? as usize;
        let entry = r.u32()?;
        let n = r.count("vector count", MAX_NODES as u64)?;
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
            half,
            bits,
            qrot: QueryRot::new(&rot),
            rot,
            row_bytes,
            rows: Rows::default(),
            entry,
            n,
            k: kernels(),
            knobs: SearchKnobs::default(),
            resid: Residuals::default(),
        };
        if row_bytes != (q.off_ids() + degree * 4).div_ceil(64) * 64 {
            return Err(bad("row size does not match the header"));
        }
        let raw = r.take_array(n, row_bytes)?;
        r.finish()?;
        let mut rows = Rows::zeroed(raw.len());
        rows.bytes_mut().copy_from_slice(raw);
        q.rows = rows;
        for v in 0..n as u32 {
            let row = q.row(v);
            let finite = if half {
                row[..dim * 2]
                    .chunks_exact(2)
                    .all(|h| u16::from_le_bytes([h[0], h[1]]) & 0x7c00 != 0x7c00)
            } else {
                row[..dim * 4]
                    .chunks_exact(4)
                    .all(|f| f32::from_le_bytes(f.try_into().unwrap()).is_finite())
            };
            let fadd: &[f32] = bytemuck::cast_slice(&row[q.off_fadd()..q.off_fadd() + degree * 4]);
            let fres: &[f32] = bytemuck::cast_slice(&row[q.off_fres()..q.off_fres() + degree * 4]);
            let ids: &[u32] = bytemuck::cast_slice(&row[q.off_ids()..q.off_ids() + degree * 4]);
            // An empty slot must never pass the beam's threshold (its estimate is +inf).
            let slot_ok = |i: usize| match ids[i] {
                EMPTY => fadd[i] == f32::INFINITY && fres[i] == 0.0,
                u => (u as usize) < n && fadd[i].is_finite() && fres[i].is_finite(),
            };
            if !finite || !(0..degree).all(slot_ok) {
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
        self.rows.allocated() + self.resid.rows.allocated() + self.rot.memory_bytes()
    }

    /// Squared L2 from `q` to the vector at the start of `row` (in half precision: to the
    /// vector as rounded, widened exactly).
    #[inline(always)]
    fn vec_l2sq(&self, q: &[f32], row: &[u8]) -> f32 {
        if self.half {
            (self.k.l2sq_f32_f16)(q, bytemuck::cast_slice(&row[..self.dim * 2]))
        } else {
            (self.k.l2sq_f32)(q, bytemuck::cast_slice(&row[..self.dim * 4]))
        }
    }

    #[doc(hidden)]
    /// Experiment switch: prefetch only the first `lines` lines of a row ahead of its
    /// expansion (`usize::MAX`: all), every `stride`-th of them.
    pub fn set_prefetch(&mut self, lines: usize, stride: usize) {
        self.knobs.pf_lines = lines;
        self.knobs.pf_stride = stride.max(1);
    }

    #[doc(hidden)]
    /// Experiment switch: issue the next row's prefetches in three parts (at the start of an
    /// expansion, after the node's distance, after the first block's estimates) when `chunks`
    /// is 3, the default, or all at the start (any other value).
    pub fn set_prefetch_chunks(&mut self, chunks: usize) {
        self.knobs.pf_chunks = if chunks == 3 { 3 } else { 1 };
    }

    #[doc(hidden)]
    /// Experiment switch: choose each expansion one expansion ahead (the default: its row then
    /// has a whole expansion's time to arrive, at the price of an order that lags one step) or
    /// as late as possible (the nearest unexpanded candidate once the current expansion is
    /// done, its row prefetched on a guess).
    pub fn set_lookahead(&mut self, on: bool) {
        self.knobs.lookahead = on;
    }

    /// Whether the rows hold the vectors in half precision.
    pub fn half_vectors(&self) -> bool {
        self.half
    }

    /// Bits per dimension of the neighbour codes (1 or 2).
    pub fn code_bits(&self) -> usize {
        self.bits
    }

    /// Whether half precision represents `data` (row-major vectors, normalised for cosine)
    /// well enough for the rows: every coordinate at most 2^14 in magnitude (no overflow, and
    /// room for sums), and the data not so small that most coordinates would fall below f16's
    /// normal range (largest magnitude at least 2^-4, so a coordinate loses at most 2^-11 of
    /// the data's scale plus 2^-24 absolute). Unit vectors always qualify.
    pub fn half_fits(data: &[f32]) -> bool {
        let m = data.iter().fold(0f32, |m, x| m.max(x.abs()));
        (0.0625..=16384.0).contains(&m)
    }

    #[inline(always)]
    fn row(&self, v: u32) -> &[u8] {
        let rb = self.row_bytes;
        &self.rows.bytes()[v as usize * rb..(v as usize + 1) * rb]
    }

    /// Searches one query; returns up to `k` (distance, id) pairs nearest first.
    pub fn search(&self, query: &[f32], k: usize, ef: usize) -> Vec<(f32, u32)> {
        self.search_counted(query, k, ef).0
    }

    /// [`QgIndex::search`], also returning the number of nodes expanded (for benchmarks).
    pub fn search_counted(&self, query: &[f32], k: usize, ef: usize) -> (Vec<(f32, u32)>, usize) {
        assert_eq!(query.len(), self.dim, "query dimension");
        if self.n == 0 {
            return (Vec::new(), 0);
        }
        SCRATCH.with(|s| {
            let s = &mut *s.borrow_mut();
            let hops = self.search_in(query, k, ef, s, |_| true);
            let scale = if self.metric.normalizes() { 0.5 } else { 1.0 };
            (s.res.iter().map(|&(d, id)| (d * scale, id)).collect(), hops)
        })
    }

    /// [`QgIndex::search`] returning only nodes `accept` admits (rejected nodes still route
    /// the search): writes up to `k` (node, distance) pairs, nearest first, through `out`.
    pub(crate) fn search_accept<A: Fn(u32) -> bool>(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        accept: A,
        out: &mut dyn FnMut(usize, u32, f32),
    ) {
        if self.n == 0 {
            return;
        }
        SCRATCH.with(|s| {
            let s = &mut *s.borrow_mut();
            self.search_in(query, k, ef, s, accept);
            let scale = if self.metric.normalizes() { 0.5 } else { 1.0 };
            for (j, &(d, id)) in s.res.iter().enumerate() {
                out(j, id, d * scale);
            }
        });
    }

    /// [`QgIndex::search_accept`] for half-precision rows with residual records (see
    /// [`QgIndex::has_residuals`]): the `kk >= k` best by the rows' distances get their exact
    /// distances ([`QgIndex::exact_l2sq`], with the query as the search normalised it), and the
    /// `k` nearest of them are written through `out`.
    pub(crate) fn search_exact<A: Fn(u32) -> bool>(
        &self,
        query: &[f32],
        k: usize,
        kk: usize,
        ef: usize,
        accept: A,
        out: &mut dyn FnMut(usize, u32, f32),
    ) {
        debug_assert!(self.has_residuals() && kk >= k);
        if self.n == 0 {
            return;
        }
        SCRATCH.with(|s| {
            let s = &mut *s.borrow_mut();
            self.search_in(query, kk, ef, s, accept);
            for &(_, v) in &s.res {
                self.prefetch_residual(v);
            }
            let q = &s.q[..self.dim];
            let q_sum: f32 = q.iter().sum();
            for r in s.res.iter_mut() {
                r.0 = self.exact_l2sq(q, q_sum, r.1, r.0).max(0.0);
            }
            s.res
                .sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let scale = if self.metric.normalizes() { 0.5 } else { 1.0 };
            for (j, &(d, id)) in s.res.iter().take(k).enumerate() {
                out(j, id, d * scale);
            }
        });
    }

    #[doc(hidden)]
    /// Times the query preparation (rotation, tables) alone: returns (rotation, all) seconds.
    pub fn bench_prepare(&self, queries: &[f32]) -> (f64, f64) {
        SCRATCH.with(|s| {
            let s = &mut *s.borrow_mut();
            let t = std::time::Instant::now();
            for q in queries.chunks_exact(self.dim) {
                s.q.clear();
                s.q.extend_from_slice(q);
                s.qr.resize(self.pad, 0.0);
                self.qrot.apply(self.k, &s.q, &mut s.qr);
                std::hint::black_box(&s.qr);
            }
            let r = t.elapsed().as_secs_f64();
            let t = std::time::Instant::now();
            for q in queries.chunks_exact(self.dim) {
                std::hint::black_box(self.prepare(q, s));
            }
            (r, t.elapsed().as_secs_f64())
        })
    }

    /// Rotates the query and builds its u8 FastScan tables into `s`; returns the affine map
    /// `(a, b)` with `est = f_add + ||q - v||^2 - f_rescale (a acc + b)`.
    fn prepare(&self, query: &[f32], s: &mut Scratch) -> (f32, f32) {
        let (dim, pad, k) = (self.dim, self.pad, self.k);
        s.q.clear();
        s.q.extend_from_slice(query);
        if self.metric.normalizes() {
            let n2 = (k.dot_f32)(&s.q, &s.q);
            if n2 > 0.0 {
                let inv = 1.0 / n2.sqrt();
                s.q.iter_mut().for_each(|x| *x *= inv);
            }
        }
        s.qr.resize(pad, 0.0);
        self.qrot.apply(k, &s.q[..dim], &mut s.qr);
        // Sub-quantizer j covers dimensions 4j..4j+4; entry c of its table is
        // Σ_t bit_t(c) q'_{4j+t} - lo_j, with lo_j the sum of its negative coordinates (the
        // smallest entry), so every entry lies in [0, w_j], w_j = Σ_t |q'_{4j+t}|. One pass for
        // max w_j, Σ w_j, Σ lo_j and Σ q'_i, over four groups at a time.
        // (16 lanes of accumulators, so that the loop vectorises; w_j from the lanes' |q'_i|)
        let qr = &s.qr;
        let (mut width, mut total, mut lo_sum, mut sum_q) =
            ([0f32; 4], [0f32; 16], [0f32; 16], [0f32; 16]);
        for c in qr.chunks_exact(16) {
            let c: &[f32; 16] = c.try_into().unwrap();
            let mut a = [0f32; 16];
            for i in 0..16 {
                a[i] = c[i].abs();
                total[i] += a[i];
                lo_sum[i] += c[i].min(0.0);
                sum_q[i] += c[i];
            }
            for j in 0..4 {
                let w = (a[4 * j] + a[4 * j + 1]) + (a[4 * j + 2] + a[4 * j + 3]);
                width[j] = width[j].max(w);
            }
        }
        let width = width.iter().copied().fold(0.0, f32::max);
        let (total, lo_sum, sum_q): (f32, f32, f32) =
            (total.iter().sum(), lo_sum.iter().sum(), sum_q.iter().sum());
        let m = pad / 4;
        // One scale for all tables: entries in [0, 255], and sums of m entries within u16
        // (which binds above 1028 dimensions).
        let inv = (255.0 / width).min((65535.0 - 0.5 * m as f32) / total);
        let (inv, delta) = if width > 0.0 && inv.is_finite() {
            (inv, 1.0 / inv)
        } else {
            (1.0, 1.0)
        };
        s.lut.resize(m * 16, 0);
        (k.fastscan_lut_u8)(qr, inv, &mut s.lut);
        // A bit plane p: <p, q'> ~ delta acc_p + lo_sum, and est = f_add + g - 2 f_rescale <w, q'>.
        if self.bits == 2 {
            // w = c - 3/2 with c = 2 hi + lo, acc = 2 acc_hi + acc_lo:
            // 2 <w, q'> = 2 delta acc + 6 lo_sum - 3 Σ q'
            (2.0 * delta, 6.0 * lo_sum - 3.0 * sum_q)
        } else {
            // w = 2b - 1: 2 <w, q'> = 4 delta acc + 4 lo_sum - 2 Σ q'
            (4.0 * delta, 4.0 * lo_sum - 2.0 * sum_q)
        }
    }

    /// The estimated squared distances from the query to the 32 neighbours in block `blk` of
    /// `row` (empty slots: +inf), given `g_add = ||q - v||²` and the affine map of
    /// [`QgIndex::prepare`].
    #[inline(always)]
    fn block_estimates(
        &self,
        row: &[u8],
        blk: usize,
        g_add: f32,
        (a_mul, b_add): (f32, f32),
        lut: &[u8],
        est: &mut [f32; 32],
    ) {
        let (cb, deg) = (self.code_bytes(), self.degree);
        let (ofa, ofr) = (self.off_fadd(), self.off_fres());
        let fa: &[f32] = bytemuck::cast_slice(&row[ofa + blk * 128..ofa + blk * 128 + 128]);
        let fr: &[f32] = bytemuck::cast_slice(&row[ofr + blk * 128..ofr + blk * 128 + 128]);
        let (fa, fr): (&[f32; 32], &[f32; 32]) = (fa.try_into().unwrap(), fr.try_into().unwrap());
        debug_assert!(blk < deg / 32);
        let b0 = self.off_codes() + blk * cb * self.bits;
        let mut acc = [0u16; 32];
        (self.k.fastscan_u16)(&row[b0..b0 + cb], lut, &mut acc);
        if self.bits == 2 {
            // the grid index is 2 (sign bit) + (low bit): one pass per bit plane
            let mut acc_lo = [0u16; 32];
            (self.k.fastscan_u16)(&row[b0 + cb..b0 + 2 * cb], lut, &mut acc_lo);
            for l in 0..32 {
                let c = (2 * acc[l] as u32 + acc_lo[l] as u32) as f32;
                est[l] = fa[l] + g_add - fr[l] * (a_mul * c + b_add);
            }
        } else {
            for l in 0..32 {
                est[l] = fa[l] + g_add - fr[l] * (a_mul * acc[l] as f32 + b_add);
            }
        }
    }

    #[doc(hidden)]
    /// The estimated squared L2 distances from `query` (normalised first for cosine) to node
    /// `v`'s neighbours, as the search computes them: (neighbour, estimate) per filled slot.
    pub fn neighbor_estimates(&self, query: &[f32], v: u32) -> Vec<(u32, f32)> {
        assert!((v as usize) < self.n && query.len() == self.dim);
        SCRATCH.with(|s| {
            let s = &mut *s.borrow_mut();
            let ab = self.prepare(query, s);
            let row = self.row(v);
            let g_add = self.vec_l2sq(&s.q[..self.dim], row);
            let oid = self.off_ids();
            let ids: &[u32] = bytemuck::cast_slice(&row[oid..oid + self.degree * 4]);
            let mut est = [0f32; 32];
            let mut out = Vec::new();
            for blk in 0..self.degree / 32 {
                self.block_estimates(row, blk, g_add, ab, &s.lut, &mut est);
                for l in 0..32 {
                    if ids[blk * 32 + l] != EMPTY {
                        out.push((ids[blk * 32 + l], est[l]));
                    }
                }
            }
            out
        })
    }

    /// Beam search; leaves the `k` nearest expanded nodes (exact squared L2) in `s.res` and
    /// returns the number of nodes expanded.
    ///
    /// The pool holds the `ef` best estimates. A node is marked visited when it is expanded,
    /// not when it is estimated: a neighbour whose first estimate (from a far parent) missed
    /// the beam can still enter it later from a nearer parent, whose estimate is more precise
    /// (the error scales with `||u - v||`). A node can thus enter the pool twice; the second
    /// copy is skipped when popped. (Replacing an expanded node's estimate by its exact distance
    /// was tried: fewer expansions per recall on real embeddings, but on data whose distances
    /// all lie within the estimator's noise, e.g. random vectors, the beam then keeps admitting
    /// lucky estimates and the search nearly visits the whole graph.)
    ///
    /// Lookahead order (the default): the node to expand after `v` is taken from the pool
    /// when `v`'s expansion starts, before `v`'s neighbours are scored, and its row is
    /// prefetched during `v`'s expansion, so it has a whole expansion's time to arrive; a
    /// neighbour of `v` that would have come first waits one step. The row's prefetches are
    /// issued in three parts (at the start, after `v`'s distance, after its first block of
    /// estimates): a row is 66 lines, more than the core's line-fill buffers, and prefetches
    /// issued in one burst stall the core until buffers free up. On the benchmark machine the
    /// 50k MiniLM graph needs about 5% more expansions for recall 0.95 in this order; each is
    /// cheaper, and with the prefetches spread the bare graph ran 1.15x-1.22x the earlier
    /// order (`examples/qg_ab`, `bench/results/device-2026-11-25-session8`). Without it, the
    /// next node is the nearest unexpanded one once `v` is done, its row prefetched on a
    /// guess that is wrong when a neighbour of `v` gets ahead.
    ///
    /// Only nodes `accept` admits become results (the others still route the search).
    fn search_in<A: Fn(u32) -> bool>(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        s: &mut Scratch,
        accept: A,
    ) -> usize {
        let (a_mul, b_add) = self.prepare(query, s);
        let (dim, deg, oid) = (self.dim, self.degree, self.off_ids());
        let lines = (self.row_bytes / 64).min(self.knobs.pf_lines);
        let stride = self.knobs.pf_stride;
        s.visited.reset(self.n);
        s.pool.reset(ef.max(k));
        s.res.clear();
        let q = &s.q[..dim];
        let lut = &s.lut[..];
        // Rows are prefetched into L2 (software prefetches into L1 would hold the few L1
        // miss buffers for a whole row and stall the pipeline).
        // lines `a..b` of node `v`'s row
        let prefetch_part = |v: u32, a: usize, b: usize| {
            let p = self.row(v).as_ptr();
            for l in a..b {
                prefetch_l2(p.wrapping_add(64 * l));
            }
        };
        let prefetch_row = |v: u32| {
            if stride == 1 {
                prefetch_part(v, 0, lines);
            } else {
                let p = self.row(v).as_ptr();
                for l in (0..lines).step_by(stride) {
                    prefetch_l2(p.wrapping_add(64 * l));
                }
            }
        };
        s.pool.insert(0.0, self.entry);
        let mut expanded = 0;
        let mut est = [0f32; 32];
        let la = self.knobs.lookahead;
        // the next row's prefetches are spread over three points of the expansion (`chunks` 3;
        // 1 for experiments: all at the start)
        let chunks = self.knobs.pf_chunks;
        // the row whose prefetches are being spread
        let mut target: Option<u32>;
        let mut pending: Option<u32> = None;
        loop {
            let v = match pending.take() {
                Some(v) => v,
                None => {
                    let Some(v) = s.pool.pop() else { break };
                    // A node can sit in the pool more than once (estimated from several
                    // parents).
                    if s.visited.mark(v) {
                        continue;
                    }
                    v
                }
            };
            expanded += 1;
            let (next, mut next_d) = if la {
                // Lookahead: the next expansion is fixed now, before `v`'s neighbours are
                // known, so its row has a whole expansion's time to arrive.
                pending = loop {
                    match s.pool.pop() {
                        None => break None,
                        Some(u) if s.visited.mark(u) => continue,
                        Some(u) => break Some(u),
                    }
                };
                target = pending;
                (pending, f32::NEG_INFINITY)
            } else {
                // The next expansion unless a neighbour of `v` gets ahead of it: fetched while
                // `v` is processed, and re-fetched below if the guess proves wrong.
                let (next, next_d) = match s.pool.peek(&s.visited) {
                    Some((i, d)) => (Some(i), d),
                    None => (None, f32::INFINITY),
                };
                target = next;
                (next, next_d)
            };
            if let Some(u) = target {
                if chunks > 1 {
                    prefetch_part(u, 0, lines / chunks);
                } else {
                    prefetch_row(u);
                }
            }
            let mut early = None;
            let row = self.row(v);
            let g_add = self.vec_l2sq(q, row);
            if chunks > 1 {
                if let Some(u) = target {
                    prefetch_part(u, lines / chunks, 2 * lines / chunks);
                }
            }
            if (s.res.len() < k || g_add < s.res[s.res.len() - 1].0) && accept(v) {
                if s.res.len() < k {
                    s.res.push((g_add, v));
                }
                let pos = s.res[..s.res.len() - 1].partition_point(|r| r.0 <= g_add);
                let end = s.res.len() - 1;
                shift_right(&mut s.res, pos, end);
                s.res[pos] = (g_add, v);
            }
            let ids: &[u32] = bytemuck::cast_slice(&row[oid..oid + deg * 4]);
            for blk in 0..deg / 32 {
                self.block_estimates(row, blk, g_add, (a_mul, b_add), lut, &mut est);
                if chunks > 1 && blk == 0 {
                    if let Some(u) = target {
                        prefetch_part(u, 2 * lines / chunks, lines);
                    }
                }
                let ids: &[u32; 32] = ids[blk * 32..blk * 32 + 32].try_into().unwrap();
                // Only the lanes inside the beam are looked at (empty slots have f_add = +inf).
                let thr = s.pool.threshold();
                let mut mask = 0u32;
                for (l, &e) in est.iter().enumerate() {
                    mask |= ((e < thr) as u32) << l;
                }
                if mask != 0 && !la {
                    // The nearest new candidate, if it will be expanded next, is fetched now,
                    // before the insertions, rather than after them.
                    let mut m = mask;
                    let mut best = (f32::INFINITY, 0usize);
                    while m != 0 {
                        let l = m.trailing_zeros() as usize;
                        m &= m - 1;
                        if est[l] < best.0 {
                            best = (est[l], l);
                        }
                    }
                    if best.0 < next_d && !s.visited.get(ids[best.1]) {
                        prefetch_row(ids[best.1]);
                        early = Some(ids[best.1]);
                        next_d = best.0;
                    }
                }
                while mask != 0 {
                    let l = mask.trailing_zeros() as usize;
                    mask &= mask - 1;
                    if !s.visited.get(ids[l]) {
                        s.pool.insert(est[l], ids[l]);
                    }
                }
            }
            if !la {
                let nx = s.pool.peek(&s.visited).map(|p| p.0);
                if nx != next && nx != early {
                    if let Some(nx) = nx {
                        prefetch_row(nx);
                    }
                }
            }
        }
        if s.res.len() < k {
            self.top_up(q, k, &mut s.res, &accept);
        }
        expanded
    }

    /// Fewer than `k` accepted nodes were expanded (the pool can hold a node twice, and
    /// `accept` may reject many): adds the accepted nodes around the results, breadth first,
    /// at their exact distances.
    #[cold]
    fn top_up(&self, q: &[f32], k: usize, res: &mut Vec<(f32, u32)>, accept: &dyn Fn(u32) -> bool) {
        let oid = self.off_ids();
        // Breadth first from the results and the entry point, through rejected nodes too
        // (the results hold every accepted node expanded so far: fewer than k were found).
        let mut seen = rustc_hash::FxHashSet::default();
        let mut queue = std::collections::VecDeque::new();
        for v in res.iter().map(|r| r.1).chain(std::iter::once(self.entry)) {
            if seen.insert(v) {
                queue.push_back(v);
            }
        }
        if !res.iter().any(|r| r.1 == self.entry) && accept(self.entry) {
            res.push((self.vec_l2sq(q, self.row(self.entry)), self.entry));
        }
        while res.len() < k {
            let Some(v) = queue.pop_front() else { break };
            let row = self.row(v);
            let ids: &[u32] = bytemuck::cast_slice(&row[oid..oid + self.degree * 4]);
            for &u in ids {
                if u != EMPTY && seen.insert(u) {
                    queue.push_back(u);
                    if accept(u) {
                        res.push((self.vec_l2sq(q, self.row(u)), u));
                    }
                }
            }
        }
        res.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        res.truncate(k);
    }
}

impl QgIndex {
    /// Bytes per residual record: the 8-bit codes `c_i = t_i + 128`, then (f32) the step `s`,
    /// `A = Σ h_i t_i` and `B = s² Σ t_i²`, padded to whole cache lines.
    fn resid_bytes(&self) -> usize {
        (self.dim + 12).div_ceil(64) * 64
    }

    /// Brings the residual records in line with `data` (the nodes' vectors as in
    /// [`QgIndex::sync`]): all recomputed after a renumbering, appended for new nodes. Only
    /// rows in half precision have them.
    fn sync_residuals(&mut self, data: &[f32], renumbered: bool) {
        if !self.half {
            return;
        }
        if renumbered {
            self.resid = Residuals::default();
        }
        let (dim, rr, n, start) = (self.dim, self.resid_bytes(), self.n, self.resid.n);
        if start >= n {
            return;
        }
        self.resid.rows.grow(rr * n);
        self.resid.rows.bytes_mut()[start * rr..]
            .par_chunks_mut(rr)
            .enumerate()
            .for_each(|(i, rec)| {
                let v = start + i;
                encode_residual(&data[v * dim..(v + 1) * dim], rec);
            });
        self.resid.n = n;
    }

    /// Whether [`QgIndex::exact_l2sq`] applies (half-precision rows whose residual records
    /// were built from the f32 vectors: always after `sync`, not for a graph loaded alone).
    pub(crate) fn has_residuals(&self) -> bool {
        self.half && self.n > 0 && self.resid.n == self.n
    }

    /// Prefetches node `v`'s residual record (ahead of [`QgIndex::exact_l2sq`]).
    #[inline]
    pub(crate) fn prefetch_residual(&self, v: u32) {
        let rr = self.resid_bytes();
        let p = self.resid.rows.bytes()[v as usize * rr..].as_ptr();
        for l in 0..rr / 64 {
            prefetch_l2(p.wrapping_add(64 * l));
        }
    }

    /// The squared L2 distance from `q` (as the search used it: normalised for cosine; `q_sum`
    /// = Σ q_i) to node `v`'s f32 vector `x`, given `g = ||q - h||²`, the distance the search
    /// computed to the row's half-precision copy `h`. The record codes `r = x - h` as `s t`
    /// (integers |t_i| <= 127), so `||q - x||² = g - 2 s (<q, t> - <h, t>) + s² ||t||²` with
    /// `<q, t> = <q, c> - 128 Σ q`: one read of `dim` bytes instead of the f32 vector's `4 dim`.
    ///
    /// Precision: `|r_i| <= 2^-11 |x_i|` (f16 keeps 11 significant bits; `QgIndex::half_fits`
    /// keeps the data in f16's normal range up to 2^-24 absolute), and the step is
    /// `s = max |r_i| / 127`, so every coordinate is reproduced within `s/2 <= 2^-19 max |x_i|`:
    /// the distance agrees with the one computed from the f32 vector to a few parts in 10^7 of
    /// `||q|| ||x||`, on the order of f32's own rounding of a 384-term sum.
    #[inline]
    pub(crate) fn exact_l2sq(&self, q: &[f32], q_sum: f32, v: u32, g: f32) -> f32 {
        let (dim, rr) = (self.dim, self.resid_bytes());
        let rec = &self.resid.rows.bytes()[v as usize * rr..(v as usize + 1) * rr];
        let f =
            |i: usize| f32::from_le_bytes(rec[dim + 4 * i..dim + 4 * i + 4].try_into().unwrap());
        let (step, a, b) = (f(0), f(1), f(2));
        let qt = (self.k.dot_f32_u8)(q, &rec[..dim]) - 128.0 * q_sum;
        g - 2.0 * step * (qt - a) + b
    }
}

/// Codes the rounding residual `r = x - h` of one vector against its half-precision copy `h`
/// into a record of [`QgIndex::exact_l2sq`]'s layout.
fn encode_residual(x: &[f32], rec: &mut [u8]) {
    let dim = x.len();
    let widen = |f: f32| half::f16::from_f32(f).to_f32();
    // x - h is exact in f32 (h is x rounded to fewer significant bits)
    let m = x.iter().fold(0f32, |m, &f| m.max((f - widen(f)).abs()));
    let step = m / 127.0;
    let (mut a, mut b) = (0f64, 0f64);
    for (i, &f) in x.iter().enumerate() {
        let h = widen(f);
        let t = if step > 0.0 {
            ((f - h) / step).round().clamp(-127.0, 127.0)
        } else {
            0.0
        };
        rec[i] = (t as i32 + 128) as u8;
        a += h as f64 * t as f64;
        b += t as f64 * t as f64;
    }
    let b = (step as f64 * step as f64 * b) as f32;
    rec[dim..dim + 4].copy_from_slice(&step.to_le_bytes());
    rec[dim + 4..dim + 8].copy_from_slice(&(a as f32).to_le_bytes());
    rec[dim + 8..dim + 12].copy_from_slice(&b.to_le_bytes());
}

/// Prefetches the lines of `x` into L2 (ahead of an exact re-ranking).
#[inline(always)]
pub(crate) fn prefetch_vector(x: &[f32]) {
    let p = x.as_ptr() as *const u8;
    for l in 0..(x.len() * 4).div_ceil(64) {
        prefetch_l2(p.wrapping_add(64 * l));
    }
}

#[inline(always)]
fn prefetch_l2(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetch is a hint; it never faults, whatever the address.
    unsafe {
        core::arch::x86_64::_mm_prefetch(p as *const i8, core::arch::x86_64::_MM_HINT_T1);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// The query-side copy of [`Rotation`], bit-identical to [`Rotation::apply`] (the same
/// operations in the same order) but faster: the sign flips are XOR masks and the rounds run
/// in the `rotate_rounds_f32` kernel (in registers with AVX-512 up to 512 dimensions).
struct QueryRot {
    pad: usize,
    /// `ROUNDS · pad` masks, `0x8000_0000` where the coordinate is negated.
    masks: Vec<u32>,
}

impl QueryRot {
    fn new(rot: &Rotation) -> QueryRot {
        let pad = rot.pad();
        let w = rot.sign_words();
        let masks = (0..crate::encoding::rotation::ROUNDS * pad)
            .map(|i| ((w[i / 64] >> (i % 64)) as u32 & 1) << 31)
            .collect();
        QueryRot { pad, masks }
    }

    /// `out = P · [x, 0...]`.
    fn apply(&self, k: &Kernels, x: &[f32], out: &mut [f32]) {
        let d = self.pad;
        out[..x.len()].copy_from_slice(x);
        out[x.len()..d].fill(0.0);
        let out = &mut out[..d];
        let t = 1usize << (usize::BITS - 1 - d.leading_zeros());
        let scale = 1.0 / (t as f32).sqrt();
        (k.rotate_rounds_f32)(out, &self.masks, t, scale);
    }
}

const EXPANDED: u32 = 1 << 31;

/// Candidate pool: at most `cap` (distance, id) entries sorted by distance, with a cursor on
/// the nearest entry not yet expanded (bit 31 of an id marks an expanded entry; ids are below
/// 2^31). A linear buffer beats heaps for pools up to a few hundred entries.
#[derive(Default)]
struct Pool {
    dist: Vec<f32>,
    ids: Vec<u32>,
    len: usize,
    cap: usize,
    cursor: usize,
}

impl Pool {
    fn reset(&mut self, cap: usize) {
        self.cap = cap.max(1);
        // room for `shift_right_padded`
        self.dist.resize(self.cap + 9, 0.0);
        self.ids.resize(self.cap + 9, 0);
        self.len = 0;
        self.cursor = 0;
    }

    /// Distance of the worst entry when full, +inf otherwise.
    #[inline(always)]
    fn threshold(&self) -> f32 {
        if self.len < self.cap {
            f32::INFINITY
        } else {
            self.dist[self.len - 1]
        }
    }

    /// Number of entries at distance <= `d` (where `d` goes, after its equals).
    #[inline(always)]
    fn position(&self, d: f32) -> usize {
        let live = &self.dist[..self.len];
        if live.len() <= 128 {
            // a branch-free count (vectorised) beats a binary search's dependent loads
            live.iter().fold(0u32, |c, &x| c + (x <= d) as u32) as usize
        } else {
            live.partition_point(|&x| x <= d)
        }
    }

    /// Inserts (d, id) unless the pool is full of nearer entries (or d is NaN).
    #[inline(always)]
    fn insert(&mut self, d: f32, id: u32) {
        if d.is_nan() || d >= self.threshold() {
            return;
        }
        let pos = self.position(d);
        self.put(pos, d, id);
    }

    /// Writes (d, id) at `pos <= len`, shifting the entries after it (the last one falls off
    /// when full).
    #[inline(always)]
    fn put(&mut self, pos: usize, d: f32, id: u32) {
        let end = self.len.min(self.cap - 1);
        shift_right_padded(&mut self.dist, pos, end);
        shift_right_padded(&mut self.ids, pos, end);
        self.dist[pos] = d;
        self.ids[pos] = id;
        self.len = end + 1;
        if pos < self.cursor {
            self.cursor = pos;
        }
    }

    /// Takes the nearest unexpanded entry, marking it expanded.
    #[inline(always)]
    fn pop(&mut self) -> Option<u32> {
        while self.cursor < self.len {
            let c = self.cursor;
            self.cursor += 1;
            if self.ids[c] & EXPANDED == 0 {
                self.ids[c] |= EXPANDED;
                return Some(self.ids[c] & !EXPANDED);
            }
        }
        None
    }

    /// The nearest unexpanded entry not yet visited (the next expansion, barring inserts).
    #[inline(always)]
    fn peek(&self, visited: &Visited) -> Option<(u32, f32)> {
        (self.cursor..self.len)
            .find(|&c| self.ids[c] & EXPANDED == 0 && !visited.get(self.ids[c]))
            .map(|c| (self.ids[c], self.dist[c]))
    }
}

/// Zero-initialised bytes aligned to 64 (to 2 MiB from 2 MiB up, and advised to be backed by
/// transparent huge pages on Linux: a search touches rows all over the array, and with 4 KiB
/// pages nearly every row costs a TLB miss).
struct Rows {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
    /// Bytes the allocation was made for (`>= len`; rows appended by `add` grow into it).
    cap: usize,
}

// SAFETY: `Rows` owns its allocation exclusively, like a `Vec<u8>`.
unsafe impl Send for Rows {}
// SAFETY: shared access is read-only.
unsafe impl Sync for Rows {}

impl Default for Rows {
    fn default() -> Self {
        Rows {
            ptr: std::ptr::NonNull::dangling(),
            len: 0,
            cap: 0,
        }
    }
}

impl Rows {
    fn layout(len: usize) -> std::alloc::Layout {
        let align = if len >= HUGE_PAGE { HUGE_PAGE } else { 64 };
        std::alloc::Layout::from_size_align(len.div_ceil(align) * align, align)
            .expect("row storage size overflows")
    }

    fn zeroed(len: usize) -> Rows {
        Self::zeroed_with_capacity(len, len)
    }

    /// Zeroed rows of `len` bytes with room for `cap >= len` (all zero too).
    fn zeroed_with_capacity(len: usize, cap: usize) -> Rows {
        if cap == 0 {
            return Rows::default();
        }
        let layout = Self::layout(cap);
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { std::alloc::alloc(layout) };
        let Some(ptr) = std::ptr::NonNull::new(p) else {
            std::alloc::handle_alloc_error(layout)
        };
        // Given before the first write, so the faults map huge pages.
        advise_huge(p, layout.size());
        // SAFETY: `p` is valid for `layout.size() >= len` bytes.
        unsafe { std::ptr::write_bytes(p, 0, layout.size()) };
        Rows { ptr, len, cap }
    }

    /// Grows to `len` bytes, zero-filled, reallocating (with 50% headroom) only when the
    /// allocation is too small, so that adding a few rows at a time does not copy them all.
    fn grow(&mut self, len: usize) {
        if len <= self.len {
            return;
        }
        if len <= self.cap {
            let old = self.len;
            self.len = len;
            self.bytes_mut()[old..].fill(0);
            return;
        }
        let mut r = Rows::zeroed_with_capacity(len, len.max(self.cap + self.cap / 2));
        r.bytes_mut()[..self.len].copy_from_slice(self.bytes());
        *self = r;
    }

    /// Bytes allocated.
    fn allocated(&self) -> usize {
        if self.cap == 0 {
            0
        } else {
            Self::layout(self.cap).size()
        }
    }

    #[inline(always)]
    fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` holds `len` initialised bytes (or is dangling with `len == 0`).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Rows {
    fn drop(&mut self) {
        if self.cap > 0 {
            // SAFETY: allocated in `zeroed_with_capacity` with this layout.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.cap)) };
        }
    }
}

/// Moves `a[pos..end]` one place right, inline (the shifts are short and frequent: a call to
/// `memmove` per insertion costs more than the copy).
#[inline(always)]
fn shift_right<T: Copy>(a: &mut [T], pos: usize, end: usize) {
    let mut i = end;
    while i > pos {
        a[i] = a[i - 1];
        i -= 1;
    }
}

/// [`shift_right`] in blocks of 8 with no element loop, for slices with at least `pos + 9`
/// elements (the pool pads its arrays): the first block is read before the others move and
/// written last, one place right, which also covers the remainder; slots past `end` may be
/// overwritten.
#[inline(always)]
fn shift_right_padded<T: Copy>(a: &mut [T], pos: usize, end: usize) {
    if end <= pos {
        return;
    }
    let head: [T; 8] = a[pos..pos + 8].try_into().unwrap();
    let mut i = end;
    while i > pos + 8 {
        let t: [T; 8] = a[i - 8..i].try_into().unwrap();
        a[i - 7..i + 1].copy_from_slice(&t);
        i -= 8;
    }
    a[pos + 1..pos + 9].copy_from_slice(&head);
}

/// Visited set: a bitset that is all zero between queries; the ids marked by a query are
/// remembered and their words cleared when the next query starts.
#[derive(Default)]
struct Visited {
    bits: Vec<u64>,
    marked: Vec<u32>,
}

impl Visited {
    fn reset(&mut self, n: usize) {
        for &i in &self.marked {
            self.bits[i as usize / 64] = 0;
        }
        self.marked.clear();
        if self.bits.len() < n.div_ceil(64) {
            self.bits.resize(n.div_ceil(64), 0);
        }
    }

    #[inline(always)]
    fn get(&self, i: u32) -> bool {
        self.bits[i as usize / 64] & (1u64 << (i % 64)) != 0
    }

    /// Marks `i`; returns whether it was marked already.
    #[inline(always)]
    fn mark(&mut self, i: u32) -> bool {
        let (w, b) = (i as usize / 64, 1u64 << (i % 64));
        let old = self.bits[w];
        if old & b != 0 {
            return true;
        }
        self.bits[w] = old | b;
        self.marked.push(i);
        false
    }
}

/// Writes neighbour codes into a row's FastScan blocks, reusing scratch space across slots.
#[derive(Default)]
struct ResidualCoder {
    y: Vec<f32>,
    mags: Vec<u32>,
}

impl ResidualCoder {
    /// Codes the residual `y = ur - vr` (rotated neighbour minus rotated node, `sv = Σ vr`)
    /// into lane `slot` (0..32) of `planes`: the FastScan block of its 32 neighbours, one
    /// `pad/4 × 16`-byte plane per bit, the sign plane first. Returns `(f_add, f_rescale)`.
    ///
    /// With the code `w` (`w = 2b - 1` for one bit, `w_i = sign(y_i) (m_i + 1/2)` for two) the
    /// estimator of the module documentation becomes `<r, z> ≈ ||y||² <w, z'> / <w, y>`, so
    /// `f_rescale = ||y||² / <w, y>` and `f_add = ||y||² + 2 f_rescale <w, v'>`.
    fn encode(
        &mut self,
        ur: &[f32],
        vr: &[f32],
        sv: f32,
        bits: usize,
        planes: &mut [u8],
        slot: usize,
    ) -> (f32, f32) {
        let cb = ur.len() / 4 * 16;
        let (lane, shift) = (slot % 16, if slot < 16 { 0 } else { 4 });
        // bit t of nibble j: y_{4j+t} > 0 (lanes 16..32 in the high nibbles)
        for (j, (a, b)) in ur.chunks_exact(4).zip(vr.chunks_exact(4)).enumerate() {
            let nib = (a[0] > b[0]) as u8
                | ((a[1] > b[1]) as u8) << 1
                | ((a[2] > b[2]) as u8) << 2
                | ((a[3] > b[3]) as u8) << 3;
            planes[j * 16 + lane] |= nib << shift;
        }
        let (sum_abs, r2, bv) = residual_stats(ur, vr);
        if bits == 1 {
            // <w, y> = Σ|y_i|, <w, v'> = 2 <b, v'> - Σ v'_i
            let fres = if sum_abs > 0.0 { r2 / sum_abs } else { 0.0 };
            return (r2 + 2.0 * fres * (2.0 * bv - sv), fres);
        }
        self.y.clear();
        self.y.extend(ur.iter().zip(vr).map(|(a, b)| a - b));
        let y = &self.y;
        let j = extra_bit_count(y, &mut self.mags);
        // m_i = 1 for the j largest magnitudes (ties at the j-th taken in index order)
        let t = if j > 0 {
            self.mags[self.mags.len() - j]
        } else {
            u32::MAX
        };
        let ge = y.iter().filter(|x| x.abs().to_bits() >= t).count();
        let mut extra = ge - j; // magnitudes equal to the j-th beyond the j wanted
        let (mut wy, mut wv) = ([0f32; 4], [0f32; 4]);
        let plane = &mut planes[cb..2 * cb];
        for (q, (y4, v4)) in y.chunks_exact(4).zip(vr.chunks_exact(4)).enumerate() {
            let mut nib = 0u8;
            for l in 0..4 {
                let (yi, vi) = (y4[l], v4[l]);
                let a = yi.abs().to_bits();
                let mut m = a >= t;
                if extra > 0 && a == t {
                    // drop the last ties (rare: equal magnitudes)
                    let i = 4 * q + l;
                    m = y[i + 1..].iter().filter(|x| x.abs().to_bits() == t).count() >= extra;
                    extra -= !m as usize;
                }
                // w = ±(m + 1/2), negative unless y > 0 (as the sign plane), without branches
                // (m and the sign are coin flips to a branch predictor)
                let pos = yi > 0.0;
                let w = f32::from_bits((0.5 + m as u8 as f32).to_bits() | (!pos as u32) << 31);
                wy[l] += w * yi;
                wv[l] += w * vi;
                // the grid index c = w + 3/2 is 2 + m (y > 0) or 1 - m: its low bit
                nib |= ((m == pos) as u8) << l;
            }
            plane[q * 16 + lane] |= nib << shift;
        }
        let (wy, wv) = (wy.iter().sum::<f32>() as f64, wv.iter().sum::<f32>() as f64);
        let fres = if wy > 0.0 {
            (r2 as f64 / wy) as f32
        } else {
            0.0
        };
        (r2 + 2.0 * fres * wv as f32, fres)
    }
}

/// The number `j` of coordinates that get the extra bit in the 2-bit extended RaBitQ code of
/// `y` (ALGORITHMS.md §1.5): `w_i = sign(y_i) (m_i + 1/2)` with `m ∈ {0, 1}^D` maximising
/// `cos(w, y)`. As `<w, y> = Σ|y_i| / 2 + Σ_{m_i = 1} |y_i|` and `||w||² = D/4 + 2 Σ m_i`, the
/// best `m` with `j` ones takes the `j` largest magnitudes, so the sorted magnitudes are the
/// critical values and the exact optimum is the best `j` over them (ties keep the smaller
/// `j`). Leaves the magnitudes' bit patterns sorted ascending in `mags`. Along a run of equal
/// magnitudes `a` the objective `(A + k a)² / (B + 2k)` is convex in `k`, so the optimum never
/// splits such a run except through rounding; the encoder still breaks such a split by index.
fn extra_bit_count(y: &[f32], mags: &mut Vec<u32>) -> usize {
    mags.clear();
    // non-negative floats order like their bit patterns
    mags.extend(y.iter().map(|x| x.abs().to_bits()));
    mags.sort_unstable();
    let d = y.len() as f64;
    let half: f64 = 0.5 * y.iter().map(|x| x.abs() as f64).sum::<f64>();
    // cos² = num² / den up to a constant; compared by cross-multiplying
    let (mut top, mut best_n2, mut best_den, mut best_j) = (0f64, half * half, 0.25 * d, 0);
    for (j, &a) in mags.iter().rev().enumerate() {
        top += f32::from_bits(a) as f64;
        let (n, den) = (half + top, 0.25 * d + 2.0 * (j + 1) as f64);
        if n * n * best_den > best_n2 * den {
            (best_n2, best_den, best_j) = (n * n, den, j + 1);
        }
    }
    best_j
}

/// For `y = u - v`: `(Σ|y_i|, Σ y_i², Σ_{y_i > 0} v_i)`, in eight lanes (vectorised).
fn residual_stats(u: &[f32], v: &[f32]) -> (f32, f32, f32) {
    let (mut a, mut r, mut b) = ([0f32; 8], [0f32; 8], [0f32; 8]);
    let (uc, vc) = (u.chunks_exact(8), v.chunks_exact(8));
    let (ut, vt) = (uc.remainder(), vc.remainder());
    for (x, z) in uc.zip(vc) {
        for l in 0..8 {
            let y = x[l] - z[l];
            a[l] += y.abs();
            r[l] += y * y;
            b[l] += if y > 0.0 { z[l] } else { 0.0 };
        }
    }
    let (mut sa, mut sr, mut sb): (f32, f32, f32) =
        (a.iter().sum(), r.iter().sum(), b.iter().sum());
    for (x, z) in ut.iter().zip(vt) {
        let y = x - z;
        sa += y.abs();
        sr += y * y;
        sb += if y > 0.0 { *z } else { 0.0 };
    }
    (sa, sr, sb)
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
    let mut two_hop: Vec<u32> = out
        .iter()
        .flat_map(|&u| g.neighbors(u).iter().copied())
        .filter(|&w| w != v)
        .collect();
    two_hop.sort_unstable();
    two_hop.dedup();
    let mut cands: Vec<(f32, u32)> = two_hop
        .into_iter()
        .filter(|w| !out.contains(w))
        .map(|w| ((k.l2sq_f32)(row(v), row(w)), w))
        .collect();
    cands.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_shift_matches_element_shift() {
        for n in 0..40 {
            for pos in 0..=n {
                for end in pos..n {
                    let mut a: Vec<u32> = (0..n as u32 + 9).collect();
                    let mut b = a.clone();
                    shift_right(&mut a, pos, end);
                    shift_right_padded(&mut b, pos, end);
                    assert_eq!(a[..=end], b[..=end], "n={n} pos={pos} end={end}");
                }
            }
        }
    }

    #[test]
    fn query_rotation_is_the_rotation() {
        let mut rng = crate::encoding::rotation::SplitMix::new(11);
        for (pad, dim) in [(64, 64), (128, 100), (384, 384), (448, 390), (1024, 1000)] {
            let rot = Rotation::new(pad, 5);
            let qrot = QueryRot::new(&rot);
            let x: Vec<f32> = (0..dim).map(|_| rng.gauss() as f32).collect();
            let (mut a, mut b) = (vec![0f32; pad], vec![1f32; pad]);
            rot.apply(&x, &mut a);
            for k in nearq_kernels::all_variants() {
                qrot.apply(k, &x, &mut b);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&a), bits(&b), "pad={pad} {}", k.isa);
            }
        }
    }

    #[test]
    fn extra_bit_choice_is_the_exact_optimum() {
        // Brute force over every m in {0,1}^d: no choice of extra bits has a larger cosine
        // with y than the critical-value search's, including with tied and zero magnitudes.
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let cos = |y: &[f32], m: &[bool]| {
            let (mut wy, mut ww, mut yy) = (0f64, 0f64, 0f64);
            for (&x, &b) in y.iter().zip(m) {
                let w = x.signum() as f64 * if b { 1.5 } else { 0.5 };
                wy += w * x as f64;
                ww += w * w;
                yy += x as f64 * x as f64;
            }
            wy / (ww * yy).sqrt()
        };
        let mut mags = Vec::new();
        for trial in 0..300 {
            let d = 4 + trial % 9;
            let mut y: Vec<f32> = (0..d).map(|_| next()).collect();
            if trial % 5 == 0 {
                y[1] = -y[0]; // a tie
                y[d - 1] = 0.0;
            }
            let j = extra_bit_count(&y, &mut mags);
            // m for the j largest magnitudes
            let mut order: Vec<usize> = (0..d).collect();
            order.sort_by(|&a, &b| y[b].abs().total_cmp(&y[a].abs()));
            let mut m = vec![false; d];
            for &i in &order[..j] {
                m[i] = true;
            }
            let ours = cos(&y, &m);
            let best = (0..1u32 << d)
                .map(|bits| cos(&y, &(0..d).map(|i| bits >> i & 1 != 0).collect::<Vec<_>>()))
                .fold(f64::MIN, f64::max);
            assert!(ours >= best - 1e-9, "d={d} j={j}: {ours} < {best}");
        }
    }

    #[test]
    fn two_bit_codes_decode_to_their_factors() {
        // Decoding a neighbour's 2-bit code from its planes and its factors reproduces the
        // estimator's algebra: with z' = y itself (the query at the neighbour),
        // f_add + ||z||² - 2 f_rescale <w, z'> must equal ||y - y||² = 0 up to rounding, and the
        // low bits must mark the largest magnitudes.
        let pad = 64;
        let mut rng = 7u64;
        let mut next = || {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (rng >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let vr: Vec<f32> = (0..pad).map(|_| next()).collect();
        let mut ur: Vec<f32> = (0..pad).map(|_| next()).collect();
        // twelve residuals of one magnitude (a power of two, so u - v is exact), both signs
        for i in (0..pad).step_by(5).take(12) {
            ur[i] = vr[i] + if i % 2 == 0 { 0.25 } else { -0.25 };
        }
        let sv: f32 = vr.iter().sum();
        let cb = pad / 4 * 16;
        let mut mags = Vec::new();
        let y: Vec<f32> = ur.iter().zip(&vr).map(|(a, b)| a - b).collect();
        let j = extra_bit_count(&y, &mut mags);
        for slot in [0usize, 5, 16, 31] {
            let mut planes = vec![0u8; 2 * cb];
            let (fadd, fres) = ResidualCoder::default().encode(&ur, &vr, sv, 2, &mut planes, slot);
            let (lane, shift) = (slot % 16, if slot < 16 { 0 } else { 4 });
            let bit =
                |p: usize, i: usize| planes[p * cb + (i / 4) * 16 + lane] >> (shift + i % 4) & 1;
            let w: Vec<f32> = (0..pad)
                .map(|i| (2 * bit(0, i) + bit(1, i)) as f32 - 1.5)
                .collect();
            for (i, &yi) in y.iter().enumerate() {
                assert_eq!(bit(0, i) == 1, yi > 0.0);
            }
            // query q' = u' (z' = q' - v' = y): the estimate of ||q - u||² = 0 is exact
            let wq: f32 = w.iter().zip(&ur).map(|(a, b)| a * b).sum();
            let z2: f32 = y.iter().map(|x| x * x).sum();
            let est = fadd + z2 - 2.0 * fres * wq;
            assert!(est.abs() < 1e-4, "slot {slot}: {est}");
            // the extra bits go to the largest magnitudes, j of them (ties or not)
            let big = |i: usize| (w[i].abs() > 1.0) as u8;
            assert_eq!((0..pad).map(big).map(usize::from).sum::<usize>(), j);
            for i in 0..pad {
                for k in 0..pad {
                    if y[i].abs() > y[k].abs() {
                        assert!(big(i) >= big(k));
                    }
                }
            }
        }
    }

    #[test]
    fn pool_keeps_the_nearest_in_order() {
        let mut rng = crate::encoding::rotation::SplitMix::new(3);
        for cap in [1usize, 2, 7, 8, 9, 33, 130, 300] {
            let mut pool = Pool::default();
            pool.reset(cap);
            let mut want: Vec<(f32, u32)> = Vec::new();
            for id in 0..2000u32 {
                // coarse values, so that ties occur
                let d = (rng.next_f64() * 50.0).floor() as f32;
                pool.insert(d, id);
                want.push((d, id));
                // stable: equal distances keep their insertion order
                want.sort_by(|a, b| a.0.total_cmp(&b.0));
                want.truncate(cap);
                if id % 3 == 0 {
                    if let Some(v) = pool.pop() {
                        assert!(want.iter().any(|w| w.1 == v));
                    }
                }
                let got: Vec<(f32, u32)> = (0..pool.len)
                    .map(|i| (pool.dist[i], pool.ids[i] & !EXPANDED))
                    .collect();
                assert_eq!(got, want, "cap={cap} id={id}");
            }
        }
    }
}
