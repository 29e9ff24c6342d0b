//! Recall and single-thread QPS of the quantized graph (cosine, one query per call):
//!
//! `qg_bench VECTORS QUERIES DIM [--gt GT.i32] [--nq N] [--cache FILE] [--index-cache FILE]
//!  [--ef 32,48,64] [--rounds N] [--degree R] [--build-ef L] [--alpha A] [--flat] [--prep]
//!  [--bits B] [--half]`
//!
//! VECTORS and QUERIES are raw little-endian f32 files; GT (optional) holds the true 10 nearest
//! ids per query as i32 (e.g. an ann-benchmarks file's `neighbors[:, :10]`); without it the
//! ground truth is computed by brute force. `--nq` keeps the first N queries. `--cache` loads
//! the quantized graph from FILE if it exists and writes it there otherwise; `--index-cache`
//! does the same for the float graph and rebuilds only the quantized rows (for experiments on
//! the rows: `--bits` 1 or 2 per code, `--half` for half-precision vectors in the rows).
//! `--flat` also times the float graph index; `--prep` times the query preparation (rotation
//! and look-up tables) alone. Each line reports the best of `--rounds` passes, the
//! recall (id overlap with GT), and the mean number of nodes expanded per query.
use nearq_core::qg::QgIndex;
use nearq_core::{exact_search, BuildParams, Index, Metric, SearchParams};
use std::time::Instant;

mod common;
use common::{cached_index, flat_cosine, read_f32, read_i32};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (data, mut queries) = (read_f32(&a[1]), read_f32(&a[2]));
    let dim: usize = a[3].parse().unwrap();
    let opt = |name: &str| a.iter().position(|x| x == name).map(|i| a[i + 1].clone());
    let k = 10;
    if let Some(m) = opt("--nq") {
        queries.truncate(m.parse::<usize>().unwrap() * dim);
    }
    let nq = queries.len() / dim;
    let truth = match opt("--gt") {
        Some(p) => read_i32(&p),
        None => exact_search(&data, &queries, dim, k, Metric::Cosine).0,
    };
    let truth = truth[..nq * k].to_vec();
    let efs: Vec<usize> = opt("--ef")
        .unwrap_or_else(|| "16,24,32,48,64,96".into())
        .split(',')
        .map(|x| x.parse().unwrap())
        .collect();
    let rounds: usize = opt("--rounds").map_or(3, |x| x.parse().unwrap());
    let mut build = BuildParams::default();
    if let Some(x) = opt("--degree") {
        build.degree = x.parse().unwrap();
    }
    if let Some(x) = opt("--build-ef") {
        build.build_ef = x.parse().unwrap();
    }
    if let Some(x) = opt("--alpha") {
        build.alpha = x.parse().unwrap();
    }
    let cache = opt("--cache");
    let t = Instant::now();
    let qg = match cache
        .as_deref()
        .filter(|p| std::path::Path::new(p).exists())
    {
        Some(p) => QgIndex::load(std::path::Path::new(p)).unwrap(),
        None if opt("--index-cache").is_some() => {
            // the float graph from (or to) a file, the quantized rows rebuilt
            let p = opt("--index-cache").unwrap();
            let ip = flat_cosine(build.clone());
            let index = cached_index(std::path::Path::new(&p), &data, dim, &ip);
            let bits = opt("--bits").map_or(nearq_core::qg::DEFAULT_BITS, |b| b.parse().unwrap());
            let half = a.iter().any(|x| x == "--half");
            QgIndex::from_graph(&index, &data, build.seed, bits, half).unwrap()
        }
        None => {
            let qg = QgIndex::build(&data, dim, Metric::Cosine, build.clone(), None).unwrap();
            if let Some(p) = &cache {
                qg.save(std::path::Path::new(p)).unwrap();
            }
            qg
        }
    };
    println!(
        "qg ready in {:.2}s, {} bytes/vector, mean row degree {:.1}",
        t.elapsed().as_secs_f64(),
        qg.memory_bytes() / qg.len(),
        (0..qg.len() as u32)
            .map(|v| qg.neighbors(v).len())
            .sum::<usize>() as f64
            / qg.len() as f64
    );
    if let Ok(sm) = std::fs::read_to_string("/proc/self/smaps_rollup") {
        for l in sm.lines().filter(|l| l.starts_with("AnonHuge")) {
            println!("{l}");
        }
    }
    let flat = a
        .iter()
        .any(|x| x == "--flat")
        .then(|| Index::build(&data, dim, &flat_cosine(build), None, &|_, _| {}).unwrap());
    let hits = |ids: &[i64]| -> f64 {
        ids.chunks(k)
            .zip(truth.chunks(k))
            .map(|(a, b)| a.iter().filter(|x| b.contains(x)).count())
            .sum::<usize>() as f64
            / truth.len() as f64
    };
    if a.iter().any(|x| x == "--prep") {
        let mut best = (f64::MAX, f64::MAX);
        for _ in 0..20 {
            let (r, p) = qg.bench_prepare(&queries);
            best = (best.0.min(r), best.1.min(p));
        }
        println!(
            "query preparation: rotation {:.2} us, rotation + tables {:.2} us",
            best.0 * 1e6 / nq as f64,
            best.1 * 1e6 / nq as f64
        );
    }
    // warm-up
    for q in queries.chunks_exact(dim) {
        std::hint::black_box(qg.search(q, k, efs[0]));
    }
    for &ef in &efs {
        // best of `rounds`; with `--flat`, the two indexes alternate
        let (mut qps, mut fqps, mut recall, mut expanded) = (0f64, 0f64, 0f64, 0f64);
        let mut fids = Vec::new();
        for _ in 0..rounds {
            let mut ids = Vec::with_capacity(nq * k);
            let mut e = 0;
            let t = Instant::now();
            for q in queries.chunks_exact(dim) {
                let (r, c) = qg.search_counted(q, k, ef);
                ids.extend(r.iter().map(|r| r.1 as i64));
                e += c;
            }
            qps = qps.max(nq as f64 / t.elapsed().as_secs_f64());
            expanded = e as f64 / nq as f64;
            recall = hits(&ids);
            if let Some(index) = &flat {
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
        }
        println!(
            "  ef={ef:3} qg   recall={recall:.4} qps={qps:6.0} ({:5.1} us/query, {expanded:.1} expanded, {:.3} us each)",
            1e6 / qps,
            1e6 / qps / expanded.max(1.0)
        );
        if flat.is_some() {
            println!("  ef={ef:3} flat recall={:.4} qps={fqps:.0}", hits(&fids));
        }
    }
}
