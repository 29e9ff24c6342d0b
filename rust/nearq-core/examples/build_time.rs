//! Times a graph build and measures recall@10 over raw little-endian f32 vectors:
//! `build_time VECTORS QUERIES DIM THREADS R:EF[:ALPHA]...` (cosine).
use nearq_core::{
    exact_search, BuildParams, EncodingSpec, Index, IndexParams, Metric, SearchParams,
};
use std::time::Instant;

fn read(path: &str) -> Vec<f32> {
    let bytes = std::fs::read(path).expect("read vectors");
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (data, queries) = (read(&args[1]), read(&args[2]));
    let dim: usize = args[3].parse().unwrap();
    let threads: usize = args[4].parse().unwrap();
    let k = 10;
    let (truth, _) = exact_search(&data, &queries, dim, k, Metric::Cosine);
    for cfg in &args[5..] {
        let f: Vec<f32> = cfg.split(':').map(|x| x.parse().unwrap()).collect();
        let build = BuildParams {
            degree: f[0] as usize,
            build_ef: f[1] as usize,
            alpha: *f.get(2).unwrap_or(&1.2),
            seed: 0,
        };
        let p = IndexParams {
            metric: Metric::Cosine,
            encoding: EncodingSpec::Flat,
            keep_vectors: true,
            build,
        };
        let t = Instant::now();
        let index = Index::build(&data, dim, &p, Some(threads), &|_, _| {}).unwrap();
        let bt = t.elapsed().as_secs_f64();
        let mut line = format!("n={} {cfg} threads={threads}: build {bt:.2}s", index.len());
        for ef in [16, 24, 32, 48, 64] {
            let sp = SearchParams {
                k,
                ef: Some(ef),
                rerank: None,
            };
            let t = Instant::now();
            let (ids, _) = index.search(&queries, &sp, Some(1)).unwrap();
            let qps = (queries.len() / dim) as f64 / t.elapsed().as_secs_f64();
            let hits: usize = ids
                .chunks(k)
                .zip(truth.chunks(k))
                .map(|(a, b)| a.iter().filter(|x| b.contains(x)).count())
                .sum();
            line += &format!("  ef{ef}={:.3}/{qps:.0}", hits as f64 / truth.len() as f64);
        }
        println!("{line}");
    }
}
