//! Interleaved A/B timing of quantized-graph variants over one float graph (cosine, one query
//! per call). Each variant is `BITS:HALF@EF[/LINES[/STRIDE[/CHUNKS]]][+la|-la]` (neighbour code bits,
//! half-precision row vectors, beam width; optionally only the first LINES lines of a row
//! prefetched ahead of its expansion, every STRIDE-th, in CHUNKS parts; lookahead order on or off); its rows are rebuilt from the same float graph. Every round times each chunk of
//! 100 queries on every variant in turn (order rotated), and the report gives each variant's
//! recall@10 and the median and quartiles over rounds of its time relative to the first.
//!
//! `qg_ab VECTORS QUERIES DIM --gt GT.i32 --index-cache FILE [--build-ef L] [--rounds N]
//!  --variants 1:0@56,2:1@44`
use nearq_core::qg::QgIndex;
use nearq_core::BuildParams;
use std::time::Instant;

mod common;
use common::{cached_index, flat_cosine, read_f32, read_i32};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (data, queries) = (read_f32(&a[1]), read_f32(&a[2]));
    let dim: usize = a[3].parse().unwrap();
    let opt = |name: &str| a.iter().position(|x| x == name).map(|i| a[i + 1].clone());
    let k = 10;
    let nq = queries.len() / dim;
    let truth = read_i32(&opt("--gt").expect("--gt"));
    let rounds: usize = opt("--rounds").map_or(20, |x| x.parse().unwrap());
    let mut build = BuildParams::default();
    if let Some(x) = opt("--build-ef") {
        build.build_ef = x.parse().unwrap();
    }
    let p = opt("--index-cache").expect("--index-cache");
    let index = cached_index(
        std::path::Path::new(&p),
        &data,
        dim,
        &flat_cosine(build.clone()),
    );
    let mut vars = Vec::new();
    for v in opt("--variants").expect("--variants").split(',') {
        // a trailing `+la` / `-la`: lookahead order on / off (QgIndex::set_lookahead)
        let (v0, la) = match (v.strip_suffix("+la"), v.strip_suffix("-la")) {
            (Some(x), _) => (x, Some(true)),
            (_, Some(x)) => (x, Some(false)),
            _ => (v, None),
        };
        let (cfg, rest) = v0.split_once('@').unwrap();
        let (bits, half) = cfg.split_once(':').unwrap();
        let (bits, half) = (bits.parse().unwrap(), half == "1");
        // EF[/PREFETCH_LINES[/STRIDE]]
        let mut it = rest.split('/');
        let ef = it.next().unwrap().parse::<usize>().unwrap();
        let pf_lines = it.next().map_or(usize::MAX, |x| x.parse().unwrap());
        let pf_stride = it.next().map_or(1, |x| x.parse().unwrap());
        let pf_chunks: Option<usize> = it.next().map(|x| x.parse().unwrap());
        let mut qg = QgIndex::from_graph(&index, &data, build.seed, bits, half).unwrap();
        qg.set_prefetch(pf_lines, pf_stride);
        if let Some(c) = pf_chunks {
            qg.set_prefetch_chunks(c);
        }
        if let Some(la) = la {
            qg.set_lookahead(la);
        }
        vars.push((v.to_string(), qg, ef));
    }
    let nv = vars.len();
    let chunks: Vec<&[f32]> = queries.chunks(100 * dim).collect();
    let mut times = vec![vec![0f64; nv]; rounds];
    let mut ids = vec![vec![0i64; nq * k]; nv];
    let mut expanded = vec![0usize; nv];
    for (r, t_round) in times.iter_mut().enumerate() {
        for (c, chunk) in chunks.iter().enumerate() {
            for j in 0..nv {
                let v = (j + r + c) % nv;
                let (_, qg, ef) = &vars[v];
                let t = Instant::now();
                for (i, q) in chunk.chunks_exact(dim).enumerate() {
                    let (res, e) = qg.search_counted(q, k, *ef);
                    if r == 0 {
                        let qi = c * 100 + i;
                        for (s, x) in res.iter().enumerate() {
                            ids[v][qi * k + s] = x.1 as i64;
                        }
                        expanded[v] += e;
                    }
                }
                t_round[v] += t.elapsed().as_secs_f64();
            }
        }
    }
    for (v, (name, qg, _)) in vars.iter().enumerate() {
        let hits: usize = ids[v]
            .chunks(k)
            .zip(truth.chunks(k))
            .map(|(x, g)| x.iter().filter(|i| g.contains(i)).count())
            .sum();
        let mut us: Vec<f64> = times.iter().map(|t| t[v] * 1e6 / nq as f64).collect();
        us.sort_by(f64::total_cmp);
        let mut rel: Vec<f64> = times.iter().map(|t| t[0] / t[v]).collect();
        rel.sort_by(f64::total_cmp);
        let q = |x: &[f64], f: f64| x[((x.len() - 1) as f64 * f).round() as usize];
        println!(
            "{name:>10} {} B/row recall={:.4} expanded={:.1} median {:.1} us/query, speed vs first {:.3} ({:.3}-{:.3})",
            qg.memory_bytes() / qg.len(),
            hits as f64 / (nq * k) as f64,
            expanded[v] as f64 / nq as f64,
            q(&us, 0.5),
            q(&rel, 0.5),
            q(&rel, 0.25),
            q(&rel, 0.75)
        );
    }
}
