//! The quantized graph (SymphonyQG layout): recall against exact search.

mod common;
use common::{clustered, recall};
use nearq_core::qg::QgIndex;
use nearq_core::{exact_search, EncodingSpec, Index, IndexParams, Metric};

#[test]
fn qg_recall_against_exact_search() {
    let (n, dim, k) = (3000, 64, 10);
    let data = clustered(n, dim, 31);
    let queries = clustered(100, dim, 32);
    // 1-bit estimates at d = 64 are coarse, so the beam is wide; every result is exact.
    for (metric, bits, ef) in [
        (Metric::L2, 1, 256),
        (Metric::Cosine, 1, 256),
        (Metric::L2, 2, 160),
        (Metric::Cosine, 2, 160),
    ] {
        let p = IndexParams {
            metric,
            encoding: EncodingSpec::Flat,
            ..Default::default()
        };
        let index = Index::build(&data, dim, &p, Some(2), &|_, _| {}).unwrap();
        let qg = QgIndex::from_graph(&index, &data, 7, bits, false).unwrap();
        let (truth, tdist) = exact_search(&data, &queries, dim, k, metric);
        let mut ids = Vec::new();
        for (qi, q) in queries.chunks_exact(dim).enumerate() {
            let res = qg.search(q, k, ef);
            assert_eq!(res.len(), k);
            // distances are exact (every result was re-ranked with its float vector)
            let d0 = tdist[qi * k];
            assert!(res[0].0 >= d0 - 1e-3 * d0.abs().max(1.0));
            ids.extend(res.iter().map(|r| r.1 as i64));
        }
        let r = recall(&ids, &truth, k);
        assert!(r >= 0.95, "{metric:?} bits={bits} ef={ef}: recall {r}");
    }
}

#[test]
fn qg_save_load_round_trip_and_damage() {
    let (n, dim) = (500, 48);
    let data = clustered(n, dim, 41);
    let p = IndexParams {
        metric: Metric::L2,
        encoding: EncodingSpec::Flat,
        ..Default::default()
    };
    let index = Index::build(&data, dim, &p, Some(1), &|_, _| {}).unwrap();
    for (bits, half) in [(1, false), (1, true), (2, false), (2, true)] {
        let qg = QgIndex::from_graph(&index, &data, 3, bits, half).unwrap();
        let back = QgIndex::from_payload(&qg.to_payload()).unwrap();
        assert_eq!(back.to_payload(), qg.to_payload());
        assert_eq!((back.code_bits(), back.half_vectors()), (bits, half));
        for q in data.chunks_exact(dim).take(10) {
            assert_eq!(back.search(q, 5, 32), qg.search(q, 5, 32));
        }
    }
    let qg = QgIndex::from_graph(&index, &data, 3, 1, false).unwrap();
    let payload = qg.to_payload();
    // an index payload is not a quantized graph, and vice versa
    assert!(matches!(
        QgIndex::from_payload(&index.to_payload()),
        Err(nearq_core::Error::Format(_))
    ));
    assert!(matches!(
        Index::from_payload(&payload),
        Err(nearq_core::Error::Format(_))
    ));
    // every truncation, and an out-of-range neighbour id, is refused
    for len in (0..payload.len()).step_by(97) {
        assert!(matches!(
            QgIndex::from_payload(&payload[..len]),
            Err(nearq_core::Error::Format(_))
        ));
    }
    // Node 0's first neighbour id: header (34 bytes) + rotation (4 rounds x 1 word, D = 64),
    // then in the row: vector (48 f32), one FastScan block (16 x 16 bytes), f_add and f_rescale
    // (32 f32 each).
    let id_off = 34 + 4 * 8 + (dim * 4 + 16 * 16 + 2 * 32 * 4);
    let orig = u32::from_le_bytes(payload[id_off..id_off + 4].try_into().unwrap());
    assert_eq!(orig, qg.neighbors(0)[0]);
    let mut bad = payload.clone();
    bad[id_off..id_off + 4].copy_from_slice(&(n as u32 + 7).to_le_bytes());
    assert!(matches!(
        QgIndex::from_payload(&bad),
        Err(nearq_core::Error::Format(_))
    ));
}

#[test]
fn qg_search_stays_bounded_on_structureless_data() {
    // Gaussian noise: every distance lies within the 1-bit estimator's error, the case where
    // a beam that lets estimates compete with exact distances never settles. Expanding a node
    // admits it to the visited set, and the pool holds estimates only, so the number of
    // expansions stays near the pool size.
    let (n, dim, k) = (2000, 128, 10);
    let mut rng = common::Rng::new(5);
    let data: Vec<f32> = (0..n * dim).map(|_| rng.gauss() as f32).collect();
    let p = IndexParams {
        metric: Metric::L2,
        encoding: EncodingSpec::Flat,
        ..Default::default()
    };
    let index = Index::build(&data, dim, &p, Some(2), &|_, _| {}).unwrap();
    for bits in [1, 2] {
        let qg = QgIndex::from_graph(&index, &data, 1, bits, false).unwrap();
        for ef in [10, 32, 100] {
            let mut total = 0;
            for q in data.chunks_exact(dim).step_by(97).take(20) {
                let (res, expanded) = qg.search_counted(q, k, ef);
                assert_eq!(res.len(), k);
                total += expanded;
            }
            let mean = total as f64 / 20.0;
            assert!(
                mean <= 2.0 * ef as f64 + 16.0,
                "bits={bits} ef={ef}: {mean} expansions per query"
            );
        }
    }
}

/// `n` points near a 16-dimensional subspace of R^dim (well-defined neighbours at any `dim`).
fn low_rank(n: usize, dim: usize, basis: &[f32], rng: &mut common::Rng) -> Vec<f32> {
    let mut out = vec![0f32; n * dim];
    for row in out.chunks_exact_mut(dim) {
        let z: Vec<f32> = (0..16).map(|_| rng.gauss() as f32).collect();
        for (j, x) in row.iter_mut().enumerate() {
            *x =
                (0..16).map(|t| z[t] * basis[t * dim + j]).sum::<f32>() + 0.05 * rng.gauss() as f32;
        }
    }
    out
}

#[test]
fn qg_above_1028_dimensions() {
    // 2500 dimensions pad to 2560: 640 sub-quantizers, 640 x 255 > 65535, so the table scale
    // is also bounded by the u16 accumulators (the search stays right either way, as every
    // result is an exact distance; this checks the long-code path end to end).
    let (n, dim, k) = (1000, 2500, 10);
    let mut rng = common::Rng::new(3);
    let basis: Vec<f32> = (0..16 * dim).map(|_| rng.gauss() as f32).collect();
    let data = low_rank(n, dim, &basis, &mut rng);
    let queries = low_rank(30, dim, &basis, &mut rng);
    let p = IndexParams {
        metric: Metric::L2,
        encoding: EncodingSpec::Flat,
        ..Default::default()
    };
    let index = Index::build(&data, dim, &p, Some(2), &|_, _| {}).unwrap();
    let (truth, _) = exact_search(&data, &queries, dim, k, Metric::L2);
    for bits in [1, 2] {
        let qg = QgIndex::from_graph(&index, &data, 9, bits, false).unwrap();
        let mut ids = Vec::new();
        for q in queries.chunks_exact(dim) {
            ids.extend(qg.search(q, k, 64).iter().map(|r| r.1 as i64));
        }
        let r = recall(&ids, &truth, k);
        assert!(r >= 0.9, "bits={bits}: recall {r}");
    }
}

#[test]
fn qg_results_are_sorted_exact_and_distinct() {
    let (n, dim, k) = (1200, 48, 20);
    let data = clustered(n, dim, 71);
    for metric in [Metric::L2, Metric::Cosine] {
        let p = IndexParams {
            metric,
            encoding: EncodingSpec::Flat,
            ..Default::default()
        };
        let index = Index::build(&data, dim, &p, Some(2), &|_, _| {}).unwrap();
        let qg = QgIndex::from_graph(&index, &data, 2, 2, false).unwrap();
        for (qi, q) in clustered(10, dim, 72).chunks_exact(dim).enumerate() {
            let res = qg.search(q, k, 40 + qi);
            assert_eq!(res.len(), k);
            let mut seen = std::collections::HashSet::new();
            for w in res.windows(2) {
                assert!(w[0].0 <= w[1].0);
            }
            for &(d, id) in &res {
                assert!(seen.insert(id), "id {id} returned twice");
                let x = &data[id as usize * dim..(id as usize + 1) * dim];
                let want = exact_search(x, q, dim, 1, metric).1[0];
                assert!(
                    (d - want).abs() <= 1e-4 * want.abs().max(1.0),
                    "{d} vs {want}"
                );
            }
        }
    }
}

#[test]
fn qg_estimates_are_unbiased_and_two_bits_err_about_half_as_much() {
    // The estimates the search ranks neighbours by, against the true squared distances, over
    // several rotations: the mean signed error is near zero for both code widths, and the
    // 2-bit codes' mean error is about half the 1-bit codes'.
    let (n, dim) = (1500, 128);
    let data = clustered(n, dim, 81);
    let queries = clustered(30, dim, 82);
    let p = IndexParams {
        metric: Metric::L2,
        encoding: EncodingSpec::Flat,
        ..Default::default()
    };
    let index = Index::build(&data, dim, &p, Some(2), &|_, _| {}).unwrap();
    let mut mean_abs = Vec::new();
    for bits in [1, 2] {
        let (mut abs, mut signed, mut count) = (0f64, 0f64, 0usize);
        for seed in 0..4 {
            let qg = QgIndex::from_graph(&index, &data, 100 + seed, bits, false).unwrap();
            for q in queries.chunks_exact(dim) {
                for v in (0..n as u32).step_by(29) {
                    for (u, est) in qg.neighbor_estimates(q, v) {
                        let x = &data[u as usize * dim..(u as usize + 1) * dim];
                        let t: f32 = q.iter().zip(x).map(|(a, b)| (a - b) * (a - b)).sum();
                        abs += ((est - t) / t).abs() as f64;
                        signed += ((est - t) / t) as f64;
                        count += 1;
                    }
                }
            }
        }
        let (abs, signed) = (abs / count as f64, signed / count as f64);
        eprintln!("bits={bits}: mean relative error {signed:+.5}, mean |relative error| {abs:.5}");
        assert!(
            signed.abs() < 0.05 * abs,
            "bits={bits}: biased, {signed} vs {abs}"
        );
        mean_abs.push(abs);
    }
    let ratio = mean_abs[1] / mean_abs[0];
    assert!((0.35..0.65).contains(&ratio), "2-bit / 1-bit error {ratio}");
}

/// With half-precision rows, the Index API re-ranks its final candidates from 8-bit codes of
/// the f32 vectors' rounding residuals: the distances it reports must match the f32 vectors'
/// to within f32 rounding (the f16 row copies alone err by about 1e-4 here).
#[test]
fn qg_half_rows_report_exact_distances() {
    let (n, dim, k) = (2000, 96, 10);
    let data = clustered(n, dim, 51);
    let queries = clustered(50, dim, 52);
    for metric in [Metric::L2, Metric::Cosine] {
        let p = IndexParams {
            metric,
            encoding: EncodingSpec::RaBitQ { bits: 4 },
            keep_vectors: true,
            ..Default::default()
        };
        let index = Index::build(&data, dim, &p, Some(2), &|_, _| {}).unwrap();
        assert!(index.quantized_graph().unwrap().half_vectors());
        let unit = |v: &[f32]| -> Vec<f64> {
            let v: Vec<f64> = v.iter().map(|&x| x as f64).collect();
            if metric == Metric::Cosine {
                let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
                v.iter().map(|x| x / n).collect()
            } else {
                v
            }
        };
        let sp = nearq_core::SearchParams {
            k,
            ef: Some(64),
            rerank: None,
        };
        let (mut worst, mut scale) = (0f64, 0f64);
        for q in queries.chunks_exact(dim) {
            let (ids, dists) = index.search(q, &sp, Some(1)).unwrap();
            let qv = unit(q);
            for (&id, &d) in ids.iter().zip(&dists) {
                let x = unit(&data[id as usize * dim..(id as usize + 1) * dim]);
                let l2: f64 = qv.iter().zip(&x).map(|(a, b)| (a - b) * (a - b)).sum();
                let want = if metric == Metric::Cosine {
                    0.5 * l2
                } else {
                    l2
                };
                worst = worst.max((d as f64 - want).abs());
                scale = scale.max(want);
            }
        }
        assert!(
            worst <= 2e-6 * scale.max(1.0),
            "{metric:?}: distance error {worst} (largest distance {scale})"
        );
    }
}
