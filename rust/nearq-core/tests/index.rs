//! Index-level tests: recall against exact search, graph invariants, determinism, persistence.

use nearq_core::encoding::{Encoding, Sq8};
use nearq_core::{
    exact_search, BuildParams, EncodingSpec, Error, Index, IndexParams, Metric, SearchParams,
};
use proptest::prelude::*;

mod common;
use common::{clustered, recall};

fn build(data: &[f32], dim: usize, metric: Metric, enc: EncodingSpec, threads: usize) -> Index {
    let p = IndexParams {
        metric,
        encoding: enc,
        keep_vectors: true,
        build: BuildParams::default(),
    };
    Index::build(data, dim, &p, Some(threads), &|_, _| {}).unwrap()
}

#[test]
fn recall_against_exact_search() {
    let (n, dim, k) = (3000, 32, 10);
    let data = clustered(n, dim, 1);
    let queries = clustered(100, dim, 2);
    for metric in [Metric::L2, Metric::Cosine, Metric::InnerProduct] {
        let (truth, _) = exact_search(&data, &queries, dim, k, metric);
        for enc in [EncodingSpec::Flat, EncodingSpec::Sq8] {
            let index = build(&data, dim, metric, enc.clone(), 2);
            let p = SearchParams {
                k,
                ef: Some(96),
                rerank: None,
            };
            let (ids, _) = index.search(&queries, &p, None).unwrap();
            let r = recall(&ids, &truth, k);
            assert!(r >= 0.95, "{metric:?} {enc:?}: recall {r}");
        }
    }
}

#[test]
fn search_with_ef_n_is_exact_for_flat() {
    let (n, dim, k) = (1500, 16, 10);
    let data = clustered(n, dim, 3);
    let queries = clustered(50, dim, 4);
    let (truth, tdist) = exact_search(&data, &queries, dim, k, Metric::L2);
    let index = build(&data, dim, Metric::L2, EncodingSpec::Flat, 2);
    let (ids, dist) = index
        .search(
            &queries,
            &SearchParams {
                k,
                ef: Some(n),
                rerank: None,
            },
            None,
        )
        .unwrap();
    assert!(recall(&ids, &truth, k) >= 0.999);
    for (a, b) in dist.iter().zip(&tdist) {
        assert!((a - b).abs() <= 1e-3 * b.abs().max(1.0));
    }
}

#[test]
fn graph_invariants_and_connectivity() {
    let (n, dim) = (2000, 24);
    let data = clustered(n, dim, 5);
    let index = build(&data, dim, Metric::L2, EncodingSpec::Flat, 2);
    let g = index.graph();
    assert!(g.validate().is_ok());
    let mut seen = vec![false; n];
    let mut stack = vec![index.entry_point()];
    seen[index.entry_point() as usize] = true;
    while let Some(v) = stack.pop() {
        let nb = g.neighbors(v);
        assert!(nb.len() <= g.degree());
        let mut sorted = nb.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), nb.len(), "duplicate neighbours at {v}");
        for &u in nb {
            assert_ne!(u, v);
            if !seen[u as usize] {
                seen[u as usize] = true;
                stack.push(u);
            }
        }
    }
    let reached = seen.iter().filter(|&&s| s).count();
    assert_eq!(reached, n, "only {reached} of {n} nodes reachable");
}

#[test]
fn build_is_deterministic_across_thread_counts() {
    let (n, dim) = (1500, 16);
    let data = clustered(n, dim, 6);
    let a = build(&data, dim, Metric::Cosine, EncodingSpec::Sq8, 1);
    let b = build(&data, dim, Metric::Cosine, EncodingSpec::Sq8, 1);
    let c = build(&data, dim, Metric::Cosine, EncodingSpec::Sq8, 3);
    assert_eq!(a.to_payload(), b.to_payload());
    assert_eq!(a.to_payload(), c.to_payload());
    let p = IndexParams {
        metric: Metric::Cosine,
        encoding: EncodingSpec::Sq8,
        keep_vectors: true,
        build: BuildParams {
            seed: 7,
            ..Default::default()
        },
    };
    let d = Index::build(&data, dim, &p, Some(1), &|_, _| {}).unwrap();
    assert_ne!(
        a.graph(),
        d.graph(),
        "a different seed should give a different graph"
    );
}

#[test]
fn k_larger_than_index_is_padded() {
    let dim = 8;
    let data = clustered(5, dim, 7);
    let index = build(&data, dim, Metric::L2, EncodingSpec::Flat, 1);
    let (ids, d) = index
        .search(&data[..dim], &SearchParams::new(8), None)
        .unwrap();
    assert_eq!(&ids[5..], &[-1, -1, -1]);
    assert!(d[5..].iter().all(|x| x.is_infinite()));
    let mut got: Vec<i64> = ids[..5].to_vec();
    got.sort_unstable();
    assert_eq!(got, vec![0, 1, 2, 3, 4]);
}

#[test]
fn bad_input_is_rejected() {
    let dim = 4;
    let mut data = clustered(10, dim, 8);
    let p = IndexParams::default();
    assert!(matches!(
        Index::build(&[], dim, &p, None, &|_, _| {}),
        Err(Error::Empty(_))
    ));
    assert!(matches!(
        Index::build(&data[..7], dim, &p, None, &|_, _| {}),
        Err(Error::InvalidInput(_))
    ));
    data[13] = f32::NAN;
    assert!(matches!(
        Index::build(&data, dim, &p, None, &|_, _| {}),
        Err(Error::NonFinite { row: 3, col: 1, .. })
    ));
    data[13] = 0.0;
    let index = Index::build(&data, dim, &p, None, &|_, _| {}).unwrap();
    assert!(matches!(
        index.search(&data[..dim], &SearchParams::new(0), None),
        Err(Error::InvalidParameter { .. })
    ));
    let bad = IndexParams {
        build: BuildParams {
            degree: 1,
            ..Default::default()
        },
        ..Default::default()
    };
    assert!(matches!(
        Index::build(&data, dim, &bad, None, &|_, _| {}),
        Err(Error::InvalidParameter { name: "degree", .. })
    ));
}

#[test]
fn sq8_distance_equals_distance_to_decoded_vector() {
    let dim = 48;
    let data = clustered(200, dim, 9);
    let k = nearq_core::kernels::kernels();
    for metric in [Metric::L2, Metric::InnerProduct] {
        let enc = Sq8::train(&data, dim, metric);
        let q = &data[..dim];
        let pq = enc.prepare(q);
        let mut code = vec![0u8; enc.code_size()];
        let mut dec = vec![0f32; dim];
        for v in data.chunks_exact(dim) {
            enc.encode(v, &mut code);
            assert!(enc.decode(&code, &mut dec));
            for (x, y) in v.iter().zip(&dec) {
                assert!(
                    (x - y).abs() <= 0.5 * 1.0001 * (enc_step(&data, dim) + 1e-6),
                    "{x} vs {y}"
                );
            }
            let want = metric.distance(k, q, &dec);
            let got = enc.distance_fine(&pq, &code);
            assert!(
                (want - got).abs() <= 1e-3 * want.abs().max(1.0),
                "{metric:?}: {got} vs {want}"
            );
            // The traversal estimate (8-bit query weights) stays within 2% of the scale.
            let fast = enc.distance(&pq, &code);
            let scale = (k.dot_f32)(q, q).sqrt() * (k.dot_f32)(&dec, &dec).sqrt();
            assert!(
                (fast - got).abs() <= 0.02 * scale.max(1.0),
                "{metric:?}: {fast} vs {got}"
            );
        }
    }
}

/// Largest per-dimension quantisation step of the data.
fn enc_step(data: &[f32], dim: usize) -> f32 {
    (0..dim)
        .map(|j| {
            let col = data.chunks_exact(dim).map(|r| r[j]);
            let (lo, hi) = col.fold((f32::MAX, f32::MIN), |(l, h), x| (l.min(x), h.max(x)));
            (hi - lo) / 255.0
        })
        .fold(0.0, f32::max)
}

#[test]
fn save_load_round_trip() {
    let dim = 16;
    let data = clustered(500, dim, 10);
    let dir = std::env::temp_dir().join(format!("nearq-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for enc in [EncodingSpec::Flat, EncodingSpec::Sq8] {
        let index = build(&data, dim, Metric::Cosine, enc, 2);
        let path = dir.join("i.nearq");
        index.save(&path).unwrap();
        let back = Index::load(&path).unwrap();
        assert_eq!(back.to_payload(), index.to_payload());
        let p = SearchParams::new(5);
        assert_eq!(
            back.search(&data[..4 * dim], &p, None).unwrap(),
            index.search(&data[..4 * dim], &p, None).unwrap()
        );
    }
    assert!(matches!(
        Index::load(&dir.join("missing")),
        Err(Error::Io { .. })
    ));
    std::fs::remove_dir_all(&dir).ok();
}

fn file_bytes(index: &Index) -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!("nearq-bytes-{}-{:p}", std::process::id(), index));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("i.nearq");
    index.save(&path).unwrap();
    let b = std::fs::read(&path).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    b
}

#[test]
fn every_truncation_is_a_format_error() {
    let dim = 8;
    let data = clustered(60, dim, 11);
    let bytes = file_bytes(&build(&data, dim, Metric::L2, EncodingSpec::Sq8, 1));
    for len in 0..bytes.len() {
        let r = nearq_core::io::verify(bytes[..len].to_vec()).and_then(|p| Index::from_payload(&p));
        assert!(matches!(r, Err(Error::Format(_))), "truncated at {len}");
    }
}

#[test]
fn newer_version_is_refused() {
    let dim = 8;
    let data = clustered(30, dim, 12);
    let mut bytes = file_bytes(&build(&data, dim, Metric::L2, EncodingSpec::Flat, 1));
    bytes[8] = 99;
    match nearq_core::io::verify(bytes) {
        Err(Error::Format(m)) => assert!(m.contains("version 99"), "{m}"),
        other => panic!("expected a format error, got {:?}", other.map(|_| ())),
    }
}

/// A payload with a valid checksum but hostile fields must still be refused cleanly.
#[test]
fn hostile_payload_fields_are_refused() {
    let dim = 8;
    let data = clustered(40, dim, 13);
    let payload = build(&data, dim, Metric::L2, EncodingSpec::Flat, 1).to_payload();
    // n (offset 8..16) claims a huge count; degree (16..20) zero; entry (20..24) out of range.
    for (off, val) in [
        (8usize, u64::MAX.to_le_bytes().to_vec()),
        (16, vec![0, 0, 0, 0]),
        (20, vec![255, 255, 0, 0]),
    ] {
        let mut p = payload.clone();
        p[off..off + val.len()].copy_from_slice(&val);
        assert!(
            matches!(Index::from_payload(&p), Err(Error::Format(_))),
            "field at {off}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Any single corrupted byte is caught (checksum or header check), never a panic.
    #[test]
    fn flipped_bytes_are_format_errors(pos in 0usize..10_000, bit in 0u8..8) {
        let dim = 8;
        let data = clustered(40, dim, 14);
        let mut bytes = file_bytes(&build(&data, dim, Metric::Cosine, EncodingSpec::Sq8, 1));
        let pos = pos % bytes.len();
        bytes[pos] ^= 1 << bit;
        let r = nearq_core::io::verify(bytes).and_then(|p| Index::from_payload(&p));
        prop_assert!(matches!(r, Err(Error::Format(_))));
    }

    /// Arbitrary payloads never panic when parsed.
    #[test]
    fn random_payloads_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = Index::from_payload(&bytes);
    }
}

/// Data with one dimension of a much larger range than the others: the 8-bit build distances
/// are refused (their step would swamp the small dimensions) and floats are used instead.
#[test]
fn recall_with_badly_scaled_dimensions() {
    let (n, dim, k) = (2000, 16, 10);
    let mut data = clustered(n, dim, 21);
    for (i, row) in data.chunks_exact_mut(dim).enumerate() {
        row[0] = if i % 97 == 0 { 5000.0 } else { 0.0 };
    }
    let queries: Vec<f32> = data[..50 * dim].iter().map(|x| x + 0.01).collect();
    let (truth, _) = exact_search(&data, &queries, dim, k, Metric::L2);
    let index = build(&data, dim, Metric::L2, EncodingSpec::Flat, 2);
    let (ids, _) = index
        .search(
            &queries,
            &SearchParams {
                k,
                ef: Some(64),
                rerank: None,
            },
            None,
        )
        .unwrap();
    let r = recall(&ids, &truth, k);
    assert!(r >= 0.95, "recall {r}");
}
