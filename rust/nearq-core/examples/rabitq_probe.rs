// Temporary probe (not for commit).
use nearq_core::{
    exact_search, BuildParams, EncodingSpec, Index, IndexParams, Metric, SearchParams,
};
include!("../tests/rabitq_helpers.rs");
fn main() {
    let (n, k) = (3000, 10);
    let dim: usize = std::env::var("DIM").unwrap().parse().unwrap();
    let data = clustered(n, dim, 1);
    let queries = clustered(100, dim, 2);
    for metric in [Metric::L2, Metric::Cosine] {
        let (truth, _) = exact_search(&data, &queries, dim, k, metric);
        for (bits, keep) in [(1, true), (2, true), (4, false), (8, false)] {
            let p = IndexParams {
                metric,
                encoding: EncodingSpec::RaBitQ { bits },
                keep_vectors: keep,
                build: BuildParams::default(),
            };
            let index = Index::build(&data, dim, &p, Some(2), &|_, _| {}).unwrap();
            for (ef, rr) in [(96, None), (96, Some(96)), (200, Some(200))] {
                let (ids, _) = index
                    .search(
                        &queries,
                        &SearchParams {
                            k,
                            ef: Some(ef),
                            rerank: rr,
                        },
                        None,
                    )
                    .unwrap();
                println!(
                    "{metric:?} bits={bits} keep={keep} ef={ef} rerank={rr:?}: {:.3}",
                    recall(&ids, &truth, k)
                );
            }
        }
    }
}
