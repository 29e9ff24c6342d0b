//! Exact (brute-force) k-nearest-neighbour search, the ground truth for recall.

use crate::metric::{normalize, Metric};
use nearq_kernels::kernels;
use rayon::prelude::*;

/// For each of the `queries` (row-major, `dim` columns) finds the `k` nearest rows of `data`.
/// Returns (ids, distances), `k` per query, nearest first, padded with (-1, +inf).
pub fn exact_search(
    data: &[f32],
    queries: &[f32],
    dim: usize,
    k: usize,
    metric: Metric,
) -> (Vec<i64>, Vec<f32>) {
    let kern = kernels();
    let norm_copy = |x: &[f32]| -> Vec<f32> {
        let mut v = x.to_vec();
        if metric.normalizes() {
            v.par_chunks_mut(dim).for_each(normalize);
        }
        v
    };
    let data = norm_copy(data);
    let queries = norm_copy(queries);
    let nq = queries.len() / dim;
    let mut ids = vec![-1i64; nq * k];
    let mut dists = vec![f32::INFINITY; nq * k];
    ids.par_chunks_mut(k.max(1))
        .zip(dists.par_chunks_mut(k.max(1)))
        .enumerate()
        .for_each(|(qi, (oi, od))| {
            if k == 0 {
                return;
            }
            let q = &queries[qi * dim..(qi + 1) * dim];
            let mut heap: std::collections::BinaryHeap<(OrdF32, u32)> =
                std::collections::BinaryHeap::with_capacity(k + 1);
            for (i, row) in data.chunks_exact(dim).enumerate() {
                let d = metric.distance(kern, q, row);
                if heap.len() < k {
                    heap.push((OrdF32(d), i as u32));
                } else if d < heap.peek().unwrap().0 .0 {
                    heap.pop();
                    heap.push((OrdF32(d), i as u32));
                }
            }
            let sorted = heap.into_sorted_vec();
            for (j, (d, i)) in sorted.into_iter().enumerate() {
                oi[j] = i as i64;
                od[j] = d.0;
            }
        });
    (ids, dists)
}

#[derive(Copy, Clone, PartialEq)]
struct OrdF32(f32);
impl Eq for OrdF32 {}
impl PartialOrd for OrdF32 {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for OrdF32 {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&o.0)
    }
}
