//! A seeded, structured random rotation of `R^D` (`D` a multiple of 64) in `O(D log D)`.
//!
//! The transform is the "FHT + Kac walk" rotator of RaBitQ-Library: four rounds, each
//!
//! 1. multiply every coordinate by a random sign (`4·D` signs drawn from the seed);
//! 2. apply the normalised fast Walsh–Hadamard transform `H_t / √t` to a block of
//!    `t = 2^⌊log2 D⌋` coordinates — the first `t` in even rounds, the last `t` in odd rounds;
//! 3. when `t < D`, mix the two halves with the orthonormal butterfly
//!    `(x_i, x_{i+D/2}) -> ((x_i + x_{i+D/2})/√2, (x_i - x_{i+D/2})/√2)`.
//!
//! Every step is orthogonal, so the product is. It is chosen over a dense Haar rotation (QR of
//! a Gaussian matrix) because it costs `O(D log D)` per vector instead of `O(D^2)` and its
//! parameters are `4·D` sign bits instead of `D^2` floats, while behaving like a Haar rotation
//! for RaBitQ's purposes (the estimator only needs the rotated coordinates of a fixed vector to
//! look like those of a uniformly random direction). Each step is an involution, so the inverse
//! applies the rounds in reverse order.

/// SplitMix64: a small, seedable, portable generator (the rotation must not depend on a
/// platform RNG, and the signs are stored with the index anyway).
pub(crate) struct SplitMix(u64);

impl SplitMix {
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix(seed)
    }
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, 1)`.
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box–Muller).
    pub(crate) fn gauss(&mut self) -> f64 {
        let (u, v) = (self.next_f64().max(1e-300), self.next_f64());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

pub const ROUNDS: usize = 4;

/// The rotation: padded dimension and the round sign masks.
#[derive(Clone, Debug)]
pub struct Rotation {
    pad: usize,
    /// `ROUNDS · pad/64` words; bit set = negate the coordinate.
    sign_words: Vec<u64>,
    /// The same signs as ±1.0, for the hot loop.
    signs: Vec<f32>,
}

impl Rotation {
    /// A rotation of `R^pad` drawn from `seed`. `pad` must be a positive multiple of 64.
    pub fn new(pad: usize, seed: u64) -> Self {
        let mut rng = SplitMix::new(seed ^ 0x5EED_0F0F_4B1C);
        let words = (0..ROUNDS * pad / 64).map(|_| rng.next_u64()).collect();
        Self::from_sign_words(pad, words).expect("valid padded dimension")
    }

    /// Rebuilds a rotation from stored sign words; `None` when the sizes do not fit.
    pub fn from_sign_words(pad: usize, sign_words: Vec<u64>) -> Option<Self> {
        if pad == 0 || !pad.is_multiple_of(64) || sign_words.len() != ROUNDS * pad / 64 {
            return None;
        }
        let signs = (0..ROUNDS * pad)
            .map(|i| {
                if sign_words[i / 64] >> (i % 64) & 1 == 1 {
                    -1.0
                } else {
                    1.0
                }
            })
            .collect();
        Some(Rotation {
            pad,
            sign_words,
            signs,
        })
    }

    pub fn pad(&self) -> usize {
        self.pad
    }
    pub fn sign_words(&self) -> &[u64] {
        &self.sign_words
    }
    pub fn memory_bytes(&self) -> usize {
        self.sign_words.len() * 8 + self.signs.len() * 4
    }

    fn block(&self) -> usize {
        1 << (usize::BITS - 1 - self.pad.leading_zeros())
    }

    /// `out = P · [x, 0...]`; `x.len() <= pad`, `out.len() == pad`.
    pub fn apply(&self, x: &[f32], out: &mut [f32]) {
        let d = self.pad;
        assert!(x.len() <= d && out.len() == d);
        out[..x.len()].copy_from_slice(x);
        out[x.len()..].fill(0.0);
        let t = self.block();
        let scale = 1.0 / (t as f32).sqrt();
        for r in 0..ROUNDS {
            for (o, s) in out.iter_mut().zip(&self.signs[r * d..(r + 1) * d]) {
                *o *= s;
            }
            let start = if r % 2 == 0 { 0 } else { d - t };
            fwht(&mut out[start..start + t], scale);
            if t < d {
                butterfly(out);
            }
        }
    }

    /// `out = P^T · y` (the inverse), `y.len() == out.len() == pad`.
    pub fn apply_inverse(&self, y: &[f32], out: &mut [f32]) {
        let d = self.pad;
        assert!(y.len() == d && out.len() == d);
        out.copy_from_slice(y);
        let t = self.block();
        let scale = 1.0 / (t as f32).sqrt();
        for r in (0..ROUNDS).rev() {
            if t < d {
                butterfly(out);
            }
            let start = if r % 2 == 0 { 0 } else { d - t };
            fwht(&mut out[start..start + t], scale);
            for (o, s) in out.iter_mut().zip(&self.signs[r * d..(r + 1) * d]) {
                *o *= s;
            }
        }
    }
}

/// In-place Walsh–Hadamard transform of a power-of-two length, times `scale`.
fn fwht(x: &mut [f32], scale: f32) {
    let n = x.len();
    let mut h = 1;
    while h < n {
        for block in x.chunks_exact_mut(2 * h) {
            let (a, b) = block.split_at_mut(h);
            for (u, v) in a.iter_mut().zip(b.iter_mut()) {
                let (p, q) = (*u, *v);
                *u = p + q;
                *v = p - q;
            }
        }
        h *= 2;
    }
    for v in x.iter_mut() {
        *v *= scale;
    }
}

fn butterfly(x: &mut [f32]) {
    let h = x.len() / 2;
    let (a, b) = x.split_at_mut(h);
    let s = std::f32::consts::FRAC_1_SQRT_2;
    for (u, v) in a.iter_mut().zip(b.iter_mut()) {
        let (p, q) = (*u, *v);
        *u = (p + q) * s;
        *v = (p - q) * s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orthogonal_and_invertible() {
        for pad in [64, 128, 192, 384, 512] {
            let rot = Rotation::new(pad, 7);
            let mut rng = SplitMix::new(1);
            let x: Vec<f32> = (0..pad).map(|_| rng.gauss() as f32).collect();
            let mut y = vec![0.0; pad];
            rot.apply(&x, &mut y);
            let n = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>();
            assert!((n(&x) - n(&y)).abs() < 1e-3 * n(&x));
            let mut z = vec![0.0; pad];
            rot.apply_inverse(&y, &mut z);
            for (a, b) in x.iter().zip(&z) {
                assert!((a - b).abs() < 1e-4);
            }
        }
    }
}
