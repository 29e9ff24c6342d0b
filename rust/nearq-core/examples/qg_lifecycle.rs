//! Cost of keeping the quantized graph of a RaBitQ index (float vectors kept) in step with
//! its graph: `qg_lifecycle VECTORS DIM [--threads T]` (raw little-endian f32, cosine).
//!
//! Builds the index once, then times, with the quantized graph on and off (the difference is
//! the quantized graph's share): loading from bytes (the rows are read back), adding 1% and 10%
//! more vectors, tombstoning 5% and consolidating, and a full rebuild of the rows. With
//! `NEARQ_QG_TRACE=1` each update of the rows reports how many were re-encoded and where the
//! time went (neighbour lists with their fill, rotations, encoding).
use nearq_core::{BuildParams, EncodingSpec, Index, IndexParams, Metric};
use std::time::Instant;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let bytes = std::fs::read(&a[1]).expect("read vectors");
    let data: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let dim: usize = a[2].parse().unwrap();
    let threads = a
        .iter()
        .position(|x| x == "--threads")
        .map(|i| a[i + 1].parse::<usize>().unwrap());
    let n = data.len() / dim;
    let n0 = n * 88 / 100;
    let p = IndexParams {
        metric: Metric::Cosine,
        encoding: EncodingSpec::RaBitQ { bits: 4 },
        keep_vectors: true,
        build: BuildParams {
            alpha: 1.1,
            ..BuildParams::default()
        },
    };
    let t = Instant::now();
    let mut base = Index::build(&data[..n0 * dim], dim, &p, threads, &|_, _| {}).unwrap();
    println!("build {n0} vectors: {:.2}s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    base.set_quantized_graph(false, threads);
    base.set_quantized_graph(true, threads);
    println!(
        "full rebuild of the rows: {:.3}s",
        t.elapsed().as_secs_f64()
    );
    let on = base.to_bytes();
    base.set_quantized_graph(false, threads);
    let off = base.to_bytes();
    for (name, b) in [("on", &on), ("off", &off)] {
        let t = Instant::now();
        let mut ix = Index::from_bytes(b.clone()).unwrap();
        let load = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let m1 = n0 / 100;
        ix.add(&data[n0 * dim..(n0 + m1) * dim], dim, None, threads)
            .unwrap();
        let add1 = t.elapsed().as_secs_f64();
        let t = Instant::now();
        ix.add(&data[(n0 + m1) * dim..], dim, None, threads)
            .unwrap();
        let add10 = t.elapsed().as_secs_f64();
        let del: Vec<i64> = (0..ix.len() as i64).step_by(20).collect();
        let t = Instant::now();
        ix.delete(&del, threads);
        let tomb = t.elapsed().as_secs_f64();
        let t = Instant::now();
        ix.consolidate(threads);
        let cons = t.elapsed().as_secs_f64();
        println!(
            "qg {name}: load {load:.3}s, add {m1} {add1:.3}s, add {} {add10:.3}s, \
             delete 5% {tomb:.4}s, consolidate {cons:.3}s (has qg: {})",
            n - n0 - m1,
            ix.has_quantized_graph()
        );
    }
}
