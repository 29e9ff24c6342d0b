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
