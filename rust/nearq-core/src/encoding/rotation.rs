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
        match wide() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `wide()` answers `Avx2` only where the kernel table of that level was
            // chosen, which requires the CPU to have AVX2.
            Wide::Avx2 => unsafe { forward_avx2(&self.signs, t, out) },
            _ => forward(&self.signs, t, out),
        }
    }

    /// `out = P^T · y` (the inverse), `y.len() == out.len() == pad`.
    pub fn apply_inverse(&self, y: &[f32], out: &mut [f32]) {
        let d = self.pad;
        assert!(y.len() == d && out.len() == d);
        out.copy_from_slice(y);
        let t = self.block();
        match wide() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as in `apply`.
            Wide::Avx2 => unsafe { inverse_avx2(&self.signs, t, out) },
            _ => inverse(&self.signs, t, out),
        }
    }

    /// [`Rotation::apply`] through the portable code path only (compiled for the baseline
    /// target), for tests comparing it with the dispatched one.
    #[cfg(test)]
    fn apply_portable(&self, x: &[f32], out: &mut [f32]) {
        out[..x.len()].copy_from_slice(x);
        out[x.len()..].fill(0.0);
        forward(&self.signs, self.block(), out);
    }

    #[cfg(test)]
    fn apply_inverse_portable(&self, y: &[f32], out: &mut [f32]) {
        out.copy_from_slice(y);
        inverse(&self.signs, self.block(), out);
    }
}

/// Which compilation of the rotation runs: the portable code as compiled for the baseline
/// target, or the same code compiled with AVX2 enabled (x86-64), chosen by the kernel level in
/// use (so `NEARQ_SIMD` caps it as it caps the kernels). Both perform the same IEEE operations
/// in the same order on every element (Rust never contracts to FMA), so their results are
/// bit-identical; the AVX2 compilation only vectorises them 8 wide.
#[derive(Copy, Clone, PartialEq, Eq)]
pub(crate) enum Wide {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

#[inline(always)]
pub(crate) fn wide() -> Wide {
    #[cfg(target_arch = "x86_64")]
    {
        use nearq_kernels::SimdLevel;
        if matches!(
            nearq_kernels::kernels().level,
            SimdLevel::Avx2 | SimdLevel::Avx512
        ) {
            return Wide::Avx2;
        }
    }
    Wide::Portable
}

/// The rounds of [`Rotation::apply`] on `out` (already holding the padded input).
#[inline(always)]
fn forward(signs: &[f32], t: usize, out: &mut [f32]) {
    let d = out.len();
    let scale = 1.0 / (t as f32).sqrt();
    for r in 0..ROUNDS {
        for (o, s) in out.iter_mut().zip(&signs[r * d..(r + 1) * d]) {
            *o *= s;
        }
        let start = if r % 2 == 0 { 0 } else { d - t };
        fwht(&mut out[start..start + t], scale);
        if t < d {
            butterfly(out);
        }
    }
}

/// The rounds of [`Rotation::apply_inverse`] on `out` (already holding `y`).
#[inline(always)]
fn inverse(signs: &[f32], t: usize, out: &mut [f32]) {
    let d = out.len();
    let scale = 1.0 / (t as f32).sqrt();
    for r in (0..ROUNDS).rev() {
        if t < d {
            butterfly(out);
        }
        let start = if r % 2 == 0 { 0 } else { d - t };
        fwht(&mut out[start..start + t], scale);
        for (o, s) in out.iter_mut().zip(&signs[r * d..(r + 1) * d]) {
            *o *= s;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn forward_avx2(signs: &[f32], t: usize, out: &mut [f32]) {
    forward(signs, t, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn inverse_avx2(signs: &[f32], t: usize, out: &mut [f32]) {
    inverse(signs, t, out)
}

/// In-place Walsh–Hadamard transform of a power-of-two length, times `scale`.
///
/// Stage `h` replaces every pair `(x_i, x_{i+h})` (`i mod 2h < h`) by `(x_i + x_{i+h},
/// x_i − x_{i+h})`, for `h = 1, 2, 4, ...`; the result is then scaled. The stages `h = 1, 2, 4`
/// run on groups of 8 held in registers and the larger ones two at a time (radix 4), the scale
/// folded into the last stage: each element still sees the same additions, subtractions and
/// final multiplication in the same order as stage by stage, so the output is bit-identical to
/// [`fwht_reference`] (tested) with a quarter of the loads and stores.
#[inline(always)]
fn fwht(x: &mut [f32], scale: f32) {
    let n = x.len();
    if n < 16 {
        fwht_reference(x, scale);
        return;
    }
    for c in x.chunks_exact_mut(8) {
        let a: &mut [f32; 8] = c.try_into().expect("chunk of 8");
        let b = [
            a[0] + a[1],
            a[0] - a[1],
            a[2] + a[3],
            a[2] - a[3],
            a[4] + a[5],
            a[4] - a[5],
            a[6] + a[7],
            a[6] - a[7],
        ];
        let c = [
            b[0] + b[2],
            b[1] + b[3],
            b[0] - b[2],
            b[1] - b[3],
            b[4] + b[6],
            b[5] + b[7],
            b[4] - b[6],
            b[5] - b[7],
        ];
        *a = [
            c[0] + c[4],
            c[1] + c[5],
            c[2] + c[6],
            c[3] + c[7],
            c[0] - c[4],
            c[1] - c[5],
            c[2] - c[6],
            c[3] - c[7],
        ];
    }
    let mut h = 8;
    // Radix-4 pairs of stages while at least one more stage remains after them (the last
    // stage carries the scale).
    while 8 * h <= n {
        for block in x.chunks_exact_mut(4 * h) {
            let (ab, cd) = block.split_at_mut(2 * h);
            let (a, b) = ab.split_at_mut(h);
            let (c, d) = cd.split_at_mut(h);
            for (((a, b), c), d) in a.iter_mut().zip(b).zip(c).zip(d) {
                let (p, q) = (*a + *b, *a - *b);
                let (r, s) = (*c + *d, *c - *d);
                *a = p + r;
                *b = q + s;
                *c = p - r;
                *d = q - s;
            }
        }
        h *= 4;
    }
    if 4 * h == n {
        // Two stages left: radix 4 with the scale.
        let (ab, cd) = x.split_at_mut(2 * h);
        let (a, b) = ab.split_at_mut(h);
        let (c, d) = cd.split_at_mut(h);
        for (((a, b), c), d) in a.iter_mut().zip(b).zip(c).zip(d) {
            let (p, q) = (*a + *b, *a - *b);
            let (r, s) = (*c + *d, *c - *d);
            *a = (p + r) * scale;
            *b = (q + s) * scale;
            *c = (p - r) * scale;
            *d = (q - s) * scale;
        }
    } else {
        // One stage left (2h == n).
        let (a, b) = x.split_at_mut(h);
        for (a, b) in a.iter_mut().zip(b) {
            let (p, q) = (*a, *b);
            *a = (p + q) * scale;
            *b = (p - q) * scale;
        }
    }
}

/// The transform stage by stage (the definition [`fwht`] is checked against).
fn fwht_reference(x: &mut [f32], scale: f32) {
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

#[inline(always)]
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

    #[test]
    fn fast_fwht_is_bit_identical_to_the_stagewise_one() {
        let mut rng = SplitMix::new(9);
        for n in [1usize, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048] {
            for _ in 0..20 {
                let x: Vec<f32> = (0..n).map(|_| rng.gauss() as f32 * 3.0).collect();
                let scale = 1.0 / (n as f32).sqrt();
                let (mut a, mut b) = (x.clone(), x.clone());
                fwht(&mut a, scale);
                fwht_reference(&mut b, scale);
                let (a, b): (Vec<u32>, Vec<u32>) = (
                    a.iter().map(|v| v.to_bits()).collect(),
                    b.iter().map(|v| v.to_bits()).collect(),
                );
                assert_eq!(a, b, "n={n}");
            }
        }
    }

    /// The rotation as first written (stage-by-stage transform, separate scaling pass): the
    /// codes of existing indexes were computed with it, so the fast path must equal it bit for
    /// bit.
    fn apply_reference(rot: &Rotation, x: &[f32], out: &mut [f32]) {
        let d = rot.pad;
        out[..x.len()].copy_from_slice(x);
        out[x.len()..].fill(0.0);
        let t = rot.block();
        let scale = 1.0 / (t as f32).sqrt();
        for r in 0..ROUNDS {
            for (o, s) in out.iter_mut().zip(&rot.signs[r * d..(r + 1) * d]) {
                *o *= s;
            }
            let start = if r % 2 == 0 { 0 } else { d - t };
            fwht_reference(&mut out[start..start + t], scale);
            if t < d {
                butterfly(out);
            }
        }
    }

    #[test]
    fn dispatched_rotation_is_bit_identical_to_the_reference() {
        let mut rng = SplitMix::new(2);
        for pad in [64, 128, 192, 320, 384, 512, 768, 1024] {
            let rot = Rotation::new(pad, 3);
            for len in [pad, pad - 17] {
                let x: Vec<f32> = (0..len).map(|_| rng.gauss() as f32).collect();
                let (mut a, mut b, mut c) = (vec![0.0; pad], vec![0.0; pad], vec![0.0; pad]);
                rot.apply(&x, &mut a);
                rot.apply_portable(&x, &mut b);
                apply_reference(&rot, &x, &mut c);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&a), bits(&c), "dispatched, pad={pad}");
                assert_eq!(bits(&b), bits(&c), "portable, pad={pad}");
                let (mut i1, mut i2) = (vec![0.0; pad], vec![0.0; pad]);
                rot.apply_inverse(&a, &mut i1);
                rot.apply_inverse_portable(&a, &mut i2);
                assert_eq!(bits(&i1), bits(&i2), "inverse, pad={pad}");
            }
        }
    }
}
