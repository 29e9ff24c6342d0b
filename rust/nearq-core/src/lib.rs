//! nearq-core: approximate nearest-neighbour search over compressed vectors.
//!
//! The crate has no Python in it. Its layers, each knowing only the one below:
//! - [`nearq_kernels`]: SIMD distance kernels dispatched once per process;
//! - [`encoding`]: vector encodings behind the [`encoding::Encoding`] trait;
//! - [`graph`]: a Vamana-style proximity graph, its deterministic parallel build and beam
//!   search (see the module docs for why this design);
//! - [`index`]: codes + graph + optional re-ranking vectors, and the file format in [`io`].
//!
//! ```
//! use nearq_core::{Index, IndexParams, SearchParams, Metric};
//! let dim = 8;
//! let data: Vec<f32> = (0..200 * dim).map(|i| (i as f32 * 0.37).sin()).collect();
//! let params = IndexParams { metric: Metric::L2, ..Default::default() };
//! let index = Index::build(&data, dim, &params, Some(1), &|_, _| {}).unwrap();
//! let (ids, dists) = index.search(&data[..dim], &SearchParams::new(3), None).unwrap();
//! assert_eq!(ids[0], 0);
//! assert_eq!(dists[0], 0.0);
//! ```

pub mod encoding;
pub mod error;
pub mod exact;
pub mod graph;
pub mod index;
pub mod io;
pub mod metric;
pub mod nbrows;
pub mod parallel;
pub mod qg;
pub mod storage;
mod update;

pub use encoding::EncodingSpec;
pub use error::{Error, Result};
pub use exact::exact_search;
pub use graph::BuildParams;
pub use index::{Allowed, Filter, FilterStrategy, Index, IndexParams, MemoryUsage, SearchParams};
pub use metric::Metric;
pub use nearq_kernels as kernels;
