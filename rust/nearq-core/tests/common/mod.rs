//! Helpers shared by the integration tests.
#![allow(dead_code)]

use nearq_core::{Index, SearchParams};

/// Clustered synthetic data (a mixture of Gaussians), harder than uniform noise.
pub fn clustered(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut gauss = move || {
        let (u, v) = (next().max(1e-12), next());
        ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
    };
    let centers: Vec<f32> = (0..20 * dim).map(|_| 3.0 * gauss()).collect();
    let mut out = Vec::with_capacity(n * dim);
    for i in 0..n {
        let c = (i * 7) % 20;
        for j in 0..dim {
            out.push(centers[c * dim + j] + gauss());
        }
    }
    out
}

pub fn recall(found: &[i64], truth: &[i64], k: usize) -> f64 {
    let nq = truth.len() / k;
    let mut hit = 0usize;
    for q in 0..nq {
        let t = &truth[q * k..(q + 1) * k];
        hit += found[q * k..(q + 1) * k]
            .iter()
            .filter(|i| t.contains(i))
            .count();
    }
    hit as f64 / (nq * k) as f64
}

/// A small seeded generator for statistical tests (xorshift, Box-Muller normals).
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407)
            | 1)
    }
    pub fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn gauss(&mut self) -> f64 {
        let (u, v) = (self.next().max(1e-12), self.next());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
    pub fn vec(&mut self, d: usize) -> Vec<f64> {
        (0..d).map(|_| self.gauss()).collect()
    }
    pub fn unit(&mut self, d: usize) -> Vec<f64> {
        unit(self.vec(d))
    }
}

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub fn unit(mut a: Vec<f64>) -> Vec<f64> {
    let n = dot(&a, &a).sqrt();
    a.iter_mut().for_each(|x| *x /= n);
    a
}

/// Checks that `index` survives a payload round trip (same bytes, same encoding, same search
/// results on `queries`) and returns its payload for further damage tests.
pub fn assert_round_trip(index: &Index, encoding: &str, queries: &[f32], k: usize) -> Vec<u8> {
    let payload = index.to_payload();
    let loaded = Index::from_payload(&payload).unwrap();
    assert_eq!(loaded.encoding(), encoding);
    assert_eq!(loaded.to_payload(), payload);
    let p = SearchParams::new(k);
    assert_eq!(
        index.search(queries, &p, Some(1)).unwrap(),
        loaded.search(queries, &p, Some(1)).unwrap()
    );
    payload
}
