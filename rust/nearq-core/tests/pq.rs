//! Product quantization: k-means, ADC against decoded vectors, OPQ, 4-bit FastScan, recall
//! inside the index, persistence and parameter errors (ALGORITHMS.md 5.8).

mod common;
use common::{clustered, recall};

use nearq_core::encoding::kmeans::{self, Init, KMeansConfig};
use nearq_core::encoding::pq::polar_factor;
use nearq_core::encoding::{Encoding, Pq, PqConfig};
use nearq_core::{
    exact_search, BuildParams, EncodingSpec, Error, Index, IndexParams, Metric, SearchParams,
};

fn lcg(seed: u64) -> impl FnMut() -> f32 {
    let mut s = seed.wrapping_mul(6364136223846793005) | 1;
    move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// Strongly correlated data: a random linear mix of coordinates with decaying scales.
fn correlated(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut r = lcg(seed);
    let mix: Vec<f32> = (0..dim * dim).map(|_| r()).collect();
    let mut out = vec![0.0f32; n * dim];
    for row in out.chunks_exact_mut(dim) {
        let z: Vec<f32> = (0..dim).map(|t| r() * 4.0 / (1.0 + t as f32)).collect();
        for (a, o) in row.iter_mut().enumerate() {
            *o = (0..dim).map(|b| mix[a * dim + b] * z[b]).sum();
        }
    }
    out
}

fn normalized(data: &[f32], dim: usize) -> Vec<f32> {
    let mut v = data.to_vec();
    for row in v.chunks_exact_mut(dim) {
        let n = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        row.iter_mut().for_each(|x| *x /= n);
    }
    v
}

fn mse(enc: &Pq, data: &[f32]) -> f64 {
    let d = enc.dim();
    let mut code = vec![0u8; enc.code_size()];
    let mut out = vec![0.0f32; d];
    let mut err = 0.0f64;
    for x in data.chunks_exact(d) {
        enc.encode(x, &mut code);
        assert!(enc.decode(&code, &mut out));
        err += x
            .iter()
            .zip(&out)
            .map(|(a, b)| ((a - b) * (a - b)) as f64)
            .sum::<f64>();
    }
    err / (data.len() / d) as f64
}

fn build(data: &[f32], dim: usize, metric: Metric, enc: EncodingSpec, keep: bool) -> Index {
    let p = IndexParams {
        metric,
        encoding: enc,
        keep_vectors: keep,
        build: BuildParams::default(),
    };
    Index::build(data, dim, &p, Some(2), &|_, _| {}).unwrap()
}

#[test]
fn kmeans_objective_never_increases_and_is_seeded() {
    let dim = 8;
    let data = clustered(4000, dim, 11);
    for init in [Init::Random, Init::PlusPlus] {
        let mut cfg = KMeansConfig::new(64, 7);
        cfg.init = init;
        let a = kmeans::train(&data, dim, &cfg);
        assert_eq!(a.objective.len(), cfg.iters);
        for w in a.objective.windows(2) {
            assert!(w[1] <= w[0] * (1.0 + 1e-6), "{init:?}: {:?}", a.objective);
        }
        assert!(a.objective.last().unwrap() < &(0.8 * a.objective[0]));
        let b = kmeans::train(&data, dim, &cfg);
        assert_eq!(a.centroids, b.centroids);
    }
    // More centroids than distinct points: empty clusters are repaired, never NaN.
    let few = clustered(40, dim, 3);
    let c = kmeans::train(&few, dim, &KMeansConfig::new(64, 1));
    assert_eq!(c.centroids.len(), 64 * dim);
    assert!(c.centroids.iter().all(|x| x.is_finite()));
}

#[test]
fn adc_equals_distance_to_decoded_vector() {
    let dim = 30; // 8 sub-spaces of 4 or 3 dimensions: the uneven split
    let raw = clustered(1500, dim, 5);
    let queries = clustered(10, dim, 6);
    for metric in [Metric::L2, Metric::InnerProduct, Metric::Cosine] {
        let (data, qs) = if metric == Metric::Cosine {
            (normalized(&raw, dim), normalized(&queries, dim))
        } else {
            (raw.clone(), queries.clone())
        };
        for (bits, opq) in [(8, false), (8, true), (4, false), (4, true)] {
            let mut cfg = PqConfig::new(Some(8), bits, opq, 3);
            cfg.opq_iters = 3;
            let enc = Pq::train(&data, dim, metric, &cfg).unwrap();
            let mut code = vec![0u8; enc.code_size()];
            let mut dec = vec![0.0f32; dim];
            let codes: Vec<Vec<u8>> = data
                .chunks_exact(dim)
                .take(64)
                .map(|x| {
                    enc.encode(x, &mut code);
                    code.clone()
                })
                .collect();
            let refs: Vec<&[u8]> = codes.iter().map(|c| c.as_slice()).collect();
            for q in qs.chunks_exact(dim) {
                let pq = enc.prepare(q);
                let mut batch = vec![0.0f32; refs.len()];
                enc.distance_batch(&pq, &refs, &mut batch);
                for (c, &b) in refs.iter().zip(&batch) {
                    assert!(enc.decode(c, &mut dec));
                    let want = match metric {
                        Metric::L2 => q.iter().zip(&dec).map(|(a, b)| (a - b) * (a - b)).sum(),
                        Metric::InnerProduct => {
                            -q.iter().zip(&dec).map(|(a, b)| a * b).sum::<f32>()
                        }
                        Metric::Cosine => 1.0 - q.iter().zip(&dec).map(|(a, b)| a * b).sum::<f32>(),
                    };
                    let got = enc.distance(&pq, c);
                    let tol = 1e-4 * (1.0 + want.abs());
                    assert!(
                        (got - want).abs() <= tol,
                        "{metric:?} bits={bits} opq={opq}: {got} vs {want}"
                    );
                    // FastScan (4 bits) is within its rounding bound; 8 bits is the same ADC.
                    let bound = pq.fastscan_error_bound() * 1.001 + tol;
                    assert!(
                        (b - got).abs() <= bound,
                        "batch {b} vs {got} (bound {bound})"
                    );
                }
            }
        }
    }
}

#[test]
fn opq_rotation_is_orthogonal_and_no_worse_than_pq() {
    let dim = 32;
    let data = correlated(4000, dim, 9);
    let pq = Pq::train(&data, dim, Metric::L2, &PqConfig::new(Some(8), 8, false, 1)).unwrap();
    let opq = Pq::train(&data, dim, Metric::L2, &PqConfig::new(Some(8), 8, true, 1)).unwrap();
    let r = opq.rotation().unwrap();
    for a in 0..dim {
        for b in 0..dim {
            let dot: f32 = (0..dim).map(|t| r[a * dim + t] * r[b * dim + t]).sum();
            let want = if a == b { 1.0 } else { 0.0 };
            assert!((dot - want).abs() < 1e-5, "RRᵀ[{a}][{b}] = {dot}");
        }
    }
    let (e_pq, e_opq) = (mse(&pq, &data), mse(&opq, &data));
    assert!(e_opq <= e_pq, "OPQ MSE {e_opq} > PQ MSE {e_pq}");
}

#[test]
fn polar_factor_recovers_the_orthogonal_part() {
    // M = H1 · diag(s) · H2 with Householder reflections H1, H2: the polar factor is H1·H2.
    let d = 12;
    let house = |seed: u64| -> Vec<f64> {
        let mut r = lcg(seed);
        let v: Vec<f64> = (0..d).map(|_| r() as f64).collect();
        let n2: f64 = v.iter().map(|x| x * x).sum();
        (0..d * d)
            .map(|i| f64::from(u8::from(i / d == i % d)) - 2.0 * v[i / d] * v[i % d] / n2)
            .collect()
    };
    let mul = |a: &[f64], b: &[f64]| -> Vec<f64> {
        (0..d * d)
            .map(|i| (0..d).map(|t| a[(i / d) * d + t] * b[t * d + i % d]).sum())
            .collect()
    };
    let (h1, h2) = (house(1), house(2));
    let s: Vec<f64> = (0..d * d)
        .map(|i| {
            if i / d == i % d {
                0.5 + (i / d) as f64
            } else {
                0.0
            }
        })
        .collect();
    let m = mul(&mul(&h1, &s), &h2);
    let eye: Vec<f64> = (0..d * d)
        .map(|i| f64::from(u8::from(i / d == i % d)))
        .collect();
    let (r, _) = polar_factor(&m, d, &eye);
    for (a, b) in r.iter().zip(mul(&h1, &h2)) {
        assert!((a - b).abs() < 1e-9, "{a} vs {b}");
    }
}

#[test]
fn recall_with_float_reranking() {
    let (n, dim, k) = (4000, 32, 10);
    let data = clustered(n, dim, 21);
    let queries = clustered(100, dim, 22);
    for metric in [Metric::L2, Metric::Cosine] {
        let (truth, _) = exact_search(&data, &queries, dim, k, metric);
        for opq in [false, true] {
            let spec = EncodingSpec::parse("pq", Some(&[8]))
                .unwrap()
                .with_pq_options(Some(16), opq)
                .unwrap();
            let index = build(&data, dim, metric, spec, true);
            assert_eq!(index.encoding(), "pq");
            let p = SearchParams {
                k,
                ef: Some(96),
                rerank: Some(96),
            };
            let (ids, _) = index.search(&queries, &p, None).unwrap();
            let r = recall(&ids, &truth, k);
            assert!(r >= 0.95, "{metric:?} opq={opq}: recall {r}");
        }
    }
}

#[test]
fn save_load_round_trip() {
    let dim = 24;
    let data = clustered(1200, dim, 31);
    let queries = clustered(20, dim, 32);
    for (bits, opq) in [(8, true), (4, false)] {
        let spec = EncodingSpec::Pq {
            m: Some(6),
            bits,
            opq,
        };
        let index = build(&data, dim, Metric::L2, spec, false);
        let back = Index::from_payload(&index.to_payload()).unwrap();
        assert_eq!(back.encoding(), "pq");
        assert_eq!(back.to_payload(), index.to_payload());
        let p = SearchParams::new(5);
        assert_eq!(
            index.search(&queries, &p, None).unwrap(),
            back.search(&queries, &p, None).unwrap()
        );
        assert_eq!(index.memory_usage().vectors, 0);
        assert!(index.memory_usage().codes >= 1200 * if bits == 8 { 6 } else { 3 });
    }
}

#[test]
fn bad_parameters_are_invalid_parameter_errors() {
    let is_param = |r: Result<EncodingSpec, Error>, name: &str| match r {
        Err(Error::InvalidParameter { name: n, .. }) => assert_eq!(n, name),
        other => panic!("expected InvalidParameter({name}), got {other:?}"),
    };
    for bits in [1, 2, 7, 16] {
        is_param(EncodingSpec::parse("pq", Some(&[bits])), "bits");
    }
    let pq = EncodingSpec::parse("pq", None).unwrap();
    assert_eq!(
        pq,
        EncodingSpec::Pq {
            m: None,
            bits: 8,
            opq: false
        }
    );
    is_param(pq.clone().with_pq_options(Some(0), false), "subspaces");
    is_param(
        EncodingSpec::Sq8.with_pq_options(Some(4), false),
        "subspaces",
    );
    is_param(EncodingSpec::Flat.with_pq_options(None, true), "opq");
    // More sub-quantizers than dimensions is caught at build time.
    let data = clustered(100, 8, 1);
    let p = IndexParams {
        encoding: pq.with_pq_options(Some(9), false).unwrap(),
        ..IndexParams::default()
    };
    match Index::build(&data, 8, &p, Some(1), &|_, _| {}) {
        Err(Error::InvalidParameter { name, .. }) => assert_eq!(name, "subspaces"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("m = 9 > d = 8 was accepted"),
    }
}

/// `distance_ids` (the graph traversal's neighbour scoring: FastScan for 4 bits) against the
/// float ADC `distance`: within `fastscan_error_bound` for 4 bits, equal for 8 bits, for
/// blocks of 1..=70 ids (partial blocks, several blocks, repeated and unordered ids).
fn check_distance_ids(enc: &Pq, data: &[f32], queries: &[f32], dim: usize, label: &str) {
    use nearq_core::storage::CodeStore;
    let n = data.len() / dim;
    let mut codes = CodeStore::with_len(enc.code_size(), n);
    for (i, x) in data.chunks_exact(dim).enumerate() {
        enc.encode(x, codes.get_mut(i));
    }
    let mut worst = 0.0f32;
    for (qi, q) in queries.chunks_exact(dim).enumerate() {
        let pq = enc.prepare(q);
        let bound = pq.fastscan_error_bound();
        if enc.bits() == 4 {
            assert!(bound > 0.0 && bound.is_finite(), "{label}: bound {bound}");
        } else {
            assert_eq!(bound, 0.0);
        }
        for len in [1usize, 5, 16, 17, 31, 32, 33, 70] {
            let ids: Vec<u32> = (0..len)
                .map(|t| ((qi * 131 + t * 977 + t * t * 13) % n) as u32)
                .collect();
            let mut out = vec![f32::NAN; len];
            enc.distance_ids(&pq, &codes, &ids, &mut out);
            for (&id, &got) in ids.iter().zip(&out) {
                let want = enc.distance(&pq, codes.get(id as usize));
                let tol = bound * 1.001 + 1e-5 * (1.0 + want.abs());
                assert!(
                    (got - want).abs() <= tol,
                    "{label}: id {id} of {len}: {got} vs ADC {want} (bound {bound})"
                );
                worst = worst.max((got - want).abs() / bound.max(f32::MIN_POSITIVE));
            }
        }
    }
    if enc.bits() == 4 && enc.subspaces() >= 64 {
        // The rounding errors of many sub-tables do not all line up.
        assert!(worst < 0.5, "{label}: worst error {worst} of the bound");
    }
    eprintln!("{label}: worst |distance_ids - ADC| = {worst:.3} of the bound");
}

#[test]
fn distance_ids_agree_with_float_adc_within_the_bound() {
    let dim = 48;
    let data = normalized(&correlated(1500, dim, 21), dim);
    let queries = normalized(&correlated(8, dim, 22), dim);
    for metric in [Metric::L2, Metric::Cosine, Metric::InnerProduct] {
        for (m, bits) in [(24, 4), (23, 4), (48, 4), (1, 4), (12, 8)] {
            let enc =
                Pq::train(&data, dim, metric, &PqConfig::new(Some(m), bits, false, 3)).unwrap();
            check_distance_ids(
                &enc,
                &data,
                &queries,
                dim,
                &format!("{metric:?} m={m} bits={bits}"),
            );
        }
    }
}

/// The first `n` train and `nq` test rows of the real dataset (ann-benchmarks HDF5), read
/// through python3 + h5py into raw f32; `None` (the test is skipped, with a message) when the
/// file, python3 or h5py is missing. `NEARQ_DATA` overrides the path, as in tests/conftest.py.
fn real_rows(n: usize, nq: usize) -> Option<(Vec<f32>, Vec<f32>, usize)> {
    let path = std::env::var("NEARQ_DATA").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/data/pypi-minilm-384-angular-50k.hdf5"
        )
        .to_string()
    });
    let fallback = "/work/shared/data/pypi-minilm-384-angular-50k.hdf5";
    let path = [path.as_str(), fallback]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())?
        .to_string();
    // One folder per call: tests of one process run in parallel.
    let dir = std::env::temp_dir().join(format!("nearq-pq-real-{}-{n}-{nq}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let script = format!(
        "import h5py, numpy as np\n\
         f = h5py.File({path:?}, 'r')\n\
         np.ascontiguousarray(f['train'][:{n}], dtype='<f4').tofile({tr:?})\n\
         np.ascontiguousarray(f['test'][:{nq}], dtype='<f4').tofile({te:?})\n\
         print(f['train'].shape[1])",
        tr = dir.join("train.f32").to_str()?,
        te = dir.join("test.f32").to_str()?,
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!("skipped: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    let dim: usize = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    let read = |name: &str| -> Option<Vec<f32>> {
        let b = std::fs::read(dir.join(name)).ok()?;
        Some(
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )
    };
    let (train, test) = (read("train.f32")?, read("test.f32")?);
    let _ = std::fs::remove_dir_all(&dir);
    Some((train, test, dim))
}

#[test]
fn distance_ids_agree_with_float_adc_on_real_data() {
    let Some((train, test, dim)) = real_rows(4000, 20) else {
        eprintln!("skipped: real dataset not available");
        return;
    };
    assert_eq!(dim, 384);
    let (train, test) = (normalized(&train, dim), normalized(&test, dim));
    for m in [192, 96] {
        let enc = Pq::train(
            &train,
            dim,
            Metric::Cosine,
            &PqConfig::new(Some(m), 4, false, 5),
        )
        .unwrap();
        check_distance_ids(&enc, &train, &test, dim, &format!("real cosine m={m}"));
    }
}

/// 4-bit PQ with neighbour-code rows on real data (10k MiniLM vectors, float vectors kept
/// for re-ranking, as the benchmark's memory-mapped configuration): the same results as the
/// gather path, and a recall floor.
#[test]
fn neighbor_rows_on_real_data() {
    let Some((train, test, dim)) = real_rows(10_000, 100) else {
        eprintln!("skipped: real dataset not available");
        return;
    };
    let k = 10;
    let (truth, _) = exact_search(&train, &test, dim, k, Metric::Cosine);
    let spec = EncodingSpec::Pq {
        m: Some(192),
        bits: 4,
        opq: false,
    };
    let gather = build(&train, dim, Metric::Cosine, spec, true);
    assert!(!gather.has_quantized_graph());
    let mut rows = Index::from_bytes(gather.to_bytes()).unwrap();
    rows.set_quantized_graph(true, Some(2));
    assert_eq!(rows.neighbor_rows().unwrap().row_bytes(), 32 * 96);
    let p = SearchParams {
        k,
        ef: Some(64),
        rerank: None,
    };
    let (a, ad) = rows.search(&test, &p, Some(1)).unwrap();
    let (b, bd) = gather.search(&test, &p, Some(1)).unwrap();
    assert_eq!((&a, &ad), (&b, &bd));
    let r = recall(&a, &truth, k);
    eprintln!("recall@10 at ef 64 with rows: {r}");
    assert!(r >= 0.93, "recall {r}");
}
