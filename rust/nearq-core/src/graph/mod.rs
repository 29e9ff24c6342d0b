//! A single-layer proximity graph (Vamana-style) searched with a beam search.
//!
//! # Why this design
//! On high-dimensional embeddings the upper layers of HNSW buy little: a flat graph with a
//! fixed, well-chosen entry point (the medoid) and long-range edges from α-pruning (DiskANN's
//! RobustPrune, ALGORITHMS.md §6.2) reaches the same recall with fewer distance computations
//! and one contiguous adjacency array. We therefore build a Vamana graph, but insert points in
//! deterministic parallel batches of doubling size (prefix doubling, as in ParlayANN): every
//! point of a batch searches the graph as it stood before the batch, its pruned out-edges and
//! the reverse edges are then merged in a fixed order. The resulting graph is identical for any
//! thread count given a seed, and the build uses all cores without locks.
//!
//! Storage: one row of `degree + 1` u32 per node, `[count, n_1, ..., n_degree]`, so a node's
//! neighbours are one contiguous read, adds append rows, deletes can later mark or rewrite rows
//! in place, and filtered search only changes which nodes enter the result pool.

pub mod build;
pub mod prune;
pub mod search;

pub use build::{build_graph, BuildParams};
pub use search::{beam_search, beam_search_filtered, Pool, Scorer, Visited};

/// Fixed-degree adjacency storage.
#[derive(Clone, Debug, PartialEq)]
pub struct Graph {
    degree: usize,
    adj: Vec<u32>,
}

impl Graph {
    pub fn new(degree: usize, n: usize) -> Self {
        Graph {
            degree,
            adj: crate::storage::vec_huge(n * (degree + 1), 0),
        }
    }

    pub fn from_raw(degree: usize, adj: Vec<u32>) -> Self {
        debug_assert_eq!(adj.len() % (degree + 1), 0);
        Graph { degree, adj }
    }

    pub fn degree(&self) -> usize {
        self.degree
    }

    pub fn len(&self) -> usize {
        self.adj.len() / (self.degree + 1)
    }

    pub fn is_empty(&self) -> bool {
        self.adj.is_empty()
    }

    pub fn raw(&self) -> &[u32] {
        &self.adj
    }

    #[inline(always)]
    pub fn neighbors(&self, i: u32) -> &[u32] {
        let row = &self.adj[i as usize * (self.degree + 1)..(i as usize + 1) * (self.degree + 1)];
        &row[1..1 + row[0] as usize]
    }

    pub fn set_neighbors(&mut self, i: u32, nb: &[u32]) {
        assert!(nb.len() <= self.degree);
        let r = self.degree + 1;
        let row = &mut self.adj[i as usize * r..(i as usize + 1) * r];
        row[0] = nb.len() as u32;
        row[1..1 + nb.len()].copy_from_slice(nb);
        row[1 + nb.len()..].fill(0);
    }

    /// Appends `m` empty rows.
    pub fn grow(&mut self, m: usize) {
        let extra = m * (self.degree + 1);
        if self.adj.capacity() - self.adj.len() < extra {
            let want = extra.max(self.adj.len() / 2);
            crate::storage::reserve_huge(&mut self.adj, want);
        }
        self.adj.resize(self.adj.len() + extra, 0);
    }

    /// Keeps the rows whose `new_id` is not `u32::MAX`, renumbered by `new_id`, dropping edges
    /// to removed rows (compaction after deletes).
    pub fn compact(&self, new_id: &[u32]) -> Graph {
        let live = new_id.iter().filter(|&&x| x != u32::MAX).count();
        let mut g = Graph::new(self.degree, live);
        let mut nb = Vec::with_capacity(self.degree);
        for (i, &ni) in new_id.iter().enumerate() {
            if ni == u32::MAX {
                continue;
            }
            nb.clear();
            nb.extend(
                self.neighbors(i as u32)
                    .iter()
                    .map(|&u| new_id[u as usize])
                    .filter(|&u| u != u32::MAX),
            );
            g.set_neighbors(ni, &nb);
        }
        g
    }

    pub fn memory_bytes(&self) -> usize {
        self.adj.capacity() * 4
    }

    /// Checks structural invariants (used when loading files): counts within the degree,
    /// neighbour ids within range, no self-loops.
    pub fn validate(&self) -> Result<(), String> {
        let n = self.len();
        for i in 0..n {
            let row = &self.adj[i * (self.degree + 1)..(i + 1) * (self.degree + 1)];
            let c = row[0] as usize;
            if c > self.degree {
                return Err(format!(
                    "node {i} has {c} neighbours, more than the degree {}",
                    self.degree
                ));
            }
            if let Some(&bad) = row[1..1 + c]
                .iter()
                .find(|&&j| j as usize >= n || j as usize == i)
            {
                return Err(format!("node {i} has an invalid neighbour id {bad}"));
            }
        }
        Ok(())
    }
}
