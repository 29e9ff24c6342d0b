//! RaBitQ (1 bit per dimension) and Extended RaBitQ (`B = 2..=8` bits per dimension).
//!
//! # Encoding
//!
//! Training takes the data mean as the centre `c` (for every metric) and draws a seeded
//! structured rotation `P` of `R^D`, `D = d` rounded up to a multiple of 64 (see
//! [`super::rotation`]). A vector `o` becomes the rotated residual `y = P·[o - c, 0...]`,
//! `||y|| = ||r||`, `r = o - c`.
//!
//! - 1-bit code: `b_i = [y_i > 0]`, i.e. the quantised unit vector `x̄ = (2b - 1)/√D`, whose
//!   self inner product is `<x̄, ŷ> = Σ|y_i| / (√D·||y||)`.
//! - `B`-bit code (`B ≥ 2`): magnitude levels `m_i ∈ {0..2^(B-1)-1}` so that
//!   `x̄ ∝ sign(y_i)·(m_i + ½)` has the largest cosine with `ŷ`, found by the critical-value
//!   sweep of Extended RaBitQ ([`ex_levels_exact`]): with `a = |ŷ|`, `m_i(t) = min(⌊t·a_i⌋, L)`
//!   only changes at `t = k/a_i`; a min-heap of the next critical value of every coordinate
//!   visits them in order, updating `Σ(m_i+½)a_i` and `Σ(m_i+½)^2` in O(1) per step. The sweep
//!   runs over RaBitQ-Library's window `t ∈ [s_B·t_end, t_end]`, `t_end = (L + 10)/max a_i`,
//!   widened to include the fast encoder's `t`, so it is never worse than the fast encoder.
//!   The fast encoder ([`RaBitQConfig::fast_encode`]) uses one `t` per `(D, B)`, the mean
//!   optimal `t` over 100 seeded random unit vectors: O(D) per vector, about 4% more error
//!   at `B = 4` but up to 2.5× more at `B = 8`.
//!   The full code value is `u_i = 2^(B-1)·b_i + (b_i ? m_i : L - m_i)`, so `u_i + c_B =
//!   ±(m_i + ½)` with `c_B = -(2^B - 1)/2`; its top bit is the 1-bit code.
//!
//! Code layout (all bit planes are `D` bits, dimension `i` at bit `i % 64` of little-endian
//! word `i / 64`; the size is a multiple of 8 so stored sign planes are u64-aligned):
//!
//! ```text
//! [sign plane D/8][f_add f32][f_rescale f32][f_err f32][popcount(b) u32]   1-bit part
//! [B-1 ex planes, bit j of u (j = 0..B-2)][f_rescale_ex f32][f_err_ex f32]  only for B >= 2
//! ```
//!
//! The 1-bit factors sit right after the sign plane so traversal touches one contiguous
//! prefix of the code; the ex part is read only when re-ranking.
//!
//! # Estimator
//!
//! For any vector `z` with `z' = P z`, `<r, z> ≈ ||r||·<x̄, z'>/<x̄, ŷ>` is unbiased over the
//! random rotation (RaBitQ, Theorem 3.2). With `z = q - c` (the rotated centred query) this is
//!
//! ```text
//! 1 bit:  e = f_rescale    · (2<b, z'> - Σz'),            f_rescale    = ||r||^2 / Σ|y_i|
//! B bits: e = f_rescale_ex · (<u, z'> + c_B·Σz'),        f_rescale_ex = ||r||^2 / Σ(m_i+½)|y_i|
//! L2:     ||o - q||^2 = ||r||^2 + ||q - c||^2 - 2<r, q - c>   (f_add = ||r||^2)
//! IP:     <o, q>     = <r, q - c> + <r, c> + <c, q>          (f_add = <r, c>)
//! ```
//!
//! Centring the query as well (rather than estimating `<r, q>`) makes the estimator's error
//! scale with `||q - c||` instead of `||q||`, which is smaller on clustered data.
//!
//! `distance` (traversal) computes `<b, z'>` with the query quantised to `Bq = 4` bits by
//! deterministic rounding on `[min z', max z']`: `z' ≈ v_l + Δ·q_u`, so
//! `<b, z'> ≈ Δ·Σ_j 2^j·popcount(b AND plane_j(q_u)) + v_l·popcount(b)` (4 AND-popcounts of
//! `D/64` words). `distance_fine` (re-ranking without float vectors) uses the full `B`-bit code
//! against the float query (`<u, z'>` with the f32×u8 kernel after unpacking the planes); for
//! `B = 1` it is the 1-bit estimate without query quantisation.
//!
//! # Error bound
//!
//! With probability about `1 - 2·exp(-c0·ε0^2)` (ε0 = 1.9 by default),
//! `|e - <r, z>| ≤ ε0·||r||·||z||·sqrt((1 - <x̄,ŷ>^2)/<x̄,ŷ>^2)/sqrt(D - 1)`; the per-code part
//! `||r||·sqrt(...)/sqrt(D-1)` is stored as `f_err` (and `f_err_ex` for the `B`-bit code), and
//! [`RaBitQ::bound`] / [`RaBitQ::bound_fine`] turn it into a distance interval (twice as wide
//! for L2 because of the factor 2 in front of `<r, q - c>`).

use super::rotation::{Rotation, SplitMix, ROUNDS};
use super::Encoding;
use crate::error::{Error, Result};
use crate::io::{Reader, Writer};
use crate::metric::Metric;
use nearq_kernels::{kernels, Kernels};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// Bits per query coordinate for the traversal (1-bit) estimate.
pub const QUERY_BITS: u32 = 4;
/// Default confidence constant of the error bound.
pub const DEFAULT_EPS0: f32 = 1.9;
/// Default bits per dimension: 4 bits keep recall@10 around 0.9+ even without float vectors
/// for re-ranking (the 1-bit code alone needs them), at `D/2 + 24` bytes per vector.
pub const DEFAULT_BITS: u32 = 4;

/// Lower end of the sweep window as a fraction of its upper end, indexed by ex-bits
/// (RaBitQ-Library `best_rescale_factor`).
const WINDOW_START: [f64; 9] = [0.0, 0.15, 0.20, 0.52, 0.59, 0.71, 0.75, 0.77, 0.81];

const F1_BYTES: usize = 16;
const FEX_BYTES: usize = 8;

/// Build-time options.
#[derive(Clone, Debug)]
pub struct RaBitQConfig {
    /// Bits per dimension, 1..=8.
    pub bits: u32,
    /// Seed of the rotation.
    pub seed: u64,
    /// Use the constant-`t` ex-code encoder instead of the critical-value search.
    pub fast_encode: bool,
    /// Confidence constant of [`RaBitQ::bound`].
    pub eps0: f32,
}

impl RaBitQConfig {
    pub fn new(bits: u32, seed: u64) -> Self {
        RaBitQConfig { bits, seed, fast_encode: false, eps0: DEFAULT_EPS0 }
    }
}

pub struct RaBitQ {
    dim: usize,
    metric: Metric,
    bits: u32,
    pad: usize,
    centre: Vec<f32>,
    rot: Rotation,
    seed: u64,
    /// Rescaling factor of the fast ex-code encoder for this `(pad, bits)` (0 for 1 bit).
    t_fast: f64,
    fast_encode: bool,
    eps0: f32,
    k: &'static Kernels,
}

/// A query prepared for scoring many codes.
pub struct RaBitQQuery {
    /// Rotated centred query `z' = P (q - c)`, padded.
    z: Vec<f32>,
    /// `QUERY_BITS` bit planes of the quantised `z'`, `pad/64` words each.
    planes: Vec<u64>,
    delta: f32,
    vl: f32,
    sum_z: f32,
    /// `||q - c||`.
    zn: f32,
    /// `||q - c||^2` (L2) or `<c, q>` (IP, cosine).
    g_add: f32,
    /// Unpacked `B`-bit code for `distance_fine`.
    scratch: RefCell<Vec<u8>>,
}

impl RaBitQQuery {
    /// The rotated centred query.
    pub fn rotated(&self) -> &[f32] {
        &self.z
    }
}

#[inline(always)]
fn rd_f32(code: &[u8], at: usize) -> f32 {
    f32::from_le_bytes([code[at], code[at + 1], code[at + 2], code[at + 3]])
}

#[inline(always)]
fn wr_f32(code: &mut [u8], at: usize, v: f32) {
    code[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// `2^j`-weighted bit-plane popcount `Σ_j 2^j·popcount(code AND plane_j)`.
#[inline(always)]
fn bitplane_dot(k: &Kernels, code: &[u8], planes: &[u64], words: usize) -> u32 {
    let aligned = if cfg!(target_endian = "little") { bytemuck::try_cast_slice::<u8, u64>(code).ok() } else { None };
    let mut acc = 0u32;
    match aligned {
        Some(w) => {
            for (j, p) in planes.chunks_exact(words).enumerate() {
                acc += (k.and_popcount_u64)(w, p) << j;
            }
        }
        None => {
            for (j, p) in planes.chunks_exact(words).enumerate() {
                let mut s = 0u32;
                for (c, &pw) in code.chunks_exact(8).zip(p) {
                    s += (u64::from_le_bytes(c.try_into().unwrap()) & pw).count_ones();
                }
                acc += s << j;
            }
        }
    }
    acc
}

/// Byte `x` spread into the low bit of 8 byte lanes (bit `l` of `x` -> lane `l`).
const fn spread_table() -> [u64; 256] {
    let mut t = [0u64; 256];
    let mut x = 0;
    while x < 256 {
        let mut l = 0;
        while l < 8 {
            if (x >> l) & 1 == 1 {
                t[x] |= 1 << (8 * l);
            }
            l += 1;
        }
        x += 1;
    }
    t
}
static SPREAD: [u64; 256] = spread_table();

/// Cosine between `(m_i + ½)` and `a` (the ex-code search objective, `a` a unit vector).
pub fn ex_objective(a: &[f32], m: &[u8]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&x, &l) in a.iter().zip(m) {
        let v = l as f64 + 0.5;
        num += v * x as f64;
        den += v * v;
    }
    if den > 0.0 {
        num / den.sqrt()
    } else {
        0.0
    }
}

/// Fast ex-code encoder: `m_i = min(⌊t·a_i⌋, 2^ex_bits - 1)`. Returns the objective.
pub fn ex_levels_fast(a: &[f32], ex_bits: u32, t: f64, m: &mut [u8]) -> f64 {
    let lmax = ((1u32 << ex_bits) - 1) as f64;
    for (o, &x) in m.iter_mut().zip(a) {
        *o = (t * x as f64).floor().min(lmax) as u8;
    }
    ex_objective(a, m)
}

/// Critical-value sweep over `t ∈ [t_lo, t_hi]` (`a` non-negative): sets `m` to the best
/// `min(⌊t·a_i⌋, L)` found and returns `(objective, t)`.
pub fn ex_levels_sweep(a: &[f32], ex_bits: u32, t_lo: f64, t_hi: f64, m: &mut [u8]) -> (f64, f64) {
    let lmax = (1u32 << ex_bits) - 1;
    let (mut num, mut den) = (0.0f64, 0.0f64);
    let mut heap = MinHeap::with_capacity(a.len());
    for (i, (o, &x)) in m.iter_mut().zip(a).enumerate() {
        let x = x as f64;
        let l = ((t_lo * x).floor() as u64).min(lmax as u64) as u32;
        *o = l as u8;
        num += (l as f64 + 0.5) * x;
        den += (l as f64 + 0.5) * (l as f64 + 0.5);
        if l < lmax && x > 0.0 {
            heap.push((l as f64 + 1.0) / x, i as u32);
        }
    }
    let mut best = num / den.sqrt();
    let mut best_t = t_lo;
    while let Some((t, _)) = heap.peek() {
        if t > t_hi {
            break;
        }
        // Apply every event at this exact `t` so the state is the one of `⌊t·a⌋`.
        while let Some((t2, i)) = heap.peek() {
            if t2 != t {
                break;
            }
            heap.pop();
            let i = i as usize;
            let x = a[i] as f64;
            m[i] += 1;
            let l = m[i] as u32;
            num += x;
            den += 2.0 * l as f64;
            if l < lmax {
                heap.push((l as f64 + 1.0) / x, i as u32);
            }
        }
        let cos = num / den.sqrt();
        if cos > best {
            best = cos;
            // The state holds on [t, next event): pick the midpoint to rebuild it.
            let next = heap.peek().map_or(t * 2.0 + 1.0, |(n, _)| n);
            best_t = 0.5 * (t + next);
        }
    }
    let lmax = lmax as f64;
    for (o, &x) in m.iter_mut().zip(a) {
        *o = (best_t * x as f64).floor().min(lmax) as u8;
    }
    (ex_objective(a, m), best_t)
}

/// Critical-value ex-code search over RaBitQ-Library's window, widened to contain `t_also`
/// (the fast encoder's `t`, so the result is never worse than the fast encoder's).
pub fn ex_levels_exact(a: &[f32], ex_bits: u32, t_also: Option<f64>, m: &mut [u8]) -> (f64, f64) {
    let amax = a.iter().fold(0.0f32, |s, &x| s.max(x)) as f64;
    if amax <= 0.0 {
        m.fill(0);
        return (ex_objective(a, m), 0.0);
    }
    let lmax = ((1u32 << ex_bits) - 1) as f64;
    let t_end = (lmax + 10.0) / amax;
    let mut t_start = t_end * WINDOW_START[ex_bits as usize];
    let mut t_end = t_end;
    if let Some(t) = t_also {
        t_start = t_start.min(t);
        t_end = t_end.max(t);
    }
    ex_levels_sweep(a, ex_bits, t_start, t_end, m)
}

/// A small binary min-heap of `(t, index)` (faster than `BinaryHeap` with an `Ord` wrapper).
struct MinHeap {
    v: Vec<(f64, u32)>,
}

impl MinHeap {
    fn with_capacity(n: usize) -> Self {
        MinHeap { v: Vec::with_capacity(n) }
    }
    #[inline]
    fn peek(&self) -> Option<(f64, u32)> {
        self.v.first().copied()
    }
    #[inline]
    fn less(a: (f64, u32), b: (f64, u32)) -> bool {
        a.0 < b.0 || (a.0 == b.0 && a.1 < b.1)
    }
    fn push(&mut self, e: (f64, u32)) {
        self.v.push(e);
        let mut i = self.v.len() - 1;
        while i > 0 {
            let p = (i - 1) / 2;
            if Self::less(self.v[i], self.v[p]) {
                self.v.swap(i, p);
                i = p;
            } else {
                break;
            }
        }
    }
    fn pop(&mut self) {
        let last = self.v.pop().expect("non-empty heap");
        if self.v.is_empty() {
            return;
        }
        let n = self.v.len();
        let mut i = 0;
        loop {
            let l = 2 * i + 1;
            if l >= n {
                break;
            }
            let c = if l + 1 < n && Self::less(self.v[l + 1], self.v[l]) { l + 1 } else { l };
            if Self::less(self.v[c], last) {
                self.v[i] = self.v[c];
                i = c;
            } else {
                break;
            }
        }
        self.v[i] = last;
    }
}

/// Mean optimal sweep `t` over 100 seeded random unit vectors of dimension `pad`, cached per
/// `(pad, ex_bits)` because it depends on nothing else.
fn fast_t(pad: usize, ex_bits: u32) -> f64 {
    static CACHE: OnceLock<Mutex<HashMap<(usize, u32), f64>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(&t) = cache.lock().unwrap().get(&(pad, ex_bits)) {
        return t;
    }
    let mut rng = SplitMix::new(0xFA57 ^ ((pad as u64) << 8) ^ ex_bits as u64);
    let mut a = vec![0.0f32; pad];
    let mut m = vec![0u8; pad];
    let mut sum = 0.0;
    const SAMPLES: usize = 100;
    for _ in 0..SAMPLES {
        let g: Vec<f64> = (0..pad).map(|_| rng.gauss()).collect();
        let n = g.iter().map(|x| x * x).sum::<f64>().sqrt();
        for (o, x) in a.iter_mut().zip(&g) {
            *o = (x.abs() / n) as f32;
        }
        sum += ex_levels_exact(&a, ex_bits, None, &mut m).1;
    }
    let t = sum / SAMPLES as f64;
    cache.lock().unwrap().insert((pad, ex_bits), t);
    t
}

impl RaBitQ {
    /// Trains on `data` (row-major, `dim` columns, normalised for cosine): the centre is the
    /// data mean.
    pub fn train(data: &[f32], dim: usize, metric: Metric, cfg: &RaBitQConfig) -> Self {
        let n = data.len() / dim.max(1);
        let mut acc = vec![0.0f64; dim];
        for row in data.chunks_exact(dim) {
            for (a, &x) in acc.iter_mut().zip(row) {
                *a += x as f64;
            }
        }
        let centre = acc.iter().map(|&s| if n > 0 { (s / n as f64) as f32 } else { 0.0 }).collect();
        Self::with_centre(dim, metric, centre, cfg)
    }

    /// An encoder with a given centre (length `dim`). `cfg.bits` must be in 1..=8.
    pub fn with_centre(dim: usize, metric: Metric, centre: Vec<f32>, cfg: &RaBitQConfig) -> Self {
        assert!((1..=8).contains(&cfg.bits), "RaBitQ bits must be in 1..=8");
        assert_eq!(centre.len(), dim);
        let pad = dim.div_ceil(64).max(1) * 64;
        let rot = Rotation::new(pad, cfg.seed);
        let t_fast = if cfg.bits > 1 { fast_t(pad, cfg.bits - 1) } else { 0.0 };
        RaBitQ {
            dim,
            metric,
            bits: cfg.bits,
            pad,
            centre,
            rot,
            seed: cfg.seed,
            t_fast,
            fast_encode: cfg.fast_encode,
            eps0: cfg.eps0,
            k: kernels(),
        }
    }

    pub fn bits(&self) -> u32 {
        self.bits
    }
    /// Padded (rotated) dimension `D`.
    pub fn padded_dim(&self) -> usize {
        self.pad
    }
    pub fn centre(&self) -> &[f32] {
        &self.centre
    }
    pub fn seed(&self) -> u64 {
        self.seed
    }
    pub fn eps0(&self) -> f32 {
        self.eps0
    }
    /// Switches between the critical-value search and the fast constant-`t` ex-code encoder.
    pub fn set_fast_encode(&mut self, fast: bool) {
        self.fast_encode = fast;
    }
    pub fn set_eps0(&mut self, eps0: f32) {
        self.eps0 = eps0;
    }

    #[inline(always)]
    fn words(&self) -> usize {
        self.pad / 64
    }
    #[inline(always)]
    fn plane_bytes(&self) -> usize {
        self.pad / 8
    }
    #[inline(always)]
    fn ex_offset(&self) -> usize {
        self.plane_bytes() + F1_BYTES
    }
    #[inline(always)]
    fn ex_factor_offset(&self) -> usize {
        self.ex_offset() + (self.bits as usize - 1) * self.plane_bytes()
    }

    /// Rotated residual `P·(v - c)` into `y` (length `pad`); returns `<v - c, c>`.
    fn rotate_residual(&self, v: &[f32], y: &mut [f32]) -> f32 {
        let r: Vec<f32> = v.iter().zip(&self.centre).map(|(a, b)| a - b).collect();
        self.rot.apply(&r, y);
        (self.k.dot_f32)(&r, &self.centre)
    }

    /// Cosine `<x̄, ŷ>` of the 1-bit and of the full `B`-bit code of `v` (for tests and
    /// diagnostics).
    pub fn code_cosines(&self, code: &[u8], v: &[f32]) -> (f64, f64) {
        let mut y = vec![0.0f32; self.pad];
        self.rotate_residual(v, &mut y);
        let n = y.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>().sqrt();
        let mut u = vec![0u8; self.pad];
        self.unpack(code, &mut u);
        let cb = -(((1u32 << self.bits) - 1) as f64) / 2.0;
        let top = 1u8 << (self.bits - 1);
        let (mut c1, mut cb_num, mut cb_den) = (0.0, 0.0, 0.0);
        for (&x, &uu) in y.iter().zip(&u) {
            let s = if uu & top != 0 { 1.0 } else { -1.0 };
            c1 += s * x as f64;
            let w = uu as f64 + cb;
            cb_num += w * x as f64;
            cb_den += w * w;
        }
        (c1 / ((self.pad as f64).sqrt() * n), cb_num / (cb_den.sqrt() * n))
    }

    /// Unpacks the full `B`-bit code values `u_i` into `out` (length `pad`).
    pub fn unpack(&self, code: &[u8], out: &mut [u8]) {
        let pb = self.plane_bytes();
        let top = self.bits as usize - 1;
        let sign = &code[..pb];
        let ex = &code[self.ex_offset()..self.ex_offset() + top * pb];
        for (k, o) in out.chunks_exact_mut(8).enumerate() {
            let mut v = SPREAD[sign[k] as usize] << top;
            for j in 0..top {
                v |= SPREAD[ex[j * pb + k] as usize] << j;
            }
            o.copy_from_slice(&v.to_le_bytes());
        }
    }

    #[inline(always)]
    fn finish(&self, ipr: f32, f_add: f32, q: &RaBitQQuery) -> f32 {
        match self.metric {
            Metric::L2 => (f_add + q.g_add - 2.0 * ipr).max(0.0),
            m => m.from_dot(f_add + q.g_add + ipr),
        }
    }

    /// Estimate of `<r, q - c>` from the 1-bit code with the quantised query.
    #[inline(always)]
    fn ip_1bit(&self, q: &RaBitQQuery, code: &[u8]) -> f32 {
        let pb = self.plane_bytes();
        let bq = bitplane_dot(self.k, &code[..pb], &q.planes, self.words());
        let popcnt = u32::from_le_bytes([code[pb + 12], code[pb + 13], code[pb + 14], code[pb + 15]]);
        let bz = q.delta * bq as f32 + q.vl * popcnt as f32;
        rd_f32(code, pb + 4) * (2.0 * bz - q.sum_z)
    }

    /// Estimate of `<r, q - c>` from the full code with the float query.
    fn ip_fine(&self, q: &RaBitQQuery, code: &[u8]) -> f32 {
        let mut u = q.scratch.borrow_mut();
        self.unpack(code, &mut u);
        let dot = (self.k.dot_f32_u8)(&q.z, &u);
        if self.bits == 1 {
            rd_f32(code, self.plane_bytes() + 4) * (2.0 * dot - q.sum_z)
        } else {
            let cb = -(((1u32 << self.bits) - 1) as f32) / 2.0;
            rd_f32(code, self.ex_factor_offset()) * (dot + cb * q.sum_z)
        }
    }

    fn interval(&self, est: f32, f_err: f32, q: &RaBitQQuery) -> (f32, f32, f32) {
        let scale = if self.metric == Metric::L2 { 2.0 } else { 1.0 };
        let h = scale * self.eps0 * f_err * q.zn;
        let lo = if self.metric == Metric::L2 { (est - h).max(0.0) } else { est - h };
        (est, lo, est + h)
    }

    /// The traversal estimate with its confidence interval `(estimate, lower, upper)` at
    /// `eps0` (holds with high probability over the rotation; query quantisation excluded).
    pub fn bound(&self, q: &RaBitQQuery, code: &[u8]) -> (f32, f32, f32) {
        let f_err = rd_f32(code, self.plane_bytes() + 8);
        self.interval(self.distance(q, code), f_err, q)
    }

    /// The full-code estimate with its confidence interval `(estimate, lower, upper)`.
    pub fn bound_fine(&self, q: &RaBitQQuery, code: &[u8]) -> (f32, f32, f32) {
        let f_err = if self.bits == 1 {
            rd_f32(code, self.plane_bytes() + 8)
        } else {
            rd_f32(code, self.ex_factor_offset() + 4)
        };
        self.interval(self.distance_fine(q, code), f_err, q)
    }

    /// Encodes with an explicit choice of ex-code encoder.
    pub fn encode_with(&self, v: &[f32], out: &mut [u8], fast: bool) {
        let d = self.pad;
        let pb = self.plane_bytes();
        let mut y = vec![0.0f32; d];
        let rc = self.rotate_residual(v, &mut y);
        let norm2: f64 = y.iter().map(|&x| (x as f64) * (x as f64)).sum();
        let norm = norm2.sqrt();
        let sum_abs: f64 = y.iter().map(|&x| x.abs() as f64).sum();
        out.fill(0);
        let mut popcnt = 0u32;
        for (i, &x) in y.iter().enumerate() {
            if x > 0.0 {
                out[i / 8] |= 1 << (i % 8);
                popcnt += 1;
            }
        }
        let err_factor = |cos: f64| -> f32 {
            if cos <= 0.0 || norm == 0.0 {
                0.0
            } else {
                (norm * ((1.0 - cos * cos).max(0.0) / (cos * cos)).sqrt() / ((d - 1) as f64).sqrt()) as f32
            }
        };
        let f_add = match self.metric {
            Metric::L2 => norm2 as f32,
            _ => rc,
        };
        let f_rescale = if sum_abs > 0.0 { (norm2 / sum_abs) as f32 } else { 0.0 };
        let cos1 = if norm > 0.0 { sum_abs / ((d as f64).sqrt() * norm) } else { 0.0 };
        wr_f32(out, pb, f_add);
        wr_f32(out, pb + 4, f_rescale);
        wr_f32(out, pb + 8, err_factor(cos1));
        out[pb + 12..pb + 16].copy_from_slice(&popcnt.to_le_bytes());
        if self.bits == 1 {
            return;
        }
        let ex_bits = self.bits - 1;
        let lmax = (1u8 << ex_bits) - 1;
        let a: Vec<f32> = y.iter().map(|&x| if norm > 0.0 { (x.abs() as f64 / norm) as f32 } else { 0.0 }).collect();
        let mut m = vec![0u8; d];
        let cos = if fast {
            ex_levels_fast(&a, ex_bits, self.t_fast, &mut m)
        } else {
            ex_levels_exact(&a, ex_bits, Some(self.t_fast), &mut m).0
        };
        let eo = self.ex_offset();
        let mut ip_ma = 0.0f64;
        for (i, (&x, &l)) in y.iter().zip(&m).enumerate() {
            ip_ma += (l as f64 + 0.5) * x.abs() as f64;
            let mm = if x > 0.0 { l } else { lmax - l };
            for j in 0..ex_bits as usize {
                if (mm >> j) & 1 == 1 {
                    out[eo + j * pb + i / 8] |= 1 << (i % 8);
                }
            }
        }
        let fo = self.ex_factor_offset();
        wr_f32(out, fo, if ip_ma > 0.0 { (norm2 / ip_ma) as f32 } else { 0.0 });
        wr_f32(out, fo + 4, err_factor(cos));
    }
}

impl Encoding for RaBitQ {
    type Query = RaBitQQuery;
    const NAME: &'static str = "rabitq";
    const TAG: u8 = 2;
    const EXACT: bool = false;
    const HAS_FINE: bool = true;

    fn dim(&self) -> usize {
        self.dim
    }
    fn metric(&self) -> Metric {
        self.metric
    }
    fn code_size(&self) -> usize {
        self.bits as usize * self.plane_bytes() + F1_BYTES + if self.bits > 1 { FEX_BYTES } else { 0 }
    }
    fn encode(&self, v: &[f32], out: &mut [u8]) {
        self.encode_with(v, out, self.fast_encode)
    }
    fn prepare(&self, q: &[f32]) -> RaBitQQuery {
        let d = self.pad;
        let mut z = vec![0.0f32; d];
        let qc: Vec<f32> = q.iter().zip(&self.centre).map(|(a, b)| a - b).collect();
        self.rot.apply(&qc, &mut z);
        let zn2 = (self.k.dot_f32)(&qc, &qc);
        let g_add = match self.metric {
            Metric::L2 => zn2,
            _ => (self.k.dot_f32)(q, &self.centre),
        };
        let sum_z = z.iter().sum();
        let (vl, vr) = z.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(l, r), &x| (l.min(x), r.max(x)));
        let levels = ((1u32 << QUERY_BITS) - 1) as f32;
        let delta = (vr - vl) / levels;
        let w = self.words();
        let mut planes = vec![0u64; QUERY_BITS as usize * w];
        // A constant rotated query (e.g. q = c) has Δ = 0: every q_u is 0 and <b, z'> = v_l·|b|.
        if delta > 0.0 && delta.is_finite() {
            for (i, &x) in z.iter().enumerate() {
                let qu = ((x - vl) / delta).round().clamp(0.0, levels) as u32;
                for j in 0..QUERY_BITS as usize {
                    planes[j * w + i / 64] |= (((qu >> j) & 1) as u64) << (i % 64);
                }
            }
        }
        RaBitQQuery {
            z,
            planes,
            delta: if delta.is_finite() { delta } else { 0.0 },
            vl,
            sum_z,
            zn: zn2.sqrt(),
            g_add,
            scratch: RefCell::new(vec![0u8; d]),
        }
    }
    #[inline]
    fn distance(&self, q: &RaBitQQuery, code: &[u8]) -> f32 {
        let ipr = self.ip_1bit(q, code);
        self.finish(ipr, rd_f32(code, self.plane_bytes()), q)
    }
    fn distance_fine(&self, q: &RaBitQQuery, code: &[u8]) -> f32 {
        let ipr = self.ip_fine(q, code);
        self.finish(ipr, rd_f32(code, self.plane_bytes()), q)
    }
    fn params_bytes(&self) -> usize {
        self.centre.len() * 4 + self.rot.memory_bytes()
    }
    fn write_params(&self, w: &mut Writer) {
        w.u32(self.bits);
        w.u32(self.pad as u32);
        w.u64(self.seed);
        w.u8(self.fast_encode as u8);
        w.f32(self.eps0);
        w.f32(self.t_fast as f32);
        w.f32s(&self.centre);
        for &s in self.rot.sign_words() {
            w.u64(s);
        }
    }
    fn read_params(r: &mut Reader, dim: usize, metric: Metric) -> Result<Self> {
        let bits = r.u32()?;
        if !(1..=8).contains(&bits) {
            return Err(Error::Format(format!("rabitq: bits {bits} out of range 1..=8")));
        }
        let pad = r.u32()? as usize;
        if pad != dim.div_ceil(64).max(1) * 64 {
            return Err(Error::Format(format!("rabitq: padded dimension {pad} does not match dimension {dim}")));
        }
        let seed = r.u64()?;
        let fast_encode = match r.u8()? {
            0 => false,
            1 => true,
            v => return Err(Error::Format(format!("rabitq: bad fast-encode flag {v}"))),
        };
        let eps0 = r.f32()?;
        if !(eps0.is_finite() && eps0 > 0.0) {
            return Err(Error::Format("rabitq: eps0 must be finite and positive".into()));
        }
        let t_fast = r.f32()?;
        if !t_fast.is_finite() || t_fast < 0.0 || (bits > 1 && t_fast == 0.0) {
            return Err(Error::Format("rabitq: bad fast-encoder rescaling factor".into()));
        }
        let centre = r.f32s(dim)?;
        if centre.iter().any(|x| !x.is_finite()) {
            return Err(Error::Format("rabitq: centre is not finite".into()));
        }
        let mut words = Vec::with_capacity(ROUNDS * pad / 64);
        for _ in 0..ROUNDS * pad / 64 {
            words.push(r.u64()?);
        }
        let rot = Rotation::from_sign_words(pad, words).ok_or_else(|| Error::Format("rabitq: bad rotation".into()))?;
        Ok(RaBitQ { dim, metric, bits, pad, centre, rot, seed, t_fast: t_fast as f64, fast_encode, eps0, k: kernels() })
    }
}
