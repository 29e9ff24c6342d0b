//! Helpers shared by the quantized-graph examples (`qg_bench`, `qg_ab`, `qg_path`).
#![allow(dead_code)] // each example uses some of them

use nearq_core::{BuildParams, EncodingSpec, Index, IndexParams, Metric};
use std::path::Path;

/// A raw little-endian f32 file.
pub fn read_f32(path: &str) -> Vec<f32> {
    let bytes = std::fs::read(path).expect("read vectors");
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// A raw little-endian i32 file (e.g. ground-truth ids), widened to i64.
pub fn read_i32(path: &str) -> Vec<i64> {
    let bytes = std::fs::read(path).expect("read ids");
    bytes
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
        .collect()
}

/// The index saved at `path`, or one built over `data` with `params` (all cores) and saved
/// there first.
pub fn cached_index(path: &Path, data: &[f32], dim: usize, params: &IndexParams) -> Index {
    if path.exists() {
        return Index::load(path).unwrap();
    }
    let index = Index::build(data, dim, params, None, &|_, _| {}).unwrap();
    index.save(path).unwrap();
    index
}

/// A float (flat) cosine index's parameters with the given graph build: the float graph the
/// quantized rows are built from.
pub fn flat_cosine(build: BuildParams) -> IndexParams {
    IndexParams {
        metric: Metric::Cosine,
        encoding: EncodingSpec::Flat,
        build,
        ..Default::default()
    }
}
