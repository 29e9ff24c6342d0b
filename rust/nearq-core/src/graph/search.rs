//! Beam search over the graph with a sorted candidate pool and a generation-stamped visited set.

use super::Graph;

/// Scores node ids against one prepared query.
pub trait Scorer {
    fn dist(&self, id: u32) -> f32;
    /// Hints the CPU to fetch the data `dist(id)` will read.
    fn prefetch(&self, _id: u32) {}
}

/// Visited set: one u16 stamp per node; a query bumps the generation, and the array is cleared
/// only when the 16-bit counter wraps (hnswlib's trick, ALGORITHMS.md §6.1).
pub struct Visited {
    marks: Vec<u16>,
    gen: u16,
}

impl Default for Visited {
    fn default() -> Self {
        Self::new()
    }
}

impl Visited {
    pub fn new() -> Self {
        Visited {
            marks: Vec::new(),
            gen: 0,
        }
    }

    /// Starts a new query over `n` nodes.
    pub fn reset(&mut self, n: usize) {
        if self.marks.len() < n {
            self.marks.resize(n, 0);
        }
        self.gen = self.gen.wrapping_add(1);
        if self.gen == 0 {
            self.marks.fill(0);
            self.gen = 1;
        }
    }

    /// Marks `i`; returns true if it was already marked in this query.
    #[inline(always)]
    pub fn check_and_mark(&mut self, i: u32) -> bool {
        let m = &mut self.marks[i as usize];
        let seen = *m == self.gen;
        *m = self.gen;
        seen
    }

    #[inline(always)]
    pub fn prefetch(&self, i: u32) {
        prefetch_ptr(self.marks.as_ptr().wrapping_add(i as usize) as *const u8);
    }
}

const EXPANDED: u32 = 1 << 31;

/// Candidate pool of at most `cap` entries sorted by distance, with a cursor on the nearest
/// entry not yet expanded (a linear buffer beats heaps for ef up to a few hundred).
#[derive(Default)]
pub struct Pool {
    dist: Vec<f32>,
    ids: Vec<u32>,
    cap: usize,
    cursor: usize,
}

impl Pool {
    pub fn reset(&mut self, cap: usize) {
        self.dist.clear();
        self.ids.clear();
        self.dist.reserve(cap + 1);
        self.ids.reserve(cap + 1);
        self.cap = cap.max(1);
        self.cursor = 0;
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Distance of the worst entry when full, +inf otherwise.
    #[inline(always)]
    pub fn threshold(&self) -> f32 {
        if self.ids.len() < self.cap {
            f32::INFINITY
        } else {
            self.dist[self.ids.len() - 1]
        }
    }

    /// Inserts a candidate if it beats the threshold; returns whether it was inserted.
    #[inline]
    pub fn insert(&mut self, d: f32, id: u32) -> bool {
        if d >= self.threshold() {
            return false;
        }
        let pos = self.dist.partition_point(|&x| x <= d);
        self.dist.insert(pos, d);
        self.ids.insert(pos, id);
        if self.ids.len() > self.cap {
            self.dist.pop();
            self.ids.pop();
        }
        if pos < self.cursor {
            self.cursor = pos;
        }
        true
    }

    /// Takes the nearest unexpanded candidate, marking it expanded.
    #[inline]
    pub fn pop(&mut self) -> Option<u32> {
        while self.cursor < self.ids.len() {
            let c = self.cursor;
            self.cursor += 1;
            if self.ids[c] & EXPANDED == 0 {
                self.ids[c] |= EXPANDED;
                return Some(self.ids[c] & !EXPANDED);
            }
        }
        None
    }

    /// The nearest unexpanded candidate after the one `pop` just returned (for prefetching).
    #[inline]
    pub fn peek(&self) -> Option<u32> {
        self.ids[self.cursor.min(self.ids.len())..]
            .iter()
            .find(|&&i| i & EXPANDED == 0)
            .map(|&i| i & !EXPANDED)
    }

    /// The entries nearest first as (distance, id).
    pub fn iter(&self) -> impl Iterator<Item = (f32, u32)> + '_ {
        self.dist
            .iter()
            .copied()
            .zip(self.ids.iter().map(|&i| i & !EXPANDED))
    }
}

#[inline(always)]
pub(crate) fn prefetch_ptr(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetch is a hint; it never faults, whatever the address.
    unsafe {
        core::arch::x86_64::_mm_prefetch(p as *const i8, core::arch::x86_64::_MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Scratch space reused across the searches of one thread.
#[derive(Default)]
pub struct SearchScratch {
    pub visited: Visited,
    pub pool: Pool,
    pub buf: Vec<u32>,
    /// Accepted candidates of a filtered search.
    pub results: Pool,
}

/// Beam search from `entry` with a pool of `ef` candidates; results are left in `s.pool`.
pub fn beam_search<S: Scorer>(
    graph: &Graph,
    entries: &[u32],
    scorer: &S,
    ef: usize,
    s: &mut SearchScratch,
) {
    const LOOKAHEAD: usize = 3;
    s.visited.reset(graph.len());
    s.pool.reset(ef);
    for &e in entries {
        if !s.visited.check_and_mark(e) {
            s.pool.insert(scorer.dist(e), e);
        }
    }
    while let Some(v) = s.pool.pop() {
        let nb = graph.neighbors(v);
        for &u in nb {
            s.visited.prefetch(u);
        }
        s.buf.clear();
        for &u in nb {
            if !s.visited.check_and_mark(u) {
                s.buf.push(u);
            }
        }
        for &u in s.buf.iter().take(LOOKAHEAD) {
            scorer.prefetch(u);
        }
        for i in 0..s.buf.len() {
            if let Some(&u) = s.buf.get(i + LOOKAHEAD) {
                scorer.prefetch(u);
            }
            let u = s.buf[i];
            let d = scorer.dist(u);
            s.pool.insert(d, u);
        }
    }
}

/// Beam search that routes through every node but collects only the nodes `accept` allows
/// into `s.results` (capacity `res_cap`), so a filter (or the tombstones of deleted nodes)
/// is applied inside the traversal: the beam of `ef` candidates keeps expanding through
/// rejected nodes, and the results hold the nearest accepted nodes it met.
pub fn beam_search_filtered<S: Scorer, F: Fn(u32) -> bool>(
    graph: &Graph,
    entries: &[u32],
    scorer: &S,
    ef: usize,
    res_cap: usize,
    accept: F,
    s: &mut SearchScratch,
) {
    const LOOKAHEAD: usize = 3;
    s.visited.reset(graph.len());
    s.pool.reset(ef);
    s.results.reset(res_cap);
    for &e in entries {
        if !s.visited.check_and_mark(e) {
            let d = scorer.dist(e);
            s.pool.insert(d, e);
            if accept(e) {
                s.results.insert(d, e);
            }
        }
    }
    while let Some(v) = s.pool.pop() {
        let nb = graph.neighbors(v);
        for &u in nb {
            s.visited.prefetch(u);
        }
        s.buf.clear();
        for &u in nb {
            if !s.visited.check_and_mark(u) {
                s.buf.push(u);
            }
        }
        for &u in s.buf.iter().take(LOOKAHEAD) {
            scorer.prefetch(u);
        }
        for i in 0..s.buf.len() {
            if let Some(&u) = s.buf.get(i + LOOKAHEAD) {
                scorer.prefetch(u);
            }
            let u = s.buf[i];
            let d = scorer.dist(u);
            s.pool.insert(d, u);
            if d < s.results.threshold() && accept(u) {
                s.results.insert(d, u);
            }
        }
    }
}
