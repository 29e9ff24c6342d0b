//! The quantized graph behind a RaBitQ index that keeps its float vectors (ALGORITHMS.md §6.4,
//! [`crate::qg`]).
//!
//! An [`Index`] with encoding RaBitQ, float vectors kept and metric L2 or cosine also holds a
//! [`QgIndex`] over the same graph and (normalised) vectors: each node's row carries its
//! vector and its neighbours' 1-bit FastScan codes, so an unfiltered search expands a node with
//! one contiguous read and re-ranks every expanded node exactly. Filtered searches (and
//! everything the rows cannot serve) keep using the RaBitQ codes and the graph.
//!
//! The rows follow the graph through every change: after an `add` rows are appended for the
//! new nodes, after a consolidation the rows are renumbered, and every row whose pruned
//! neighbours differ from the graph's is re-encoded ([`QgIndex::sync`]). Deleted (tombstoned)
//! nodes still route the search but are never accepted as results.
//!
//! Files: an optional section after the index's payload (absent from files of earlier
//! releases, whose rows are rebuilt at load): tag 0 = quantized graph turned off; tag 1 =
//! the rows follow (u64 length, then [`QgIndex::to_payload`]'s bytes), so a loaded index
//! searches exactly like the saved one without re-encoding anything; tag 2 = turned on where
//! the encoding's default is off (4-bit PQ: its neighbour-code rows, [`crate::nbrows`], are
//! rebuilt at load from the codes and the graph).
//!
//! The same switch (`quantized_graph`) keeps 4-bit PQ's neighbour-code rows, off by default
//! (see [`Index::set_quantized_graph`]); they follow the graph the same way.

use super::{Ids, Index, Inner, MemoryUsage, SearchParams};
use crate::encoding::Encoding;
use crate::error::{Error, Result};
use crate::io::{Reader, Writer};
use crate::metric::Metric;
use crate::parallel::with_threads;
use crate::qg::QgIndex;

/// Scratch of the final re-ranking: (distance, node) candidates and the normalised query.
type RerankScratch = (Vec<(f32, u32)>, Vec<f32>);

thread_local! {
    static RERANK: std::cell::RefCell<RerankScratch> = Default::default();
}

/// Tags of the optional trailing section of an index payload.
const QG_OFF: u8 = 0;
const QG_ROWS: u8 = 1;
/// Turned on where the encoding's default is off (4-bit PQ's neighbour-code rows, rebuilt at
/// load from the codes and the graph).
const QG_ON: u8 = 2;

/// Whether new rows hold their vectors in half precision: where f16 represents the data
/// ([`QgIndex::half_fits`]; always for cosine) unless `NEARQ_QG_HALF=0` is in the environment
/// when the rows are built (for A/B comparisons). It takes 768 bytes off each row at d = 384
/// and adds a 448-byte residual record per node, read only for the final candidates, whose
/// distances it makes exact (see [`QgIndex::exact_l2sq`]). (Re-ranking from the f32 vectors
/// instead, 1536 bytes per candidate, ate most of the smaller rows' gain on the benchmark
/// machine: 2-bit f16 and f32 rows tied through the Index API.)
fn half_rows(data: &[f32]) -> bool {
    let off = std::env::var("NEARQ_QG_HALF").is_ok_and(|v| v.trim() == "0");
    !off && QgIndex::half_fits(data)
}

/// Bits per dimension of the quantized graph's neighbour codes for an index of `enc_bits`-bit
/// RaBitQ codes: 1 for 1-bit indexes, [`crate::qg::DEFAULT_BITS`] (2) otherwise;
/// `NEARQ_QG_BITS=1` or `2` in the environment when the rows are built overrides it (A/B
/// comparisons).
fn qg_bits(enc_bits: u32) -> usize {
    match std::env::var("NEARQ_QG_BITS").as_deref().map(str::trim) {
        Ok("1") => 1,
        Ok("2") => 2,
        _ if enc_bits == 1 => 1,
        _ => crate::qg::DEFAULT_BITS,
    }
}

/// Candidates re-ranked exactly when the rows hold half-precision vectors: the
/// `k` best by the rows' distances plus a margin for near ties at the boundary (the rows'
/// distances differ from the exact ones by about 2^-11 of the vectors' scale).
fn rerank_count(k: usize) -> usize {
    k + (k / 4).max(2)
}

/// Whether half-precision rows re-rank from their residual codes ([`QgIndex::exact_l2sq`])
/// rather than the f32 vectors: yes unless `NEARQ_QG_RESID=0` is in the environment (read
/// once) or [`set_residual_rerank`] says otherwise (A/B runs).
fn residual_rerank() -> bool {
    static ENV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    match RESID_OVERRIDE.load(std::sync::atomic::Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => *ENV.get_or_init(|| !std::env::var("NEARQ_QG_RESID").is_ok_and(|v| v.trim() == "0")),
    }
}

static RESID_OVERRIDE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

#[doc(hidden)]
/// Experiment switch for the whole process: `Some(false)` re-ranks half-precision rows' final
/// candidates from the f32 vectors, `Some(true)` from the residual codes (the default), `None`
/// restores the default (or `NEARQ_QG_RESID`).
pub fn set_residual_rerank(on: Option<bool>) {
    let v = match on {
        None => 0,
        Some(true) => 1,
        Some(false) => 2,
    };
    RESID_OVERRIDE.store(v, std::sync::atomic::Ordering::Relaxed);
}

impl Index {
    /// Whether the configuration can carry a quantized graph at all.
    fn qg_eligible(&self) -> bool {
        match &self.inner {
            Inner::RaBitQ(g) => g.vectors.is_some() && g.enc.metric() != Metric::InnerProduct,
            _ => false,
        }
    }

    /// Builds or updates the quantized graph so that it agrees with the graph (`remap`: new
    /// position of every old one, after a consolidation), or drops it where it does not apply.
    pub(super) fn refresh_qg(&mut self, remap: Option<&[u32]>) {
        self.refresh_rows(remap.is_some());
        if !(self.qg_on && self.qg_eligible()) || self.positions() > crate::qg::MAX_NODES {
            self.qg = None;
            return;
        }
        let Inner::RaBitQ(g) = &self.inner else {
            return;
        };
        let Some(v) = &g.vectors else { return };
        let data = v.as_slice();
        match &mut self.qg {
            Some(q) => {
                q.sync(&g.graph, g.entry, data, remap);
            }
            None => {
                self.qg = QgIndex::from_parts(
                    &g.graph,
                    g.entry,
                    data,
                    g.enc.dim(),
                    g.enc.metric(),
                    g.build.seed,
                    half_rows(data),
                    qg_bits(g.enc.bits()),
                )
                .ok();
            }
        }
    }

    /// Turns the quantized graph on (the default where it applies: encoding RaBitQ, float
    /// vectors kept, metric L2 or cosine) or off (searches then traverse the RaBitQ codes and
    /// re-rank; the rows' memory is released). The choice is saved with the index.
    ///
    /// For 4-bit PQ the same switch keeps neighbour-code rows ([`crate::nbrows`]): every node
    /// holds its neighbours' codes packed in FastScan blocks, so the traversal (filtered or
    /// not) scores an expanded node's neighbours without gathering their codes. Off by
    /// default there: the rows cost `⌈R/32⌉ · 32 · code_size` bytes per node (3 KiB at
    /// `R = 32`, `M = 192`), several times the codes themselves.
    pub fn set_quantized_graph(&mut self, on: bool, threads: Option<usize>) {
        self.qg_on = on;
        if !on {
            self.qg = None;
            self.refresh_rows(false);
        } else {
            with_threads(threads, || self.refresh_qg(None));
        }
    }

    /// Whether searches go through the quantized graph (RaBitQ, unfiltered) or neighbour-code
    /// rows (4-bit PQ).
    pub fn has_quantized_graph(&self) -> bool {
        self.qg.is_some() || self.neighbor_rows().is_some()
    }

    /// The quantized graph, if unfiltered searches go through it (for tests and diagnostics).
    pub fn quantized_graph(&self) -> Option<&QgIndex> {
        self.qg.as_ref()
    }

    /// Whether the quantized graph is enabled (it exists when the configuration allows it).
    pub fn quantized_graph_enabled(&self) -> bool {
        self.qg_on
    }

    /// Writes the optional trailing section (see the module's documentation).
    pub(super) fn write_qg(&self, w: &mut Writer) {
        if !self.qg_on {
            w.u8(QG_OFF);
        } else if let Some(q) = &self.qg {
            w.u8(QG_ROWS);
            let p = q.to_payload();
            w.u64(p.len() as u64);
            w.bytes(&p);
        } else if !self.qg_default() {
            w.u8(QG_ON);
        }
    }

    /// Reads the optional trailing section, checking that the rows fit the index (their
    /// agreement with the graph is then checked, and repaired, by `refresh_qg`).
    pub(super) fn read_qg(&mut self, r: &mut Reader) -> Result<()> {
        if r.remaining() == 0 {
            return Ok(());
        }
        match r.u8()? {
            QG_OFF => self.qg_on = false,
            QG_ON => self.qg_on = true,
            QG_ROWS => {
                let len = r.count("quantized graph size", r.remaining() as u64)?;
                let q = QgIndex::from_payload(r.take(len)?)?;
                let g = self.graph();
                let fits = self.qg_eligible()
                    && q.len() == self.positions()
                    && q.dim() == self.dim()
                    && q.metric() == self.metric()
                    && q.degree() == g.degree().div_ceil(32) * 32;
                if !fits {
                    return Err(Error::Format(
                        "the quantized graph does not match the index".into(),
                    ));
                }
                self.qg = Some(q);
            }
            t => return Err(Error::Format(format!("unknown index section {t}"))),
        }
        Ok(())
    }

    pub(super) fn qg_memory(&self, m: &mut MemoryUsage) {
        m.quantized_graph = self.qg.as_ref().map_or(0, |q| q.memory_bytes());
    }

    /// Unfiltered search through the quantized graph (queries checked, `nq` rows). The beam
    /// holds `max(ef, k, rerank)` estimates (default ef 64); every expanded node is re-ranked
    /// exactly, so there is no separate re-ranking step.
    pub(super) fn search_qg(
        &self,
        qg: &QgIndex,
        queries: &[f32],
        nq: usize,
        p: &SearchParams,
        threads: Option<usize>,
    ) -> (Vec<i64>, Vec<f32>) {
        let dim = self.dim();
        let k = p.k;
        let ef = p.ef.unwrap_or(64).max(k).max(p.rerank.unwrap_or(0));
        // Rows in half precision: the final candidates get their exact distances from the
        // residual records (or, without them, the f32 vectors, normalised for cosine as the
        // rows' are).
        let exact = match (&self.inner, qg.half_vectors()) {
            (super::Inner::RaBitQ(g), true) => g.vectors.as_ref().map(|v| v.as_slice()),
            _ => None,
        };
        let kk = if exact.is_some() { rerank_count(k) } else { k };
        let resid = qg.has_residuals() && residual_rerank();
        let ef = ef.max(kk);
        let metric = self.metric();
        let kern = nearq_kernels::kernels();
        let mut ids = vec![-1i64; nq * k];
        let mut dists = vec![f32::INFINITY; nq * k];
        let explicit = match &self.ids {
            Ids::Range => None,
            Ids::Explicit { ext, .. } => Some(ext),
        };
        let run = |qi: usize, oi: &mut [i64], od: &mut [f32]| {
            let q = &queries[qi * dim..(qi + 1) * dim];
            let ext = |v: u32| match explicit {
                None => v as i64,
                Some(ext) => ext[v as usize],
            };
            let del = &self.deleted;
            let mut out = |j: usize, v: u32, d: f32| {
                oi[j] = ext(v);
                od[j] = d;
            };
            if resid {
                // the rows' distances of the `kk` best corrected by the residual records (a
                // quarter of the f32 vectors' bytes; see `QgIndex::exact_l2sq`)
                if del.count > 0 {
                    qg.search_exact(q, k, kk, ef, |v| !del.contains(v), &mut out);
                } else {
                    qg.search_exact(q, k, kk, ef, |_| true, &mut out);
                }
                return;
            }
            let Some(x) = exact else {
                if del.count > 0 {
                    qg.search_accept(q, k, ef, |v| !del.contains(v), &mut out);
                } else {
                    qg.search_accept(q, k, ef, |_| true, &mut out);
                }
                return;
            };
            // half-precision rows without residual records (or with `NEARQ_QG_RESID=0`): the
            // `kk` best re-ranked from the f32 vectors
            RERANK.with(|c| {
                let (cand, qn) = &mut *c.borrow_mut();
                cand.clear();
                let mut push = |_: usize, v: u32, _: f32| cand.push((0.0, v));
                if del.count > 0 {
                    qg.search_accept(q, kk, ef, |v| !del.contains(v), &mut push);
                } else {
                    qg.search_accept(q, kk, ef, |_| true, &mut push);
                }
                qn.clear();
                qn.extend_from_slice(q);
                if metric.normalizes() {
                    crate::metric::normalize(qn);
                }
                for &(_, v) in cand.iter() {
                    crate::qg::prefetch_vector(&x[v as usize * dim..(v as usize + 1) * dim]);
                }
                for (d, v) in cand.iter_mut() {
                    let xv = &x[*v as usize * dim..(*v as usize + 1) * dim];
                    *d = metric.distance(kern, qn, xv);
                }
                cand.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                for (j, &(d, v)) in cand.iter().take(k).enumerate() {
                    out(j, v, d);
                }
            });
        };
        crate::parallel::for_each_query(&mut ids, &mut dists, k, threads, run);
        (ids, dists)
    }
}
