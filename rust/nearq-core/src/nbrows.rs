//! Neighbour-code rows: every node owns its neighbours' codes already packed in the
//! encoding's multi-code layout (for 4-bit PQ, FastScan blocks of 32 codes), so expanding a
//! node scores all its neighbours from one contiguous row, without gathering their codes
//! from the code array and transposing them at every expansion (ALGORITHMS.md §6.4 applies
//! the same idea to RaBitQ in [`crate::qg`]).
//!
//! # Layout
//! Row `v` is `⌈R/32⌉` blocks of [`Encoding::neighbor_block_bytes`] bytes, `R` the graph's
//! degree; block `b` holds the codes of `graph.neighbors(v)[32 b .. 32 b + 32]` in the graph's
//! order (unused slots hold whatever [`Encoding::pack_neighbors`] writes there, and are never
//! read back as estimates). The neighbour ids are not stored in the row: the search reads them
//! from the graph, as it does without rows. All neighbours of an expanded node are scored
//! (visited ones too, which costs nothing extra in a FastScan block) and the visited ones are
//! dropped afterwards, so the search sees exactly the estimates of the gather path.
//!
//! # Keeping in step
//! The rows keep a snapshot of the adjacency they were packed from. [`NeighborRows::sync`]
//! appends rows for new nodes and re-packs every row whose neighbour list differs from the
//! graph's (codes of existing positions never change). After a consolidation, which moves
//! codes to new positions, every row is re-packed.

use crate::encoding::Encoding;
use crate::graph::Graph;
use crate::storage::CodeStore;
use rayon::prelude::*;

/// Packed neighbour codes, one fixed-size row per node.
pub struct NeighborRows {
    block: usize,
    blocks: usize,
    row_bytes: usize,
    degree: usize,
    rows: Vec<u8>,
    /// The graph rows (`[count, ids...]`, `degree + 1` u32 each) the rows were packed from.
    adj: Vec<u32>,
}

impl NeighborRows {
    /// Packs the rows of every node of `g`, or `None` when the encoding has no packed layout.
    pub(crate) fn build<E: Encoding>(enc: &E, codes: &CodeStore, g: &Graph) -> Option<Self> {
        let block = enc.neighbor_block_bytes();
        if block == 0 {
            return None;
        }
        let degree = g.degree();
        let blocks = degree.div_ceil(32);
        let mut r = NeighborRows {
            block,
            blocks,
            row_bytes: blocks * block,
            degree,
            rows: Vec::new(),
            adj: Vec::new(),
        };
        r.sync(enc, codes, g, true);
        Some(r)
    }

    /// Brings the rows in line with `g` over `codes`: rows appended for new nodes, rows whose
    /// neighbour list changed re-packed; `all` re-packs every row (after a consolidation moved
    /// the codes). Returns the number of rows packed.
    pub(crate) fn sync<E: Encoding>(
        &mut self,
        enc: &E,
        codes: &CodeStore,
        g: &Graph,
        all: bool,
    ) -> usize {
        assert_eq!(
            g.degree(),
            self.degree,
            "neighbour rows: the degree changed"
        );
        assert_eq!(enc.neighbor_block_bytes(), self.block);
        let n = g.len();
        let r = self.degree + 1;
        let old = self.adj.len() / r;
        let raw = g.raw();
        let dirty: Vec<bool> = (0..n)
            .into_par_iter()
            .map(|i| all || i >= old || raw[i * r..(i + 1) * r] != self.adj[i * r..(i + 1) * r])
            .collect();
        let rb = self.row_bytes;
        let have = self.rows.len();
        if have < n * rb {
            crate::storage::reserve_huge(&mut self.rows, n * rb - have);
        }
        self.rows.resize(n * rb, 0);
        let (block, blocks) = (self.block, self.blocks);
        self.rows
            .par_chunks_mut(rb)
            .enumerate()
            .filter(|(v, _)| dirty[*v])
            .for_each(|(v, row)| {
                let nb = g.neighbors(v as u32);
                for (b, out) in row.chunks_exact_mut(block).enumerate().take(blocks) {
                    let ids = &nb[(32 * b).min(nb.len())..(32 * b + 32).min(nb.len())];
                    enc.pack_neighbors(codes, ids, out);
                }
            });
        let packed = dirty.iter().filter(|&&d| d).count();
        self.adj.clear();
        self.adj.extend_from_slice(raw);
        packed
    }

    /// Row `v`: `blocks()` blocks of `block_bytes()` bytes.
    #[inline(always)]
    pub(crate) fn row(&self, v: u32) -> &[u8] {
        &self.rows[v as usize * self.row_bytes..(v as usize + 1) * self.row_bytes]
    }

    /// Pointer to the start of row `v` (for prefetching).
    #[inline(always)]
    pub(crate) fn row_ptr(&self, v: u32) -> *const u8 {
        self.rows.as_ptr().wrapping_add(v as usize * self.row_bytes)
    }

    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    pub fn block_bytes(&self) -> usize {
        self.block
    }

    pub fn len(&self) -> usize {
        self.rows.len() / self.row_bytes.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Bytes held (rows and the adjacency snapshot).
    pub fn memory_bytes(&self) -> usize {
        self.rows.capacity() + 4 * self.adj.capacity()
    }

    /// The packed bytes of all rows (for tests comparing against a fresh pack).
    pub fn bytes(&self) -> &[u8] {
        &self.rows
    }
}
