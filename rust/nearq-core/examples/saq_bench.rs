//! SAQ against Extended RaBitQ and LVQ on real vectors: estimation error, ranking quality and
//! encoding throughput at equal bits.
//!
//! `saq_bench VECTORS QUERIES DIM [METRIC] [N_QUERIES]` with raw little-endian f32 files, e.g.
//! the first 20,000 train and 1,000 test vectors of `pypi-minilm-384-angular-50k.hdf5`:
//!
//! ```text
//! python3 -c "import h5py, numpy as np; f = h5py.File('pypi-minilm-384-angular-50k.hdf5');
//!   np.asarray(f['train'][:20000], np.float32).tofile('train20k.f32');
//!   np.asarray(f['test'][:1000], np.float32).tofile('test1k.f32')"
//! RAYON_NUM_THREADS=1 cargo run --release -p nearq-core --example saq_bench -- \
//!   train20k.f32 test1k.f32 384 cosine
//! ```
//!
//! Everything runs on one thread (set `RAYON_NUM_THREADS=1` so training does too).
//!
//! - Throughput (`--speed` alone): training on all vectors plus encoding all of them, best of
//!   three alternating rounds, SAQ against Extended RaBitQ (16 centres, and the mean alone) at
//!   each integer bit width, and per-call `prepare` / `distance` / `distance_fine` costs.
//! - Quality (`--quality` alone): per encoding the bytes per vector, the error of the fine
//!   (re-ranking) estimate of the inner product `<x, q>` (RMS over all query × vector pairs,
//!   and the mean relative error of the distance), the recall@10 of ranking all vectors by
//!   that estimate, and for SAQ the traversal (`distance`) estimate's ranking quality for each
//!   number of fully scored leading segments, the staged scan's pruning and the decode error.
//!   The timings printed there are single rounds.
use nearq_core::encoding::saq::{Saq, SaqConfig, SaqQuery};
use nearq_core::encoding::{Encoding, Lvq, RaBitQ, RaBitQConfig};
use nearq_core::metric::normalize;
use nearq_core::Metric;
use std::time::Instant;

fn read(path: &str) -> Vec<f32> {
    let bytes = std::fs::read(path).expect("read vectors");
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

struct Data {
    dim: usize,
    metric: Metric,
    base: Vec<f32>,
    queries: Vec<f32>,
    /// Exact distances, `queries × base`.
    exact: Vec<f32>,
    /// Exact top-10 per query.
    top: Vec<Vec<usize>>,
}

fn topk(d: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..d.len()).collect();
    idx.select_nth_unstable_by(k, |&a, &b| d[a].total_cmp(&d[b]));
    idx.truncate(k);
    idx.sort_by(|&a, &b| d[a].total_cmp(&d[b]));
    idx
}

fn recall(found: &[usize], truth: &[usize]) -> f64 {
    found.iter().filter(|i| truth.contains(i)).count() as f64 / truth.len() as f64
}

/// Inner product implied by a distance (for the RMS error of `<x, q>`).
fn ip_of(metric: Metric, d: f32, xn2: f32, qn2: f32) -> f64 {
    match metric {
        Metric::L2 => 0.5 * (xn2 + qn2 - d) as f64,
        Metric::Cosine => 1.0 - d as f64,
        Metric::InnerProduct => -d as f64,
    }
}

struct Row {
    name: String,
    bytes: usize,
    train_s: f64,
    enc_us: f64,
    rms_ip: f64,
    rel: f64,
    recall: f64,
    extra: String,
}

fn print(r: &Row) {
    println!(
        "{:<22} {:>5} B  train {:>6.3} s  encode {:>7.2} us/vec  rms<x,q> {:.5}  rel.err {:.5}  recall@10 {:.3}  {}",
        r.name, r.bytes, r.train_s, r.enc_us, r.rms_ip, r.rel, r.recall, r.extra
    );
}

/// Trains (timed), encodes everything (timed) and scores the fine estimate.
fn evaluate<E: Encoding>(
    name: String,
    data: &Data,
    train: impl FnOnce() -> E,
    fine: impl Fn(&E, &E::Query, &[u8]) -> f32,
) -> (Row, E, Vec<u8>) {
    let t = Instant::now();
    let enc = train();
    let train_s = t.elapsed().as_secs_f64();
    let (dim, cs) = (data.dim, enc.code_size());
    let n = data.base.len() / dim;
    let mut codes = vec![0u8; n * cs];
    let t = Instant::now();
    for (v, c) in data.base.chunks_exact(dim).zip(codes.chunks_exact_mut(cs)) {
        enc.encode(v, c);
    }
    let enc_us = t.elapsed().as_secs_f64() / n as f64 * 1e6;
    let (mut se, mut rel, mut cnt, mut rec) = (0.0f64, 0.0f64, 0usize, 0.0f64);
    let norms: Vec<f32> = data
        .base
        .chunks_exact(dim)
        .map(|v| v.iter().map(|x| x * x).sum())
        .collect();
    let mut est = vec![0.0f32; n];
    for (qi, q) in data.queries.chunks_exact(dim).enumerate() {
        let pq = enc.prepare(q);
        let qn2: f32 = q.iter().map(|x| x * x).sum();
        for (i, c) in codes.chunks_exact(cs).enumerate() {
            est[i] = fine(&enc, &pq, c);
            let ex = data.exact[qi * n + i];
            let e =
                ip_of(data.metric, est[i], norms[i], qn2) - ip_of(data.metric, ex, norms[i], qn2);
            se += e * e;
            if ex.abs() > 1e-6 {
                rel += ((est[i] - ex) / ex).abs() as f64;
                cnt += 1;
            }
        }
        rec += recall(&topk(&est, 10), &data.top[qi]);
    }
    let nq = data.queries.len() / dim;
    (
        Row {
            name,
            bytes: cs,
            train_s,
            enc_us,
            rms_ip: (se / (nq * n) as f64).sqrt(),
            rel: rel / cnt.max(1) as f64,
            recall: rec / nq as f64,
            extra: String::new(),
        },
        enc,
        codes,
    )
}

/// Recall@10 among the best 100 by an estimate (how well a traversal estimate keeps the true
/// neighbours in a candidate list) and ns per call.
fn traversal_quality(
    saq: &Saq,
    data: &Data,
    codes: &[u8],
    f: impl Fn(&Saq, &SaqQuery, &[u8]) -> f32,
) -> (f64, f64) {
    let (dim, cs) = (data.dim, saq.code_size());
    let n = codes.len() / cs;
    let mut est = vec![0.0f32; n];
    let (mut rec, mut ns) = (0.0f64, 0.0f64);
    for (qi, q) in data.queries.chunks_exact(dim).enumerate() {
        let pq = saq.prepare(q);
        let t = Instant::now();
        for (i, c) in codes.chunks_exact(cs).enumerate() {
            est[i] = f(saq, &pq, c);
        }
        ns += t.elapsed().as_secs_f64();
        rec += recall(&topk(&est, 100), &data.top[qi]);
    }
    let nq = data.queries.len() / dim;
    (rec / nq as f64, ns / (nq * n) as f64 * 1e9)
}

/// Brute-force top-10 scan with `distance_within` against the running 10th distance:
/// fraction of vectors that reached the full estimate, recall against the full-estimate scan,
/// and ns per vector.
fn staged_scan(saq: &Saq, data: &Data, codes: &[u8]) -> (f64, f64, f64) {
    let (dim, cs) = (data.dim, saq.code_size());
    let n = codes.len() / cs;
    let (mut full, mut rec, mut secs) = (0usize, 0.0f64, 0.0f64);
    let mut all = vec![0.0f32; n];
    for q in data.queries.chunks_exact(dim) {
        let pq = saq.prepare(q);
        for (i, c) in codes.chunks_exact(cs).enumerate() {
            all[i] = saq.distance_fine(&pq, c);
        }
        let want = topk(&all, 10);
        let t = Instant::now();
        let mut best: Vec<(f32, usize)> = Vec::with_capacity(11);
        for (i, c) in codes.chunks_exact(cs).enumerate() {
            let th = if best.len() < 10 {
                f32::INFINITY
            } else {
                best[9].0
            };
            if let Some(d) = saq.distance_within(&pq, c, th) {
                full += 1;
                if d < th {
                    let at = best.partition_point(|b| b.0 <= d);
                    best.insert(at, (d, i));
                    best.truncate(10);
                }
            }
        }
        secs += t.elapsed().as_secs_f64();
        let got: Vec<usize> = best.iter().map(|b| b.1).collect();
        rec += recall(&got, &want);
    }
    let nq = data.queries.len() / dim;
    (
        full as f64 / (nq * n) as f64,
        rec / nq as f64,
        secs / (nq * n) as f64 * 1e9,
    )
}

/// Encoding throughput, best of `rounds` alternating rounds (the machine may be shared):
/// training on all vectors and encoding all of them, SAQ against Extended RaBitQ (its default
/// critical-value search and 16 centres, and the data mean alone) at the same bits.
fn speed(data: &Data, rounds: usize) {
    let (dim, metric) = (data.dim, data.metric);
    let n = data.base.len() / dim;
    println!("\nencoding throughput: train on {n} vectors, encode all of them, best of {rounds} rounds (one thread)");
    fn run<E: Encoding>(data: &Data, train: &dyn Fn() -> E, best: &mut (f64, f64, f64)) {
        let t = std::time::Instant::now();
        let enc = train();
        let tt = t.elapsed().as_secs_f64();
        let cs = enc.code_size();
        let mut codes = vec![0u8; data.base.len() / data.dim * cs];
        let t = std::time::Instant::now();
        for (v, c) in data
            .base
            .chunks_exact(data.dim)
            .zip(codes.chunks_exact_mut(cs))
        {
            enc.encode(v, c);
        }
        let te = t.elapsed().as_secs_f64();
        std::hint::black_box(&codes);
        best.0 = best.0.min(tt);
        best.1 = best.1.min(te);
        best.2 = best.2.min(tt + te);
    }
    for bits in 1u32..=8 {
        let inf = (f64::INFINITY, f64::INFINITY, f64::INFINITY);
        let (mut rq, mut rq1, mut sq) = (inf, inf, inf);
        for _ in 0..rounds {
            run(
                data,
                &|| RaBitQ::train(&data.base, dim, metric, &RaBitQConfig::new(bits, 1)),
                &mut rq,
            );
            let cfg1 = RaBitQConfig {
                centres: 1,
                ..RaBitQConfig::new(bits, 1)
            };
            run(
                data,
                &|| RaBitQ::train(&data.base, dim, metric, &cfg1),
                &mut rq1,
            );
            let cfg = SaqConfig::new(bits as f32, 1);
            run(
                data,
                &|| Saq::train(&data.base, dim, metric, &cfg).expect("train"),
                &mut sq,
            );
        }
        let per = |t: f64| t / n as f64 * 1e6;
        println!(
            "bits {bits}: encode us/vec rabitq K=16 {:.2} K=1 {:.2} saq {:.2} ({:.1}x, {:.1}x); train s {:.3} / {:.3} / {:.3}; train+encode s {:.3} / {:.3} / {:.3} ({:.1}x, {:.1}x); saq {:.0} vectors/s",
            per(rq.1), per(rq1.1), per(sq.1), rq.1 / sq.1, rq1.1 / sq.1,
            rq.0, rq1.0, sq.0, rq.2, rq1.2, sq.2, rq.2 / sq.2, rq1.2 / sq.2, n as f64 / sq.1
        );
    }
    // Per-call costs at 4 bits (ns), best of `rounds`.
    let rq = RaBitQ::train(&data.base, dim, metric, &RaBitQConfig::new(4, 1));
    let saq = Saq::train(&data.base, dim, metric, &SaqConfig::new(4.0, 1)).expect("train");
    let m = 2000.min(n);
    let (qs, xs) = (&data.queries[..dim], &data.base[..m * dim]);
    fn per_call<E: Encoding>(enc: &E, q: &[f32], xs: &[f32], rounds: usize) -> [f64; 3] {
        let cs = enc.code_size();
        let codes = encode_all(enc, xs);
        let mut best = [f64::INFINITY; 3];
        for _ in 0..rounds {
            let t = std::time::Instant::now();
            let pq = (0..100).map(|_| enc.prepare(q)).last().unwrap();
            best[0] = best[0].min(t.elapsed().as_secs_f64() / 100.0);
            let mut s = 0.0f32;
            let t = std::time::Instant::now();
            for c in codes.chunks_exact(cs) {
                s += enc.distance(&pq, c);
            }
            best[1] = best[1].min(t.elapsed().as_secs_f64() / (codes.len() / cs) as f64);
            let t = std::time::Instant::now();
            for c in codes.chunks_exact(cs) {
                s += enc.distance_fine(&pq, c);
            }
            best[2] = best[2].min(t.elapsed().as_secs_f64() / (codes.len() / cs) as f64);
            std::hint::black_box(s);
        }
        best.map(|t| t * 1e9)
    }
    let [p, d, f] = per_call(&rq, qs, xs, rounds);
    println!("rabitq 4 bits: prepare {p:.0} ns, distance {d:.0} ns, distance_fine {f:.0} ns");
    let [p, d, f] = per_call(&saq, qs, xs, rounds);
    println!("saq 4 bits: prepare {p:.0} ns, distance {d:.0} ns, distance_fine {f:.0} ns");
}

fn encode_all<E: Encoding>(enc: &E, xs: &[f32]) -> Vec<u8> {
    let cs = enc.code_size();
    let mut codes = vec![0u8; xs.len() / enc.dim() * cs];
    for (v, c) in xs.chunks_exact(enc.dim()).zip(codes.chunks_exact_mut(cs)) {
        enc.encode(v, c);
    }
    codes
}

fn main() {
    let mut a: Vec<String> = std::env::args().collect();
    let mode = match a.iter().position(|s| s == "--speed" || s == "--quality") {
        Some(i) => a.remove(i),
        None => String::new(),
    };
    if a.len() < 4 {
        eprintln!(
            "usage: saq_bench VECTORS QUERIES DIM [l2|ip|cosine] [N_QUERIES] [--speed|--quality]"
        );
        std::process::exit(2);
    }
    let dim: usize = a[3].parse().expect("DIM");
    let metric = Metric::parse(a.get(4).map_or("cosine", |s| s.as_str())).expect("metric");
    let nq: usize = a.get(5).map_or(100, |s| s.parse().expect("N_QUERIES"));
    let mut base = read(&a[1]);
    let mut queries = read(&a[2]);
    queries.truncate(nq * dim);
    if metric.normalizes() {
        base.chunks_mut(dim).for_each(normalize);
        queries.chunks_mut(dim).for_each(normalize);
    }
    let n = base.len() / dim;
    let k = nearq_core::kernels::kernels();
    let mut exact = Vec::with_capacity(nq * n);
    let mut top = Vec::new();
    for q in queries.chunks_exact(dim) {
        let row: Vec<f32> = base
            .chunks_exact(dim)
            .map(|v| metric.distance(k, q, v))
            .collect();
        top.push(topk(&row, 10));
        exact.extend(row);
    }
    let data = Data {
        dim,
        metric,
        base,
        queries,
        exact,
        top,
    };
    println!(
        "{n} vectors, {nq} queries, dim {dim}, metric {}, kernels {}",
        metric.name(),
        k.level.name()
    );
    if mode != "--quality" {
        speed(&data, 3);
    }
    if mode == "--speed" {
        return;
    }

    let mut rabitq_enc = Vec::new();
    for bits in [1u32, 2, 3, 4, 5, 6, 7, 8] {
        for centres in [1usize, 16] {
            let cfg = RaBitQConfig {
                centres,
                ..RaBitQConfig::new(bits, 1)
            };
            let (row, _, _) = evaluate(
                format!("rabitq {bits}b K={centres}"),
                &data,
                || RaBitQ::train(&data.base, dim, metric, &cfg),
                |e, q, c| e.distance_fine(q, c),
            );
            print(&row);
            if centres == 16 {
                rabitq_enc.push((bits, row.train_s + row.enc_us * 1e-6 * n as f64));
            }
        }
    }
    for (b1, b2) in [(4u32, 0u32), (8, 0), (4, 4), (4, 8)] {
        let (mut row, lvq, codes) = evaluate(
            format!("lvq {b1}x{b2}"),
            &data,
            || Lvq::train(&data.base, dim, metric, b1, b2),
            |e, q, c| e.distance_fine(q, c),
        );
        row.extra = format!("decode rel.mse {:.5}", decode_error(&lvq, &data, &codes));
        print(&row);
    }
    for bits in [
        1.0f32, 1.5, 2.0, 3.0, 3.5, 4.0, 5.0, 6.0, 6.5, 7.0, 7.5, 8.0,
    ] {
        let cfg = SaqConfig::new(bits, 1);
        let (mut row, mut saq, codes) = evaluate(
            format!("saq {bits}b"),
            &data,
            || Saq::train(&data.base, dim, metric, &cfg).expect("train"),
            |e, q, c| e.distance_fine(q, c),
        );
        let total = row.train_s + row.enc_us * 1e-6 * n as f64;
        let speedup = rabitq_enc
            .iter()
            .find(|r| r.0 as f32 == bits)
            .map(|r| format!("  train+encode {:.1}x faster than rabitq K=16", r.1 / total))
            .unwrap_or_default();
        row.extra = format!(
            "decode rel.mse {:.5}{speedup}\n    allocation {:?}",
            decode_error(&saq, &data, &codes),
            saq.allocation()
        );
        print(&row);
        let lead0 = saq.traversal_segments();
        let nseg = saq.allocation().iter().filter(|a| a.1 > 0).count();
        let mut line = String::from("    traversal recall@10-in-100 / ns:");
        for lead in 0..=nseg {
            saq.set_traversal_segments(lead);
            let (r, ns) = traversal_quality(&saq, &data, &codes, |s, q, c| s.distance(q, c));
            line += &format!(
                " lead {lead}{}: {r:.3}/{ns:.0}",
                if lead == lead0 { "*" } else { "" }
            );
        }
        saq.set_traversal_segments(lead0);
        println!("{line}");
        let (full, rec, ns) = staged_scan(&saq, &data, &codes);
        let (_, ns_fine) = traversal_quality(&saq, &data, &codes, |s, q, c| s.distance_fine(q, c));
        println!(
            "    staged scan: {:.1}% reach the full code, recall {rec:.4} vs the full scan, {ns:.0} ns/vector (full estimate {ns_fine:.0} ns)",
            100.0 * full
        );
    }
}

/// Mean of `‖x - x̂‖² / ‖x - mean‖²` over the base vectors.
fn decode_error<E: Encoding>(enc: &E, data: &Data, codes: &[u8]) -> f64 {
    let (dim, cs) = (data.dim, enc.code_size());
    let n = data.base.len() / dim;
    let mut mean = vec![0.0f64; dim];
    for v in data.base.chunks_exact(dim) {
        for (m, &x) in mean.iter_mut().zip(v) {
            *m += x as f64 / n as f64;
        }
    }
    let mut out = vec![0.0f32; dim];
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (v, c) in data.base.chunks_exact(dim).zip(codes.chunks_exact(cs)) {
        if !enc.decode(c, &mut out) {
            return f64::NAN;
        }
        for ((&x, &y), &m) in v.iter().zip(&out).zip(&mean) {
            num += (x as f64 - y as f64).powi(2);
            den += (x as f64 - m).powi(2);
        }
    }
    num / den
}
