//! Distance semantics, in one place.
//!
//! Every distance returned by nearq is "smaller is nearer":
//! - [`Metric::L2`]: squared Euclidean distance `||q - x||^2`;
//! - [`Metric::InnerProduct`]: `-<q, x>`;
//! - [`Metric::Cosine`]: `1 - cos(q, x)`. Vectors and queries are normalised to unit length on
//!   the way in, after which `1 - cos = 1 - <q, x>`; zero vectors stay zero.

use crate::error::{Error, Result};
use nearq_kernels::Kernels;

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Metric {
    L2,
    InnerProduct,
    Cosine,
}

impl Metric {
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "l2" | "euclidean" | "sqeuclidean" => Ok(Metric::L2),
            "ip" | "inner_product" | "dot" => Ok(Metric::InnerProduct),
            "cosine" | "angular" => Ok(Metric::Cosine),
            _ => Err(Error::param(
                "metric",
                format!("unknown metric {s:?}; expected \"l2\", \"ip\" or \"cosine\""),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Metric::L2 => "l2",
            Metric::InnerProduct => "ip",
            Metric::Cosine => "cosine",
        }
    }

    pub(crate) fn tag(self) -> u8 {
        match self {
            Metric::L2 => 0,
            Metric::InnerProduct => 1,
            Metric::Cosine => 2,
        }
    }

    pub(crate) fn from_tag(t: u8) -> Option<Self> {
        match t {
            0 => Some(Metric::L2),
            1 => Some(Metric::InnerProduct),
            2 => Some(Metric::Cosine),
            _ => None,
        }
    }

    /// Whether vectors are normalised to unit length before storage and search.
    pub fn normalizes(self) -> bool {
        self == Metric::Cosine
    }

    /// Distance between two (already normalised, for cosine) full-precision vectors.
    #[inline]
    pub fn distance(self, k: &Kernels, a: &[f32], b: &[f32]) -> f32 {
        match self {
            Metric::L2 => (k.l2sq_f32)(a, b),
            Metric::InnerProduct => -(k.dot_f32)(a, b),
            Metric::Cosine => 1.0 - (k.dot_f32)(a, b),
        }
    }

    /// Converts an inner product into this metric's distance (for IP and cosine).
    #[inline]
    pub fn from_dot(self, dot: f32) -> f32 {
        match self {
            Metric::Cosine => 1.0 - dot,
            _ => -dot,
        }
    }
}

/// Normalises `v` in place to unit L2 norm (left unchanged when its norm is zero).
pub fn normalize(v: &mut [f32]) {
    let n2: f64 = v.iter().map(|&x| (x as f64) * (x as f64)).sum();
    if n2 > 0.0 {
        let inv = (1.0 / n2.sqrt()) as f32;
        v.iter_mut().for_each(|x| *x *= inv);
    }
}

/// Checks that a row-major matrix of `n` rows has only finite values.
pub fn check_finite(what: &'static str, data: &[f32], dim: usize) -> Result<()> {
    // A value is finite when its magnitude bits are below the infinity's; the largest
    // magnitude of a block is a reduction that vectorises (a search checks every query, so
    // this runs once per call), and only a failing matrix is searched for the position.
    let finite = data.chunks(256).all(|c| {
        c.iter()
            .map(|x| x.to_bits() & 0x7FFF_FFFF)
            .max()
            .unwrap_or(0)
            < 0x7F80_0000
    });
    if finite {
        return Ok(());
    }
    if let Some(pos) = data.iter().position(|x| !x.is_finite()) {
        return Err(Error::NonFinite {
            what,
            row: pos / dim.max(1),
            col: pos % dim.max(1),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_finite_finds_every_non_finite_value_at_its_position() {
        let (dim, n) = (7, 100);
        let mut m: Vec<f32> = (0..dim * n).map(|i| (i as f32 - 300.0) * 1e3).collect();
        m[5] = f32::MAX;
        m[6] = -f32::MAX;
        m[7] = f32::MIN_POSITIVE / 2.0; // subnormal
        m[8] = -0.0;
        assert!(check_finite("x", &m, dim).is_ok());
        assert!(check_finite("x", &[], dim).is_ok());
        for bad in [f32::NAN, -f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for pos in [0, 255, 256, 257, 511, dim * n - 1] {
                let mut b = m.clone();
                b[pos] = bad;
                match check_finite("x", &b, dim) {
                    Err(Error::NonFinite { row, col, .. }) => {
                        assert_eq!((row, col), (pos / dim, pos % dim), "{bad} at {pos}")
                    }
                    other => panic!("{bad} at {pos}: {other:?}"),
                }
            }
        }
    }
}
