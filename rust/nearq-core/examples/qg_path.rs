//! Per-query cost of the Index API's quantized-graph path (`Index::search`: input checks,
//! result vectors, and with half-precision rows the final re-ranking from the f32 vectors)
//! against the bare quantized graph of the same index (one query per call, chunks of 100
//! interleaved, 10 rounds): `qg_path VECTORS QUERIES DIM CACHE EF`. CACHE holds a RaBitQ
//! index (cosine, 4 bits, float vectors kept, build_ef 200), built there if missing;
//! `REBUILD=1` rebuilds its rows under the current `NEARQ_QG_BITS` / `NEARQ_QG_HALF`.
use nearq_core::{BuildParams, EncodingSpec, IndexParams, Metric, SearchParams};
use std::time::Instant;

mod common;
use common::{cached_index, read_f32};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (data, queries) = (read_f32(&a[1]), read_f32(&a[2]));
    let dim: usize = a[3].parse().unwrap();
    let path = std::path::Path::new(&a[4]);
    let ef: usize = a[5].parse().unwrap();
    let p = IndexParams {
        metric: Metric::Cosine,
        encoding: EncodingSpec::RaBitQ { bits: 4 },
        keep_vectors: true,
        build: BuildParams {
            build_ef: 200,
            ..Default::default()
        },
    };
    let index = cached_index(path, &data, dim, &p);
    let mut index = index;
    if std::env::var_os("REBUILD").is_some() {
        index.set_quantized_graph(false, None);
        index.set_quantized_graph(true, None);
    }
    let index = index;
    let qg = index.quantized_graph().expect("quantized graph");
    println!("rows: {} bits, half {}", qg.code_bits(), qg.half_vectors());
    let sp = SearchParams {
        k: 10,
        ef: Some(ef),
        rerank: None,
    };
    // three paths, chunks of 100 queries interleaved: the Index API re-ranking from the
    // residual codes, the Index API re-ranking from the f32 vectors, the bare graph
    let mut t = [0f64; 3];
    for r in 0..10 {
        for (c, chunk) in queries.chunks(100 * dim).enumerate() {
            for j in 0..3 {
                let m = (j + r + c) % 3;
                let t0 = Instant::now();
                if m < 2 {
                    nearq_core::index::set_residual_rerank(Some(m == 0));
                    for q in chunk.chunks_exact(dim) {
                        std::hint::black_box(index.search(q, &sp, Some(1)).unwrap());
                    }
                } else {
                    for q in chunk.chunks_exact(dim) {
                        std::hint::black_box(qg.search(q, 12, ef));
                    }
                }
                t[m] += t0.elapsed().as_secs_f64();
            }
        }
    }
    let nq = (queries.len() / dim * 10) as f64;
    println!(
        "index.search {:.2} us/query (residual re-ranking), {:.2} (f32 re-ranking), qg.search {:.2} us/query",
        t[0] * 1e6 / nq,
        t[1] * 1e6 / nq,
        t[2] * 1e6 / nq
    );
}
