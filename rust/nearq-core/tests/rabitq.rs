//! RaBitQ / Extended RaBitQ: estimator statistics over random rotations, error bounds, the
//! ex-code search, persistence and recall inside the index (ALGORITHMS.md 1.12).

mod common;
use common::{assert_round_trip, clustered, dot, recall, unit, Rng};

use nearq_core::encoding::rabitq::{
    ex_levels_exact, ex_levels_fast, ex_levels_sweep, ex_objective,
};
use nearq_core::encoding::{Encoding, RaBitQ, RaBitQConfig};
use nearq_core::{
    exact_search, BuildParams, EncodingSpec, Error, Index, IndexParams, Metric, SearchParams,
};

/// Two unit vectors with inner product `cos`.
fn unit_pair(d: usize, cos: f64, rng: &mut Rng) -> (Vec<f64>, Vec<f64>) {
    let x = unit(rng.vec(d));
    let g = rng.vec(d);
    let p = dot(&g, &x);
    let e = unit(g.iter().zip(&x).map(|(a, b)| a - p * b).collect());
    let y = x
        .iter()
        .zip(&e)
        .map(|(a, b)| cos * a + (1.0 - cos * cos).sqrt() * b)
        .collect();
    (x, y)
}

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    (
        m,
        (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0)).sqrt(),
    )
}

/// Errors of the unit inner-product estimate for the pair `o = c + r`, `q = c + z`
/// (`||r|| = ||z|| = 1`, `<r, z> = cos`), one per rotation seed, for the traversal and the fine
/// estimate.
fn ip_errors(metric: Metric, d: usize, bits: u32, cos: f64, seeds: u64) -> (Vec<f64>, Vec<f64>) {
    let mut rng = Rng::new(42);
    let (r, z) = unit_pair(d, cos, &mut rng);
    let c: Vec<f64> = if metric == Metric::L2 {
        rng.vec(d).iter().map(|x| 0.3 * x).collect()
    } else {
        vec![0.0; d]
    };
    let c = if metric == Metric::InnerProduct {
        rng.vec(d).iter().map(|x| 0.05 * x).collect()
    } else {
        c
    };
    let o: Vec<f64> = c.iter().zip(&r).map(|(a, b)| a + b).collect();
    let q: Vec<f64> = c.iter().zip(&z).map(|(a, b)| a + b).collect();
    let truth = match metric {
        Metric::L2 => 2.0 - 2.0 * cos,
        _ => -dot(&o, &q),
    };
    let (of, qf, cf) = (f32s(&o), f32s(&q), f32s(&c));
    let (mut coarse, mut fine) = (Vec::new(), Vec::new());
    for seed in 0..seeds {
        let enc = RaBitQ::with_centres(d, metric, cf.clone(), &RaBitQConfig::new(bits, seed));
        let mut code = vec![0u8; enc.code_size()];
        enc.encode(&of, &mut code);
        let pq = enc.prepare(&qf);
        // Distance error in units of the unit inner product (2||r||||z|| for L2, ||r||||z|| for IP).
        let scale = if metric == Metric::L2 { 2.0 } else { 1.0 };
        coarse.push((truth - enc.distance(&pq, &code) as f64) / scale);
        fine.push((truth - enc.distance_fine(&pq, &code) as f64) / scale);
    }
    (coarse, fine)
}

#[test]
fn estimator_is_unbiased_over_rotations() {
    let n = 3000;
    for metric in [Metric::L2, Metric::InnerProduct] {
        for cos in [0.0, 0.5, 0.9] {
            let (coarse, fine) = ip_errors(metric, 128, 1, cos, n);
            let (m, s) = mean_std(&fine);
            let (mc, sc) = mean_std(&coarse);
            // Theory (1.4/1.12): std ≈ sqrt(1 - cos²)·sqrt((1 - c²)/(c²(D - 1))), c ≈ 0.7989.
            let c2 = 0.7989f64 * 0.7989;
            let theory = (1.0 - cos * cos).sqrt() * ((1.0 - c2) / (c2 * 127.0)).sqrt();
            eprintln!("{metric:?} cos={cos}: fine mean {m:.5} std {s:.5} (theory {theory:.5}); 4-bit query mean {mc:.5} std {sc:.5}");
            assert!(
                m.abs() < 4.0 * s / (n as f64).sqrt() + 1e-4,
                "{metric:?} cos={cos}: biased fine estimate, mean {m}"
            );
            assert!(
                mc.abs() < 5.0 * sc / (n as f64).sqrt() + 1e-4,
                "{metric:?} cos={cos}: biased coarse estimate, mean {mc}"
            );
            assert!(
                (s - theory).abs() < 0.1 * theory + 1e-4,
                "{metric:?} cos={cos}: std {s} vs theory {theory}"
            );
            // The 4-bit query adds an error of its own (about Δ/√12 per coordinate, whatever
            // `cos`): small next to the estimator's own error at cos = 0.
            let added = (sc * sc - s * s).max(0.0).sqrt();
            assert!(
                added < 0.02,
                "query quantisation adds too much error: {sc} vs {s}"
            );
        }
    }
}

/// From 4 bits the traversal estimate is the 4-bit one (the top 4 bits of the code, i8
/// query): unbiased, with about the 4-bit error (E<x̄,ŷ> ≈ 0.9946 at 4 bits; the top nibble of
/// a wider code is slightly worse) plus a small query-quantisation error.
#[test]
fn traversal_estimate_from_4_bits_is_unbiased() {
    let n = 1500;
    for metric in [Metric::L2, Metric::InnerProduct] {
        for cos in [0.0, 0.8] {
            for bits in [4, 8] {
                let (coarse, _) = ip_errors(metric, 128, bits, cos, n);
                let (m, s) = mean_std(&coarse);
                let c2 = 0.9946f64 * 0.9946;
                let theory = (1.0 - cos * cos).sqrt() * ((1.0 - c2) / (c2 * 127.0)).sqrt();
                eprintln!("{metric:?} cos={cos} bits={bits}: traversal mean {m:.5} std {s:.5} (4-bit theory {theory:.5})");
                assert!(
                    m.abs() < 5.0 * s / (n as f64).sqrt() + 1e-4,
                    "{metric:?} cos={cos} bits={bits}: biased, mean {m}"
                );
                assert!(
                    s < 1.3 * theory + 1e-3,
                    "{metric:?} cos={cos} bits={bits}: std {s} vs {theory}"
                );
            }
        }
    }
}

#[test]
fn error_halves_per_extra_bit() {
    let mut prev: Option<f64> = None;
    for bits in 1..=8 {
        let (_, fine) = ip_errors(Metric::L2, 256, bits, 0.0, 600);
        let (m, s) = mean_std(&fine);
        eprintln!("bits={bits}: mean {m:.6} std {s:.6}");
        assert!(
            m.abs() < 5.0 * s / (600f64).sqrt(),
            "bits={bits}: biased, mean {m}"
        );
        if let Some(p) = prev {
            let ratio = s / p;
            assert!(
                (0.4..0.6).contains(&ratio),
                "bits={bits}: std ratio {ratio}"
            );
        }
        prev = Some(s);
    }
}

#[test]
fn bound_covers_close_pairs() {
    let d = 384;
    let n = 2000;
    let mut rng = Rng::new(7);
    for (cos, want) in [(0.0, 0.9), (0.8, 0.99), (0.95, 0.995)] {
        let (r, z) = unit_pair(d, cos, &mut rng);
        let truth = 2.0 - 2.0 * cos;
        for bits in [1, 4] {
            let (mut hit, mut hit_fine) = (0, 0);
            for seed in 0..n {
                let enc = RaBitQ::with_centres(
                    d,
                    Metric::L2,
                    vec![0.0; d],
                    &RaBitQConfig::new(bits, 1000 + seed),
                );
                let mut code = vec![0u8; enc.code_size()];
                enc.encode(&f32s(&r), &mut code);
                let pq = enc.prepare(&f32s(&z));
                let (_, lo, hi) = enc.bound(&pq, &code);
                hit += (lo as f64 <= truth + 1e-5 && truth - 1e-5 <= hi as f64) as usize;
                let (_, lo, hi) = enc.bound_fine(&pq, &code);
                hit_fine += (lo as f64 <= truth + 1e-5 && truth - 1e-5 <= hi as f64) as usize;
            }
            let (cov, cov_fine) = (hit as f64 / n as f64, hit_fine as f64 / n as f64);
            eprintln!("cos={cos} bits={bits}: coverage {cov:.4}, fine {cov_fine:.4}");
            assert!(
                cov >= want && cov_fine >= want,
                "cos={cos} bits={bits}: coverage {cov} / {cov_fine} < {want}"
            );
        }
    }
}

#[test]
fn self_cosine_matches_the_published_table() {
    // E<x̄, ŷ> at D = 384 (ALGORITHMS.md 1.8): 0.7989, 0.9388, 0.9815, 0.9946.
    let d = 384;
    let mut rng = Rng::new(3);
    let want = [0.7989, 0.9388, 0.9815, 0.9946];
    for (bits, &w) in (1..=4).zip(&want) {
        let enc = RaBitQ::with_centres(d, Metric::L2, vec![0.0; d], &RaBitQConfig::new(bits, 5));
        let mut code = vec![0u8; enc.code_size()];
        let mut s = 0.0;
        for _ in 0..200 {
            let v = f32s(&rng.vec(d));
            enc.encode(&v, &mut code);
            s += enc.code_cosines(&code, &v).1;
        }
        let got = s / 200.0;
        assert!(
            (got - w).abs() < 0.003,
            "bits={bits}: E<x̄,ŷ> = {got}, want {w}"
        );
    }
}

#[test]
fn critical_value_search_is_optimal_and_beats_the_fast_encoder() {
    // Brute force over every level vector for small D.
    let mut rng = Rng::new(11);
    for ex_bits in 1..=2u32 {
        let lmax = (1usize << ex_bits) - 1;
        for _ in 0..30 {
            let a: Vec<f32> = f32s(&unit(rng.vec(6).iter().map(|x| x.abs()).collect()));
            let mut best = 0.0f64;
            let mut m = vec![0u8; 6];
            for code in 0..(lmax + 1).pow(6) {
                let mut c = code;
                for x in m.iter_mut() {
                    *x = (c % (lmax + 1)) as u8;
                    c /= lmax + 1;
                }
                best = best.max(ex_objective(&a, &m));
            }
            let amin = a.iter().cloned().fold(f32::INFINITY, f32::min) as f64;
            let (got, _) = ex_levels_sweep(&a, ex_bits, 0.0, (lmax as f64 + 1.0) / amin, &mut m);
            assert!(
                (got - best).abs() < 1e-9,
                "ex_bits={ex_bits}: sweep {got} vs brute force {best}"
            );
        }
    }
    // At D = 384 the windowed search equals the full sweep and is never below a constant `t`.
    for ex_bits in 1..=7u32 {
        let lmax = ((1u32 << ex_bits) - 1) as f64;
        let mut m = vec![0u8; 384];
        for _ in 0..10 {
            let a: Vec<f32> = f32s(&unit(rng.vec(384).iter().map(|x| x.abs()).collect()));
            let amin = a.iter().cloned().fold(f32::INFINITY, f32::min) as f64;
            let (full, t_best) = ex_levels_sweep(&a, ex_bits, 0.0, (lmax + 1.0) / amin, &mut m);
            let (win, _) = ex_levels_exact(&a, ex_bits, None, &mut m);
            assert!(
                win >= full - 1e-12,
                "ex_bits={ex_bits}: window {win} < full {full}"
            );
            for f in [0.9, 1.0, 1.1] {
                let fast = ex_levels_fast(&a, ex_bits, f * t_best, &mut m);
                let (exact, _) = ex_levels_exact(&a, ex_bits, Some(f * t_best), &mut m);
                assert!(
                    exact >= fast - 1e-12,
                    "ex_bits={ex_bits}: exact {exact} < fast {fast}"
                );
            }
        }
    }
    // Through the encoder: the full code's cosine with the exact search >= the fast encoder's.
    let d = 200;
    for bits in 2..=8 {
        let enc = RaBitQ::with_centres(d, Metric::L2, vec![0.0; d], &RaBitQConfig::new(bits, 9));
        let mut code = vec![0u8; enc.code_size()];
        let (mut se, mut sf) = (0.0, 0.0);
        for _ in 0..20 {
            let v = f32s(&rng.vec(d));
            enc.encode_with(&v, &mut code, false);
            let exact = enc.code_cosines(&code, &v).1;
            enc.encode_with(&v, &mut code, true);
            let fast = enc.code_cosines(&code, &v).1;
            assert!(
                exact >= fast - 1e-6,
                "bits={bits}: exact {exact} < fast {fast}"
            );
            se += exact;
            sf += fast;
        }
        eprintln!(
            "bits={bits}: mean cosine exact {:.6} fast {:.6}",
            se / 20.0,
            sf / 20.0
        );
    }
}

#[test]
fn popcount_path_matches_float_path_with_fine_query() {
    // With a query whose rotated coordinates are exactly on the 4-bit grid the bit-plane
    // estimate equals the float one; in general they differ by the query quantisation only.
    let d = 96;
    let mut rng = Rng::new(5);
    let enc = RaBitQ::with_centres(d, Metric::L2, vec![0.0; d], &RaBitQConfig::new(1, 3));
    let mut code = vec![0u8; enc.code_size()];
    let (mut diff, mut scale) = (0.0f64, 0.0f64);
    for _ in 0..200 {
        let (v, q) = (f32s(&rng.vec(d)), f32s(&rng.vec(d)));
        enc.encode(&v, &mut code);
        let pq = enc.prepare(&q);
        let (a, b) = (
            enc.distance(&pq, &code) as f64,
            enc.distance_fine(&pq, &code) as f64,
        );
        diff += (a - b).abs();
        scale += b;
    }
    assert!(diff / scale < 0.02, "mean relative gap {}", diff / scale);
    // Unaligned code slices take the portable path and give the same result.
    let mut shifted = vec![0u8; code.len() + 1];
    shifted[1..].copy_from_slice(&code);
    let pq = enc.prepare(&f32s(&rng.vec(d)));
    assert_eq!(enc.distance(&pq, &code), enc.distance(&pq, &shifted[1..]));
}

fn build(data: &[f32], dim: usize, metric: Metric, bits: u32, keep_vectors: bool) -> Index {
    let p = IndexParams {
        metric,
        encoding: EncodingSpec::RaBitQ { bits },
        keep_vectors,
        build: BuildParams::default(),
    };
    let mut index = Index::build(data, dim, &p, Some(2), &|_, _| {}).unwrap();
    // These tests are about the codes path (traversal on RaBitQ estimates, re-ranking), which
    // an index with kept vectors otherwise leaves to its quantized graph for L2 and cosine.
    index.set_quantized_graph(false, Some(1));
    index
}

/// On isotropic Gaussian clusters the within-cluster neighbours are nearly equidistant, the
/// hardest case for any code: the 1-bit traversal estimate needs a wide beam, and the 4-bit
/// estimate itself ranks the top 10 at ~0.83 recall even by brute force (ex-bits: 8 bits ≈ exact).
#[test]
fn recall_against_exact_search() {
    let (n, dim, k) = (3000, 128, 10);
    let data = clustered(n, dim, 1);
    let queries = clustered(100, dim, 2);
    for metric in [Metric::L2, Metric::Cosine, Metric::InnerProduct] {
        let (truth, _) = exact_search(&data, &queries, dim, k, metric);
        for (bits, keep, want) in [(1, true, 0.9), (8, false, 0.9), (4, false, 0.75)] {
            let index = build(&data, dim, metric, bits, keep);
            assert_eq!(index.encoding(), "rabitq");
            let p = SearchParams {
                k,
                ef: Some(256),
                rerank: Some(256),
            };
            let (ids, _) = index.search(&queries, &p, None).unwrap();
            let r = recall(&ids, &truth, k);
            eprintln!("{metric:?} bits={bits} keep_vectors={keep}: recall@10 {r:.3}");
            assert!(
                r >= want,
                "{metric:?} bits={bits} keep_vectors={keep}: recall {r} < {want}"
            );
        }
    }
}

#[test]
fn spec_parse() {
    assert_eq!(
        EncodingSpec::parse("rabitq", None).unwrap(),
        EncodingSpec::RaBitQ { bits: 4 }
    );
    assert_eq!(
        EncodingSpec::parse("RaBitQ", Some(&[1])).unwrap(),
        EncodingSpec::RaBitQ { bits: 1 }
    );
    assert_eq!(
        EncodingSpec::parse("rabitq", Some(&[8])).unwrap().name(),
        "rabitq"
    );
    for b in [0, 9, 32] {
        assert!(matches!(
            EncodingSpec::parse("rabitq", Some(&[b])),
            Err(Error::InvalidParameter { .. })
        ));
    }
}

#[test]
fn persistence_round_trip_and_validation() {
    let (n, dim, k) = (400, 40, 5);
    let data = clustered(n, dim, 8);
    let queries = clustered(20, dim, 9);
    for (bits, keep, metric) in [
        (1, true, Metric::L2),
        (3, false, Metric::Cosine),
        (8, false, Metric::InnerProduct),
    ] {
        let index = build(&data, dim, metric, bits, keep);
        let payload = assert_round_trip(&index, "rabitq", &queries, k);
        // The parameters start right after the 44-byte header: bits (u32), padded dim (u32),
        // seed (u64), fast flag (u8), eps0 (f32), t_fast (f32), centre, rotation signs.
        let corrupt = |at: usize, bytes: &[u8]| {
            let mut p = payload.clone();
            p[at..at + bytes.len()].copy_from_slice(bytes);
            Index::from_payload(&p)
        };
        for (at, bytes) in [
            (44, &9u32.to_le_bytes()[..]),
            (44, &0u32.to_le_bytes()[..]),
            (48, &128u32.to_le_bytes()[..]),
            (60, &[2u8][..]),
            (61, &f32::NAN.to_le_bytes()[..]),
            (61, &(-1.0f32).to_le_bytes()[..]),
            (69, &f32::INFINITY.to_le_bytes()[..]),
        ] {
            assert!(
                matches!(corrupt(at, bytes), Err(Error::Format(_))),
                "bits={bits}: corrupt at {at} accepted"
            );
        }
        assert!(matches!(
            Index::from_payload(&payload[..60]),
            Err(Error::Format(_))
        ));
    }
}

/// Bound-driven re-ranking: candidates whose traversal interval starts above the k-th
/// smallest upper end are not re-scored. With the whole beam re-ranked most of it is skipped,
/// and the results stay those of re-scoring every candidate.
#[test]
fn rerank_skips_candidates_that_cannot_enter_the_top_k() {
    use nearq_core::index::{rerank_skipped, set_rerank_bounds};
    let (n, dim, k) = (3000, 128, 10);
    let data = clustered(n, dim, 1);
    let queries = clustered(200, dim, 2);
    let nq = queries.len() / dim;
    // (metric, bits, keep_vectors, least skipped per query): the 1-bit bound at D = 128 is
    // too wide to skip much (measured 0.5 of 128), but must not change results either.
    for (metric, bits, keep, least) in [
        (Metric::L2, 4, true, 60.0),
        (Metric::Cosine, 8, false, 60.0),
        (Metric::InnerProduct, 8, true, 60.0),
        (Metric::L2, 1, true, 0.0),
    ] {
        let (truth, _) = exact_search(&data, &queries, dim, k, metric);
        let index = build(&data, dim, metric, bits, keep);
        let p = SearchParams {
            k,
            ef: Some(128),
            rerank: Some(128),
        };
        // `threads = 1` searches on this thread, whose counter and switch these are.
        let was = set_rerank_bounds(false);
        assert!(was, "bounds are on by default");
        let before = rerank_skipped();
        let (ids_all, d_all) = index.search_with(&queries, &p, None, Some(1)).unwrap();
        assert_eq!(
            rerank_skipped(),
            before,
            "skipped with the bound switched off"
        );
        set_rerank_bounds(true);
        let (ids, d) = index.search_with(&queries, &p, None, Some(1)).unwrap();
        let skipped = rerank_skipped() - before;
        let per_query = skipped as f64 / nq as f64;
        let same = ids
            .chunks(k)
            .zip(ids_all.chunks(k))
            .filter(|(a, b)| a == b)
            .count();
        let (r, r_all) = (recall(&ids, &truth, k), recall(&ids_all, &truth, k));
        eprintln!(
            "{metric:?} bits={bits} keep={keep}: skipped {per_query:.1} of 128 per query; \
             identical results {same}/{nq}; recall {r:.4} (all re-scored {r_all:.4})"
        );
        assert!(
            per_query >= least,
            "{metric:?} bits={bits}: only {per_query} skipped"
        );
        assert!(
            same >= nq * 99 / 100,
            "{metric:?} bits={bits}: {same}/{nq} identical"
        );
        assert!(
            r >= r_all - 0.002,
            "{metric:?} bits={bits}: recall {r} vs {r_all}"
        );
        // Where results agree the distances are the same re-scored values.
        for ((a, b), (x, y)) in ids.iter().zip(&ids_all).zip(d.iter().zip(&d_all)) {
            if a == b {
                assert_eq!(x, y);
            }
        }
    }
}
