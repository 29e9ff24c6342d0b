//! TurboQuant traversal speed and accuracy: ns per `distance` call, query preparation time,
//! the error of the traversal estimate and of the float estimate against the true distance,
//! and (with a data directory) single-thread graph search QPS and recall@10.
//!
//! ```text
//! cargo run --release -p nearq-core --example tq_speed -- [DIR|-] [BITS] [VARIANT] [sq8]
//! ```
//!
//! `DIR` holds `train.f32` and `test.f32` (raw little-endian f32 rows, 384 columns, unit
//! norm) and `gt10.i32` (the exact 10 nearest train rows of every test row by cosine); without
//! it, random unit vectors are used and the search part is skipped. The index is built once
//! (2 threads) and saved as `DIR/tq<BITS><variant>.nearq`; later runs load it (floats served
//! from a memory map, codes in RAM, as `Index.load(mmap="vectors")`). With `sq8`, an sq8 index
//! without float vectors is searched too (`DIR/sq8nokeep.nearq`), for a ratio within one run.

use nearq_core::encoding::{Encoding, TurboQuant, TurboQuantVariant as Variant};
use nearq_core::{BuildParams, EncodingSpec, Index, IndexParams, Metric, SearchParams};
use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

const DIM: usize = 384;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn gauss(&mut self) -> f32 {
        let u = ((self.next() >> 11) as f64 / (1u64 << 53) as f64).max(1e-300);
        let v = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
    }
}

fn read_f32(path: &Path) -> Vec<f32> {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn random_unit(n: usize, rng: &mut Rng) -> Vec<f32> {
    let mut v: Vec<f32> = (0..n * DIM).map(|_| rng.gauss()).collect();
    for r in v.chunks_exact_mut(DIM) {
        let s = r.iter().map(|x| x * x).sum::<f32>().sqrt();
        r.iter_mut().for_each(|x| *x /= s);
    }
    v
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Minimum over `reps` runs of the mean ns per call of `f` over `ids`.
fn time_ns(reps: usize, ids: &[usize], mut f: impl FnMut(usize) -> f32) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        let mut s = 0.0f32;
        for &i in ids {
            s += f(i);
        }
        black_box(s);
        best = best.min(t.elapsed().as_nanos() as f64 / ids.len() as f64);
    }
    best
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = args.get(1).filter(|a| *a != "-").map(Path::new);
    let bits: u32 = args.get(2).map_or(4, |b| b.parse().expect("BITS"));
    let variant = Variant::parse(args.get(3).map_or("mse", |v| v.as_str())).expect("VARIANT");
    let mut rng = Rng(7);
    let (train, test) = match dir {
        Some(d) => (
            read_f32(&d.join("train.f32")),
            read_f32(&d.join("test.f32")),
        ),
        None => (random_unit(50_000, &mut rng), random_unit(1000, &mut rng)),
    };
    let (n, nq) = (train.len() / DIM, test.len() / DIM);
    println!(
        "kernels {}; {n} x {DIM}, {nq} queries; turboquant bits={bits} {}",
        nearq_core::kernels::kernels().isa,
        variant.name()
    );

    // ---------------------------------------------------------------- estimate error
    let metric = Metric::Cosine;
    let enc = TurboQuant::new(DIM, metric, bits, variant, 0);
    let cs = enc.code_size();
    let mut codes = vec![0u8; n * cs];
    for (c, v) in codes.chunks_exact_mut(cs).zip(train.chunks_exact(DIM)) {
        enc.encode(v, c);
    }
    let code = |i: usize| &codes[i * cs..(i + 1) * cs];
    // Per query: its 100 nearest train rows (the pairs a search compares) and 100 random ones.
    // TQ_SPEED_ERROR_QUERIES=0 skips this part (e.g. to profile the search alone).
    let eq = std::env::var("TQ_SPEED_ERROR_QUERIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200usize)
        .min(nq);
    let (mut se_t, mut se_f, mut se_tf, mut m_t, mut m_f, mut cnt) =
        (0.0f64, 0.0f64, 0.0f64, 0.0f64, 0.0f64, 0usize);
    let (mut se_tn, mut se_fn, mut cnt_n) = (0.0f64, 0.0f64, 0usize);
    for qi in 0..eq {
        let q = &test[qi * DIM..(qi + 1) * DIM];
        let pq = enc.prepare(q);
        let mut sims: Vec<(f32, usize)> = train
            .chunks_exact(DIM)
            .enumerate()
            .map(|(i, v)| (dot(q, v), i))
            .collect();
        sims.select_nth_unstable_by(100, |a, b| b.0.total_cmp(&a.0));
        let near: Vec<usize> = sims[..100].iter().map(|s| s.1).collect();
        let far: Vec<usize> = (0..100).map(|_| rng.below(n)).collect();
        for (is_near, ids) in [(true, &near), (false, &far)] {
            for &i in ids.iter() {
                let truth = 1.0 - dot(q, &train[i * DIM..(i + 1) * DIM]) as f64;
                let t = enc.distance(&pq, code(i)) as f64;
                let f = 1.0 - enc.inner_product(&pq, code(i)) as f64;
                se_t += (t - truth).powi(2);
                se_f += (f - truth).powi(2);
                se_tf += (t - f).powi(2);
                m_t += t - truth;
                m_f += f - truth;
                cnt += 1;
                if is_near {
                    se_tn += (t - truth).powi(2);
                    se_fn += (f - truth).powi(2);
                    cnt_n += 1;
                }
            }
        }
    }
    let c = cnt as f64;
    if cnt > 0 {
        println!(
            "error vs exact cosine distance ({eq} queries x 200 pairs): traversal rms {:.5} \
             (bias {:+.5}), float rms {:.5} (bias {:+.5}), traversal - float rms {:.5}; on the \
             100 nearest: traversal rms {:.5}, float rms {:.5}",
            (se_t / c).sqrt(),
            m_t / c,
            (se_f / c).sqrt(),
            m_f / c,
            (se_tf / c).sqrt(),
            (se_tn / cnt_n as f64).sqrt(),
            (se_fn / cnt_n as f64).sqrt(),
        );
    }

    // ---------------------------------------------------------------- speed per code
    let queries: Vec<_> = (0..16)
        .map(|qi| enc.prepare(&test[qi * DIM..(qi + 1) * DIM]))
        .collect();
    let hot: Vec<usize> = (0..20_000).map(|_| rng.below(512)).collect();
    let cold: Vec<usize> = (0..20_000).map(|_| rng.below(n)).collect();
    let mut qn = 0;
    let t_hot = time_ns(7, &hot, |i| {
        qn = (qn + 1) & 15;
        enc.distance(&queries[qn], code(i))
    });
    let t_cold = time_ns(7, &cold, |i| {
        qn = (qn + 1) & 15;
        enc.distance(&queries[qn], code(i))
    });
    let t_fine = time_ns(7, &hot, |i| {
        qn = (qn + 1) & 15;
        enc.inner_product(&queries[qn], code(i))
    });
    let qids: Vec<usize> = (0..2000).map(|i| i % nq).collect();
    let t_prep = time_ns(5, &qids, |i| {
        let p = enc.prepare(&test[i * DIM..(i + 1) * DIM]);
        black_box(&p);
        0.0
    });
    println!(
        "distance: {t_hot:.1} ns/code (512 codes, cached), {t_cold:.1} ns/code (random of {n}); \
         float estimate {t_fine:.1} ns/code (cached); prepare {:.2} us/query",
        t_prep / 1000.0
    );

    // ---------------------------------------------------------------- graph search
    let (Some(dir), true) = (dir, n >= 1000) else {
        return;
    };
    let gt: Vec<i32> = std::fs::read(dir.join("gt10.i32"))
        .expect("gt10.i32")
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    // TurboQuant with kept float vectors served from a memory map (bench `nearq-tq4-mmap`),
    // and, with a fourth argument `sq8`, sq8 without floats (bench `nearq-sq8-nokeep`).
    let mut configs = vec![(
        format!("tq{bits}{}", variant.name()),
        EncodingSpec::TurboQuant { bits, variant },
        true,
    )];
    if args.get(4).is_some_and(|a| a == "sq8") {
        configs.push(("sq8nokeep".into(), EncodingSpec::Sq8, false));
    }
    for (name, encoding, keep_vectors) in configs {
        let path = dir.join(format!("{name}.nearq"));
        if !path.exists() {
            let p = IndexParams {
                metric,
                encoding,
                keep_vectors,
                build: BuildParams::default(),
            };
            let t = Instant::now();
            let idx = Index::build(&train, DIM, &p, Some(2), &|_, _| {}).expect("build");
            println!("{name}: built in {:.1} s", t.elapsed().as_secs_f64());
            idx.save(&path).expect("save");
        }
        let idx = Index::load_mapped(&path, false).expect("load");
        for ef in [10, 16, 24, 32, 48, 64, 96] {
            let p = SearchParams {
                k: 10,
                ef: Some(ef),
                rerank: None,
            };
            let mut best = f64::INFINITY;
            let mut ids = Vec::new();
            for _ in 0..3 {
                let t = Instant::now();
                ids = idx.search(&test, &p, Some(1)).expect("search").0;
                best = best.min(t.elapsed().as_secs_f64());
            }
            let hits: usize = (0..nq)
                .map(|qi| {
                    let want = &gt[qi * 10..qi * 10 + 10];
                    ids[qi * 10..qi * 10 + 10]
                        .iter()
                        .filter(|&&id| want.contains(&(id as i32)))
                        .count()
                })
                .sum();
            println!(
                "{name} search ef={ef:<3} recall@10 {:.4}  QPS {:>8.0}  ({:.1} us/query)",
                hits as f64 / (nq * 10) as f64,
                nq as f64 / best,
                best * 1e6 / nq as f64
            );
        }
    }
}
