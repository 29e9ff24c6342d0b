//! The index: an encoding's codes, the graph over them, and optional full-precision vectors
//! for re-ranking.

use crate::encoding::{Encoding, EncodingSpec, Flat, RaBitQ, RaBitQConfig, Sq8, TurboQuant};
use crate::encoding::{Lvq, Pq, PqConfig};
use crate::error::{Error, Result};
use crate::graph::search::SearchScratch;
use crate::graph::{beam_search, build_graph, BuildParams, Graph, Scorer};
use crate::io::{self, Reader, Writer};
use crate::metric::{check_finite, normalize, Metric};
use crate::parallel::with_threads;
use crate::storage::CodeStore;
use nearq_kernels::kernels;
use rayon::prelude::*;
use std::cell::RefCell;
use std::path::Path;

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
}

impl MemoryUsage {
    pub fn total(&self) -> usize {
        self.codes + self.graph + self.vectors + self.params
    }
}

struct GraphIndex<E: Encoding> {
    enc: E,
    codes: CodeStore,
    graph: Graph,
    entry: u32,
    /// Full-precision (normalised for cosine) vectors for re-ranking; never for exact encodings.
    vectors: Option<Vec<f32>>,
    keep_vectors: bool,
    build: BuildParams,
}

struct CodeScorer<'a, E: Encoding> {
    enc: &'a E,
    q: &'a E::Query,
    codes: &'a CodeStore,
    lines: usize,
}

impl<E: Encoding> Scorer for CodeScorer<'_, E> {
    #[inline(always)]
    fn dist(&self, id: u32) -> f32 {
        self.enc.distance(self.q, self.codes.get(id as usize))
    }
    #[inline(always)]
    fn prefetch(&self, id: u32) {
        let p = self.codes.ptr(id as usize);
        for l in 0..self.lines {
            crate::graph::search::prefetch_ptr(p.wrapping_add(64 * l));
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<SearchScratch> = RefCell::new(SearchScratch::default());
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
        let cs = enc.code_size();
        let stride = codes.stride();
        codes
            .bytes_mut()
            .par_chunks_exact_mut(stride)
            .zip(data.par_chunks(dim))
            .for_each(|(c, v)| enc.encode(v, &mut c[..cs]));
        let (graph, entry) = build_graph(&data, dim, enc.metric(), &build, progress);
        let vectors = if keep_vectors && !E::EXACT {
            Some(data)
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
        }
    }

    fn len(&self) -> usize {
        self.codes.len()
    }

    /// Searches one query (already normalised for cosine); writes k results.
    fn search_one(
        &self,
        q: &[f32],
        p: &SearchParams,
        s: &mut SearchScratch,
        ids: &mut [i64],
        dists: &mut [f32],
    ) {
        ids.fill(-1);
        dists.fill(f32::INFINITY);
        if self.len() == 0 {
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
        let lines = self.enc.code_size().div_ceil(64).min(8);
        let scorer = CodeScorer {
            enc: &self.enc,
            q: &pq,
            codes: &self.codes,
            lines,
        };
        beam_search(&self.graph, &[self.entry], &scorer, ef, s);
        match rerank_src {
            Some(src) => {
                let dim = self.enc.dim();
                let kern = kernels();
                let metric = self.enc.metric();
                let code = |id: u32| self.codes.get(id as usize);
                let mut cands: Vec<(f32, u32)> = s.pool.iter().take(rerank).collect();
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
                        let lines = (dim * 4).div_ceil(64);
                        for &(_, id) in &cands[..exact_n] {
                            let p = v[id as usize * dim..].as_ptr() as *const u8;
                            for l in 0..lines {
                                crate::graph::search::prefetch_ptr(p.wrapping_add(64 * l));
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
                for (j, (d, id)) in s.pool.iter().take(k).enumerate() {
                    ids[j] = id as i64;
                    dists[j] = d;
                }
            }
        }
    }

    fn memory(&self) -> MemoryUsage {
        MemoryUsage {
            codes: self.codes.memory_bytes(),
            graph: self.graph.memory_bytes(),
            vectors: self.vectors.as_ref().map_or(0, |v| v.capacity() * 4),
            params: self.enc.params_bytes(),
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
        for i in 0..n {
            w.bytes(self.codes.get(i));
        }
        w.u32s(self.graph.raw());
        if let Some(v) = &self.vectors {
            w.f32s(v);
        }
    }

    fn read(r: &mut Reader, h: &Header) -> Result<Self> {
        let enc = E::read_params(r, h.dim, h.metric)?;
        if enc.code_size() != h.code_size {
            return Err(Error::Format(format!(
                "code size {} does not match the encoding's {}",
                h.code_size,
                enc.code_size()
            )));
        }
        let raw = r.take_array(h.n, h.code_size)?;
        let mut codes = CodeStore::with_len(h.code_size, h.n);
        for (i, c) in raw.chunks_exact(h.code_size.max(1)).enumerate().take(h.n) {
            codes.get_mut(i).copy_from_slice(c);
        }
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
            let v = r.f32s(
                h.n.checked_mul(h.dim)
                    .ok_or_else(|| Error::Format("vector block overflows".into()))?,
            )?;
            if v.iter().any(|x| !x.is_finite()) {
                return Err(Error::Format(
                    "stored vectors contain non-finite values".into(),
                ));
            }
            Some(v)
        } else {
            None
        };
        r.finish()?;
        Ok(GraphIndex {
            enc,
            codes,
            graph,
            entry: h.entry,
            vectors,
            keep_vectors: h.keep_vectors,
            build: h.build.clone(),
        })
    }
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
        }
    };
}

/// A graph index over encoded vectors.
pub struct Index {
    inner: Inner,
}

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
    let mut v = data.to_vec();
    if metric.normalizes() {
        v.par_chunks_mut(dim).for_each(normalize);
    }
    v
}

impl Index {
    /// Builds an index over `data` (row-major, `dim` columns) on `threads` threads.
    pub fn build(
        data: &[f32],
        dim: usize,
        params: &IndexParams,
        threads: Option<usize>,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<Index> {
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
                    let enc = Pq::train(&data, dim, metric, &PqConfig::new(m, bits, opq, b.seed))?;
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
            };
            Ok(Index { inner })
        })
    }

    pub fn len(&self) -> usize {
        dispatch!(self, g => g.len())
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
        }
    }
    pub fn keep_vectors(&self) -> bool {
        dispatch!(self, g => g.keep_vectors)
    }
    pub fn build_params(&self) -> BuildParams {
        dispatch!(self, g => g.build.clone())
    }
    pub fn memory_usage(&self) -> MemoryUsage {
        dispatch!(self, g => g.memory())
    }
    /// The graph (for tests and diagnostics).
    pub fn graph(&self) -> &Graph {
        dispatch!(self, g => &g.graph)
    }
    pub fn entry_point(&self) -> u32 {
        dispatch!(self, g => g.entry)
    }

    /// Searches `queries` (row-major, `dim` columns). Returns `k` (id, distance) pairs per
    /// query, nearest first, padded with (-1, +inf) when fewer exist.
    pub fn search(
        &self,
        queries: &[f32],
        p: &SearchParams,
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
                dispatch!(self, g => g.search_one(&q, p, s, oi, od))
            });
        };
        if nq == 1 || threads == Some(1) {
            for (qi, (oi, od)) in ids.chunks_mut(k).zip(dists.chunks_mut(k)).enumerate() {
                run(qi, oi, od);
            }
        } else {
            with_threads(threads, || {
                ids.par_chunks_mut(k)
                    .zip(dists.par_chunks_mut(k))
                    .enumerate()
                    .for_each(|(qi, (oi, od))| run(qi, oi, od));
            });
        }
        Ok((ids, dists))
    }

    /// Serialises the index into a payload (see [`crate::io`]).
    pub fn to_payload(&self) -> Vec<u8> {
        let mut w = Writer::default();
        dispatch!(self, g => g.write(&mut w));
        w.buf
    }

    pub fn from_payload(payload: &[u8]) -> Result<Index> {
        let mut r = Reader::new(payload);
        let h = read_header(&mut r)?;
        let inner = match h.tag {
            Flat::TAG => Inner::Flat(GraphIndex::read(&mut r, &h)?),
            Sq8::TAG => Inner::Sq8(GraphIndex::read(&mut r, &h)?),
            RaBitQ::TAG => Inner::RaBitQ(GraphIndex::read(&mut r, &h)?),
            Lvq::TAG => Inner::Lvq(GraphIndex::read(&mut r, &h)?),
            Pq::TAG => Inner::Pq(GraphIndex::read(&mut r, &h)?),
            TurboQuant::TAG => Inner::TurboQuant(GraphIndex::read(&mut r, &h)?),
            t => return Err(Error::Format(format!("unknown encoding tag {t}"))),
        };
        Ok(Index { inner })
    }

    /// Writes the index to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        io::write_file(path, &self.to_payload())
    }

    /// Loads an index written by [`Index::save`].
    pub fn load(path: &Path) -> Result<Index> {
        let payload = io::read_file(path)?;
        Self::from_payload(&payload)
    }
}
