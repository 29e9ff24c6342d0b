//! TurboQuant: Lloyd–Max codebooks, distortion against ALGORITHMS.md §4, the prod estimator's
//! unbiasedness over random rotations, recall inside the index and persistence (§4.10).

mod common;
use common::{assert_round_trip, clustered, dot, recall, unit, Rng};

use nearq_core::encoding::turboquant::{codebook, lloyd_max, sign_mean};
use nearq_core::encoding::{Encoding, TurboQuant, TurboQuantVariant as Variant};
use nearq_core::{
    exact_search, BuildParams, EncodingSpec, Error, Index, IndexParams, Metric, SearchParams,
};

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}
fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}
fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0);
    (m, var.sqrt())
}

/// Gaussian-limit `d·C(f_X, b)` for b = 1..4 (ALGORITHMS.md 4.2).
const GAUSS_MSE: [f64; 4] = [0.3634, 0.1175, 0.03455, 0.009497];

#[test]
fn codebook_reproduces_the_published_tables() {
    // Gaussian limit (a very large dimension) and the exact Beta law at d = 384.
    let gauss: [&[f64]; 4] = [
        &[0.7979],
        &[0.4528, 1.5104],
        &[0.2451, 0.7560, 1.3439, 2.1519],
        &[
            0.1284, 0.3880, 0.6568, 0.9423, 1.2562, 1.6180, 2.0690, 2.7326,
        ],
    ];
    let d384: [&[f64]; 4] = [
        &[0.7984],
        &[0.4527, 1.5087],
        &[0.2449, 0.7551, 1.3415, 2.1451],
        &[
            0.1282, 0.3875, 0.6557, 0.9406, 1.2534, 1.6135, 2.0613, 2.7179,
        ],
    ];
    let mse384 = [0.3626, 0.1170, 0.0344, 0.00944];
    for b in 1..=4u32 {
        let i = b as usize - 1;
        for (dim, want, mse) in [(1 << 20, gauss[i], GAUSS_MSE[i]), (384, d384[i], mse384[i])] {
            let cb = lloyd_max(dim, b);
            let half = &cb.centroids[cb.centroids.len() / 2..];
            for (got, w) in half.iter().zip(want) {
                assert!(
                    (got - w).abs() <= 1.5e-4,
                    "d={dim} b={b}: centroid {got} vs {w}"
                );
            }
            assert!(
                (cb.mse - mse).abs() <= 0.005 * mse,
                "d={dim} b={b}: mse {} vs {mse}",
                cb.mse
            );
        }
    }
}

#[test]
fn codebook_is_symmetric_converged_and_above_the_lower_bound() {
    for dim in [64, 384, 1024] {
        let mut prev = 1.0;
        for b in 1..=8u32 {
            let cb = codebook(dim, b);
            let n = cb.centroids.len();
            assert_eq!(n, 1 << b);
            assert_eq!(cb.boundaries.len(), n - 1);
            assert!(
                cb.residual < 1e-9,
                "d={dim} b={b}: residual {}",
                cb.residual
            );
            for i in 0..n {
                assert_eq!(cb.centroids[i], -cb.centroids[n - 1 - i]);
            }
            for (i, t) in cb.boundaries.iter().enumerate() {
                assert!((t - 0.5 * (cb.centroids[i] + cb.centroids[i + 1])).abs() < 1e-12);
                assert!(cb.centroids[i] < *t && *t < cb.centroids[i + 1]);
            }
            // Distortion falls with every bit and stays above the Shannon bound 4^-b and below
            // the Theorem 1 bound (√3·π/2)·4^-b.
            let lb = 4f64.powi(-(b as i32));
            assert!(cb.mse < prev && cb.mse >= lb && cb.mse <= 2.73 * lb);
            prev = cb.mse;
        }
    }
    // Conditional means checked independently by Monte Carlo at b = 2 (Gaussian-like d).
    let cb = codebook(1024, 2);
    let mut rng = Rng::new(5);
    let (mut s, mut c) = ([0.0f64; 4], [0usize; 4]);
    for _ in 0..200_000 {
        let u = rng.gauss();
        let cell = cb.boundaries.partition_point(|&t| t < u);
        s[cell] += u;
        c[cell] += 1;
    }
    for i in 0..4 {
        assert!((s[i] / c[i] as f64 - cb.centroids[i]).abs() < 0.02);
    }
}

/// `E||x − x̃||^2` over random unit vectors via encode + decode.
fn empirical_mse(dim: usize, bits: u32, n: usize, seed: u64) -> f64 {
    let enc = TurboQuant::new(dim, Metric::L2, bits, Variant::Mse, seed);
    let mut rng = Rng::new(seed + 100);
    let mut code = vec![0u8; enc.code_size()];
    let mut out = vec![0.0f32; dim];
    let mut total = 0.0;
    for _ in 0..n {
        let x = rng.unit(dim);
        enc.encode(&f32s(&x), &mut code);
        assert!(enc.decode(&code, &mut out));
        total += x
            .iter()
            .zip(&out)
            .map(|(a, &b)| (a - b as f64).powi(2))
            .sum::<f64>();
    }
    total / n as f64
}

#[test]
fn distortion_matches_theory() {
    let d = 1024;
    for b in 1..=4u32 {
        let got = empirical_mse(d, b, 1500, b as u64);
        let want = GAUSS_MSE[b as usize - 1];
        let lb = 4f64.powi(-(b as i32));
        eprintln!(
            "b={b}: d·MSE {got:.5} (theory {want}, codebook {:.5}), ratio to 4^-b {:.3}",
            codebook(d, b).mse,
            got / lb
        );
        assert!((got - want).abs() <= 0.05 * want, "b={b}: {got} vs {want}");
        assert!((got - codebook(d, b).mse).abs() <= 0.02 * want);
        assert!(got >= lb);
    }
    // Higher widths follow the codebook; 8 bits: relative error ≈ sqrt(d·C(f_X, 8)).
    for b in 5..=8u32 {
        let got = empirical_mse(d, b, 300, b as u64);
        let want = codebook(d, b).mse;
        eprintln!("b={b}: d·MSE {got:.3e} (codebook {want:.3e})");
        assert!((got - want).abs() <= 0.05 * want && got >= 4f64.powi(-(b as i32)));
    }
    // A padded dimension: the codebook is the padded dimension's, and the error that lands in
    // the 56 padding coordinates is dropped on decode (a fraction 200/256 remains).
    let got = empirical_mse(200, 2, 2000, 9);
    let want = codebook(256, 2).mse * 200.0 / 256.0;
    assert!((got - want).abs() <= 0.05 * want, "d=200: {got} vs {want}");
}

#[test]
fn one_bit_mse_code_shrinks_inner_products_by_two_over_pi() {
    let d = 768;
    let enc = TurboQuant::new(d, Metric::InnerProduct, 1, Variant::Mse, 1);
    let mut rng = Rng::new(2);
    let mut code = vec![0u8; enc.code_size()];
    let mut out = vec![0.0f32; d];
    let (mut num, mut den) = (0.0, 0.0);
    for _ in 0..2000 {
        let x = rng.unit(d);
        enc.encode(&f32s(&x), &mut code);
        enc.decode(&code, &mut out);
        // y = x: the ratio <x, x̃>/<x, x> is the shrinkage of the decoded vector.
        num += dot(&x, &f64s(&out));
        den += 1.0;
    }
    let ratio = num / den;
    assert!((ratio - 2.0 / std::f64::consts::PI).abs() < 0.01, "{ratio}");
}

/// Errors of `<q, x>` estimates for one fixed pair over independent rotation seeds.
fn ip_errors(d: usize, bits: u32, variant: Variant, cos: f64, seeds: u64) -> Vec<f64> {
    let mut rng = Rng::new(42);
    let x = rng.unit(d);
    let g = rng.unit(d);
    let p = dot(&g, &x);
    let e = unit(g.iter().zip(&x).map(|(a, b)| a - p * b).collect());
    let y: Vec<f64> = x
        .iter()
        .zip(&e)
        .map(|(a, b)| cos * a + (1.0 - cos * cos).sqrt() * b)
        .collect();
    let (xf, yf) = (f32s(&x), f32s(&y));
    let truth = dot(&x, &y);
    (0..seeds)
        .map(|s| {
            let enc = TurboQuant::new(d, Metric::InnerProduct, bits, variant, 1000 + s);
            let mut code = vec![0u8; enc.code_size()];
            enc.encode(&xf, &mut code);
            let q = enc.prepare(&yf);
            enc.inner_product(&q, &code) as f64 - truth
        })
        .collect()
}

#[test]
fn prod_estimator_is_unbiased_over_rotations() {
    let (d, n) = (256, 3000);
    for b in 1..=4u32 {
        for cos in [0.0, 0.5, 0.9] {
            let err = ip_errors(d, b, Variant::Prod, cos, n);
            let (m, s) = mean_std(&err);
            let se = s / (n as f64).sqrt();
            // Theorem 2: E|err|^2 ≤ (π/(2d))·D_mse(b−1) for unit vectors.
            let bound = std::f64::consts::PI / (2.0 * d as f64) * codebook(d, b - 1).mse;
            eprintln!(
                "prod b={b} cos={cos}: mean {m:+.2e} ± {se:.1e}, var {:.2e} (bound {bound:.2e})",
                s * s
            );
            assert!(m.abs() < 4.0 * se, "b={b} cos={cos}: bias {m} (se {se})");
            assert!(
                s * s <= 1.1 * bound,
                "b={b} cos={cos}: var {} > {bound}",
                s * s
            );
        }
    }
    // The mse variant with its 1/(1 − D_mse) factor is unbiased too.
    for b in [1, 3] {
        let err = ip_errors(d, b, Variant::Mse, 0.7, n);
        let (m, s) = mean_std(&err);
        assert!(m.abs() < 4.0 * s / (n as f64).sqrt(), "mse b={b}: bias {m}");
    }
}

/// Errors of the traversal estimate of `<q, x>` (from `distance` with the inner-product
/// metric) and of the float estimate, for one fixed pair over independent rotation seeds.
fn traversal_and_float_errors(
    d: usize,
    bits: u32,
    variant: Variant,
    cos: f64,
    seeds: u64,
) -> (Vec<f64>, Vec<f64>) {
    let mut rng = Rng::new(43);
    let x = rng.unit(d);
    let g = rng.unit(d);
    let p = dot(&g, &x);
    let e = unit(g.iter().zip(&x).map(|(a, b)| a - p * b).collect());
    let y: Vec<f64> = x
        .iter()
        .zip(&e)
        .map(|(a, b)| cos * a + (1.0 - cos * cos).sqrt() * b)
        .collect();
    let (xf, yf) = (f32s(&x), f32s(&y));
    let truth = dot(&x, &y);
    (0..seeds)
        .map(|s| {
            let enc = TurboQuant::new(d, Metric::InnerProduct, bits, variant, 5000 + s);
            let mut code = vec![0u8; enc.code_size()];
            enc.encode(&xf, &mut code);
            let q = enc.prepare(&yf);
            (
                -enc.distance(&q, &code) as f64 - truth,
                enc.inner_product(&q, &code) as f64 - truth,
            )
        })
        .unzip()
}

#[test]
fn traversal_estimate_is_unbiased_and_near_the_float_one() {
    // The traversal replaces the codebook by the line through the index with the same
    // correlation with the coordinate (and quantises the query to 8 bits), so it stays
    // unbiased; its error variance grows by the factor the line loses against the codebook:
    // 1.00 / 1.01 / 1.19 / 2.01 at 1 / 2 / 3 / 4 bits for mse (measured at cos = 0; the share
    // of the error along q falls as cos grows). prod adds the (b−1)-bit line's extra error to
    // the QJL term's (whose 4-bit query alone gives ≈ 1.07): ≈ 1.07 at 2 bits, ≈ 1.3 at 4.
    // Bounds leave room for sampling (±5%) and the 8-bit query. 6 bits uses the float path.
    let (d, n) = (256, 2000);
    for (bits, variant, max_ratio) in [
        (1, Variant::Mse, 1.1),
        (2, Variant::Mse, 1.12),
        (3, Variant::Mse, 1.35),
        (4, Variant::Mse, 2.3),
        (6, Variant::Mse, 1.0001),
        (2, Variant::Prod, 1.15),
        (4, Variant::Prod, 1.45),
    ] {
        for cos in [0.0, 0.8] {
            let (t, f) = traversal_and_float_errors(d, bits, variant, cos, n);
            let (mt, st) = mean_std(&t);
            let (_, sf) = mean_std(&f);
            let ratio = (st * st) / (sf * sf);
            eprintln!(
                "{variant:?} b={bits} cos={cos}: traversal mean {mt:+.2e} std {st:.2e}, float \
                 std {sf:.2e}, variance ratio {ratio:.3}"
            );
            assert!(
                mt.abs() < 4.0 * st / (n as f64).sqrt(),
                "{variant:?} b={bits} cos={cos}: traversal bias {mt} (std {st})"
            );
            assert!(
                ratio <= max_ratio,
                "{variant:?} b={bits} cos={cos}: variance ratio {ratio} > {max_ratio}"
            );
        }
    }
}

#[test]
fn sign_mean_matches_its_definition() {
    // D·E|u_1| against direct averaging, and the large-D limit √(2D/π).
    let mut rng = Rng::new(8);
    let d = 64;
    let mut acc = 0.0;
    for _ in 0..20_000 {
        acc += rng.unit(d).iter().map(|x| x.abs()).sum::<f64>();
    }
    assert!((acc / 20_000.0 - sign_mean(d)).abs() < 0.01 * sign_mean(d));
    let big = 1 << 16;
    assert!((sign_mean(big) / (2.0 * big as f64 / std::f64::consts::PI).sqrt() - 1.0).abs() < 1e-4);
}

#[test]
fn traversal_distance_tracks_the_float_estimate() {
    let d = 384;
    let mut rng = Rng::new(4);
    for (metric, variant, bits) in [
        (Metric::L2, Variant::Mse, 4),
        (Metric::L2, Variant::Mse, 1),
        (Metric::InnerProduct, Variant::Mse, 2),
        (Metric::L2, Variant::Mse, 6),
        (Metric::Cosine, Variant::Prod, 4),
        (Metric::InnerProduct, Variant::Prod, 1),
        (Metric::L2, Variant::Prod, 8),
    ] {
        let enc = TurboQuant::new(d, metric, bits, variant, 3);
        assert_eq!(
            enc.code_size(),
            bits as usize * d / 8 + if variant == Variant::Mse { 4 } else { 8 }
        );
        let x: Vec<f32> = f32s(&rng.unit(d)).iter().map(|v| 3.0 * v).collect();
        let q: Vec<f32> = f32s(&rng.unit(d)).iter().map(|v| 2.0 * v).collect();
        let mut code = vec![0u8; enc.code_size()];
        enc.encode(&x, &mut code);
        let pq = enc.prepare(&q);
        let ip = enc.inner_product(&pq, &code);
        let want = match metric {
            Metric::L2 => 4.0 + 9.0 - 2.0 * ip,
            m => m.from_dot(ip),
        };
        let got = enc.distance(&pq, &code);
        assert!(
            (got - want).abs() < 0.1,
            "{metric:?} {variant:?}: {got} vs {want}"
        );
    }
}

fn build(
    data: &[f32],
    dim: usize,
    metric: Metric,
    bits: u32,
    variant: Variant,
    keep_vectors: bool,
) -> Index {
    let p = IndexParams {
        metric,
        encoding: EncodingSpec::TurboQuant { bits, variant },
        keep_vectors,
        build: BuildParams::default(),
    };
    Index::build(data, dim, &p, Some(2), &|_, _| {}).unwrap()
}

#[test]
fn recall_against_exact_search() {
    let (n, dim, k) = (3000, 128, 10);
    let data = clustered(n, dim, 1);
    let queries = clustered(100, dim, 2);
    for metric in [Metric::L2, Metric::Cosine, Metric::InnerProduct] {
        let (truth, _) = exact_search(&data, &queries, dim, k, metric);
        for (bits, variant, keep, want) in [
            (4, Variant::Mse, true, 0.95),
            (2, Variant::Prod, true, 0.9),
            (8, Variant::Mse, false, 0.9),
            (4, Variant::Mse, false, 0.6),
        ] {
            let index = build(&data, dim, metric, bits, variant, keep);
            assert_eq!(index.encoding(), "turboquant");
            let p = SearchParams {
                k,
                ef: Some(256),
                rerank: Some(256),
            };
            let (ids, _) = index.search(&queries, &p, None).unwrap();
            let r = recall(&ids, &truth, k);
            eprintln!("{metric:?} {variant:?} bits={bits} keep_vectors={keep}: recall@10 {r:.3}");
            assert!(
                r >= want,
                "{metric:?} {variant:?} bits={bits} keep={keep}: {r} < {want}"
            );
        }
    }
}

#[test]
fn spec_parse_and_variants() {
    let s = EncodingSpec::parse("TurboQuant", None).unwrap();
    assert_eq!(
        s,
        EncodingSpec::TurboQuant {
            bits: 4,
            variant: Variant::Mse
        }
    );
    assert_eq!(s.name(), "turboquant");
    assert_eq!(
        s.clone().with_variant(Some("prod")).unwrap(),
        EncodingSpec::TurboQuant {
            bits: 4,
            variant: Variant::Prod
        }
    );
    assert_eq!(s.clone().with_variant(None).unwrap(), s);
    assert!(matches!(
        s.with_variant(Some("fast")),
        Err(Error::InvalidParameter {
            name: "variant",
            ..
        })
    ));
    assert!(matches!(
        EncodingSpec::parse("rabitq", None)
            .unwrap()
            .with_variant(Some("mse")),
        Err(Error::InvalidParameter {
            name: "variant",
            ..
        })
    ));
}

#[test]
fn persistence_round_trip_and_validation() {
    let (n, dim, k) = (400, 40, 5);
    let data = clustered(n, dim, 8);
    let queries = clustered(20, dim, 9);
    for (bits, variant, keep, metric) in [
        (1, Variant::Mse, true, Metric::L2),
        (3, Variant::Prod, false, Metric::Cosine),
        (8, Variant::Mse, false, Metric::InnerProduct),
        (1, Variant::Prod, false, Metric::L2),
    ] {
        let index = build(&data, dim, metric, bits, variant, keep);
        let payload = assert_round_trip(&index, "turboquant", &queries, k);
        // Parameters start after the 44-byte header: bits (u32), variant (u8), padded dim
        // (u32), seed (u64), inner-product scale (f32), centroids, rotation signs.
        let corrupt = |at: usize, bytes: &[u8]| {
            let mut p = payload.clone();
            p[at..at + bytes.len()].copy_from_slice(bytes);
            Index::from_payload(&p)
        };
        for (at, bytes) in [
            (44, &9u32.to_le_bytes()[..]),
            (44, &0u32.to_le_bytes()[..]),
            (48, &[7u8][..]),
            (49, &128u32.to_le_bytes()[..]),
            (61, &f32::NAN.to_le_bytes()[..]),
            (61, &0.5f32.to_le_bytes()[..]),
            (65, &f32::INFINITY.to_le_bytes()[..]),
        ] {
            assert!(
                matches!(corrupt(at, bytes), Err(Error::Format(_))),
                "bits={bits} {variant:?}: corrupt at {at} accepted"
            );
        }
        assert!(matches!(
            Index::from_payload(&payload[..60]),
            Err(Error::Format(_))
        ));
    }
}
