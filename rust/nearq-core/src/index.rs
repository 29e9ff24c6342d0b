//! The index: an encoding's codes, the graph over them, and optional full-precision vectors
//! for re-ranking.

use crate::encoding::{Encoding, EncodingSpec, Flat, RaBitQ, RaBitQConfig, Sq8, TurboQuant};
use crate::encoding::{Lvq, Pq, PqConfig, Saq, SaqConfig};
use crate::error::{Error, Result};
use crate::graph::search::{beam_search_filtered, SearchScratch};
use crate::graph::{beam_search, build_graph, BuildParams, Graph, Scorer};
use crate::io::{self, Reader, Writer};
use crate::metric::{check_finite, normalize, Metric};
use crate::nbrows::NeighborRows;
use crate::parallel::with_threads;
use crate::storage::{stride_of, CodeStore, F32Store};
use memmap2::Mmap;
use nearq_kernels::kernels;
use rayon::prelude::*;
use rustc_hash::FxHashMap;
use std::cell::{Cell, RefCell};
use std::path::Path;
use std::sync::Arc;

mod qg_glue;
#[doc(hidden)]
pub use qg_glue::set_residual_rerank;

/// Largest supported dimension and degree (also bounds what a file may claim).
pub const MAX_DIM: usize = 1 << 16;
pub const MAX_DEGREE: usize = 1024;

/// Everything needed to build an index.
#[derive(Clone, Debug)]
pub struct IndexParams {
    pub metric: Metric,
    pub encoding: EncodingSpec,
    /// Keep full-precision vectors in RAM for exact re-ranking (no effect for `flat`).
    pub keep_vectors: bool,
    pub build: BuildParams,
}

impl Default for IndexParams {
    fn default() -> Self {
        IndexParams {
            metric: Metric::L2,
            encoding: EncodingSpec::Flat,
            keep_vectors: true,
            build: BuildParams::default(),
        }
    }
}

/// Per-search parameters.
#[derive(Clone, Debug)]
pub struct SearchParams {
    pub k: usize,
    /// Beam width; defaults to `max(k, 64)`.
    pub ef: Option<usize>,
    /// How many traversal candidates are re-ranked (encodings that estimate distances):
    /// defaults to `max(3k, 30)` capped at the beam width; a larger value widens the beam.
    pub rerank: Option<usize>,
}

impl SearchParams {
    pub fn new(k: usize) -> Self {
        SearchParams {
            k,
            ef: None,
            rerank: None,
        }
    }
}

/// Bytes held in RAM, by part.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryUsage {
    pub codes: usize,
    pub graph: usize,
    pub vectors: usize,
    pub params: usize,
    /// User ids, their lookup table and the tombstones of deleted vectors.
    pub ids: usize,
    /// Bytes served from a memory map (not counted in [`MemoryUsage::total`]).
    pub mapped: usize,
    /// Rows of the quantized graph (RaBitQ with float vectors kept: each row holds a node's
    /// float vector, a second copy of `vectors`, and its neighbours' 1-bit codes).
    pub quantized_graph: usize,
    /// Neighbour-code rows of the traversal (4-bit PQ with `quantized_graph` on: each node
    /// holds its neighbours' codes packed in FastScan blocks, `⌈R/32⌉ · 32 · code_size` bytes).
    pub neighbor_codes: usize,
}

impl MemoryUsage {
    /// Bytes held in RAM.
    pub fn total(&self) -> usize {
        self.codes
            + self.graph
            + self.vectors
            + self.params
            + self.ids
            + self.quantized_graph
            + self.neighbor_codes
    }
}

/// Which vectors a filtered search may return.
#[derive(Clone, Copy, Debug)]
pub enum Allowed<'a> {
    /// An allow-list of user ids (unknown ids are ignored).
    Ids(&'a [i64]),
    /// A boolean mask indexed by user id: id `i` is allowed iff `i < len` and `mask[i]`.
    Mask(&'a [bool]),
}

/// How a filtered search finds its results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FilterStrategy {
    /// Graph traversal unless scanning the allowed vectors is estimated to be cheaper.
    #[default]
    Auto,
    /// Always traverse the graph (routing through rejected nodes, collecting allowed ones).
    Graph,
    /// Always scan the allowed vectors' codes, then re-rank.
    Scan,
}

/// A search filter: the allowed vectors and the strategy.
#[derive(Clone, Copy, Debug)]
pub struct Filter<'a> {
    pub allowed: Allowed<'a>,
    pub strategy: FilterStrategy,
}

impl<'a> Filter<'a> {
    pub fn new(allowed: Allowed<'a>) -> Self {
        Filter {
            allowed,
            strategy: FilterStrategy::Auto,
        }
    }
}

/// A set of internal positions (allowed or deleted vectors).
#[derive(Clone, Debug, Default)]
pub(crate) struct BitSet {
    words: Vec<u64>,
    count: usize,
}

impl BitSet {
    fn with_len(n: usize) -> Self {
        BitSet {
            words: vec![0; n.div_ceil(64)],
            count: 0,
        }
    }
    #[inline(always)]
    pub(crate) fn contains(&self, i: u32) -> bool {
        self.words
            .get(i as usize / 64)
            .is_some_and(|w| (w >> (i % 64)) & 1 == 1)
    }
    fn insert(&mut self, i: u32) -> bool {
        let i = i as usize;
        if self.words.len() <= i / 64 {
            self.words.resize(i / 64 + 1, 0);
        }
        let w = &mut self.words[i / 64];
        let bit = 1u64 << (i % 64);
        let fresh = *w & bit == 0;
        *w |= bit;
        self.count += fresh as usize;
        fresh
    }
    fn memory_bytes(&self) -> usize {
        self.words.capacity() * 8
    }
    fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(wi, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let b = w.trailing_zeros();
                w &= w - 1;
                Some(wi as u32 * 64 + b)
            })
        })
    }
}

/// User ids of the stored vectors.
#[derive(Clone, Debug)]
enum Ids {
    /// The id of position `i` is `i` (the default: no ids given, nothing compacted).
    Range,
    /// One id per position and the lookup of live ids.
    Explicit {
        ext: Vec<i64>,
        pos: FxHashMap<i64, u32>,
    },
}

pub(crate) struct GraphIndex<E: Encoding> {
    pub(crate) enc: E,
    pub(crate) codes: CodeStore,
    pub(crate) graph: Graph,
    pub(crate) entry: u32,
    /// Full-precision (normalised for cosine) vectors for re-ranking; never for exact encodings.
    pub(crate) vectors: Option<F32Store>,
    pub(crate) keep_vectors: bool,
    pub(crate) build: BuildParams,
    /// For inner product: the largest squared norm seen, which defines the augmented space
    /// the graph is built in (see [`crate::graph::build_graph`]); 0 otherwise.
    pub(crate) max_norm2: f32,
    /// Neighbour-code rows for the traversal ([`NeighborRows`]), when enabled and the
    /// encoding has a packed layout (4-bit PQ); kept in step by `Index::refresh_qg`.
    pub(crate) nrows: Option<NeighborRows>,
}

pub(crate) struct CodeScorer<'a, E: Encoding> {
    pub(crate) enc: &'a E,
    pub(crate) q: &'a E::Query,
    pub(crate) codes: &'a CodeStore,
    /// Bytes from a code's start that a traversal distance reads (at least 1).
    pub(crate) bytes: usize,
}

impl<E: Encoding> Scorer for CodeScorer<'_, E> {
    #[inline(always)]
    fn dist(&self, id: u32) -> f32 {
        self.enc.distance(self.q, self.codes.get(id as usize))
    }
    /// The cache lines holding the code's first `bytes` bytes, into L2: the traversal
    /// fetches all new neighbours' codes at once. A code starts anywhere in a line, so it
    /// spans `ceil(bytes / 64)` lines or one more: the first `ceil(bytes / 64)` lines are
    /// fetched, then the line of the last byte, which is the extra line or (for most codes)
    /// the last one again, a duplicate request that costs next to nothing. No branch on the
    /// count, and no line too many (a fixed count of the worst case fetched 5 lines for
    /// every 216-byte SAQ-8 traversal code, of which 6 in 8 span 4).
    #[inline(always)]
    fn prefetch(&self, id: u32) {
        let start = self.codes.ptr(id as usize);
        let p = start.wrapping_sub(start as usize & 63);
        for l in 0..self.bytes.div_ceil(64) {
            crate::graph::search::prefetch_ptr_l2(p.wrapping_add(64 * l));
        }
        crate::graph::search::prefetch_ptr_l2(start.wrapping_add(self.bytes - 1));
    }
    #[inline(always)]
    fn dist_batch(&self, ids: &[u32], out: &mut [f32]) {
        self.enc.distance_ids(self.q, self.codes, ids, out);
    }
}

/// Scores an expanded node's neighbours from its neighbour-code row
/// ([`Encoding::distance_packed`], bit-identical to [`CodeScorer`]'s estimates), and single
/// nodes (entry points) from their codes.
pub(crate) struct RowScorer<'a, E: Encoding> {
    pub(crate) codes: CodeScorer<'a, E>,
    pub(crate) rows: &'a NeighborRows,
}

impl<E: Encoding> Scorer for RowScorer<'_, E> {
    #[inline(always)]
    fn dist(&self, id: u32) -> f32 {
        self.codes.dist(id)
    }
    #[inline(always)]
    fn dist_batch(&self, ids: &[u32], out: &mut [f32]) {
        self.codes.dist_batch(ids, out);
    }
    const ROWS: bool = true;
    #[inline(always)]
    fn dist_row(&self, v: u32, out: &mut [f32]) {
        let block = self.rows.block_bytes();
        for (b, o) in self.rows.row(v).chunks_exact(block).zip(out.chunks_mut(32)) {
            self.codes.enc.distance_packed(self.codes.q, b, o);
        }
    }
    /// The whole row into L2.
    #[inline(always)]
    fn prefetch_node(&self, v: u32) {
        let p = self.rows.row_ptr(v) as usize;
        for a in (p & !63..p + self.rows.row_bytes()).step_by(64) {
            crate::graph::search::prefetch_ptr_l2(a as *const u8);
        }
    }
}

thread_local! {
    static RERANK_BOUNDS: Cell<bool> = const { Cell::new(true) };
    static RERANK_SKIPPED: Cell<u64> = const { Cell::new(0) };
}

/// Whether re-ranking on the calling thread skips candidates by the encoding's error bound
/// (on by default; for tests and diagnostics). Returns the previous setting.
pub fn set_rerank_bounds(on: bool) -> bool {
    RERANK_BOUNDS.with(|c| c.replace(on))
}

/// How many re-ranking computations the error bound has skipped on the calling thread.
pub fn rerank_skipped() -> u64 {
    RERANK_SKIPPED.with(Cell::get)
}

/// Bound-driven re-ranking: drops from `cands` (traversal estimates) those whose interval's
/// lower end exceeds the `k`-th smallest upper end, so they are never re-scored. At least `k`
/// candidates remain (those whose upper ends define the threshold).
fn skip_by_bounds<E: Encoding>(
    enc: &E,
    q: &E::Query,
    codes: &CodeStore,
    k: usize,
    cands: &mut Vec<(f32, u32)>,
) {
    if cands.len() <= k || !RERANK_BOUNDS.with(Cell::get) {
        return;
    }
    // Encodings without a bound answer None for every code: find out before allocating.
    let (d0, id0) = cands[0];
    if enc
        .distance_interval(q, codes.get(id0 as usize), d0)
        .is_none()
    {
        return;
    }
    let mut lo = Vec::with_capacity(cands.len());
    let mut hi = Vec::with_capacity(cands.len());
    for &(d, id) in cands.iter() {
        match enc.distance_interval(q, codes.get(id as usize), d) {
            Some((l, h)) => {
                lo.push(l);
                hi.push(h);
            }
            None => return,
        }
    }
    let tau = *hi.select_nth_unstable_by(k - 1, f32::total_cmp).1;
    if tau.is_nan() {
        return; // NaN factors (a damaged code): no threshold, re-score everything
    }
    let before = cands.len();
    let mut i = 0;
    cands.retain(|_| {
        i += 1;
        lo[i - 1] <= tau
    });
    RERANK_SKIPPED.with(|c| c.set(c.get() + (before - cands.len()) as u64));
}

thread_local! {
    pub(crate) static SCRATCH: RefCell<SearchScratch> = RefCell::new(SearchScratch::default());
}

impl<E: Encoding> GraphIndex<E> {
    fn build(
        enc: E,
        data: Vec<f32>,
        keep_vectors: bool,
        build: BuildParams,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Self {
        let dim = enc.dim();
        let n = data.len() / dim;
        let mut codes = CodeStore::with_len(enc.code_size(), n);
        let stride = codes.stride();
        crate::encoding::encode_all(&enc, &data, codes.bytes_mut(), stride);
        let (graph, entry) = build_graph(&data, dim, enc.metric(), &build, progress);
        let max_norm2 = max_norm2(&data, dim, enc.metric());
        let vectors = if keep_vectors && !E::EXACT {
            Some(F32Store::Owned(data))
        } else {
            None
        };
        GraphIndex {
            enc,
            codes,
            graph,
            entry,
            vectors,
            keep_vectors,
            build,
            max_norm2,
            nrows: None,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.codes.len()
    }

    /// Beam search of `ef` from the entry point, scoring through the neighbour-code rows when
    /// the index keeps them; with `filter = Some((cap, allow))` only allowed nodes become
    /// results (`cap` of them, in `s.results`), else the results are the pool.
    fn traverse(
        &self,
        codes: CodeScorer<'_, E>,
        ef: usize,
        filter: Option<(usize, &BitSet)>,
        s: &mut SearchScratch,
    ) {
        fn walk<S: Scorer>(
            g: &Graph,
            entry: u32,
            sc: &S,
            ef: usize,
            filter: Option<(usize, &BitSet)>,
            s: &mut SearchScratch,
        ) {
            match filter {
                None => beam_search(g, &[entry], sc, ef, s),
                Some((cap, a)) => {
                    beam_search_filtered(g, &[entry], sc, ef, cap, |u| a.contains(u), s)
                }
            }
        }
        match &self.nrows {
            Some(rows) => walk(
                &self.graph,
                self.entry,
                &RowScorer { codes, rows },
                ef,
                filter,
                s,
            ),
            None => walk(&self.graph, self.entry, &codes, ef, filter, s),
        }
    }

    /// Searches one query (already normalised for cosine); writes k results (positions).
    /// With `allow`, only allowed positions are returned (see [`FilterStrategy`]).
    fn search_one(
        &self,
        q: &[f32],
        p: &SearchParams,
        allow: Option<(&BitSet, FilterStrategy)>,
        s: &mut SearchScratch,
        ids: &mut [i64],
        dists: &mut [f32],
    ) {
        ids.fill(-1);
        dists.fill(f32::INFINITY);
        if self.len() == 0 || allow.is_some_and(|a| a.0.count == 0) {
            return;
        }
        let k = p.k;
        // Re-ranking source: kept float vectors (exact), else the code's finer estimate.
        let rerank_src = match (&self.vectors, E::EXACT, E::HAS_FINE) {
            (_, true, _) => None,
            (Some(v), false, _) => Some(Some(v)),
            (None, false, true) => Some(None),
            (None, false, false) => None,
        };
        // The beam width is the user's (default 64, at least k); by default the re-ranked
        // candidates are the best max(3k, 30) of the beam, never more than the beam holds.
        let beam = p.ef.unwrap_or(64).max(k);
        let rerank = if rerank_src.is_some() {
            p.rerank.unwrap_or((3 * k).max(30).min(beam)).max(k)
        } else {
            0
        };
        let ef = beam.max(rerank);
        let pq = self.enc.prepare(q);
        // A distance reads the traversal bytes (prefetched up to 4 KiB).
        let scorer = CodeScorer {
            enc: &self.enc,
            q: &pq,
            codes: &self.codes,
            bytes: self.enc.traversal_bytes().clamp(1, 4096),
        };
        let filtered = match allow {
            None => {
                self.traverse(scorer, ef, None, s);
                false
            }
            Some((a, strategy)) => {
                // The beam must widen as the filter gets more selective for the results to
                // hold `ef` allowed candidates; scanning the allowed codes costs one estimate
                // each, a traversal roughly 16 per beam slot.
                let n = self.len();
                let sel = a.count as f64 / n as f64;
                let ef_f = ((ef as f64 / sel).ceil() as usize).clamp(ef, n.max(ef));
                let scan = match strategy {
                    FilterStrategy::Scan => true,
                    FilterStrategy::Graph => false,
                    FilterStrategy::Auto => a.count <= 16 * ef_f,
                };
                if scan {
                    s.results.reset(ef);
                    for id in a.iter() {
                        if (id as usize) < n {
                            let d = self.enc.distance(&pq, self.codes.get(id as usize));
                            s.results.insert(d, id);
                        }
                    }
                } else {
                    self.traverse(scorer, ef_f, Some((ef, a)), s);
                }
                true
            }
        };
        let found = if filtered { &s.results } else { &s.pool };
        match rerank_src {
            Some(src) => {
                let dim = self.enc.dim();
                let kern = kernels();
                let metric = self.enc.metric();
                let code = |id: u32| self.codes.get(id as usize);
                let mut cands: Vec<(f32, u32)> = found.iter().take(rerank).collect();
                skip_by_bounds(&self.enc, &pq, &self.codes, k, &mut cands);
                // Their finer codes (beyond what the traversal read) are fetched all at once.
                if E::HAS_FINE && (src.is_none() || self.enc.fine_prefilters()) {
                    let cs = self.enc.code_size();
                    for &(_, id) in &cands {
                        let p = self.codes.ptr(id as usize) as usize;
                        for a in (p & !63..p + cs).step_by(64) {
                            crate::graph::search::prefetch_ptr_l2(a as *const u8);
                        }
                    }
                }
                // With a finer code, re-score the candidates from it first (codes are compact
                // and mostly cached), so only the best few need their float vectors, which are
                // the expensive, cache-missing reads.
                let exact_n = match src {
                    Some(_) if E::HAS_FINE && self.enc.fine_prefilters() => {
                        for c in cands.iter_mut() {
                            c.0 = self.enc.distance_fine(&pq, code(c.1));
                        }
                        cands.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                        (2 * k).max(k + 8).min(cands.len())
                    }
                    _ => cands.len(),
                };
                match src {
                    Some(v) => {
                        let v = v.as_slice();
                        let lines = (dim * 4).div_ceil(64);
                        for &(_, id) in &cands[..exact_n] {
                            let p = v[id as usize * dim..].as_ptr() as *const u8;
                            for l in 0..lines {
                                crate::graph::search::prefetch_ptr_l2(p.wrapping_add(64 * l));
                            }
                        }
                        cands.truncate(exact_n);
                        for c in cands.iter_mut() {
                            let i = c.1 as usize * dim;
                            c.0 = metric.distance(kern, q, &v[i..i + dim]);
                        }
                    }
                    None => {
                        for c in cands.iter_mut() {
                            c.0 = self.enc.distance_fine(&pq, code(c.1));
                        }
                    }
                }
                cands.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                for (j, (d, id)) in cands.into_iter().take(k).enumerate() {
                    ids[j] = id as i64;
                    dists[j] = d;
                }
            }
            None => {
                for (j, (d, id)) in found.iter().take(k).enumerate() {
                    ids[j] = id as i64;
                    dists[j] = d;
                }
            }
        }
    }

    /// Builds, updates (`all`: re-packs every row, after a consolidation moved the codes) or
    /// drops (`on` false) the neighbour-code rows.
    fn sync_rows(&mut self, on: bool, all: bool) {
        if !on || self.enc.neighbor_block_bytes() == 0 {
            self.nrows = None;
            return;
        }
        match &mut self.nrows {
            Some(r) => {
                r.sync(&self.enc, &self.codes, &self.graph, all);
            }
            None => self.nrows = NeighborRows::build(&self.enc, &self.codes, &self.graph),
        }
    }

    fn memory(&self) -> MemoryUsage {
        MemoryUsage {
            codes: self.codes.memory_bytes(),
            graph: self.graph.memory_bytes(),
            vectors: self.vectors.as_ref().map_or(0, |v| v.memory_bytes()),
            params: self.enc.params_bytes(),
            ids: 0,
            mapped: self.codes.mapped_bytes()
                + self.vectors.as_ref().map_or(0, |v| v.mapped_bytes()),
            quantized_graph: 0,
            neighbor_codes: self.nrows.as_ref().map_or(0, |r| r.memory_bytes()),
        }
    }

    fn write(&self, w: &mut Writer) {
        let n = self.len();
        w.u8(self.enc.metric().tag());
        w.u8(E::TAG);
        w.u8(self.keep_vectors as u8);
        w.u8(self.vectors.is_some() as u8);
        w.u32(self.enc.dim() as u32);
        w.u64(n as u64);
        w.u32(self.graph.degree() as u32);
        w.u32(self.entry);
        w.f32(self.build.alpha);
        w.u32(self.build.build_ef as u32);
        w.u64(self.build.seed);
        w.u32(self.enc.code_size() as u32);
        self.enc.write_params(w);
        w.f32(self.max_norm2);
        w.align64();
        w.bytes(self.codes.bytes());
        w.u32s(self.graph.raw());
        if let Some(v) = &self.vectors {
            w.align64();
            w.f32s(v.as_slice());
        }
    }

    /// Reads what [`GraphIndex::write`] wrote (or the version-1 layout). With `map` (the file
    /// mapped, the payload at file offset [`io::HEADER`]) the vectors (and, with `map_codes`,
    /// the codes) of a version-2 file are served from the map instead of being read.
    fn read(
        r: &mut Reader,
        h: &Header,
        version: u32,
        map: Option<&Arc<Mmap>>,
        map_codes: bool,
    ) -> Result<Self> {
        let enc = E::read_params(r, h.dim, h.metric)?;
        if enc.code_size() != h.code_size {
            return Err(Error::Format(format!(
                "code size {} does not match the encoding's {}",
                h.code_size,
                enc.code_size()
            )));
        }
        let mut max_norm2 = 0.0;
        let codes = if version >= 2 {
            max_norm2 = r.f32()?;
            if !(max_norm2.is_finite() && max_norm2 >= 0.0) {
                return Err(Error::Format("invalid maximum norm".into()));
            }
            r.align64()?;
            let at = io::HEADER + r.pos();
            let raw = r.take_array(h.n, stride_of(h.code_size))?;
            let code_map = map.filter(|_| map_codes);
            match code_map.and_then(|m| CodeStore::mapped(h.code_size, h.n, m.clone(), at)) {
                Some(c) => c,
                None => {
                    let mut codes = CodeStore::with_len(h.code_size, h.n);
                    codes.bytes_mut().copy_from_slice(raw);
                    codes
                }
            }
        } else {
            let raw = r.take_array(h.n, h.code_size)?;
            let mut codes = CodeStore::with_len(h.code_size, h.n);
            for (i, c) in raw.chunks_exact(h.code_size.max(1)).enumerate().take(h.n) {
                codes.get_mut(i).copy_from_slice(c);
            }
            codes
        };
        let adj_len =
            h.n.checked_mul(h.degree + 1)
                .ok_or_else(|| Error::Format("graph size overflows".into()))?;
        let adj = r.u32s(adj_len)?;
        let graph = Graph::from_raw(h.degree, adj);
        graph.validate().map_err(Error::Format)?;
        if h.n > 0 && h.entry as usize >= h.n {
            return Err(Error::Format(format!(
                "entry point {} out of range",
                h.entry
            )));
        }
        let vectors = if h.has_vectors {
            let len =
                h.n.checked_mul(h.dim)
                    .ok_or_else(|| Error::Format("vector block overflows".into()))?;
            if version >= 2 {
                r.align64()?;
            }
            let at = io::HEADER + r.pos();
            let mapped = if version >= 2 {
                map.and_then(|m| F32Store::mapped(m.clone(), at, len))
            } else {
                None
            };
            match mapped {
                Some(v) => {
                    r.take_array(len, 4)?;
                    Some(v)
                }
                None => {
                    let v = r.f32s(len)?;
                    if v.iter().any(|x| !x.is_finite()) {
                        return Err(Error::Format(
                            "stored vectors contain non-finite values".into(),
                        ));
                    }
                    Some(F32Store::Owned(v))
                }
            }
        } else {
            None
        };
        let mut g = GraphIndex {
            enc,
            codes,
            graph,
            entry: h.entry,
            vectors,
            keep_vectors: h.keep_vectors,
            build: h.build.clone(),
            max_norm2,
            nrows: None,
        };
        if version < 2 && h.metric == Metric::InnerProduct {
            g.max_norm2 = g.recompute_max_norm2();
        }
        Ok(g)
    }
}

/// Largest squared norm of the rows (inner product only; 0 otherwise).
pub(crate) fn max_norm2(data: &[f32], dim: usize, metric: Metric) -> f32 {
    if metric != Metric::InnerProduct {
        return 0.0;
    }
    let k = kernels();
    data.par_chunks(dim)
        .map(|x| (k.dot_f32)(x, x))
        .reduce(|| 0.0, f32::max)
}

struct Header {
    metric: Metric,
    tag: u8,
    keep_vectors: bool,
    has_vectors: bool,
    dim: usize,
    n: usize,
    degree: usize,
    entry: u32,
    build: BuildParams,
    code_size: usize,
}

fn read_header(r: &mut Reader) -> Result<Header> {
    let metric =
        Metric::from_tag(r.u8()?).ok_or_else(|| Error::Format("unknown metric tag".into()))?;
    let tag = r.u8()?;
    let keep_vectors = r.u8()? != 0;
    let has_vectors = r.u8()? != 0;
    let dim = r.u32()? as usize;
    if dim == 0 || dim > MAX_DIM {
        return Err(Error::Format(format!("dimension {dim} out of range")));
    }
    let n = r.count("vector count", u32::MAX as u64 - 1)?;
    let degree = r.u32()? as usize;
    if degree == 0 || degree > MAX_DEGREE {
        return Err(Error::Format(format!("degree {degree} out of range")));
    }
    let entry = r.u32()?;
    let alpha = r.f32()?;
    let build_ef = r.u32()? as usize;
    let seed = r.u64()?;
    let code_size = r.u32()? as usize;
    Ok(Header {
        metric,
        tag,
        keep_vectors,
        has_vectors,
        dim,
        n,
        degree,
        entry,
        build: BuildParams {
            degree,
            build_ef,
            alpha,
            seed,
        },
        code_size,
    })
}

enum Inner {
    Flat(GraphIndex<Flat>),
    Sq8(GraphIndex<Sq8>),
    RaBitQ(GraphIndex<RaBitQ>),
    Lvq(GraphIndex<Lvq>),
    Pq(GraphIndex<Pq>),
    TurboQuant(GraphIndex<TurboQuant>),
    Saq(GraphIndex<Saq>),
}

macro_rules! dispatch {
    ($self:expr, $g:ident => $e:expr) => {
        match &$self.inner {
            Inner::Flat($g) => $e,
            Inner::Sq8($g) => $e,
            Inner::RaBitQ($g) => $e,
            Inner::Lvq($g) => $e,
            Inner::Pq($g) => $e,
            Inner::TurboQuant($g) => $e,
            Inner::Saq($g) => $e,
        }
    };
}

macro_rules! dispatch_mut {
    ($self:expr, $g:ident => $e:expr) => {
        match &mut $self.inner {
            Inner::Flat($g) => $e,
            Inner::Sq8($g) => $e,
            Inner::RaBitQ($g) => $e,
            Inner::Lvq($g) => $e,
            Inner::Pq($g) => $e,
            Inner::TurboQuant($g) => $e,
            Inner::Saq($g) => $e,
        }
    };
}

/// A graph index over encoded vectors, with user ids, incremental adds, deletes and filtered
/// search.
///
/// Vectors live at internal positions `0..n`; each position has a user id (by default its
/// position). Deleting marks a position with a tombstone: it keeps routing searches through
/// the graph but is never returned. Once tombstones reach [`CONSOLIDATE_AT`] of the positions,
/// the graph is repaired around them (FreshDiskANN's delete consolidation: every edge into a
/// deleted node is replaced by candidates from its out-neighbours, α-pruned) and the deleted
/// rows are dropped.
pub struct Index {
    inner: Inner,
    ids: Ids,
    deleted: BitSet,
    /// Id the next vector added without an explicit id gets.
    next_id: i64,
    /// The quantized graph serving unfiltered searches (see `qg_glue`), and whether it is
    /// enabled.
    qg: Option<crate::qg::QgIndex>,
    qg_on: bool,
}

/// Progress stage names of [`Index::build_reporting`].
pub const STAGE_TRAIN: &str = "train";
pub const STAGE_GRAPH: &str = "graph";

/// Fraction of tombstoned positions at which a delete consolidates the index.
pub const CONSOLIDATE_AT: f64 = 0.1;

fn check_matrix(what: &'static str, data: &[f32], dim: usize) -> Result<usize> {
    if dim == 0 {
        return Err(Error::Empty(if what == "vectors" {
            "vectors (0 columns)"
        } else {
            "queries (0 columns)"
        }));
    }
    if dim > MAX_DIM {
        return Err(Error::param(
            "dim",
            format!("{dim} exceeds the maximum {MAX_DIM}"),
        ));
    }
    if !data.len().is_multiple_of(dim) {
        return Err(Error::InvalidInput(format!(
            "{what}: length {} is not a multiple of dimension {dim}",
            data.len()
        )));
    }
    check_finite(what, data, dim)?;
    Ok(data.len() / dim)
}

fn normalized_copy(data: &[f32], dim: usize, metric: Metric) -> Vec<f32> {
    let mut v = crate::storage::copy_huge(data);
    if metric.normalizes() {
        v.par_chunks_mut(dim).for_each(normalize);
    }
    v
}

impl Index {
    /// Builds an index over `data` (row-major, `dim` columns) on `threads` threads;
    /// `progress(done, total)` follows the graph construction.
    pub fn build(
        data: &[f32],
        dim: usize,
        params: &IndexParams,
        threads: Option<usize>,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<Index> {
        Self::build_reporting(data, dim, params, threads, &|stage, done, total| {
            if stage == STAGE_GRAPH {
                progress(done, total)
            }
        })
    }

    /// [`Index::build`] reporting every stage: `progress(stage, done, total)` with stage
    /// [`STAGE_TRAIN`] (training the encoding, where it reports) or [`STAGE_GRAPH`].
    pub fn build_reporting(
        data: &[f32],
        dim: usize,
        params: &IndexParams,
        threads: Option<usize>,
        progress: &(dyn Fn(&str, usize, usize) + Sync),
    ) -> Result<Index> {
        let train_progress = |done: usize, total: usize| progress(STAGE_TRAIN, done, total);
        let graph_progress = |done: usize, total: usize| progress(STAGE_GRAPH, done, total);
        let progress = &graph_progress;
        let n = check_matrix("vectors", data, dim)?;
        if n == 0 {
            return Err(Error::Empty("vectors (0 rows)"));
        }
        if n >= u32::MAX as usize {
            return Err(Error::InvalidInput(format!(
                "{n} vectors is more than this index supports"
            )));
        }
        let b = &params.build;
        if b.degree < 2 || b.degree > MAX_DEGREE {
            return Err(Error::param(
                "degree",
                format!("must be in 2..={MAX_DEGREE}, got {}", b.degree),
            ));
        }
        if b.build_ef == 0 || b.build_ef > 100_000 {
            return Err(Error::param(
                "build_ef",
                format!("must be in 1..=100000, got {}", b.build_ef),
            ));
        }
        if !(b.alpha.is_finite() && (1.0..=4.0).contains(&b.alpha)) {
            return Err(Error::param(
                "alpha",
                format!("must be in [1, 4], got {}", b.alpha),
            ));
        }
        let metric = params.metric;
        with_threads(threads, || {
            let data = normalized_copy(data, dim, metric);
            let inner = match params.encoding {
                EncodingSpec::Flat => Inner::Flat(GraphIndex::build(
                    Flat::new(dim, metric),
                    data,
                    params.keep_vectors,
                    b.clone(),
                    progress,
                )),
                EncodingSpec::Sq8 => {
                    let enc = Sq8::train(&data, dim, metric);
                    Inner::Sq8(GraphIndex::build(
                        enc,
                        data,
                        params.keep_vectors,
                        b.clone(),
                        progress,
                    ))
                }
                EncodingSpec::Pq { m, bits, opq } => {
                    let enc = Pq::train_with_progress(
                        &data,
                        dim,
                        metric,
                        &PqConfig::new(m, bits, opq, b.seed),
                        &train_progress,
                    )?;
                    Inner::Pq(GraphIndex::build(
                        enc,
                        data,
                        params.keep_vectors,
                        b.clone(),
                        progress,
                    ))
                }
                EncodingSpec::Lvq { bits, residual } => {
                    let enc = Lvq::train(&data, dim, metric, bits, residual);
                    Inner::Lvq(GraphIndex::build(
                        enc,
                        data,
                        params.keep_vectors,
                        b.clone(),
                        progress,
                    ))
                }
                EncodingSpec::RaBitQ { bits } => {
                    let enc = RaBitQ::train(&data, dim, metric, &RaBitQConfig::new(bits, b.seed));
                    Inner::RaBitQ(GraphIndex::build(
                        enc,
                        data,
                        params.keep_vectors,
                        b.clone(),
                        progress,
                    ))
                }
                EncodingSpec::TurboQuant { bits, variant } => {
                    let enc = TurboQuant::new(dim, metric, bits, variant, b.seed);
                    Inner::TurboQuant(GraphIndex::build(
                        enc,
                        data,
                        params.keep_vectors,
                        b.clone(),
                        progress,
                    ))
                }
                EncodingSpec::Saq { bits } => {
                    let enc = Saq::train(&data, dim, metric, &SaqConfig::new(bits, b.seed))?;
                    Inner::Saq(GraphIndex::build(
                        enc,
                        data,
                        params.keep_vectors,
                        b.clone(),
                        progress,
                    ))
                }
            };
            let mut index = Index::from_inner(inner);
            index.refresh_qg(None);
            Ok(index)
        })
    }

    fn from_inner(inner: Inner) -> Index {
        // Neighbour-code rows (4-bit PQ) cost `32 · code_size` bytes per node, more than the
        // codes they speed up: off unless asked for. RaBitQ's quantized graph is on.
        let qg_on = !matches!(inner, Inner::Pq(_));
        Index {
            inner,
            ids: Ids::Range,
            deleted: BitSet::default(),
            next_id: 0,
            qg: None,
            qg_on,
        }
        .with_range_ids()
    }

    fn with_range_ids(mut self) -> Self {
        self.ids = Ids::Range;
        self.next_id = self.positions() as i64;
        self
    }

    /// Gives the vectors the user ids `ids` (one per vector, all distinct) instead of their
    /// positions `0..n`.
    pub fn with_ids(mut self, ids: &[i64]) -> Result<Index> {
        if ids.len() != self.positions() {
            return Err(Error::InvalidInput(format!(
                "ids: got {} ids for {} vectors",
                ids.len(),
                self.positions()
            )));
        }
        if self.deleted.count > 0 {
            return Err(Error::InvalidInput(
                "ids can only be set on a freshly built index".into(),
            ));
        }
        let mut pos = FxHashMap::default();
        pos.reserve(ids.len());
        for (i, &id) in ids.iter().enumerate() {
            if pos.insert(id, i as u32).is_some() {
                return Err(Error::InvalidInput(format!("ids: duplicate id {id}")));
            }
        }
        self.next_id = ids.iter().max().map_or(0, |&m| m.saturating_add(1));
        self.ids = Ids::Explicit {
            ext: ids.to_vec(),
            pos,
        };
        Ok(self)
    }

    /// Brings the neighbour-code rows in line with the graph (`all`: re-pack every row).
    fn refresh_rows(&mut self, all: bool) {
        let on = self.qg_on && self.positions() <= crate::qg::MAX_NODES;
        dispatch_mut!(self, g => g.sync_rows(on, all));
    }

    /// The neighbour-code rows of the traversal, if any (for tests and diagnostics).
    pub fn neighbor_rows(&self) -> Option<&NeighborRows> {
        dispatch!(self, g => g.nrows.as_ref())
    }

    /// Whether the default of [`Index::quantized_graph_enabled`] for this encoding is on
    /// (off for PQ, whose neighbour-code rows cost more memory than its codes).
    fn qg_default(&self) -> bool {
        !matches!(self.inner, Inner::Pq(_))
    }

    /// Stored positions, including deleted ones not yet consolidated.
    fn positions(&self) -> usize {
        dispatch!(self, g => g.len())
    }

    /// Number of live (not deleted) vectors.
    pub fn len(&self) -> usize {
        self.positions() - self.deleted.count
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Number of deleted vectors whose positions are not yet reclaimed.
    pub fn deleted_count(&self) -> usize {
        self.deleted.count
    }
    pub fn dim(&self) -> usize {
        dispatch!(self, g => g.enc.dim())
    }
    pub fn metric(&self) -> Metric {
        dispatch!(self, g => g.enc.metric())
    }
    pub fn encoding(&self) -> &'static str {
        match &self.inner {
            Inner::Flat(_) => Flat::NAME,
            Inner::Sq8(_) => Sq8::NAME,
            Inner::RaBitQ(_) => RaBitQ::NAME,
            Inner::Lvq(_) => Lvq::NAME,
            Inner::Pq(_) => Pq::NAME,
            Inner::TurboQuant(_) => TurboQuant::NAME,
            Inner::Saq(_) => Saq::NAME,
        }
    }
    pub fn keep_vectors(&self) -> bool {
        dispatch!(self, g => g.keep_vectors)
    }
    pub fn build_params(&self) -> BuildParams {
        dispatch!(self, g => g.build.clone())
    }
    pub fn memory_usage(&self) -> MemoryUsage {
        let mut m = dispatch!(self, g => g.memory());
        self.qg_memory(&mut m);
        m.ids = self.deleted.memory_bytes()
            + match &self.ids {
                Ids::Range => 0,
                // the id vector plus the table's slots (key, value and a control byte each)
                Ids::Explicit { ext, pos } => ext.capacity() * 8 + pos.capacity() * 13,
            };
        m
    }
    /// SAQ's bit allocation, `(dimensions, bits)` per segment in PCA order (None for other
    /// encodings).
    pub fn bit_allocation(&self) -> Option<Vec<(usize, u32)>> {
        match &self.inner {
            Inner::Saq(g) => Some(g.enc.allocation()),
            _ => None,
        }
    }
    /// The graph (for tests and diagnostics).
    pub fn graph(&self) -> &Graph {
        dispatch!(self, g => &g.graph)
    }
    pub fn entry_point(&self) -> u32 {
        dispatch!(self, g => g.entry)
    }

    #[inline]
    fn ext_id(&self, pos: u32) -> i64 {
        match &self.ids {
            Ids::Range => pos as i64,
            Ids::Explicit { ext, .. } => ext[pos as usize],
        }
    }

    /// Position of a live id.
    fn lookup(&self, id: i64) -> Option<u32> {
        match &self.ids {
            Ids::Range => (id >= 0 && (id as u64) < self.positions() as u64)
                .then_some(id as u32)
                .filter(|&p| !self.deleted.contains(p)),
            Ids::Explicit { pos, .. } => pos.get(&id).copied(),
        }
    }

    /// Whether `id` is a live vector of the index.
    pub fn contains(&self, id: i64) -> bool {
        self.lookup(id).is_some()
    }

    /// The ids of the live vectors, in storage order.
    pub fn ids(&self) -> Vec<i64> {
        (0..self.positions() as u32)
            .filter(|&p| !self.deleted.contains(p))
            .map(|p| self.ext_id(p))
            .collect()
    }

    fn explicit_ids(&mut self) -> (&mut Vec<i64>, &mut FxHashMap<i64, u32>) {
        if let Ids::Range = self.ids {
            let n = self.positions();
            let ext: Vec<i64> = (0..n as i64).collect();
            let pos = (0..n as u32)
                .filter(|&p| !self.deleted.contains(p))
                .map(|p| (p as i64, p))
                .collect();
            self.ids = Ids::Explicit { ext, pos };
        }
        match &mut self.ids {
            Ids::Explicit { ext, pos } => (ext, pos),
            Ids::Range => unreachable!("converted above"),
        }
    }

    /// Checks a batch of new vectors (and their ids, if given) before anything changes.
    fn check_new(&self, data: &[f32], dim: usize, ids: Option<&[i64]>) -> Result<usize> {
        if dim != self.dim() {
            return Err(Error::DimensionMismatch {
                expected: self.dim(),
                got: dim,
            });
        }
        let m = check_matrix("vectors", data, dim)?;
        if m == 0 {
            return Err(Error::Empty("vectors (0 rows)"));
        }
        if self.positions() + m >= u32::MAX as usize {
            return Err(Error::InvalidInput(format!(
                "adding {m} vectors would exceed the {} this index supports",
                u32::MAX - 1
            )));
        }
        if let Some(ids) = ids {
            if ids.len() != m {
                return Err(Error::InvalidInput(format!(
                    "ids: got {} ids for {m} vectors",
                    ids.len()
                )));
            }
            let mut seen = FxHashMap::default();
            for &id in ids {
                if seen.insert(id, ()).is_some() {
                    return Err(Error::InvalidInput(format!("ids: duplicate id {id}")));
                }
            }
        } else if self.next_id.checked_add(m as i64).is_none() {
            return Err(Error::InvalidInput(
                "no default ids left (an id near i64::MAX is in use); pass ids".into(),
            ));
        }
        Ok(m)
    }

    /// Adds vectors (row-major, `dim` columns) with the given ids, or with ids counting up
    /// from one past the largest id used so far. Returns the ids. Ids already in the index are
    /// an error (use [`Index::upsert`] to replace); nothing changes on error.
    ///
    /// The encoding's parameters are not retrained: new vectors are encoded with the trained
    /// ones and inserted into the graph like the build inserts them, with their neighbours
    /// searched on the codes and pruned with exact distances when float vectors are kept (or
    /// distances between decoded codes when they are not).
    pub fn add(
        &mut self,
        data: &[f32],
        dim: usize,
        ids: Option<&[i64]>,
        threads: Option<usize>,
    ) -> Result<Vec<i64>> {
        let m = self.check_new(data, dim, ids)?;
        if let Some(ids) = ids {
            if let Some(&dup) = ids.iter().find(|&&id| self.contains(id)) {
                return Err(Error::InvalidInput(format!(
                    "id {dup} is already in the index (use upsert to replace it)"
                )));
            }
        }
        Ok(self.add_unchecked(data, m, ids, threads))
    }

    fn add_unchecked(
        &mut self,
        data: &[f32],
        m: usize,
        ids: Option<&[i64]>,
        threads: Option<usize>,
    ) -> Vec<i64> {
        let dim = self.dim();
        let metric = self.metric();
        let n0 = self.positions();
        let new_ids: Vec<i64> = match ids {
            Some(ids) => ids.to_vec(),
            None => (self.next_id..self.next_id + m as i64).collect(),
        };
        let stays_range = matches!(self.ids, Ids::Range)
            && new_ids
                .iter()
                .enumerate()
                .all(|(j, &id)| id == (n0 + j) as i64);
        if !stays_range {
            self.explicit_ids();
        }
        let deleted = &self.deleted;
        with_threads(threads, || {
            let data = normalized_copy(data, dim, metric);
            dispatch_mut!(self, g => g.add(&data, &|p| deleted.contains(p)));
        });
        with_threads(threads, || self.refresh_qg(None));
        if !stays_range {
            let (ext, pos) = self.explicit_ids();
            for (j, &id) in new_ids.iter().enumerate() {
                ext.push(id);
                pos.insert(id, (n0 + j) as u32);
            }
        }
        if let Some(&mx) = new_ids.iter().max() {
            self.next_id = self.next_id.max(mx.saturating_add(1));
        }
        new_ids
    }

    /// Deletes the vectors with these ids (unknown ids are ignored); returns how many were
    /// deleted. They are never returned by a search from this call on. When tombstones reach
    /// [`CONSOLIDATE_AT`] of the stored positions, the graph is repaired and compacted.
    pub fn delete(&mut self, ids: &[i64], threads: Option<usize>) -> usize {
        let removed = self.tombstone(ids);
        if self.deleted.count as f64 >= CONSOLIDATE_AT * self.positions() as f64 {
            self.consolidate(threads);
        }
        removed
    }

    fn tombstone(&mut self, ids: &[i64]) -> usize {
        let mut removed = 0;
        for &id in ids {
            if let Some(p) = self.lookup(id) {
                self.deleted.insert(p);
                if let Ids::Explicit { pos, .. } = &mut self.ids {
                    pos.remove(&id);
                }
                removed += 1;
            }
        }
        removed
    }

    /// Inserts the vectors, replacing the ones whose ids are already present.
    pub fn upsert(
        &mut self,
        data: &[f32],
        dim: usize,
        ids: &[i64],
        threads: Option<usize>,
    ) -> Result<()> {
        let m = self.check_new(data, dim, Some(ids))?;
        self.tombstone(ids);
        self.add_unchecked(data, m, Some(ids), threads);
        if self.deleted.count as f64 >= CONSOLIDATE_AT * self.positions() as f64 {
            self.consolidate(threads);
        }
        Ok(())
    }

    /// Repairs the graph around deleted vectors and drops them, reclaiming their memory.
    pub fn consolidate(&mut self, threads: Option<usize>) {
        if self.deleted.count == 0 {
            return;
        }
        let deleted = std::mem::take(&mut self.deleted);
        let new_id: Vec<u32> = with_threads(
            threads,
            || dispatch_mut!(self, g => g.consolidate(&|p| deleted.contains(p))),
        );
        with_threads(threads, || self.refresh_qg(Some(&new_id)));
        let identity = new_id
            .iter()
            .enumerate()
            .all(|(p, &q)| q == u32::MAX || q == p as u32);
        if !(identity && matches!(self.ids, Ids::Range)) {
            {
                let old: Vec<i64> = (0..new_id.len() as u32).map(|p| self.ext_id(p)).collect();
                let mut ext = Vec::with_capacity(self.positions());
                let mut pos = FxHashMap::default();
                pos.reserve(self.positions());
                for (p, &q) in new_id.iter().enumerate() {
                    if q != u32::MAX {
                        debug_assert_eq!(q as usize, ext.len());
                        ext.push(old[p]);
                        pos.insert(old[p], q);
                    }
                }
                self.ids = Ids::Explicit { ext, pos };
            }
        }
    }

    /// Positions a filter allows (live ones only).
    fn allowed_set(&self, f: &Allowed<'_>) -> BitSet {
        let n = self.positions();
        let mut set = BitSet::with_len(n);
        match *f {
            Allowed::Ids(ids) => {
                for &id in ids {
                    if let Some(p) = self.lookup(id) {
                        set.insert(p);
                    }
                }
            }
            Allowed::Mask(mask) => {
                for p in 0..n as u32 {
                    let id = self.ext_id(p);
                    if id >= 0
                        && (id as u64) < mask.len() as u64
                        && mask[id as usize]
                        && !self.deleted.contains(p)
                    {
                        set.insert(p);
                    }
                }
            }
        }
        set
    }

    fn live_set(&self) -> BitSet {
        let n = self.positions();
        let mut set = BitSet::with_len(n);
        for p in 0..n as u32 {
            if !self.deleted.contains(p) {
                set.insert(p);
            }
        }
        set
    }

    /// Searches `queries` (row-major, `dim` columns). Returns `k` (id, distance) pairs per
    /// query, nearest first, padded with (-1, +inf) when fewer exist.
    pub fn search(
        &self,
        queries: &[f32],
        p: &SearchParams,
        threads: Option<usize>,
    ) -> Result<(Vec<i64>, Vec<f32>)> {
        self.search_with(queries, p, None, threads)
    }

    /// [`Index::search`] returning only vectors the filter allows. The filter is applied inside
    /// the traversal (rejected nodes still route the search), or, when few vectors are allowed,
    /// by scanning the allowed codes, so a selective filter still returns `k` results when `k`
    /// exist.
    pub fn search_with(
        &self,
        queries: &[f32],
        p: &SearchParams,
        filter: Option<&Filter<'_>>,
        threads: Option<usize>,
    ) -> Result<(Vec<i64>, Vec<f32>)> {
        let dim = self.dim();
        if p.k == 0 {
            return Err(Error::param("k", "must be at least 1"));
        }
        if p.k > 1_000_000 {
            return Err(Error::param("k", format!("{} is too large", p.k)));
        }
        if let Some(ef) = p.ef {
            if ef == 0 || ef > 1_000_000 {
                return Err(Error::param(
                    "ef",
                    format!("must be in 1..=1000000, got {ef}"),
                ));
            }
        }
        if let Some(r) = p.rerank {
            if r == 0 || r > 1_000_000 {
                return Err(Error::param(
                    "rerank",
                    format!("must be in 1..=1000000, got {r}"),
                ));
            }
        }
        let nq = check_matrix("queries", queries, dim)?;
        if nq == 0 {
            return Err(Error::Empty("queries (0 rows)"));
        }
        if let (None, Some(qg)) = (filter, &self.qg) {
            return Ok(self.search_qg(qg, queries, nq, p, threads));
        }
        let allow = match filter {
            Some(f) => Some((self.allowed_set(&f.allowed), f.strategy)),
            None if self.deleted.count > 0 => Some((self.live_set(), FilterStrategy::Auto)),
            None => None,
        };
        let allow = allow.as_ref().map(|(a, st)| (a, *st));
        let metric = self.metric();
        let k = p.k;
        let mut ids = vec![-1i64; nq * k];
        let mut dists = vec![f32::INFINITY; nq * k];
        let run = |qi: usize, oi: &mut [i64], od: &mut [f32]| {
            let mut q = queries[qi * dim..(qi + 1) * dim].to_vec();
            if metric.normalizes() {
                normalize(&mut q);
            }
            SCRATCH.with(|s| {
                let s = &mut *s.borrow_mut();
                dispatch!(self, g => g.search_one(&q, p, allow, s, oi, od))
            });
            if !matches!(self.ids, Ids::Range) {
                for id in oi.iter_mut().filter(|id| **id >= 0) {
                    *id = self.ext_id(*id as u32);
                }
            }
        };
        crate::parallel::for_each_query(&mut ids, &mut dists, k, threads, run);
        Ok((ids, dists))
    }

    /// Serialises the index into a payload of the current format version (see [`crate::io`]).
    pub fn to_payload(&self) -> Vec<u8> {
        let mut w = Writer::default();
        dispatch!(self, g => g.write(&mut w));
        match &self.ids {
            Ids::Range => w.u8(0),
            Ids::Explicit { ext, .. } => {
                w.u8(1);
                w.i64s(ext);
            }
        }
        w.u64(self.next_id as u64);
        w.u64(self.deleted.count as u64);
        if self.deleted.count > 0 {
            let words = self.positions().div_ceil(64);
            let mut v = self.deleted.words.clone();
            v.resize(words, 0);
            w.u64s(&v);
        }
        self.write_qg(&mut w);
        w.buf
    }

    /// The index in the file format, container included (used for pickling).
    pub fn to_bytes(&self) -> Vec<u8> {
        io::to_container(&self.to_payload())
    }

    /// Reads what [`Index::to_bytes`] wrote (or a whole index file's bytes).
    pub fn from_bytes(data: Vec<u8>) -> Result<Index> {
        let (version, payload) = io::verify_versioned(data)?;
        Self::from_payload_version(&payload, version, None)
    }

    /// Reads a payload of the current format version.
    pub fn from_payload(payload: &[u8]) -> Result<Index> {
        Self::from_payload_version(payload, io::FORMAT_VERSION, None)
    }

    fn from_payload_version(
        payload: &[u8],
        version: u32,
        map: Option<&Arc<Mmap>>,
    ) -> Result<Index> {
        Self::from_payload_mapped(payload, version, map, true)
    }

    fn from_payload_mapped(
        payload: &[u8],
        version: u32,
        map: Option<&Arc<Mmap>>,
        map_codes: bool,
    ) -> Result<Index> {
        let mut r = Reader::new(payload);
        let h = read_header(&mut r)?;
        let inner = match h.tag {
            Flat::TAG => Inner::Flat(GraphIndex::read(&mut r, &h, version, map, map_codes)?),
            Sq8::TAG => Inner::Sq8(GraphIndex::read(&mut r, &h, version, map, map_codes)?),
            RaBitQ::TAG => Inner::RaBitQ(GraphIndex::read(&mut r, &h, version, map, map_codes)?),
            Lvq::TAG => Inner::Lvq(GraphIndex::read(&mut r, &h, version, map, map_codes)?),
            Pq::TAG => Inner::Pq(GraphIndex::read(&mut r, &h, version, map, map_codes)?),
            TurboQuant::TAG => {
                Inner::TurboQuant(GraphIndex::read(&mut r, &h, version, map, map_codes)?)
            }
            Saq::TAG => Inner::Saq(GraphIndex::read(&mut r, &h, version, map, map_codes)?),
            t => return Err(Error::Format(format!("unknown encoding tag {t}"))),
        };
        let mut index = Index::from_inner(inner);
        if version >= 2 {
            let n = h.n;
            match r.u8()? {
                0 => {}
                1 => {
                    let ext = r.i64s(n)?;
                    index.ids = Ids::Explicit {
                        ext,
                        pos: FxHashMap::default(),
                    };
                }
                t => return Err(Error::Format(format!("unknown id table kind {t}"))),
            }
            index.next_id = r.u64()? as i64;
            let ndel = r.count("deleted count", n as u64)?;
            if ndel > 0 {
                let words = r.u64s(n.div_ceil(64))?;
                let mut set = BitSet::with_len(n);
                for (wi, &w) in words.iter().enumerate() {
                    for b in 0..64 {
                        if (w >> b) & 1 == 1 {
                            let p = wi * 64 + b;
                            if p >= n {
                                return Err(Error::Format("tombstone out of range".into()));
                            }
                            set.insert(p as u32);
                        }
                    }
                }
                if set.count != ndel {
                    return Err(Error::Format("tombstone count mismatch".into()));
                }
                index.deleted = set;
            }
            // Live ids must be distinct; rebuild their lookup table.
            if let Ids::Explicit { ext, .. } = &index.ids {
                let mut pos = FxHashMap::default();
                pos.reserve(n);
                for (p, &id) in ext.iter().enumerate() {
                    if !index.deleted.contains(p as u32) && pos.insert(id, p as u32).is_some() {
                        return Err(Error::Format(format!("duplicate id {id}")));
                    }
                }
                let max = ext.iter().copied().max().unwrap_or(-1);
                if index.next_id <= max && max < i64::MAX {
                    return Err(Error::Format("next id below a stored id".into()));
                }
                index.ids = Ids::Explicit {
                    ext: ext.clone(),
                    pos,
                };
            } else if index.next_id < n as i64 {
                return Err(Error::Format("next id below a stored id".into()));
            }
            if version >= 3 {
                index.read_qg(&mut r)?;
            }
        }
        r.finish()?;
        index.refresh_qg(None);
        Ok(index)
    }

    /// Writes the index to `path` atomically (a temporary file renamed into place).
    pub fn save(&self, path: &Path) -> Result<()> {
        io::write_file(path, &self.to_payload())
    }

    /// Loads an index written by [`Index::save`] (any supported format version).
    pub fn load(path: &Path) -> Result<Index> {
        let (version, payload) = io::read_file_versioned(path)?;
        Self::from_payload_version(&payload, version, None)
    }

    /// Loads an index and serves its codes and float vectors from a memory map of the file, so
    /// only the header, parameters, graph and ids are read: opening is fast and the pages are
    /// shared between processes. The checksum is not verified (it would read every page); the
    /// structure is. The first `add`/`delete` copies the mapped parts into RAM. Version-1 files
    /// (not aligned for mapping) are read as by [`Index::load`].
    pub fn load_mmap(path: &Path) -> Result<Index> {
        Self::load_mapped(path, true)
    }

    /// [`Index::load_mmap`] serving only the float vectors from the map (`map_codes = false`):
    /// the codes, read at every hop of a search, stay in RAM, while the float vectors, read
    /// only to re-rank a few candidates per query, stay on disk.
    pub fn load_mapped(path: &Path, map_codes: bool) -> Result<Index> {
        let (version, map) = io::open_mapped(path)?;
        if version < 2 {
            return Self::load(path);
        }
        let payload = &map[io::HEADER..map.len() - 4];
        Self::from_payload_mapped(payload, version, Some(&map), map_codes)
    }
}
