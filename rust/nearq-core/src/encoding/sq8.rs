//! Scalar quantisation to 8 bits per dimension with a per-dimension range.
//!
//! Training takes each dimension's range `[lo_i, hi_i]`; a value is stored as
//! `c_i = round((x_i - lo_i) / s_i)` with `s_i = (hi_i - lo_i) / 255`, decoded as
//! `x̂_i = lo_i + s_i c_i`. Each code also stores `||x̂||^2` (f32) after the `d` bytes.
//!
//! Distances are computed on the codes without decoding: with `w_i = q_i s_i` prepared once
//! per query, `<q, x̂> = <q, lo> + sum_i w_i c_i` (one f32×u8 dot-product kernel), and
//! `||q - x̂||^2 = ||q||^2 - 2 <q, x̂> + ||x̂||^2`. These equal the distances to the decoded
//! vector up to float rounding ([`Encoding::distance_fine`], used to re-rank when no float
//! vectors are kept). Traversal also quantises `w` to 8 bits and uses an integer kernel.

use super::Encoding;
use crate::error::{Error, Result};
use crate::io::{Reader, Writer};
use crate::metric::Metric;
use nearq_kernels::{kernels, Kernels};

pub struct Sq8 {
    dim: usize,
    metric: Metric,
    lo: Vec<f32>,
    step: Vec<f32>,
    k: &'static Kernels,
}

pub struct Sq8Query {
    w: Vec<f32>,
    /// `w` quantised to i8 with step `wstep` (traversal path).
    w8: Vec<i8>,
    wstep: f32,
    base: f32,
    qnorm2: f32,
}

impl Sq8 {
    /// Learns per-dimension ranges from `data` (row-major, `dim` columns).
    pub fn train(data: &[f32], dim: usize, metric: Metric) -> Self {
        let mut lo = vec![f32::INFINITY; dim];
        let mut hi = vec![f32::NEG_INFINITY; dim];
        for row in data.chunks_exact(dim) {
            for ((l, h), &x) in lo.iter_mut().zip(hi.iter_mut()).zip(row) {
                *l = l.min(x);
                *h = h.max(x);
            }
        }
        let step = lo
            .iter()
            .zip(&hi)
            .map(|(&l, &h)| if h > l { (h - l) / 255.0 } else { 1.0 })
            .collect();
        let lo = lo
            .into_iter()
            .map(|l| if l.is_finite() { l } else { 0.0 })
            .collect();
        Sq8 {
            dim,
            metric,
            lo,
            step,
            k: kernels(),
        }
    }

    #[inline(always)]
    fn finish(&self, q: &Sq8Query, dot: f32, code: &[u8]) -> f32 {
        match self.metric {
            Metric::L2 => (q.qnorm2 - 2.0 * dot + Self::norm2(code, self.dim)).max(0.0),
            m => m.from_dot(dot),
        }
    }

    #[inline]
    fn norm2(code: &[u8], d: usize) -> f32 {
        f32::from_le_bytes([code[d], code[d + 1], code[d + 2], code[d + 3]])
    }
}

impl Encoding for Sq8 {
    type Query = Sq8Query;
    const NAME: &'static str = "sq8";
    const TAG: u8 = 1;
    const EXACT: bool = false;

    fn dim(&self) -> usize {
        self.dim
    }
    fn metric(&self) -> Metric {
        self.metric
    }
    fn code_size(&self) -> usize {
        self.dim + 4
    }
    fn encode(&self, v: &[f32], out: &mut [u8]) {
        let d = self.dim;
        let mut n2 = 0.0f32;
        for i in 0..d {
            let c = ((v[i] - self.lo[i]) / self.step[i])
                .round()
                .clamp(0.0, 255.0);
            out[i] = c as u8;
            let x = self.lo[i] + self.step[i] * c;
            n2 += x * x;
        }
        out[d..d + 4].copy_from_slice(&n2.to_le_bytes());
    }
    fn decode(&self, code: &[u8], out: &mut [f32]) -> bool {
        for i in 0..self.dim {
            out[i] = self.lo[i] + self.step[i] * code[i] as f32;
        }
        true
    }
    fn prepare(&self, q: &[f32]) -> Sq8Query {
        let w: Vec<f32> = q.iter().zip(&self.step).map(|(a, s)| a * s).collect();
        let wmax = w.iter().fold(0f32, |m, x| m.max(x.abs()));
        let wstep = if wmax > 0.0 { wmax / 127.0 } else { 1.0 };
        let w8 = w
            .iter()
            .map(|x| (x / wstep).round().clamp(-127.0, 127.0) as i8)
            .collect();
        let base = (self.k.dot_f32)(q, &self.lo);
        let qnorm2 = (self.k.dot_f32)(q, q);
        Sq8Query {
            w,
            w8,
            wstep,
            base,
            qnorm2,
        }
    }
    /// Traversal estimate: the query weights are quantised to 8 bits too, so the dot product
    /// is one exact u8×i8 integer kernel (VNNI where present); the relative error it adds is
    /// about 0.3% of the weights' range, and re-ranking removes it from the final results.
    #[inline]
    fn distance(&self, q: &Sq8Query, code: &[u8]) -> f32 {
        let d = self.dim;
        let dot = q.base + q.wstep * (self.k.dot_u8_i8)(&code[..d], &q.w8) as f32;
        self.finish(q, dot, code)
    }
    const HAS_FINE: bool = true;
    fn fine_prefilters(&self) -> bool {
        true
    }
    /// The distance to the decoded vector (f32 weights × u8 codes).
    #[inline]
    fn distance_fine(&self, q: &Sq8Query, code: &[u8]) -> f32 {
        let d = self.dim;
        let dot = q.base + (self.k.dot_f32_u8)(&q.w, &code[..d]);
        self.finish(q, dot, code)
    }
    fn params_bytes(&self) -> usize {
        self.dim * 8
    }
    fn write_params(&self, w: &mut Writer) {
        w.f32s(&self.lo);
        w.f32s(&self.step);
    }
    fn read_params(r: &mut Reader, dim: usize, metric: Metric) -> Result<Self> {
        let lo = r.f32s(dim)?;
        let step = r.f32s(dim)?;
        if lo.iter().chain(&step).any(|x| !x.is_finite()) || step.iter().any(|&s| s <= 0.0) {
            return Err(Error::Format(
                "sq8 parameters are not finite and positive".into(),
            ));
        }
        Ok(Sq8 {
            dim,
            metric,
            lo,
            step,
            k: kernels(),
        })
    }
}
