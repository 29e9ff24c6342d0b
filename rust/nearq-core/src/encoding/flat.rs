//! Plain float32 vectors: the exact baseline. The code is the vector's bytes.

use super::Encoding;
use crate::error::Result;
use crate::io::{Reader, Writer};
use crate::metric::Metric;
use nearq_kernels::{kernels, Kernels};

pub struct Flat {
    dim: usize,
    metric: Metric,
    k: &'static Kernels,
}

impl Flat {
    pub fn new(dim: usize, metric: Metric) -> Self {
        Flat {
            dim,
            metric,
            k: kernels(),
        }
    }
}

/// Views a code as the f32 vector it stores. Codes live in 64-byte aligned storage with a
/// stride that is a multiple of 4, so the cast never fails for stored codes.
#[inline(always)]
pub(crate) fn as_f32(code: &[u8]) -> &[f32] {
    bytemuck::cast_slice(code)
}

impl Encoding for Flat {
    type Query = Vec<f32>;
    const NAME: &'static str = "flat";
    const TAG: u8 = 0;
    const EXACT: bool = true;

    fn dim(&self) -> usize {
        self.dim
    }
    fn metric(&self) -> Metric {
        self.metric
    }
    fn code_size(&self) -> usize {
        self.dim * 4
    }
    fn encode(&self, v: &[f32], out: &mut [u8]) {
        out.copy_from_slice(bytemuck::cast_slice(v));
    }
    fn decode(&self, code: &[u8], out: &mut [f32]) -> bool {
        out.copy_from_slice(as_f32(code));
        true
    }
    fn prepare(&self, q: &[f32]) -> Vec<f32> {
        q.to_vec()
    }
    #[inline]
    fn distance(&self, q: &Vec<f32>, code: &[u8]) -> f32 {
        self.metric.distance(self.k, q, as_f32(code))
    }
    fn write_params(&self, _w: &mut Writer) {}
    fn read_params(_r: &mut Reader, dim: usize, metric: Metric) -> Result<Self> {
        Ok(Flat::new(dim, metric))
    }
}
