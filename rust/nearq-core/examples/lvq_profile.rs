//! Profile of the LVQ graph search on real data, one query per call on one thread.
//!
//! `lvq_profile TRAIN TEST DIM [INDEX_CACHE] [ENCODING] [EF,EF,...]` with raw little-endian f32
//! files (cosine), e.g. from `pypi-minilm-384-angular-50k.hdf5`:
//!
//! ```text
//! python3 -c "import h5py, numpy as np; f = h5py.File('pypi-minilm-384-angular-50k.hdf5');
//!   np.asarray(f['train'], np.float32).tofile('train.f32');
//!   np.asarray(f['test'], np.float32).tofile('test.f32')"
//! cargo run --release -p nearq-core --example lvq_profile -- train.f32 test.f32 384 /tmp/lvq.nearq
//! ```
//!
//! ENCODING is `lvq4x8` (default), `lvq8`, `sq8` or `flat`, all with `keep_vectors=False`
//! (graph: DEGREE, BUILD_EF, ALPHA from the environment, default 32, 128, 1.2). The index is
//! built once and cached at INDEX_CACHE (exact top-10 at INDEX_CACHE.gt). It prints:
//!
//! 1. recall@10 and QPS of `Index::search` per beam width, each query's time the minimum
//!    over ROUNDS rounds (default 3; robust to preemption on a shared machine). WARM=1 runs
//!    each query once untimed first (its data cached: the compute-bound cost); ALT=path
//!    alternates a second index file in the same rounds; RERANK sets the re-rank count;
//!    COUNT_ONLY=1 skips this part and NOINSTR=1 the rest.
//! 2. (LVQ) distance computations, hops and the share of hops whose node the pool's
//!    `peek` predicted, with the time split between query preparation, traversal and
//!    re-ranking, from the library's `beam_search` over re-encoded codes.
//! 3. LAYOUT=1 instead: the same traversal with the codes as the index stores them against
//!    the traversal prefix in an array of its own, each with and without transparent huge
//!    pages (LAYOUTS=0,1,2,3 picks among them).
use nearq_core::encoding::{Encoding, Lvq};
use nearq_core::graph::search::SearchScratch;
use nearq_core::graph::{beam_search, Scorer};
use nearq_core::metric::normalize;
use nearq_core::{exact_search, EncodingSpec, Index, IndexParams, Metric, SearchParams};
use std::cell::Cell;
use std::path::Path;
use std::time::Instant;

fn read(path: &str) -> Vec<f32> {
    let bytes = std::fs::read(path).expect("read vectors");
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

struct Counting<'a> {
    enc: &'a Lvq,
    q: &'a <Lvq as Encoding>::Query,
    codes: &'a [u8],
    stride: usize,
    size: usize,
    n: Cell<usize>,
}

impl Scorer for Counting<'_> {
    fn dist(&self, id: u32) -> f32 {
        self.n.set(self.n.get() + 1);
        let i = id as usize * self.stride;
        self.enc.distance(self.q, &self.codes[i..i + self.size])
    }
    fn prefetch(&self, id: u32) {
        let p = self.codes[id as usize * self.stride..].as_ptr();
        for l in 0..4 {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: prefetch is a hint.
            unsafe {
                core::arch::x86_64::_mm_prefetch(
                    p.wrapping_add(64 * l) as *const i8,
                    core::arch::x86_64::_MM_HINT_T0,
                )
            };
        }
    }
}

/// The library's beam search, counting hops (expanded nodes).
fn hops_of<S: Scorer>(
    g: &nearq_core::graph::Graph,
    e: u32,
    sc: &S,
    ef: usize,
    s: &mut SearchScratch,
) -> usize {
    s.visited.reset(g.len());
    s.pool.reset(ef);
    s.visited.check_and_mark(e);
    s.pool.insert(sc.dist(e), e);
    let mut hops = 0;
    let mut predicted = None;
    while let Some(v) = s.pool.pop() {
        hops += 1;
        if predicted == Some(v) {
            PEEK_OK.with(|c| c.set(c.get() + 1));
        }
        predicted = s.pool.peek();
        for &u in g.neighbors(v) {
            if !s.visited.check_and_mark(u) {
                s.pool.insert(sc.dist(u), u);
            }
        }
    }
    hops
}

thread_local! {
    static PEEK_OK: Cell<usize> = const { Cell::new(0) };
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let dim: usize = a[3].parse().unwrap();
    let mut base = read(&a[1]);
    let mut queries = read(&a[2]);
    for v in base
        .chunks_exact_mut(dim)
        .chain(queries.chunks_exact_mut(dim))
    {
        normalize(v);
    }
    let nq = queries.len() / dim;
    let enc_name = a.get(5).map_or("lvq4x8", |s| s.as_str());
    let efs: Vec<usize> = a
        .get(6)
        .map_or("16,24,32,48,64,96,128", |s| s.as_str())
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    let spec = match enc_name {
        "lvq4x8" => EncodingSpec::Lvq {
            bits: 4,
            residual: 8,
        },
        "lvq8" => EncodingSpec::Lvq {
            bits: 8,
            residual: 0,
        },
        "sq8" => EncodingSpec::Sq8,
        _ => EncodingSpec::Flat,
    };
    let cache = a.get(4).cloned();
    let index = match cache.as_deref().filter(|p| Path::new(p).exists()) {
        Some(p) => Index::load(Path::new(p)).unwrap(),
        None => {
            let envf = |k: &str, d: f64| {
                std::env::var(k)
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(d)
            };
            let params = IndexParams {
                metric: Metric::Cosine,
                encoding: spec.clone(),
                keep_vectors: false,
                build: nearq_core::BuildParams {
                    degree: envf("DEGREE", 32.0) as usize,
                    build_ef: envf("BUILD_EF", 128.0) as usize,
                    alpha: envf("ALPHA", 1.2) as f32,
                    seed: 0,
                },
            };
            let t = Instant::now();
            let idx = Index::build(&base, dim, &params, None, &|_, _| {}).unwrap();
            eprintln!("built in {:.1}s", t.elapsed().as_secs_f64());
            if let Some(p) = &cache {
                idx.save(Path::new(p)).unwrap();
            }
            idx
        }
    };
    let gt_path = format!("{}.gt", cache.as_deref().unwrap_or("/tmp/lvq_profile"));
    let gt: Vec<i64> = match std::fs::read(&gt_path) {
        Ok(b) if b.len() == nq * 80 => b
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        _ => {
            let (gt, _) = exact_search(&base, &queries, dim, 10, Metric::Cosine);
            let b: Vec<u8> = gt.iter().flat_map(|x| x.to_le_bytes()).collect();
            std::fs::write(&gt_path, b).unwrap();
            gt
        }
    };
    println!(
        "{} n={} memory={} bytes/vector={:.1}",
        enc_name,
        index.len(),
        index.memory_usage().total(),
        index.memory_usage().total() as f64 / index.len() as f64
    );
    // QPS of the real path, one query per call: each query keeps its minimum wall time over
    // the rounds (robust to preemption on a shared machine).
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let warm = std::env::var("WARM").is_ok();
    // ALT=path: a second index file, alternated with the first as one more configuration.
    let alt = std::env::var("ALT")
        .ok()
        .map(|p| Index::load(Path::new(&p)).unwrap());
    let configs: Vec<bool> = if alt.is_some() {
        vec![false, true]
    } else {
        vec![false]
    };
    for &ef in efs.iter().filter(|_| std::env::var("COUNT_ONLY").is_err()) {
        let p = SearchParams {
            k: 10,
            ef: Some(ef),
            rerank: std::env::var("RERANK").ok().and_then(|r| r.parse().ok()),
        };
        let mut per = vec![vec![f64::INFINITY; nq]; configs.len()];
        let mut hits = vec![0; configs.len()];
        for _rep in 0..rounds {
            for (ci, &use_alt) in configs.iter().enumerate() {
                let index = if use_alt {
                    alt.as_ref().unwrap()
                } else {
                    &index
                };
                hits[ci] = 0;
                for qi in 0..nq {
                    let q = &queries[qi * dim..(qi + 1) * dim];
                    if warm {
                        let _ = index.search(q, &p, Some(1));
                    }
                    let t = Instant::now();
                    let (ids, _) = index.search(q, &p, Some(1)).unwrap();
                    per[ci][qi] = per[ci][qi].min(t.elapsed().as_secs_f64());
                    hits[ci] += ids
                        .iter()
                        .filter(|&&i| gt[qi * 10..qi * 10 + 10].contains(&i))
                        .count();
                }
            }
        }
        for (ci, use_alt) in configs.iter().enumerate() {
            let best: f64 = per[ci].iter().sum();
            println!(
                "ef={ef:4} alt={use_alt} recall={:.4} qps(min)={:.0} us/query={:.2}",
                hits[ci] as f64 / (nq * 10) as f64,
                nq as f64 / best,
                best * 1e6 / nq as f64
            );
        }
    }
    if std::env::var("NOINSTR").is_ok() {
        return;
    }
    // Instrumented traversal (LVQ only): counts and time split.
    let EncodingSpec::Lvq { bits, residual } = spec else {
        return;
    };
    let enc = Lvq::train(&base, dim, Metric::Cosine, bits, residual);
    let size = enc.code_size();
    let stride = size.div_ceil(4) * 4;
    let mut codes = vec![0u8; stride * index.len()];
    for (i, v) in base.chunks_exact(dim).enumerate() {
        enc.encode(v, &mut codes[i * stride..i * stride + size]);
    }
    let graph = index.graph();
    let entry = index.entry_point();
    let mut s = SearchScratch::default();
    if std::env::var("LAYOUT").is_ok() {
        layout_experiment(&enc, &codes, stride, graph, entry, &queries, dim, &gt, &efs);
        return;
    }
    for &ef in &efs {
        let (mut t_prep, mut t_trav, mut t_rr) = (0f64, 0f64, 0f64);
        let mut ndist = 0usize;
        let mut nhops = 0usize;
        let mut hits = 0usize;
        for qi in 0..nq {
            let q = &queries[qi * dim..(qi + 1) * dim];
            let t0 = Instant::now();
            let pq = enc.prepare(q);
            let t1 = Instant::now();
            let sc = Counting {
                enc: &enc,
                q: &pq,
                codes: &codes,
                stride,
                size,
                n: Cell::new(0),
            };
            let e = if std::env::var("ORACLE").is_ok() {
                gt[qi * 10 + 9] as u32
            } else {
                entry
            };
            beam_search(graph, &[e], &sc, ef.max(30), &mut s);
            let t2 = Instant::now();
            let mut c: Vec<(f32, u32)> = s.pool.iter().take(30).collect();
            for x in c.iter_mut() {
                let i = x.1 as usize * stride;
                x.0 = enc.distance_fine(&pq, &codes[i..i + size]);
            }
            c.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
            let t3 = Instant::now();
            hits += c
                .iter()
                .take(10)
                .filter(|x| gt[qi * 10..qi * 10 + 10].contains(&(x.1 as i64)))
                .count();
            t_prep += (t1 - t0).as_secs_f64();
            t_trav += (t2 - t1).as_secs_f64();
            t_rr += (t3 - t2).as_secs_f64();
            ndist += sc.n.get();
            nhops += hops_of(graph, e, &sc, ef.max(30), &mut s);
        }
        let f = 1e6 / nq as f64;
        println!(
            "instrumented ef={ef:4} recall={:.4} dist/query={:.0} hops/query={:.0} peek_ok={:.0} prep={:.2}us traversal={:.2}us rerank={:.2}us ns/dist={:.1}",
            hits as f64 / (nq * 10) as f64,
            ndist as f64 / nq as f64,
            nhops as f64 / nq as f64,
            PEEK_OK.with(|c| c.replace(0)) as f64 / nq as f64,
            t_prep * f,
            t_trav * f,
            t_rr * f,
            t_trav * 1e9 / ndist as f64
        );
    }
}

/// A byte array, optionally advised to use transparent huge pages before it is touched.
fn alloc(n: usize, huge: bool) -> Vec<u8> {
    let mut v: Vec<u8> = Vec::with_capacity(n + (2 << 20));
    if huge {
        extern "C" {
            fn madvise(addr: *mut core::ffi::c_void, len: usize, advice: i32) -> i32;
        }
        let p = v.as_ptr() as usize;
        let start = (p + 4095) & !4095;
        let end = (p + v.capacity()) & !4095;
        // SAFETY: advice on memory this Vec owns.
        unsafe { madvise(start as *mut _, end - start, 14) };
    }
    v.resize(n, 0);
    v
}

struct Split<'a> {
    enc: &'a Lvq,
    q: &'a <Lvq as Encoding>::Query,
    hot: &'a [u8],
    stride: usize,
    size: usize,
    lines: usize,
}

impl Scorer for Split<'_> {
    #[inline(always)]
    fn dist(&self, id: u32) -> f32 {
        let i = id as usize * self.stride;
        self.enc.distance(self.q, &self.hot[i..i + self.size])
    }
    #[inline(always)]
    fn prefetch(&self, id: u32) {
        let p = self.hot[id as usize * self.stride..].as_ptr() as usize & !63;
        for l in 0..self.lines {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: prefetch is a hint.
            unsafe {
                core::arch::x86_64::_mm_prefetch(
                    (p + 64 * l) as *const i8,
                    core::arch::x86_64::_MM_HINT_T0,
                )
            };
        }
    }
    fn dist_batch(&self, ids: &[u32], out: &mut [f32]) {
        self.enc
            .distance_gather(self.q, self.hot, self.stride, ids, out);
    }
}

/// Interleaved codes (as the index stores them) against the traversal prefix in an array of
/// its own (and the rest in another), with and without huge pages.
#[allow(clippy::too_many_arguments)]
fn layout_experiment(
    enc: &Lvq,
    codes: &[u8],
    stride: usize,
    graph: &nearq_core::graph::Graph,
    entry: u32,
    queries: &[f32],
    dim: usize,
    gt: &[i64],
    efs: &[usize],
) {
    let n = codes.len() / stride;
    let size = enc.code_size();
    let hot_size = enc.traversal_bytes();
    let hot_stride = hot_size.div_ceil(4) * 4;
    let cold_size = size - hot_size;
    let mut layouts = Vec::new();
    for huge in [false, true] {
        let mut inter = alloc(codes.len(), huge);
        inter.copy_from_slice(codes);
        layouts.push(("interleaved", huge, inter, stride, Vec::new()));
        let mut hot = alloc(n * hot_stride, huge);
        let mut cold = alloc(n * cold_size, huge);
        for i in 0..n {
            hot[i * hot_stride..i * hot_stride + hot_size]
                .copy_from_slice(&codes[i * stride..i * stride + hot_size]);
            cold[i * cold_size..(i + 1) * cold_size]
                .copy_from_slice(&codes[i * stride + hot_size..i * stride + size]);
        }
        layouts.push(("split", huge, hot, hot_stride, cold));
    }
    let which = std::env::var("LAYOUTS").unwrap_or("0,3".into());
    let which: Vec<usize> = which.split(',').map(|x| x.parse().unwrap()).collect();
    let layouts: Vec<_> = layouts
        .into_iter()
        .enumerate()
        .filter(|(i, _)| which.contains(i))
        .map(|(_, l)| l)
        .collect();
    let nconf = layouts.len();
    let nq = queries.len() / dim;
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let mut s = SearchScratch::default();
    let mut full = vec![0u8; size];
    for &ef in efs {
        let mut per = vec![vec![f64::INFINITY; nq]; nconf];
        let mut hits = vec![0usize; nconf];
        for _ in 0..rounds {
            for (li, (_, _, hot, st, cold)) in layouts.iter().enumerate() {
                hits[li] = 0;
                let warm = std::env::var("WARM").is_ok();
                for qi in 0..nq {
                    if warm {
                        let pq = enc.prepare(&queries[qi * dim..(qi + 1) * dim]);
                        let sc = Split {
                            enc,
                            q: &pq,
                            hot,
                            stride: *st,
                            size: hot_size,
                            lines: if *st % 64 == 0 {
                                hot_size.div_ceil(64)
                            } else {
                                (hot_size + 60).div_ceil(64)
                            },
                        };
                        beam_search(graph, &[entry], &sc, ef.max(20), &mut s);
                    }
                    let t = Instant::now();
                    let pq = enc.prepare(&queries[qi * dim..(qi + 1) * dim]);
                    let sc = Split {
                        enc,
                        q: &pq,
                        hot,
                        stride: *st,
                        size: hot_size,
                        lines: if *st % 64 == 0 {
                            hot_size.div_ceil(64)
                        } else {
                            (hot_size + 60).div_ceil(64)
                        },
                    };
                    beam_search(graph, &[entry], &sc, ef.max(20), &mut s);
                    let mut c: Vec<(f32, u32)> = s.pool.iter().take(20).collect();
                    for x in c.iter_mut() {
                        let i = x.1 as usize;
                        let code: &[u8] = if cold.is_empty() {
                            &hot[i * st..i * st + size]
                        } else {
                            full[..hot_size].copy_from_slice(&hot[i * st..i * st + hot_size]);
                            full[hot_size..]
                                .copy_from_slice(&cold[i * cold_size..(i + 1) * cold_size]);
                            &full
                        };
                        x.0 = enc.distance_fine(&pq, code);
                    }
                    c.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
                    per[li][qi] = per[li][qi].min(t.elapsed().as_secs_f64());
                    hits[li] += c
                        .iter()
                        .take(10)
                        .filter(|x| gt[qi * 10..qi * 10 + 10].contains(&(x.1 as i64)))
                        .count();
                }
            }
        }
        for li in 0..nconf {
            let (name, huge, ..) = &layouts[li];
            let t: f64 = per[li].iter().sum();
            println!(
                "layout ef={ef:4} {name:12} huge={huge:5} recall={:.4} qps(min)={:.0} us/query={:.2}",
                hits[li] as f64 / (nq * 10) as f64,
                nq as f64 / t,
                t * 1e6 / nq as f64
            );
        }
    }
}
