//! Recall and single-thread QPS of the quantized graph vs the float graph (cosine):
//! `qg_bench VECTORS QUERIES DIM` (raw little-endian f32 files).
use nearq_core::qg::QgIndex;
use nearq_core::{exact_search, EncodingSpec, Index, IndexParams, Metric, SearchParams};
use std::time::Instant;

fn read(path: &str) -> Vec<f32> {
    let bytes = std::fs::read(path).expect("read vectors");
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (data, queries) = (read(&a[1]), read(&a[2]));
    let dim: usize = a[3].parse().unwrap();
    let k = 10;
    let (truth, _) = exact_search(&data, &queries, dim, k, Metric::Cosine);
    let p = IndexParams {
        metric: Metric::Cosine,
        encoding: EncodingSpec::Flat,
        ..Default::default()
    };
    let index = Index::build(&data, dim, &p, None, &|_, _| {}).unwrap();
    let t = Instant::now();
    let qg = QgIndex::from_graph(&index, &data, 1).unwrap();
    println!(
        "qg built in {:.2}s, {} bytes/vector",
        t.elapsed().as_secs_f64(),
        qg.memory_bytes() / qg.len()
    );
    let n = index.len() as u32;
    let avg = |f: &dyn Fn(u32) -> usize| (0..n).map(f).sum::<usize>() as f64 / n as f64;
    println!(
        "mean out-degree: graph {:.1}, quantized rows {:.1}",
        avg(&|v| index.graph().neighbors(v).len()),
        avg(&|v| qg.neighbors(v).len())
    );
    let nq = queries.len() / dim;
    let hits = |ids: &[i64]| -> f64 {
        ids.chunks(k)
            .zip(truth.chunks(k))
            .map(|(a, b)| a.iter().filter(|x| b.contains(x)).count())
            .sum::<usize>() as f64
            / truth.len() as f64
    };
    for ef in [16, 24, 32, 48, 64, 96] {
        // best of three rounds, the two indexes alternating
        let (mut qps, mut fqps) = (0f64, 0f64);
        let (mut ids, mut fids) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            ids.clear();
            let t = Instant::now();
            for q in queries.chunks_exact(dim) {
                ids.extend(qg.search(q, k, ef).iter().map(|r| r.1 as i64));
            }
            qps = qps.max(nq as f64 / t.elapsed().as_secs_f64());
            fids.clear();
            let sp = SearchParams {
                k,
                ef: Some(ef),
                rerank: None,
            };
            let t = Instant::now();
            for q in queries.chunks_exact(dim) {
                fids.extend(index.search(q, &sp, Some(1)).unwrap().0);
            }
            fqps = fqps.max(nq as f64 / t.elapsed().as_secs_f64());
        }
        println!(
            "  ef={ef:3} qg recall={:.4} qps={qps:.0} | flat recall={:.4} qps={fqps:.0}",
            hits(&ids),
            hits(&fids)
        );
    }
}
