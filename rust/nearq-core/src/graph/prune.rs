//! α-pruning (DiskANN's RobustPrune, the RNG rule when α = 1).
//!
//! Candidates are scanned nearest first; candidate `c` is dropped when some already kept
//! neighbour `r` satisfies `α · d(r, c) <= d(p, c)`, i.e. `r` already leads towards `c`.
//! α > 1 keeps longer edges, which bounds the number of hops. Distances are the metric's own
//! (squared L2, or 1 - cos, which is half the squared L2 of unit vectors), so α applies to
//! squared distances as in DiskANN.

/// Selects at most `degree` neighbours from `cands` (sorted by distance to `p`, ascending, no
/// duplicates, `p` excluded). `dist(a, b)` gives the distance between two stored points.
pub fn robust_prune(
    cands: &[(f32, u32)],
    alpha: f32,
    degree: usize,
    dist: impl Fn(u32, u32) -> f32,
    out: &mut Vec<u32>,
) {
    out.clear();
    for &(dp, c) in cands {
        if out.len() >= degree {
            break;
        }
        if out.iter().all(|&r| alpha * dist(r, c) > dp) {
            out.push(c);
        }
    }
}

/// Sorts candidates by distance (ties by id) and removes duplicate ids and `exclude`.
/// Distances are computed deterministically, so copies of one id sort next to each other.
pub fn sort_dedup(cands: &mut Vec<(f32, u32)>, exclude: u32) {
    cands.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut seen_last: Option<u32> = None;
    cands.retain(|&(_, id)| {
        if id == exclude || seen_last == Some(id) {
            return false;
        }
        seen_last = Some(id);
        true
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute-force statement of the rule on points of a line.
    #[test]
    fn matches_rule_on_small_sets() {
        let pts: Vec<f32> = vec![0.0, 1.0, 1.5, 3.0, -2.0, 4.0, -0.5];
        let d = |a: u32, b: u32| (pts[a as usize] - pts[b as usize]).powi(2);
        let p = 0u32;
        let mut cands: Vec<(f32, u32)> = (1..pts.len() as u32).map(|i| (d(p, i), i)).collect();
        sort_dedup(&mut cands, p);
        for &alpha in &[1.0f32, 1.2, 2.0] {
            let mut out = Vec::new();
            robust_prune(&cands, alpha, 10, d, &mut out);
            // every kept pair satisfies the rule
            for (i, &e) in out.iter().enumerate() {
                for &n in &out[..i] {
                    assert!(alpha * d(n, e) > d(p, e));
                }
            }
            // every dropped candidate is blocked by a kept one that precedes it
            for &(dp, c) in &cands {
                if !out.contains(&c) {
                    assert!(out.iter().any(|&r| cands.iter().position(|x| x.1 == r)
                        < cands.iter().position(|x| x.1 == c)
                        && alpha * d(r, c) <= dp));
                }
            }
        }
    }
}
