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
    for (metric, ef) in [(Metric::L2, 256), (Metric::Cosine, 256)] {
        let p = IndexParams {
            metric,
            encoding: EncodingSpec::Flat,
            ..Default::default()
        };
        let index = Index::build(&data, dim, &p, Some(2), &|_, _| {}).unwrap();
        let qg = QgIndex::from_graph(&index, &data, 7).unwrap();
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
        assert!(r >= 0.95, "{metric:?} ef={ef}: recall {r}");
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
    let qg = QgIndex::from_graph(&index, &data, 3).unwrap();
    let payload = qg.to_payload();
    let back = QgIndex::from_payload(&payload).unwrap();
    assert_eq!(back.to_payload(), payload);
    for q in data.chunks_exact(dim).take(10) {
        assert_eq!(back.search(q, 5, 32), qg.search(q, 5, 32));
    }
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
