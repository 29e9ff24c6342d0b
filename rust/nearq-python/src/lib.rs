//! Python bindings: numpy in and out, the GIL released during work, core errors mapped to the
//! exception classes of `nearq.errors`. No algorithm lives here.

use nearq_core::{self as core, EncodingSpec, Error, Metric};
use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray2, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyType};
use std::path::PathBuf;
use std::time::Instant;

/// (ids, distances) as numpy arrays of shape (n, k).
type Neighbors<'py> = (Bound<'py, PyArray2<i64>>, Bound<'py, PyArray2<f32>>);

/// Maps a core error to the matching class of `nearq.errors`.
fn to_py(py: Python<'_>, e: Error) -> PyErr {
    let class = match &e {
        Error::DimensionMismatch { .. } => "DimensionMismatchError",
        Error::NonFinite { .. }
        | Error::Empty(_)
        | Error::InvalidParameter { .. }
        | Error::InvalidInput(_) => "InvalidInputError",
        Error::Format(_) => "IndexFormatError",
        Error::Io { .. } => "NearqIOError",
    };
    let msg = e.to_string();
    let cls = py
        .import("nearq.errors")
        .and_then(|m| m.getattr(class))
        .and_then(|c| Ok(c.cast_into::<PyType>()?));
    match cls {
        Ok(cls) => {
            if let Error::Io { source, .. } = &e {
                if let Some(code) = source.raw_os_error() {
                    return PyErr::from_type(cls, (code, msg));
                }
            }
            PyErr::from_type(cls, msg)
        }
        Err(_) => PyValueError::new_err(msg),
    }
}

fn slice<'a>(a: &'a PyReadonlyArray2<'_, f32>, what: &str) -> PyResult<&'a [f32]> {
    a.as_slice()
        .map_err(|_| PyValueError::new_err(format!("{what} must be C-contiguous")))
}

fn to_numpy<'py>(
    py: Python<'py>,
    ids: Vec<i64>,
    d: Vec<f32>,
    nq: usize,
    k: usize,
) -> PyResult<Neighbors<'py>> {
    let shape_err = |_| PyValueError::new_err("internal shape error");
    let ids = Array2::from_shape_vec((nq, k), ids).map_err(shape_err)?;
    let d = Array2::from_shape_vec((nq, k), d).map_err(shape_err)?;
    Ok((ids.into_pyarray(py), d.into_pyarray(py)))
}

/// A graph index over encoded vectors (see `nearq.Index` for the documented wrapper).
#[pyclass(module = "nearq._nearq", frozen)]
struct Index {
    inner: core::Index,
}

#[pymethods]
impl Index {
    #[staticmethod]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (data, metric, encoding, bits, keep_vectors, degree, build_ef, alpha, threads, seed, progress, variant=None, subspaces=None, opq=false))]
    fn build(
        py: Python<'_>,
        data: PyReadonlyArray2<'_, f32>,
        metric: &str,
        encoding: &str,
        bits: Option<Vec<u32>>,
        keep_vectors: bool,
        degree: usize,
        build_ef: usize,
        alpha: f32,
        threads: Option<usize>,
        seed: u64,
        progress: bool,
        variant: Option<&str>,
        subspaces: Option<usize>,
        opq: bool,
    ) -> PyResult<Index> {
        let dim = data.shape()[1];
        let x = slice(&data, "vectors")?;
        let params = (|| {
            Ok::<_, Error>(core::IndexParams {
                metric: Metric::parse(metric)?,
                encoding: EncodingSpec::parse(encoding, bits.as_deref())?
                    .with_variant(variant)?
                    .with_pq_options(subspaces, opq)?,
                keep_vectors,
                build: core::BuildParams {
                    degree,
                    build_ef,
                    alpha,
                    seed,
                },
            })
        })()
        .map_err(|e| to_py(py, e))?;
        let start = Instant::now();
        let report = move |done: usize, total: usize| {
            if progress && start.elapsed().as_secs_f32() > 0.3 {
                let pct = 100.0 * done as f64 / total.max(1) as f64;
                let w = 30usize;
                let filled = ((pct / 100.0) * w as f64) as usize;
                eprint!(
                    "\rnearq build [{}{}] {:5.1}% {}/{} {:.1}s",
                    "#".repeat(filled),
                    ".".repeat(w - filled),
                    pct,
                    done.min(total),
                    total,
                    start.elapsed().as_secs_f32()
                );
                if done >= total {
                    eprintln!();
                }
            }
        };
        let r = py.detach(|| core::Index::build(x, dim, &params, threads, &report));
        r.map(|inner| Index { inner }).map_err(|e| to_py(py, e))
    }

    #[pyo3(signature = (queries, k, ef=None, rerank=None, threads=None))]
    fn search<'py>(
        &self,
        py: Python<'py>,
        queries: PyReadonlyArray2<'py, f32>,
        k: usize,
        ef: Option<usize>,
        rerank: Option<usize>,
        threads: Option<usize>,
    ) -> PyResult<Neighbors<'py>> {
        let dim = queries.shape()[1];
        let nq = queries.shape()[0];
        if dim != self.inner.dim() {
            return Err(to_py(
                py,
                Error::DimensionMismatch {
                    expected: self.inner.dim(),
                    got: dim,
                },
            ));
        }
        let q = slice(&queries, "queries")?;
        let p = core::SearchParams { k, ef, rerank };
        let (ids, d) = py
            .detach(|| self.inner.search(q, &p, threads))
            .map_err(|e| to_py(py, e))?;
        to_numpy(py, ids, d, nq, k)
    }

    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| self.inner.save(&path))
            .map_err(|e| to_py(py, e))
    }

    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<Index> {
        py.detach(|| core::Index::load(&path))
            .map(|inner| Index { inner })
            .map_err(|e| to_py(py, e))
    }

    /// The index as bytes in the file format (used for pickling).
    fn to_bytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
        let payload = py.detach(|| self.inner.to_payload());
        Ok(pyo3::types::PyBytes::new(py, &payload))
    }

    #[staticmethod]
    fn from_bytes(py: Python<'_>, data: Vec<u8>) -> PyResult<Index> {
        py.detach(|| core::Index::from_payload(&data))
            .map(|inner| Index { inner })
            .map_err(|e| to_py(py, e))
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }
    #[getter]
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    #[getter]
    fn metric(&self) -> &'static str {
        self.inner.metric().name()
    }
    #[getter]
    fn encoding(&self) -> &'static str {
        self.inner.encoding()
    }
    #[getter]
    fn keep_vectors(&self) -> bool {
        self.inner.keep_vectors()
    }
    #[getter]
    fn degree(&self) -> usize {
        self.inner.graph().degree()
    }
    #[getter]
    fn build_params<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let b = self.inner.build_params();
        let d = PyDict::new(py);
        d.set_item("degree", b.degree)?;
        d.set_item("build_ef", b.build_ef)?;
        d.set_item("alpha", b.alpha)?;
        d.set_item("seed", b.seed)?;
        Ok(d)
    }
    fn memory_usage<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let m = self.inner.memory_usage();
        let d = PyDict::new(py);
        d.set_item("codes", m.codes)?;
        d.set_item("graph", m.graph)?;
        d.set_item("vectors", m.vectors)?;
        d.set_item("params", m.params)?;
        d.set_item("total", m.total())?;
        d.set_item("mmap", 0)?;
        Ok(d)
    }
}

/// The quantized graph (SymphonyQG layout); see `nearq.experimental.QuantizedGraph`.
#[pyclass(module = "nearq._nearq", frozen)]
struct QuantizedGraph {
    inner: core::qg::QgIndex,
}

#[pymethods]
impl QuantizedGraph {
    #[staticmethod]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (data, metric, degree, build_ef, alpha, threads, seed))]
    fn build(
        py: Python<'_>,
        data: PyReadonlyArray2<'_, f32>,
        metric: &str,
        degree: usize,
        build_ef: usize,
        alpha: f32,
        threads: Option<usize>,
        seed: u64,
    ) -> PyResult<QuantizedGraph> {
        let dim = data.shape()[1];
        let x = slice(&data, "vectors")?;
        let metric = Metric::parse(metric).map_err(|e| to_py(py, e))?;
        let build = core::BuildParams {
            degree,
            build_ef,
            alpha,
            seed,
        };
        py.detach(|| core::qg::QgIndex::build(x, dim, metric, build, threads))
            .map(|inner| QuantizedGraph { inner })
            .map_err(|e| to_py(py, e))
    }

    #[pyo3(signature = (queries, k, ef, threads=None))]
    fn search<'py>(
        &self,
        py: Python<'py>,
        queries: PyReadonlyArray2<'py, f32>,
        k: usize,
        ef: usize,
        threads: Option<usize>,
    ) -> PyResult<Neighbors<'py>> {
        let (nq, dim) = (queries.shape()[0], queries.shape()[1]);
        if dim != self.inner.dim() {
            return Err(to_py(
                py,
                Error::DimensionMismatch {
                    expected: self.inner.dim(),
                    got: dim,
                },
            ));
        }
        let q = slice(&queries, "queries")?;
        let (ids, d) = py
            .detach(|| self.inner.search_batch(q, k, ef, threads))
            .map_err(|e| to_py(py, e))?;
        to_numpy(py, ids, d, nq, k)
    }

    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| self.inner.save(&path))
            .map_err(|e| to_py(py, e))
    }

    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<QuantizedGraph> {
        py.detach(|| core::qg::QgIndex::load(&path))
            .map(|inner| QuantizedGraph { inner })
            .map_err(|e| to_py(py, e))
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }
    #[getter]
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    fn memory_usage(&self) -> usize {
        self.inner.memory_bytes()
    }
}

/// Exact k-nearest-neighbour search (brute force).
#[pyfunction]
#[pyo3(signature = (data, queries, k, metric, threads=None))]
fn exact_search<'py>(
    py: Python<'py>,
    data: PyReadonlyArray2<'py, f32>,
    queries: PyReadonlyArray2<'py, f32>,
    k: usize,
    metric: &str,
    threads: Option<usize>,
) -> PyResult<Neighbors<'py>> {
    let metric = Metric::parse(metric).map_err(|e| to_py(py, e))?;
    let dim = data.shape()[1];
    if queries.shape()[1] != dim {
        return Err(to_py(
            py,
            Error::DimensionMismatch {
                expected: dim,
                got: queries.shape()[1],
            },
        ));
    }
    let nq = queries.shape()[0];
    let x = slice(&data, "vectors")?;
    let q = slice(&queries, "queries")?;
    for (what, m) in [("vectors", x), ("queries", q)] {
        core::metric::check_finite(what, m, dim).map_err(|e| to_py(py, e))?;
    }
    let (ids, d) = py.detach(|| {
        core::parallel::with_threads(threads, || core::exact_search(x, q, dim, k, metric))
    });
    to_numpy(py, ids, d, nq, k)
}

/// Sets the default number of worker threads (0: all cores).
#[pyfunction]
fn set_num_threads(n: usize) {
    core::parallel::set_num_threads(n);
}

/// The default number of worker threads.
#[pyfunction]
fn get_num_threads() -> usize {
    core::parallel::num_threads()
}

/// The SIMD level in use and the levels this CPU supports.
#[pyfunction]
fn simd_info(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let k = core::kernels::kernels();
    let d = PyDict::new(py);
    d.set_item("level", k.level.name())?;
    let supported: Vec<&str> = core::kernels::supported_levels()
        .into_iter()
        .map(|l| l.name())
        .collect();
    d.set_item("supported", supported)?;
    d.set_item("forced", std::env::var("NEARQ_SIMD").ok())?;
    Ok(d)
}

#[pymodule]
fn _nearq(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Index>()?;
    m.add_class::<QuantizedGraph>()?;
    m.add_function(wrap_pyfunction!(exact_search, m)?)?;
    m.add_function(wrap_pyfunction!(simd_info, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
