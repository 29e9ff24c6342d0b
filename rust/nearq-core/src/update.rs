//! Incremental changes to a built index: inserting vectors and consolidating deletes.
//!
//! Both reuse the build's rules (ALGORITHMS.md §6.2): a new vector searches the graph for
//! candidates (on the codes, the way queries do) and keeps an α-pruned subset as out-edges,
//! then each chosen neighbour gets the reverse edge, pruned when its row overflows. Pruning
//! needs distances between stored vectors: exact ones when float vectors are kept, else
//! between decoded codes. Consolidation is FreshDiskANN's: every live node with a deleted
//! out-neighbour replaces it by that neighbour's live out-neighbours and re-prunes, then the
//! deleted rows are dropped and the graph renumbered. Every node is kept reachable from the
//! entry point.

use crate::encoding::Encoding;
use crate::graph::prune::{robust_prune, sort_dedup};
use crate::graph::search::beam_search;
use crate::index::{CodeScorer, GraphIndex, SCRATCH};
use crate::metric::Metric;
use crate::storage::F32Store;
use nearq_kernels::kernels;
use rayon::prelude::*;

/// Vectors of a handful of nodes, fetched once, with pairwise build distances (squared L2,
/// in the augmented space for inner product).
struct Local {
    dim: usize,
    ip: Option<f32>,
    v: Vec<f32>,
    extra: Vec<f32>,
}

impl Local {
    fn new(dim: usize, ip: Option<f32>, cap: usize) -> Self {
        Local {
            dim,
            ip,
            v: Vec::with_capacity(cap * dim),
            extra: Vec::with_capacity(cap),
        }
    }
    fn push_with(&mut self, f: impl FnOnce(&mut [f32])) {
        let at = self.v.len();
        self.v.resize(at + self.dim, 0.0);
        f(&mut self.v[at..]);
        let e = match self.ip {
            Some(m) => {
                let x = &self.v[at..];
                (m - (kernels().dot_f32)(x, x)).max(0.0).sqrt()
            }
            None => 0.0,
        };
        self.extra.push(e);
    }
    #[inline]
    fn dist(&self, a: u32, b: u32) -> f32 {
        let (a, b) = (a as usize, b as usize);
        let d = self.dim;
        let l2 = (kernels().l2sq_f32)(&self.v[a * d..(a + 1) * d], &self.v[b * d..(b + 1) * d]);
        let t = self.extra[a] - self.extra[b];
        l2 + t * t
    }
}

impl<E: Encoding> GraphIndex<E> {
    /// The stored vector at `p` (exact if kept, else decoded from its code).
    fn fetch(&self, p: u32, out: &mut [f32]) {
        match &self.vectors {
            Some(v) => {
                let d = self.enc.dim();
                out.copy_from_slice(&v.as_slice()[p as usize * d..(p as usize + 1) * d]);
            }
            None => {
                if !self.enc.decode(self.codes.get(p as usize), out) {
                    // Encodings without a decoder: no geometry for pruning, so all candidates
                    // look alike and pruning keeps the nearest ones by search order.
                    out.fill(0.0);
                }
            }
        }
    }

    fn ip_norm(&self) -> Option<f32> {
        (self.enc.metric() == Metric::InnerProduct).then_some(self.max_norm2)
    }

    /// Largest squared norm over the stored vectors (for files that did not record it).
    pub(crate) fn recompute_max_norm2(&self) -> f32 {
        let d = self.enc.dim();
        let k = kernels();
        (0..self.len() as u32)
            .into_par_iter()
            .map_init(
                || vec![0f32; d],
                |buf, p| {
                    self.fetch(p, buf);
                    (k.dot_f32)(buf, buf)
                },
            )
            .reduce(|| 0.0, f32::max)
    }

    /// α-prunes `cands` (ids, any order, duplicates allowed) as neighbours of the vector `v`
    /// (or of stored node `p` when `v` is None) down to the degree.
    fn prune_for(&self, p: Option<u32>, v: Option<&[f32]>, cands: &[u32], out: &mut Vec<u32>) {
        let mut loc = Local::new(self.enc.dim(), self.ip_norm(), cands.len() + 1);
        match (v, p) {
            (Some(v), _) => loc.push_with(|o| o.copy_from_slice(v)),
            (None, Some(p)) => loc.push_with(|o| self.fetch(p, o)),
            (None, None) => unreachable!("a vector or a node"),
        }
        let mut ids: Vec<u32> = cands.iter().copied().filter(|&c| Some(c) != p).collect();
        ids.sort_unstable();
        ids.dedup();
        for &c in &ids {
            loc.push_with(|o| self.fetch(c, o));
        }
        let mut lc: Vec<(f32, u32)> = (1..=ids.len() as u32)
            .map(|j| (loc.dist(0, j), j))
            .collect();
        sort_dedup(&mut lc, 0);
        let mut local = Vec::with_capacity(self.graph.degree());
        robust_prune(
            &lc,
            self.build.alpha,
            self.graph.degree(),
            |a, b| loc.dist(a, b),
            &mut local,
        );
        out.clear();
        out.extend(local.iter().map(|&j| ids[j as usize - 1]));
    }

    /// Live candidates near `v` (a search on the codes from the entry point).
    fn candidates(&self, v: &[f32], ef: usize, deleted: &(dyn Fn(u32) -> bool + Sync)) -> Vec<u32> {
        let q = self.enc.prepare(v);
        let scorer = CodeScorer {
            enc: &self.enc,
            q: &q,
            codes: &self.codes,
            bytes: self.enc.code_size().clamp(1, 512),
        };
        SCRATCH.with(|s| {
            let s = &mut *s.borrow_mut();
            beam_search(&self.graph, &[self.entry], &scorer, ef, s);
            s.pool
                .iter()
                .map(|(_, id)| id)
                .filter(|&id| !deleted(id))
                .collect()
        })
    }

    /// Appends and inserts `data` (row-major, normalised for cosine), in the current pool.
    pub(crate) fn add(&mut self, data: &[f32], deleted: &(dyn Fn(u32) -> bool + Sync)) {
        let dim = self.enc.dim();
        let m = data.len() / dim;
        let n0 = self.len();
        self.codes.resize(n0 + m);
        let stride = self.codes.stride();
        {
            let out = &mut self.codes.bytes_mut()[n0 * stride..];
            crate::encoding::encode_all(&self.enc, data, out, stride);
        }
        if let Some(v) = &mut self.vectors {
            v.to_mut().extend_from_slice(data);
        }
        self.max_norm2 = self
            .max_norm2
            .max(crate::index::max_norm2(data, dim, self.enc.metric()));
        self.graph.grow(m);
        let mut start = n0;
        let end = n0 + m;
        if (0..n0 as u32).all(deleted) {
            // Nothing live to connect to: the first new vector becomes the entry point.
            self.entry = n0 as u32;
            start += 1;
        }
        // Twice the build's beam: the build searches a graph whose rows may overflow by 30%
        // (more edges, better candidates); with rows capped at the degree, the wider beam is
        // what brings incremental inserts to the full build's recall.
        let ef = 2 * self.build.build_ef;
        while start < end {
            // Batches grow with the index (as in the build's prefix doubling) so most points
            // see nearly the whole graph; points of one batch are inserted in parallel.
            let batch = (start / 50).clamp(1, 4096).min(end - start);
            let pts: Vec<u32> = (start as u32..(start + batch) as u32).collect();
            let out: Vec<Vec<u32>> = pts
                .par_iter()
                .map(|&p| {
                    let v = &data[(p as usize - n0) * dim..(p as usize - n0 + 1) * dim];
                    let cands = self.candidates(v, ef, deleted);
                    let mut out = Vec::new();
                    self.prune_for(Some(p), Some(v), &cands, &mut out);
                    out
                })
                .collect();
            for (&p, nb) in pts.iter().zip(&out) {
                self.graph.set_neighbors(p, nb);
            }
            self.add_reverse_edges(&pts, &out);
            start += batch;
        }
        self.relink_orphans(deleted);
    }

    /// Adds the reverse of every edge `p -> j`, pruning rows that overflow.
    fn add_reverse_edges(&mut self, pts: &[u32], out: &[Vec<u32>]) {
        let r = self.graph.degree();
        let mut rev: Vec<(u32, u32)> = pts
            .iter()
            .zip(out)
            .flat_map(|(&p, nb)| nb.iter().map(move |&j| (j, p)))
            .collect();
        rev.sort_unstable();
        let groups: Vec<&[(u32, u32)]> = rev.chunk_by(|a, b| a.0 == b.0).collect();
        let updates: Vec<(u32, Vec<u32>)> = groups
            .par_iter()
            .map(|g| {
                let j = g[0].0;
                let mut ids = self.graph.neighbors(j).to_vec();
                for &(_, src) in g.iter() {
                    if !ids.contains(&src) {
                        ids.push(src);
                    }
                }
                if ids.len() > r {
                    let cands = ids.clone();
                    self.prune_for(Some(j), None, &cands, &mut ids);
                }
                (j, ids)
            })
            .collect();
        for (j, nb) in updates {
            self.graph.set_neighbors(j, &nb);
        }
    }

    /// Gives every live node that cannot be reached from the entry point an in-edge from its
    /// nearest reachable node with a free slot (or replaces the last edge of the nearest).
    fn relink_orphans(&mut self, deleted: &(dyn Fn(u32) -> bool + Sync)) {
        let n = self.len();
        if n == 0 {
            return;
        }
        let d = self.enc.dim();
        for _round in 0..8 {
            let mut seen = vec![false; n];
            let mut stack = vec![self.entry];
            seen[self.entry as usize] = true;
            while let Some(v) = stack.pop() {
                for &u in self.graph.neighbors(v) {
                    if !seen[u as usize] {
                        seen[u as usize] = true;
                        stack.push(u);
                    }
                }
            }
            let orphans: Vec<u32> = (0..n as u32)
                .filter(|&i| !seen[i as usize] && !deleted(i))
                .collect();
            if orphans.is_empty() {
                return;
            }
            let mut v = vec![0f32; d];
            for &u in &orphans {
                self.fetch(u, &mut v);
                let cands: Vec<u32> = self
                    .candidates(&v, self.build.build_ef, deleted)
                    .into_iter()
                    .filter(|&c| c != u)
                    .collect();
                let Some(&nearest) = cands.first() else {
                    continue;
                };
                let host = cands
                    .iter()
                    .copied()
                    .find(|&c| self.graph.neighbors(c).len() < self.graph.degree());
                match host {
                    Some(h) => {
                        let mut nb = self.graph.neighbors(h).to_vec();
                        nb.push(u);
                        self.graph.set_neighbors(h, &nb);
                    }
                    None => {
                        let mut nb = self.graph.neighbors(nearest).to_vec();
                        *nb.last_mut().expect("a full row is not empty") = u;
                        self.graph.set_neighbors(nearest, &nb);
                    }
                }
                // A deleted-free path from the entry point may also need the orphan's own
                // out-edges (it may have none after consolidation).
                if self.graph.neighbors(u).is_empty() {
                    let mut out = Vec::new();
                    self.prune_for(Some(u), None, &cands, &mut out);
                    self.graph.set_neighbors(u, &out);
                }
            }
        }
    }

    /// Repairs the graph around the deleted nodes and drops them. Returns the new position of
    /// every old one (`u32::MAX` for deleted ones).
    pub(crate) fn consolidate(&mut self, deleted: &(dyn Fn(u32) -> bool + Sync)) -> Vec<u32> {
        let n = self.len();
        let d = self.enc.dim();
        // 1. Rows with deleted neighbours take those neighbours' live out-neighbours.
        let rows: Vec<(u32, Vec<u32>)> = (0..n as u32)
            .into_par_iter()
            .filter(|&p| !deleted(p) && self.graph.neighbors(p).iter().any(|&u| deleted(u)))
            .map(|p| {
                let mut cands = Vec::new();
                for &u in self.graph.neighbors(p) {
                    if deleted(u) {
                        cands.extend(
                            self.graph
                                .neighbors(u)
                                .iter()
                                .copied()
                                .filter(|&w| w != p && !deleted(w)),
                        );
                    } else {
                        cands.push(u);
                    }
                }
                let mut out = Vec::new();
                self.prune_for(Some(p), None, &cands, &mut out);
                (p, out)
            })
            .collect();
        // Each repaired row's new edges also get their reverse edge (as an insertion adds
        // them), so nodes that lost in-edges from deleted nodes regain some.
        let mut pts = Vec::with_capacity(rows.len());
        let mut fresh = Vec::with_capacity(rows.len());
        for (p, nb) in rows {
            let old = self.graph.neighbors(p);
            fresh.push(
                nb.iter()
                    .copied()
                    .filter(|u| !old.contains(u))
                    .collect::<Vec<u32>>(),
            );
            pts.push(p);
            self.graph.set_neighbors(p, &nb);
        }
        self.add_reverse_edges(&pts, &fresh);
        // 2. A deleted entry point is replaced by the live node nearest to it among those a
        //    breadth-first walk from it meets first.
        if n > 0 && deleted(self.entry) {
            let mut ev = vec![0f32; d];
            self.fetch(self.entry, &mut ev);
            let mut seen = vec![false; n];
            let mut queue = std::collections::VecDeque::from([self.entry]);
            seen[self.entry as usize] = true;
            let mut live = Vec::new();
            while let Some(v) = queue.pop_front() {
                if live.len() >= 256 {
                    break;
                }
                for &u in self.graph.neighbors(v) {
                    if !seen[u as usize] {
                        seen[u as usize] = true;
                        if !deleted(u) {
                            live.push(u);
                        }
                        queue.push_back(u);
                    }
                }
            }
            if live.is_empty() {
                live.extend((0..n as u32).filter(|&p| !deleted(p)).take(1));
            }
            let mut best = (f32::INFINITY, u32::MAX);
            let mut buf = vec![0f32; d];
            for &u in &live {
                self.fetch(u, &mut buf);
                let dd = (kernels().l2sq_f32)(&ev, &buf);
                if dd < best.0 || (dd == best.0 && u < best.1) {
                    best = (dd, u);
                }
            }
            if best.1 != u32::MAX {
                self.entry = best.1;
            }
        }
        // 3. Compaction.
        let keep: Vec<bool> = (0..n as u32).map(|p| !deleted(p)).collect();
        let mut new_id = vec![u32::MAX; n];
        let mut next = 0u32;
        for (p, &k) in keep.iter().enumerate() {
            if k {
                new_id[p] = next;
                next += 1;
            }
        }
        self.codes.retain(&keep);
        if let Some(v) = &mut self.vectors {
            let old = v.as_slice();
            let mut nv = Vec::with_capacity(next as usize * d);
            for (p, &k) in keep.iter().enumerate() {
                if k {
                    nv.extend_from_slice(&old[p * d..(p + 1) * d]);
                }
            }
            *v = F32Store::Owned(nv);
        }
        self.graph = self.graph.compact(&new_id);
        self.entry = if next == 0 {
            0
        } else {
            new_id[self.entry as usize]
        };
        self.relink_orphans(&|_| false);
        new_id
    }
}
