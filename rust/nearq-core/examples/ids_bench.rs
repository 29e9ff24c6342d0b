//! Per-code cost of `distance_ids` (the graph traversal's scoring), SAQ against RaBitQ at the
//! same bits, in cache (the same 32 codes again and again) and out of cache (32 random codes of
//! 20k per call, prefetched as the graph does just before the call):
//! `ids_bench TRAIN.f32 QUERIES.f32 DIM [BITS]` (raw little-endian f32, cosine).
use nearq_core::encoding::saq::{Saq, SaqConfig};
use nearq_core::encoding::{Encoding, RaBitQ, RaBitQConfig};
use nearq_core::metric::normalize;
use nearq_core::storage::CodeStore;
use nearq_core::Metric;
use std::time::Instant;

fn read_f32(p: &str) -> Vec<f32> {
    std::fs::read(p)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn run<E: Encoding>(name: &str, e: &E, x: &[f32], q: &[f32], d: usize) {
    let n = x.len() / d;
    let mut store = CodeStore::new(e.code_size());
    store.resize(n);
    for i in 0..n {
        e.encode(&x[i * d..(i + 1) * d], store.get_mut(i));
    }
    let mut rng = 0x9e3779b97f4a7c15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let nq = q.len() / d;
    let pqs: Vec<E::Query> = (0..nq).map(|i| e.prepare(&q[i * d..(i + 1) * d])).collect();
    let hot: Vec<u32> = (0..32).map(|_| (next() % n as u64) as u32).collect();
    let mut out = [0f32; 32];
    // distance_ids must equal distance code by code (bit for bit).
    e.distance_ids(&pqs[0], &store, &hot, &mut out);
    for (o, &id) in out.iter().zip(&hot) {
        assert_eq!(
            o.to_bits(),
            e.distance(&pqs[0], store.get(id as usize)).to_bits()
        );
    }
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20000);
    let t = Instant::now();
    for r in 0..reps {
        e.distance_ids(&pqs[r % nq], &store, &hot, &mut out);
        std::hint::black_box(&out);
    }
    let hot_ns = t.elapsed().as_secs_f64() * 1e9 / (reps * 32) as f64;
    let sets: Vec<Vec<u32>> = (0..reps)
        .map(|_| (0..32).map(|_| (next() % n as u64) as u32).collect())
        .collect();
    let t = Instant::now();
    for (r, ids) in sets.iter().enumerate() {
        e.distance_ids(&pqs[r % nq], &store, ids, &mut out);
        std::hint::black_box(&out);
    }
    let cold_ns = t.elapsed().as_secs_f64() * 1e9 / (reps * 32) as f64;
    // The u4 x i8 gather kernels alone on the same codes (their first 192 bytes), in cache:
    // one segment, and two segments of 96 bytes.
    let k = nearq_kernels::kernels();
    let (lo, hi) = (vec![3i8; 192], vec![-5i8; 192]);
    let mut dots = [0i32; 64];
    let t = Instant::now();
    for _ in 0..reps {
        (k.dot_u4_i8_split_gather)(
            store.bytes(),
            store.stride(),
            &hot,
            &lo,
            &hi,
            &mut dots[..32],
        );
        std::hint::black_box(&dots);
    }
    let k1 = t.elapsed().as_secs_f64() * 1e9 / (reps * 32) as f64;
    let t = Instant::now();
    for _ in 0..reps {
        (k.dot_u4_i8_split_gather_segs)(
            store.bytes(),
            store.stride(),
            &hot,
            &lo,
            &hi,
            &[96, 192],
            &mut dots,
        );
        std::hint::black_box(&dots);
    }
    let k2 = t.elapsed().as_secs_f64() * 1e9 / (reps * 32) as f64;
    println!(
        "{name:10} kernels in cache: one segment {k1:5.1} ns/code, two segments {k2:5.1} ns/code"
    );
    if std::env::var("KERNEL_TABLES").is_ok() {
        // Every table this CPU runs, 32 codes and 37 (a partial last group), best of 5 rounds.
        let ids37: Vec<u32> = hot.iter().chain(&hot[..5]).copied().collect();
        let mut dots = [0i32; 2 * 37];
        for kt in nearq_kernels::all_variants() {
            let mut line = format!("  {:30}", kt.isa);
            for ids in [&hot[..], &ids37[..]] {
                let m = ids.len();
                let (mut b1, mut b2) = (f64::MAX, f64::MAX);
                for _ in 0..5 {
                    let t = Instant::now();
                    for _ in 0..reps / 5 {
                        (kt.dot_u4_i8_split_gather)(
                            store.bytes(),
                            store.stride(),
                            ids,
                            &lo,
                            &hi,
                            &mut dots[..m],
                        );
                        std::hint::black_box(&dots);
                    }
                    b1 = b1.min(t.elapsed().as_secs_f64());
                    let t = Instant::now();
                    for _ in 0..reps / 5 {
                        (kt.dot_u4_i8_split_gather_segs)(
                            store.bytes(),
                            store.stride(),
                            ids,
                            &lo,
                            &hi,
                            &[96, 192],
                            &mut dots[..2 * m],
                        );
                        std::hint::black_box(&dots);
                    }
                    b2 = b2.min(t.elapsed().as_secs_f64());
                }
                let per = 1e9 / ((reps / 5) * m) as f64;
                line += &format!(
                    "  {m} codes: 1 seg {:5.2}, 2 segs {:5.2}",
                    b1 * per,
                    b2 * per
                );
            }
            println!("{line} ns/code");
        }
    }
    let t = Instant::now();
    for i in 0..nq {
        std::hint::black_box(e.prepare(&q[i * d..(i + 1) * d]));
    }
    let prep = t.elapsed().as_secs_f64() * 1e9 / nq as f64;
    println!("{name:10} code {:4} B trav {:4} B  distance_ids: in cache {hot_ns:6.1} ns/code, out of cache {cold_ns:6.1} ns/code; prepare {prep:7.0} ns", e.code_size(), e.traversal_bytes());
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let d: usize = a[3].parse().unwrap();
    let bits: u32 = a.get(4).map_or(8, |b| b.parse().unwrap());
    let mut x = read_f32(&a[1]);
    let mut q = read_f32(&a[2]);
    x.chunks_exact_mut(d).for_each(normalize);
    q.chunks_exact_mut(d).for_each(normalize);
    let saq = Saq::train(&x, d, Metric::Cosine, &SaqConfig::new(bits as f32, 1)).unwrap();
    if std::env::var("SAQ_ONLY").is_ok() {
        run("saq", &saq, &x, &q, d);
        return;
    }
    let rq = RaBitQ::train(&x, d, Metric::Cosine, &RaBitQConfig::new(bits, 1));
    for _ in 0..2 {
        run("saq", &saq, &x, &q, d);
        run("rabitq", &rq, &x, &q, d);
    }
}
