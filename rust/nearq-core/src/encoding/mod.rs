//! Vector encodings behind one trait.
//!
//! An encoding turns a full-precision vector into a fixed-size code and estimates the metric's
//! distance from a query to a code. The graph knows encodings only through [`Encoding`]:
//!
//! 1. `train` (optional) learns parameters from a sample of the data;
//! 2. `encode` writes one vector's code (`code_size()` bytes);
//! 3. `prepare` builds a [`Encoding::Query`] once per query (rotations, look-up tables,
//!    pre-scaled weights), so the per-code work is only the kernel;
//! 4. `distance` / `distance_batch` estimate distances from a prepared query to codes;
//! 5. `decode` reconstructs a vector where the encoding allows it.
//!
//! Inputs are already in the metric's space (normalised for cosine). A closed set of
//! encodings lives in [`AnyEncoding`] so the hot loops are monomorphised.

pub mod flat;
pub mod kmeans;
pub mod lvq;
pub mod pq;
pub mod rabitq;
pub mod rotation;
pub mod saq;
pub mod sq8;
pub mod turboquant;

use crate::error::{Error, Result};
use crate::io::{Reader, Writer};
use crate::metric::Metric;
use crate::storage::CodeStore;

pub use flat::Flat;
pub use lvq::Lvq;
pub use pq::{Pq, PqConfig};
pub use rabitq::{RaBitQ, RaBitQConfig};
pub use saq::{Saq, SaqConfig};
pub use sq8::Sq8;
pub use turboquant::{TurboQuant, Variant as TurboQuantVariant};

/// The shared encoding interface.
pub trait Encoding: Send + Sync + Sized + 'static {
    /// A query prepared once for scoring many codes.
    type Query: Send;

    /// Short stable name (`"flat"`, `"sq8"`, ...).
    const NAME: &'static str;
    /// Tag stored in the file format.
    const TAG: u8;
    /// Whether `distance` equals the exact metric distance (no re-ranking needed).
    const EXACT: bool;

    fn dim(&self) -> usize;
    fn metric(&self) -> Metric;
    /// Bytes per encoded vector.
    fn code_size(&self) -> usize;
    /// Writes the code of `v` (length `dim`) into `out` (length `code_size`).
    fn encode(&self, v: &[f32], out: &mut [u8]);
    /// Encodes the rows of `data` (`n × dim`, row-major) into `out`, the code of row `i` at
    /// `out[i * stride..][..code_size]` (`stride >= code_size`, `out.len() >= (n - 1) * stride +
    /// code_size`; bytes past a code are left alone). The default encodes row by row; an
    /// encoding with a faster block path (SAQ's projection as one matrix product) overrides
    /// it, with the same codes up to the float rounding of that product.
    fn encode_batch(&self, data: &[f32], out: &mut [u8], stride: usize) {
        let (dim, cs) = (self.dim(), self.code_size());
        for (v, c) in data.chunks_exact(dim).zip(out.chunks_mut(stride)) {
            self.encode(v, &mut c[..cs]);
        }
    }
    /// Reconstructs a vector from its code; returns false if the encoding cannot.
    fn decode(&self, _code: &[u8], _out: &mut [f32]) -> bool {
        false
    }
    /// Prepares a query (already normalised for cosine).
    fn prepare(&self, q: &[f32]) -> Self::Query;
    /// Estimated distance from a prepared query to one code.
    fn distance(&self, q: &Self::Query, code: &[u8]) -> f32;
    /// Whether [`Encoding::distance_fine`] is more accurate than [`Encoding::distance`] (a code
    /// with a coarse traversal part and a finer re-ranking part, e.g. RaBitQ's extra bits).
    const HAS_FINE: bool = false;
    /// Whether [`Encoding::distance_fine`] is precise enough (e.g. 8-bit codes) that, when float
    /// vectors are kept, only the best `2k` candidates by it need exact re-scoring. Coarse
    /// finer codes leave this false and every re-ranked candidate is scored exactly.
    fn fine_prefilters(&self) -> bool {
        false
    }
    /// A finer distance estimate used to re-rank candidates when no float vectors are kept.
    fn distance_fine(&self, q: &Self::Query, code: &[u8]) -> f32 {
        self.distance(q, code)
    }
    /// Estimated distances to several codes (`out[i]` for `codes[i]`).
    fn distance_batch(&self, q: &Self::Query, codes: &[&[u8]], out: &mut [f32]) {
        for (o, c) in out.iter_mut().zip(codes) {
            *o = self.distance(q, c);
        }
    }
    /// [`Encoding::distance`] to the codes of `ids` in `codes` (`out[i]` for `ids[i]`), with the
    /// same values, or values within a bound the encoding documents (4-bit PQ scores the codes
    /// with FastScan's u8 tables, within `M·0.5/scale` of the float ADC): the graph scores an
    /// expanded node's new neighbours in one call, which encodings with a multi-code kernel
    /// override.
    fn distance_ids(&self, q: &Self::Query, codes: &CodeStore, ids: &[u32], out: &mut [f32]) {
        for (o, &id) in out.iter_mut().zip(ids) {
            *o = self.distance(q, codes.get(id as usize));
        }
    }
    /// Bytes of one block of packed neighbour codes (up to 32 codes, see
    /// [`Encoding::pack_neighbors`]), or 0 (the default) when the encoding has no packed
    /// multi-code layout: then the graph keeps no neighbour-code rows (`crate::nbrows`).
    fn neighbor_block_bytes(&self) -> usize {
        0
    }
    /// Packs the codes of up to 32 nodes `ids` of `codes` into one block of
    /// [`Encoding::neighbor_block_bytes`] bytes (`out`), the layout
    /// [`Encoding::distance_packed`] scores; slots past `ids.len()` are filled as the encoding
    /// likes (their estimates are ignored). Only called when `neighbor_block_bytes() > 0`.
    fn pack_neighbors(&self, _codes: &CodeStore, _ids: &[u32], _out: &mut [u8]) {
        unreachable!("pack_neighbors on an encoding without neighbour blocks")
    }
    /// Estimates of the first `out.len()` (at most 32) codes of a block written by
    /// [`Encoding::pack_neighbors`]: bit-identical to [`Encoding::distance_ids`] on the same
    /// codes. Only called when `neighbor_block_bytes() > 0`.
    fn distance_packed(&self, _q: &Self::Query, _block: &[u8], _out: &mut [f32]) {
        unreachable!("distance_packed on an encoding without neighbour blocks")
    }
    /// A confidence interval `(lower, upper)` for the exact distance from the query to the
    /// vector of `code`, given `est = self.distance(q, code)` (the traversal estimate), or
    /// `None` (the default) when the encoding has no error bound. Re-ranking skips candidates
    /// whose lower end exceeds the `k`-th smallest upper end: they cannot enter the top `k`
    /// unless a bound fails, which the encoding makes unlikely.
    fn distance_interval(&self, _q: &Self::Query, _code: &[u8], _est: f32) -> Option<(f32, f32)> {
        None
    }
    /// How many leading bytes of a code [`Encoding::distance`] reads (what the traversal
    /// prefetches).
    fn traversal_bytes(&self) -> usize {
        self.code_size()
    }
    /// Bytes of trained parameters held in memory.
    fn params_bytes(&self) -> usize {
        0
    }
    /// Serialises the trained parameters.
    fn write_params(&self, w: &mut Writer);
    /// Reads parameters written by `write_params`.
    fn read_params(r: &mut Reader, dim: usize, metric: Metric) -> Result<Self>;
}

/// Rows per [`Encoding::encode_batch`] call when many vectors are encoded in parallel.
pub const ENCODE_BLOCK: usize = 256;

/// Encodes the rows of `data` into `out` (code `i` at `out[i * stride..]`) in parallel, in
/// blocks of [`ENCODE_BLOCK`] rows through [`Encoding::encode_batch`].
pub fn encode_all<E: Encoding>(enc: &E, data: &[f32], out: &mut [u8], stride: usize) {
    use rayon::prelude::*;
    let dim = enc.dim();
    out.par_chunks_mut(stride * ENCODE_BLOCK)
        .zip(data.par_chunks(dim * ENCODE_BLOCK))
        .for_each(|(c, v)| enc.encode_batch(v, c, stride));
}

/// What the user asked for, before training.
#[derive(Clone, Debug, PartialEq)]
pub enum EncodingSpec {
    Flat,
    Sq8,
    /// RaBitQ with `bits` (1..=8) per dimension: a 1-bit (`bits <= 3`) or 4-bit (`bits >= 4`)
    /// traversal code, the rest of the bits for re-ranking.
    RaBitQ {
        bits: u32,
    },
    /// TurboQuant with `bits` (1..=8) per coordinate; `variant` `Mse` (b-bit Lloyd–Max code)
    /// or `Prod` ((b−1)-bit code plus a 1-bit QJL sketch of the residual).
    TurboQuant {
        bits: u32,
        variant: TurboQuantVariant,
    },
    /// LVQ with a `bits` (4 or 8) primary level for traversal and an optional `residual`
    /// (0 = none, 4 or 8) level for re-ranking.
    Lvq {
        bits: u32,
        residual: u32,
    },
    /// Product quantization: `m` sub-quantizers (`None`: [`pq::default_subspaces`]) of `bits`
    /// (4 or 8) bits, after a learned OPQ rotation when `opq`.
    Pq {
        m: Option<usize>,
        bits: u32,
        opq: bool,
    },
    /// SAQ with an average of `bits` bits per dimension (fractional allowed, in (0, 12]).
    Saq {
        bits: f32,
    },
}

impl EncodingSpec {
    /// `bits`: one value per level (`[b]`; two-level LVQ also takes `[b1, b2]`); `None` takes
    /// the encoding's default.
    pub fn parse(name: &str, bits: Option<&[u32]>) -> Result<Self> {
        let single = match bits {
            Some(&[b]) => Some(b),
            _ => None,
        };
        let spec = match name.to_ascii_lowercase().as_str() {
            "flat" | "f32" | "float32" => EncodingSpec::Flat,
            "sq8" => EncodingSpec::Sq8,
            "rabitq" => EncodingSpec::RaBitQ {
                bits: single.unwrap_or(rabitq::DEFAULT_BITS),
            },
            "turboquant" => EncodingSpec::TurboQuant {
                bits: single.unwrap_or(turboquant::DEFAULT_BITS),
                variant: TurboQuantVariant::Mse,
            },
            "lvq" => {
                let (bits, residual) = match bits {
                    None => lvq::DEFAULT_BITS,
                    Some(&[b]) => (b, 0),
                    Some(&[b1, b2]) => (b1, b2),
                    Some(_) => (0, 0), // rejected below
                };
                EncodingSpec::Lvq { bits, residual }
            }
            "pq" => EncodingSpec::Pq {
                m: None,
                bits: single.unwrap_or(pq::DEFAULT_BITS),
                opq: false,
            },
            "saq" => EncodingSpec::Saq {
                bits: single.map_or(saq::DEFAULT_BITS, |b| b as f32),
            },
            other => {
                return Err(Error::param(
                    "encoding",
                    format!("unknown encoding {other:?}; available: \"flat\", \"sq8\", \"rabitq\", \"lvq\", \"pq\", \"turboquant\", \"saq\""),
                ))
            }
        };
        let ok = match (&spec, bits) {
            (_, None) => true,
            (EncodingSpec::Flat, Some(&[32])) | (EncodingSpec::Sq8, Some(&[8])) => true,
            (EncodingSpec::RaBitQ { .. }, Some(&[1..=8])) => true,
            (EncodingSpec::TurboQuant { .. }, Some(&[1..=8])) => true,
            (EncodingSpec::Pq { .. }, Some(&[4 | 8])) => true,
            (EncodingSpec::Saq { .. }, Some(&[1..=12])) => true,
            (&EncodingSpec::Lvq { bits, residual }, Some(_)) => lvq::valid_bits(bits, residual),
            _ => false,
        };
        if let (false, Some(b)) = (ok, bits) {
            let b: Vec<String> = b.iter().map(u32::to_string).collect();
            let hint = match spec {
                EncodingSpec::Lvq { .. } => " (lvq takes 4 or 8, or two levels 4x4, 4x8, 8x4, 8x8)",
                EncodingSpec::Pq { .. } => " (pq takes 4 or 8)",
                _ => "",
            };
            return Err(Error::param(
                "bits",
                format!(
                    "{} bits is not available for encoding {:?}{hint}",
                    b.join("x"),
                    spec.name()
                ),
            ));
        }
        Ok(spec)
    }

    /// Applies the PQ options `subspaces` (sub-quantizers) and `opq`, which only `"pq"` takes.
    pub fn with_pq_options(self, subspaces: Option<usize>, opq: bool) -> Result<Self> {
        match self {
            EncodingSpec::Pq { m, bits, .. } => {
                if subspaces == Some(0) {
                    return Err(Error::param("subspaces", "must be at least 1"));
                }
                Ok(EncodingSpec::Pq {
                    m: subspaces.or(m),
                    bits,
                    opq,
                })
            }
            s if subspaces.is_some() => Err(Error::param(
                "subspaces",
                format!("applies only to encoding \"pq\", not {:?}", s.name()),
            )),
            s if opq => Err(Error::param(
                "opq",
                format!("applies only to encoding \"pq\", not {:?}", s.name()),
            )),
            s => Ok(s),
        }
    }

    /// Applies an encoding variant (`"mse"` / `"prod"` for TurboQuant; no other encoding has
    /// one). `None` keeps the default.
    pub fn with_variant(self, variant: Option<&str>) -> Result<Self> {
        match (self, variant) {
            (s, None) => Ok(s),
            (EncodingSpec::TurboQuant { bits, .. }, Some(v)) => Ok(EncodingSpec::TurboQuant {
                bits,
                variant: TurboQuantVariant::parse(v)?,
            }),
            (s, Some(_)) => Err(Error::param(
                "variant",
                format!(
                    "applies only to encoding \"turboquant\" (\"mse\" or \"prod\"), not {:?}",
                    s.name()
                ),
            )),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            EncodingSpec::Flat => Flat::NAME,
            EncodingSpec::Sq8 => Sq8::NAME,
            EncodingSpec::RaBitQ { .. } => RaBitQ::NAME,
            EncodingSpec::TurboQuant { .. } => TurboQuant::NAME,
            EncodingSpec::Lvq { .. } => Lvq::NAME,
            EncodingSpec::Pq { .. } => Pq::NAME,
            EncodingSpec::Saq { .. } => Saq::NAME,
        }
    }

    /// Sets SAQ's average bits per dimension (fractional allowed, in (0, 12]).
    pub fn with_saq_bits(self, bits: Option<f32>) -> Result<Self> {
        match (self, bits) {
            (s, None) => Ok(s),
            (EncodingSpec::Saq { .. }, Some(b)) if b.is_finite() && b > 0.0 && b <= 12.0 => {
                Ok(EncodingSpec::Saq { bits: b })
            }
            (EncodingSpec::Saq { .. }, Some(b)) => Err(Error::param(
                "bits",
                format!("saq takes an average of (0, 12] bits per dimension, got {b}"),
            )),
            (s, Some(_)) => Err(Error::param(
                "bits",
                format!(
                    "fractional bits apply only to encoding \"saq\", not {:?}",
                    s.name()
                ),
            )),
        }
    }
}
