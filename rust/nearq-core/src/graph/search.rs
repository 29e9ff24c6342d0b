//! Beam search over the graph with a sorted candidate pool and a generation-stamped visited set.

use super::Graph;

/// Scores node ids against one prepared query.
pub trait Scorer {
    fn dist(&self, id: u32) -> f32;
    /// Hints the CPU to fetch the data `dist(id)` will read.
    fn prefetch(&self, _id: u32) {}
    /// `out[i] = dist(ids[i])`; scorers with a multi-code kernel override it.
    #[inline]
    fn dist_batch(&self, ids: &[u32], out: &mut [f32]) {
        for (o, &id) in out.iter_mut().zip(ids) {
            *o = self.dist(id);
        }
    }
    /// Whether the scorer scores a node's neighbours from the node's own row
    /// ([`Scorer::dist_row`]) rather than from their ids.
    const ROWS: bool = false;
    /// With [`Scorer::ROWS`]: `out[i]` = the distance to `graph.neighbors(v)[i]` for all `i <
    /// out.len()` (the node's whole neighbour list, visited neighbours included).
    #[inline]
    fn dist_row(&self, _v: u32, _out: &mut [f32]) {}
    /// With [`Scorer::ROWS`]: hints the CPU to fetch node `v`'s row.
    #[inline]
    fn prefetch_node(&self, _v: u32) {}
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
    #[inline(always)]
    pub fn insert(&mut self, d: f32, id: u32) -> bool {
        if d >= self.threshold() {
            return false;
        }
        self.insert_below(d, id);
        true
    }

    /// The insertion of a candidate below the threshold: after the entries at distance `<= d`
    /// (counted branch-free, which vectorises), the worst entry dropping out when full.
    #[inline(never)]
    fn insert_below(&mut self, d: f32, id: u32) {
        let n = self.dist.len();
        let pos = self.dist.iter().map(|&x| (x <= d) as usize).sum::<usize>();
        let keep = if n < self.cap { n } else { n - 1 };
        if n < self.cap {
            self.dist.push(0.0);
            self.ids.push(0);
        }
        // Entries pos..keep move up by one; the last one falls off when full.
        self.dist.copy_within(pos..keep, pos + 1);
        self.ids.copy_within(pos..keep, pos + 1);
        self.dist[pos] = d;
        self.ids[pos] = id;
        if pos < self.cursor {
            self.cursor = pos;
        }
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
        self.peek_dist().map(|(i, _)| i)
    }

    /// [`Pool::peek`] with the candidate's distance.
    #[inline]
    pub fn peek_dist(&self) -> Option<(u32, f32)> {
        let c = self.cursor.min(self.ids.len());
        self.ids[c..]
            .iter()
            .position(|&i| i & EXPANDED == 0)
            .map(|p| (self.ids[c + p], self.dist[c + p]))
    }

    /// The two nearest unexpanded candidates after the one `pop` just returned: `peek_dist`
    /// and the next one after it (for prefetching further ahead).
    #[inline]
    pub fn peek_two(&self) -> (Option<(u32, f32)>, Option<u32>) {
        let c = self.cursor.min(self.ids.len());
        let mut it = self.ids[c..]
            .iter()
            .enumerate()
            .filter(|(_, &i)| i & EXPANDED == 0);
        let first = it.next().map(|(p, &i)| (i, self.dist[c + p]));
        (first, it.next().map(|(_, &i)| i))
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

/// Hints the CPU to fetch the cache line at `p` into L2 (not L1): for data fetched in bulk
/// ahead of use, such as the codes of all new neighbours of an expanded node, which would
/// otherwise crowd L1 and its miss buffers. On the 50k MiniLM LVQ-4x8 index this made
/// single-query search 10-15% faster than fetching into L1.
#[inline(always)]
pub(crate) fn prefetch_ptr_l2(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetch is a hint; it never faults, whatever the address.
    unsafe {
        core::arch::x86_64::_mm_prefetch(p as *const i8, core::arch::x86_64::_MM_HINT_T1);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Hints the CPU to fetch node `i`'s adjacency row.
#[inline(always)]
fn prefetch_row(graph: &Graph, i: u32) {
    let r = graph.degree() + 1;
    let row = graph.raw()[i as usize * r..].as_ptr() as usize;
    let mut a = row & !63;
    while a < row + 4 * r {
        prefetch_ptr(a as *const u8);
        a += 64;
    }
}

/// Scratch space reused across the searches of one thread.
#[derive(Default)]
pub struct SearchScratch {
    pub visited: Visited,
    pub pool: Pool,
    pub buf: Vec<u32>,
    /// Distances of the candidates in `buf`.
    pub dists: Vec<f32>,
    /// Distances of all neighbours of the expanded node (scorers with rows).
    pub row_dists: Vec<f32>,
    /// Accepted candidates of a filtered search.
    pub results: Pool,
}

/// Beam search from `entries` with a pool of `ef` candidates; results are left in `s.pool`.
///
/// Per expanded node: the row of the next candidate is prefetched (usually the next node
/// expanded), the node's unvisited neighbours are marked and their codes prefetched in one
/// pass, so all their cache misses are in flight at once, then they are scored in one
/// [`Scorer::dist_batch`] call and offered to the pool. A scorer with rows
/// ([`Scorer::ROWS`]) instead scores all of the node's neighbours from its row, and the rows
/// of the next two candidates are prefetched.
pub fn beam_search<S: Scorer>(
    graph: &Graph,
    entries: &[u32],
    scorer: &S,
    ef: usize,
    s: &mut SearchScratch,
) {
    s.visited.reset(graph.len());
    s.pool.reset(ef);
    for &e in entries {
        if !s.visited.check_and_mark(e) {
            s.pool.insert(scorer.dist(e), e);
        }
    }
    while let Some(v) = s.pool.pop() {
        score_new_neighbors(graph, v, scorer, s);
        for (&d, &u) in s.dists.iter().zip(&s.buf) {
            s.pool.insert(d, u);
        }
    }
}

/// Scores the unvisited neighbours of `v` (marking them visited) into `s.buf` / `s.dists`.
#[inline(always)]
fn score_new_neighbors<S: Scorer>(graph: &Graph, v: u32, scorer: &S, s: &mut SearchScratch) {
    let mut next_d = f32::INFINITY;
    if S::ROWS {
        // Rows are large (kilobytes) and mostly out of cache: fetch the rows of the next two
        // candidates, so a row is requested about two expansions before it is read.
        let (first, second) = s.pool.peek_two();
        if let Some((w, d)) = first {
            prefetch_row(graph, w);
            scorer.prefetch_node(w);
            next_d = d;
        }
        if let Some(w2) = second {
            scorer.prefetch_node(w2);
        }
    } else if let Some((w, d)) = s.pool.peek_dist() {
        prefetch_row(graph, w);
        next_d = d;
    }
    let nb = graph.neighbors(v);
    for &u in nb {
        s.visited.prefetch(u);
    }
    s.buf.clear();
    if S::ROWS {
        // Every neighbour is scored from v's row; the visited ones are dropped after.
        s.row_dists.resize(nb.len(), 0.0);
        scorer.dist_row(v, &mut s.row_dists);
        s.dists.clear();
        for (&u, &d) in nb.iter().zip(&s.row_dists) {
            if !s.visited.check_and_mark(u) {
                s.buf.push(u);
                s.dists.push(d);
            }
        }
    } else {
        for &u in nb {
            if !s.visited.check_and_mark(u) {
                scorer.prefetch(u);
                s.buf.push(u);
            }
        }
        s.dists.resize(s.buf.len(), 0.0);
        scorer.dist_batch(&s.buf, &mut s.dists);
    }
    // A new neighbour nearer than the candidate prefetched above will be expanded next
    // instead: start fetching its row now.
    let mut best = (next_d.min(s.pool.threshold()), None);
    for (&d, &u) in s.dists.iter().zip(&s.buf) {
        if d < best.0 {
            best = (d, Some(u));
        }
    }
    if let (_, Some(u)) = best {
        prefetch_row(graph, u);
        if S::ROWS {
            scorer.prefetch_node(u);
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
        score_new_neighbors(graph, v, scorer, s);
        for (&d, &u) in s.dists.iter().zip(&s.buf) {
            s.pool.insert(d, u);
            if d < s.results.threshold() && accept(u) {
                s.results.insert(d, u);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pool against a sorted vector with the same rules: an entry goes after the entries
    /// at its distance, the worst falls off when full, `pop` takes the nearest unexpanded.
    #[test]
    fn pool_matches_a_sorted_reference() {
        let mut rng = crate::encoding::rotation::SplitMix::new(3);
        let mut draw = |m: u64| (rng.next_u64() % m) as u32;
        let mut pool = Pool::default();
        for trial in 0..3000 {
            let cap = 1 + draw(50) as usize;
            pool.reset(cap);
            let mut reference: Vec<(f32, u32, bool)> = Vec::new();
            for step in 0..draw(200) {
                if draw(4) == 0 {
                    let got = pool.pop();
                    let want = reference.iter_mut().find(|e| !e.2).map(|e| {
                        e.2 = true;
                        e.1
                    });
                    assert_eq!(got, want, "trial {trial} step {step}: pop");
                    continue;
                }
                // a coarse grid of distances: ties are common
                let (d, id) = (draw(40) as f32 * 0.25, draw(100_000));
                let thr = if reference.len() < cap {
                    f32::INFINITY
                } else {
                    reference[cap - 1].0
                };
                assert_eq!(pool.threshold(), thr);
                let inserted = pool.insert(d, id);
                assert_eq!(inserted, d < thr, "trial {trial} step {step}: insert");
                if d < thr {
                    let pos = reference.iter().filter(|e| e.0 <= d).count();
                    reference.insert(pos, (d, id, false));
                    reference.truncate(cap);
                }
                assert_eq!(pool.len(), reference.len());
                let got: Vec<(f32, u32)> = pool.iter().collect();
                let want: Vec<(f32, u32)> = reference.iter().map(|e| (e.0, e.1)).collect();
                assert_eq!(got, want, "trial {trial} step {step}");
                let next = reference.iter().find(|e| !e.2).map(|e| (e.1, e.0));
                assert_eq!(pool.peek_dist(), next);
            }
        }
    }
}
