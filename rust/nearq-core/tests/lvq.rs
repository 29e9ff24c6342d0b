//! LVQ: reconstruction bounds, code-domain distances against decoded vectors, recall, and
//! persistence.

mod common;
use common::{clustered, recall};

use nearq_core::encoding::{Encoding, EncodingSpec, Lvq};
use nearq_core::exact::exact_search;
use nearq_core::{Index, IndexParams, Metric, SearchParams};

const METRICS: [Metric; 3] = [Metric::L2, Metric::InnerProduct, Metric::Cosine];
const BITS: [(u32, u32); 6] = [(4, 0), (8, 0), (4, 4), (4, 8), (8, 4), (8, 8)];

fn normalized(data: &[f32], dim: usize, metric: Metric) -> Vec<f32> {
    let mut v = data.to_vec();
    if metric == Metric::Cosine {
        v.chunks_mut(dim).for_each(nearq_core::metric::normalize);
    }
    v
}

fn encode_all(enc: &Lvq, data: &[f32]) -> Vec<Vec<u8>> {
    data.chunks(enc.dim())
        .map(|v| {
            let mut c = vec![0u8; enc.code_size()];
            enc.encode(v, &mut c);
            c
        })
        .collect()
}

#[test]
fn reconstruction_within_half_a_step() {
    // Odd dimensions exercise the partial 4-bit block; the scaled copy checks the pre-scale.
    for (dim, scale) in [(37, 1.0f32), (130, 1.0), (64, 1e-4), (64, 3e4)] {
        let data: Vec<f32> = clustered(300, dim, 1).iter().map(|x| x * scale).collect();
        for (b1, b2) in BITS {
            let enc = Lvq::train(&data, dim, Metric::L2, b1, b2);
            let mut out = vec![0f32; dim];
            for (v, code) in data.chunks(dim).zip(encode_all(&enc, &data)) {
                assert!(enc.decode(&code, &mut out));
                let (d1, d2) = enc.steps(&code);
                let step = if b2 == 0 { d1 } else { d2 };
                assert!(step > 0.0 && (b2 == 0 || d2 <= d1 / 15.0 * 1.0001));
                for (x, y) in v.iter().zip(&out) {
                    let tol = step * 0.5 * (1.0 + 1e-3) + 1e-6 * scale * x.abs().max(1.0);
                    assert!(
                        (x - y).abs() <= tol,
                        "{b1}x{b2} dim {dim} scale {scale}: |{x} - {y}| > {tol}"
                    );
                }
            }
        }
    }
}

#[test]
fn integer_grid_is_exact() {
    // Values spanning exactly 0..=15 around a zero mean: codes are the values, decode is exact.
    let dim = 16;
    let mut data = Vec::new();
    for i in 0..16usize {
        data.extend((0..dim).map(|j| ((i + j) % 16) as f32 - 7.5));
    }
    let enc = Lvq::train(&data, dim, Metric::L2, 4, 0);
    assert!(enc.mean().iter().all(|&m| m == 0.0));
    let mut out = vec![0f32; dim];
    for (v, code) in data.chunks(dim).zip(encode_all(&enc, &data)) {
        enc.decode(&code, &mut out);
        assert_eq!(v, &out[..]);
    }
}

#[test]
fn code_distance_equals_decoded_distance() {
    let dim = 100;
    let k = nearq_kernels::kernels();
    for metric in METRICS {
        let data = normalized(&clustered(200, dim, 2), dim, metric);
        let queries = normalized(&clustered(10, dim, 3), dim, metric);
        for (b1, b2) in BITS {
            let enc = Lvq::train(&data, dim, metric, b1, b2);
            let codes = encode_all(&enc, &data);
            let mut dec = vec![0f32; dim];
            for q in queries.chunks(dim) {
                let pq = enc.prepare(q);
                // Scale of the distances, for the tolerances.
                let scale = data
                    .chunks(dim)
                    .map(|v| metric.distance(k, q, v).abs())
                    .fold(0f32, f32::max)
                    .max(1.0);
                // Traversal quantises z (q - μ for L2, q otherwise) to i8 with step
                // ζ = max|z|/127, so |<z, x̃'> error| ≤ ζ/2 · Σ_j |Δ·c_j/s - m·Δ/s| (twice
                // that for L2), m = (2^B1 - 1)/2.
                let m = ((1u32 << b1) - 1) as f32 / 2.0;
                let z: Vec<f32> = if metric == Metric::L2 {
                    q.iter().zip(enc.mean()).map(|(a, m)| a - m).collect()
                } else {
                    q.to_vec()
                };
                let zeta = z.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
                let factor = if metric == Metric::L2 { 2.0 } else { 1.0 };
                let mut mean_rel = 0f32;
                for code in &codes {
                    enc.decode(code, &mut dec);
                    let exact = metric.distance(k, q, &dec);
                    let fine = enc.distance_fine(&pq, code);
                    assert!(
                        (fine - exact).abs() <= 2e-5 * scale,
                        "{metric:?} {b1}x{b2}: fine {fine} vs decoded {exact}"
                    );
                    // Traversal: the i8 query on the primary level only.
                    enc.decode_primary(code, &mut dec);
                    let primary = metric.distance(k, q, &dec);
                    let trav = enc.distance(&pq, code);
                    // Δ·c_j/s is the centred primary decode minus its minimum (the code of the
                    // smallest coordinate is 0).
                    let centred: Vec<f32> =
                        dec.iter().zip(enc.mean()).map(|(x, mu)| x - mu).collect();
                    let lo = centred.iter().fold(f32::INFINITY, |a, &x| a.min(x));
                    let step = enc.steps(code).0;
                    let sum_dc: f32 = centred.iter().map(|x| (x - lo - m * step).abs()).sum();
                    let bound = factor * zeta / 2.0 * sum_dc * 1.001 + 2e-5 * scale;
                    assert!(
                        (trav - primary).abs() <= bound,
                        "{metric:?} {b1}x{b2}: traversal {trav} vs primary {primary} > {bound}"
                    );
                    mean_rel += (trav - primary).abs() / scale / codes.len() as f32;
                }
                assert!(
                    mean_rel < 5e-3,
                    "{metric:?} {b1}x{b2}: mean traversal error {mean_rel}"
                );
            }
        }
    }
}

fn build(data: &[f32], dim: usize, metric: Metric, spec: EncodingSpec, keep: bool) -> Index {
    let params = IndexParams {
        metric,
        encoding: spec,
        keep_vectors: keep,
        ..Default::default()
    };
    Index::build(data, dim, &params, None, &|_, _| {}).unwrap()
}

#[test]
fn recall_on_clustered_data() {
    let (n, dim, k) = (4000, 64, 10);
    let data = clustered(n, dim, 4);
    let queries = clustered(50, dim, 5);
    for metric in [Metric::L2, Metric::Cosine] {
        let (truth, _) = exact_search(&data, &queries, dim, k, metric);
        let p = SearchParams {
            ef: Some(96),
            rerank: Some(60),
            ..SearchParams::new(k)
        };
        let lvq8 = build(
            &data,
            dim,
            metric,
            EncodingSpec::Lvq {
                bits: 8,
                residual: 0,
            },
            true,
        );
        let (ids, _) = lvq8.search(&queries, &p, None).unwrap();
        let r8 = recall(&ids, &truth, k);
        let lvq48 = build(
            &data,
            dim,
            metric,
            EncodingSpec::Lvq {
                bits: 4,
                residual: 8,
            },
            false,
        );
        assert_eq!(lvq48.memory_usage().vectors, 0);
        let (ids, _) = lvq48.search(&queries, &p, None).unwrap();
        let r48 = recall(&ids, &truth, k);
        assert!(
            r8 >= 0.95 && r48 >= 0.93,
            "{metric:?}: lvq-8 {r8}, lvq-4x8 {r48}"
        );
    }
}

#[test]
fn save_load_round_trip() {
    let dim = 40;
    let data = clustered(500, dim, 6);
    let queries = clustered(8, dim, 7);
    let dir = std::env::temp_dir().join(format!("nearq-lvq-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (metric, (b1, b2)) in [
        (Metric::L2, (4, 8)),
        (Metric::Cosine, (8, 0)),
        (Metric::InnerProduct, (4, 4)),
    ] {
        let spec = EncodingSpec::Lvq {
            bits: b1,
            residual: b2,
        };
        let idx = build(&data, dim, metric, spec, false);
        let path = dir.join("lvq.nearq");
        idx.save(&path).unwrap();
        let back = Index::load(&path).unwrap();
        assert_eq!(back.encoding(), "lvq");
        let p = SearchParams::new(5);
        assert_eq!(
            idx.search(&queries, &p, None).unwrap(),
            back.search(&queries, &p, None).unwrap()
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn spec_parsing() {
    let lvq = |b: &[u32]| EncodingSpec::parse("lvq", Some(b));
    assert_eq!(
        lvq(&[8]).unwrap(),
        EncodingSpec::Lvq {
            bits: 8,
            residual: 0
        }
    );
    assert_eq!(
        lvq(&[4, 8]).unwrap(),
        EncodingSpec::Lvq {
            bits: 4,
            residual: 8
        }
    );
    assert_eq!(
        EncodingSpec::parse("lvq", None).unwrap(),
        EncodingSpec::Lvq {
            bits: 4,
            residual: 8
        }
    );
    for bad in [&[2][..], &[4, 2], &[4, 8, 8], &[], &[16]] {
        assert!(lvq(bad).is_err(), "{bad:?}");
    }
    assert!(EncodingSpec::parse("sq8", Some(&[8, 8])).is_err());
    assert!(EncodingSpec::parse("rabitq", Some(&[4])).is_ok());
}
