//! Encoding throughput: training time and vectors encoded per second for every encoding, on
//! a raw little-endian f32 file of row vectors (write one with `bench/encode_speed.py`, which
//! also times faiss PQ on the same data for comparison).
//!
//! ```text
//! cargo run --release -p nearq-core --example encode_speed -- FILE DIM [THREADS] [FILTER]
//! ```
//! (FILTER: run only the encodings whose name contains it; `saq-rows` times SAQ's row-by-row
//! against its block encoder instead. The environment variable `ROUNDS=R` trains and encodes
//! each encoding R times and reports the fastest train and the fastest encode, for A/B runs
//! on a noisy machine; `CPUTIME=1` (Linux) times the CPU time of the calling thread instead
//! of wall-clock time, which other processes on a busy machine disturb less (with more than
//! one thread it misses the other threads' work); `HASH=1` also prints a hash of the codes and
//! the error to 10 digits, to check that a change leaves the codes as they were.)
//! Prints one line per encoding: name, train seconds, encode seconds, vectors/s (train +
//! encode, and encode only), on THREADS threads (default 1), and the mean squared
//! reconstruction error `mean ||x - decode(encode(x))||^2` where the encoding decodes.

use nearq_core::encoding::{
    Encoding, Lvq, Pq, PqConfig, RaBitQ, RaBitQConfig, Saq, SaqConfig, Sq8, TurboQuant,
    TurboQuantVariant,
};
use nearq_core::Metric;
use std::time::Instant;

/// A clock in seconds: wall-clock time, or with `CPUTIME` set the CPU time of this thread
/// (`/proc/thread-self/schedstat`, nanoseconds on the CPU).
fn clock() -> f64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    if std::env::var_os("CPUTIME").is_some() {
        if let Some(ns) = std::fs::read_to_string("/proc/thread-self/schedstat")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        {
            return ns as f64 * 1e-9;
        }
    }
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}

fn run<E: Encoding>(name: &str, data: &[f32], dim: usize, train: impl Fn() -> E) {
    if let Some(f) = std::env::args().nth(4) {
        if !name.contains(&f) {
            return;
        }
    }
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1)
        .max(1);
    let t0 = clock();
    let mut enc = train();
    let mut t_train = clock() - t0;
    for _ in 1..rounds {
        let t0 = clock();
        enc = train();
        t_train = t_train.min(clock() - t0);
    }
    let n = data.len() / dim;
    let cs = enc.code_size();
    let mut codes = vec![0u8; n * cs];
    let mut t_enc = f64::INFINITY;
    for _ in 0..rounds {
        let t1 = clock();
        // As the index build encodes: blocks of rows through `encode_batch`.
        nearq_core::encoding::encode_all(&enc, data, &mut codes, cs);
        t_enc = t_enc.min(clock() - t1);
    }
    // Mean squared reconstruction error, where the encoding can decode.
    let mut rec = vec![0f32; dim];
    let mut err = 0f64;
    let mut decoded = true;
    for (c, v) in codes.chunks_exact(cs).zip(data.chunks_exact(dim)) {
        decoded &= enc.decode(c, &mut rec);
        if !decoded {
            break;
        }
        err += v
            .iter()
            .zip(&rec)
            .map(|(a, b)| ((a - b) * (a - b)) as f64)
            .sum::<f64>();
    }
    let mse = if decoded && n > 0 {
        format!("  mse {:.6}", err / n as f64)
    } else {
        String::new()
    };
    println!(
        "{name:<22} train {t_train:8.3}s  encode {t_enc:8.3}s  total {:>12.0} vec/s  encode-only {:>12.0} vec/s  ({cs} B/vec){mse}",
        n as f64 / (t_train + t_enc),
        n as f64 / t_enc
    );
    if std::env::var_os("HASH").is_some() {
        // FNV-1a.
        let h = codes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        eprintln!("HASH {name} {h:016x} mse {:.10e}", err / n as f64);
    }
    std::hint::black_box(&codes);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: encode_speed FILE DIM [THREADS]");
        std::process::exit(2);
    }
    let dim: usize = args[2].parse().expect("DIM");
    let threads: usize = args.get(3).map_or(1, |t| t.parse().expect("THREADS"));
    let bytes = std::fs::read(&args[1]).expect("read FILE");
    let data: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let m = Metric::Cosine;
    println!(
        "{} vectors of dimension {dim}, {threads} thread(s)",
        data.len() / dim
    );
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        let d = &data;
        run("sq8", d, dim, || Sq8::train(d, dim, m));
        run("lvq-8", d, dim, || Lvq::train(d, dim, m, 8, 0));
        run("lvq-4x8", d, dim, || Lvq::train(d, dim, m, 4, 8));
        for bits in [1u32, 2, 3, 4, 5, 6, 7, 8] {
            let mut cfg = RaBitQConfig::new(bits, 0);
            run(&format!("rabitq-{bits}"), d, dim, || {
                RaBitQ::train(d, dim, m, &cfg)
            });
            if bits > 1 {
                cfg.fast_encode = true;
                run(&format!("rabitq-{bits}-fast"), d, dim, || {
                    RaBitQ::train(d, dim, m, &cfg)
                });
            }
        }
        // SAQ's block encoder (one matrix product per block) against row-by-row encoding,
        // alternating, best of 3 (the codes agree up to the float rounding of the product).
        if std::env::args().nth(4).is_some_and(|f| f == "saq-rows") {
            let saq = Saq::train(d, dim, m, &SaqConfig::new(4.0, 0)).expect("train");
            let (cs, n) = (saq.code_size(), d.len() / dim);
            let mut codes = vec![0u8; n * cs];
            let (mut rows, mut block) = (f64::INFINITY, f64::INFINITY);
            for _ in 0..3 {
                let t = Instant::now();
                for (c, v) in codes.chunks_exact_mut(cs).zip(d.chunks_exact(dim)) {
                    saq.encode(v, c);
                }
                rows = rows.min(t.elapsed().as_secs_f64());
                let t = Instant::now();
                saq.encode_batch(d, &mut codes, cs);
                block = block.min(t.elapsed().as_secs_f64());
            }
            println!(
                "saq-4 encode row by row {:.2} us/vec, in blocks {:.2} us/vec ({:.2}x)",
                rows / n as f64 * 1e6,
                block / n as f64 * 1e6,
                rows / block
            );
        }
        // SAQ next to Extended RaBitQ's exact encoder ("rabitq-B") at the same bits.
        for bits in [2u32, 3, 4, 5, 6, 7, 8] {
            run(&format!("saq-{bits}"), d, dim, || {
                Saq::train(d, dim, m, &SaqConfig::new(bits as f32, 0)).expect("train")
            });
        }
        for bits in [2u32, 4, 8] {
            run(&format!("turboquant-{bits}-mse"), d, dim, || {
                TurboQuant::new(dim, m, bits, TurboQuantVariant::Mse, 0)
            });
        }
        run("turboquant-4-prod", d, dim, || {
            TurboQuant::new(dim, m, 4, TurboQuantVariant::Prod, 0)
        });
        run("pq-m96-8bit", d, dim, || {
            Pq::train(d, dim, m, &PqConfig::new(Some(96), 8, false, 0)).unwrap()
        });
        run("pq-m192-4bit", d, dim, || {
            Pq::train(d, dim, m, &PqConfig::new(Some(192), 4, false, 0)).unwrap()
        });
    });
}
