//! Python bindings: numpy in and out, the GIL released during work, core errors mapped to the
//! exception classes of `nearq.errors`. No algorithm lives here.

use nearq_core::{self as core, EncodingSpec, Error, Metric};
use numpy::ndarray::Array2;
use numpy::{
    IntoPyArray, PyArray1, PyArray2, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyType};
use std::path::PathBuf;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
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
///
/// The core index sits behind a readers-writer lock: searches (and saves) from any number of
/// Python threads run together with the GIL released; `add`/`delete`/`upsert` wait for the
/// running searches and hold off new ones while they change the index, so every search sees
/// the index either before or after a whole change.
#[pyclass(module = "nearq._nearq", frozen)]
struct Index {
    inner: RwLock<core::Index>,
}

impl Index {
    fn new(inner: core::Index) -> Self {
        Index {
            inner: RwLock::new(inner),
        }
    }
    fn read(&self) -> RwLockReadGuard<'_, core::Index> {
        // A panic while writing is a bug; the index is still structurally valid, so keep going.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }
    fn write(&self) -> RwLockWriteGuard<'_, core::Index> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Queries of shape (dim,) or (n, dim) as `(n, dim, rows)`: borrowed when C-contiguous, else
/// copied once into row order (`as_slice` also accepts Fortran order, whose memory order is
/// not the rows').
fn query_rows<'a>(
    py: Python<'_>,
    queries: &'a numpy::PyReadonlyArrayDyn<'_, f32>,
) -> PyResult<(usize, usize, std::borrow::Cow<'a, [f32]>)> {
    let (nq, dim) = match *queries.shape() {
        [d] => (1, d),
        [n, d] => (n, d),
        _ => {
            return Err(to_py(
                py,
                Error::InvalidInput("queries must have shape (dim,) or (n, dim)".into()),
            ))
        }
    };
    let rows = match queries.as_slice() {
        Ok(q) if queries.is_c_contiguous() => std::borrow::Cow::Borrowed(q),
        _ => std::borrow::Cow::Owned(queries.as_array().iter().copied().collect()),
    };
    Ok((nq, dim, rows))
}

fn ids_slice<'a>(a: &'a PyReadonlyArray1<'_, i64>) -> PyResult<&'a [i64]> {
    a.as_slice()
        .map_err(|_| PyValueError::new_err("ids must be C-contiguous"))
}

#[pymethods]
impl Index {
    #[staticmethod]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (data, metric, encoding, bits, keep_vectors, degree, build_ef, alpha, threads, seed, progress, variant=None, subspaces=None, opq=false, ids=None, saq_bits=None, quantized_graph=None))]
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
        ids: Option<PyReadonlyArray1<'_, i64>>,
        saq_bits: Option<f32>,
        quantized_graph: Option<bool>,
    ) -> PyResult<Index> {
        let dim = data.shape()[1];
        let x = slice(&data, "vectors")?;
        let ids = match &ids {
            Some(a) => Some(ids_slice(a)?),
            None => None,
        };
        let params = (|| {
            Ok::<_, Error>(core::IndexParams {
                metric: Metric::parse(metric)?,
                encoding: EncodingSpec::parse(encoding, bits.as_deref())?
                    .with_variant(variant)?
                    .with_pq_options(subspaces, opq)?
                    .with_saq_bits(saq_bits)?,
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
        if let Some(ids) = ids {
            if ids.len() != data.shape()[0] {
                return Err(to_py(
                    py,
                    Error::InvalidInput(format!(
                        "ids: got {} ids for {} vectors",
                        ids.len(),
                        data.shape()[0]
                    )),
                ));
            }
        }
        let start = Instant::now();
        let enc_name = encoding.to_string();
        let report = move |stage: &str, done: usize, total: usize| {
            // Updates only once a stage takes a moment; every stage's final line always.
            if progress && (start.elapsed().as_secs_f32() > 0.3 || done >= total) {
                let pct = 100.0 * done as f64 / total.max(1) as f64;
                let w = 30usize;
                let filled = ((pct / 100.0) * w as f64) as usize;
                let what = if stage == core::index::STAGE_TRAIN {
                    format!("training {enc_name}")
                } else {
                    "building graph".to_string()
                };
                eprint!(
                    "\rnearq {what:<16} [{}{}] {:5.1}% {}/{} {:.1}s",
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
        let r = py.detach(|| {
            let mut index = core::Index::build_reporting(x, dim, &params, threads, &report)?;
            // None keeps the encoding's default (on for RaBitQ, off for PQ).
            if let Some(on) = quantized_graph {
                if on != index.quantized_graph_enabled() {
                    index.set_quantized_graph(on, threads);
                }
            }
            match ids {
                Some(ids) => index.with_ids(ids),
                None => Ok(index),
            }
        });
        r.map(Index::new).map_err(|e| to_py(py, e))
    }

    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (queries, k, ef=None, rerank=None, threads=None, filter_ids=None, filter_mask=None, filter_strategy=None))]
    fn search<'py>(
        &self,
        py: Python<'py>,
        queries: numpy::PyReadonlyArrayDyn<'py, f32>,
        k: usize,
        ef: Option<usize>,
        rerank: Option<usize>,
        threads: Option<usize>,
        filter_ids: Option<PyReadonlyArray1<'py, i64>>,
        filter_mask: Option<PyReadonlyArray1<'py, bool>>,
        filter_strategy: Option<&str>,
    ) -> PyResult<Neighbors<'py>> {
        let (nq, dim, q) = query_rows(py, &queries)?;
        let strategy = match filter_strategy.unwrap_or("auto") {
            "auto" => core::FilterStrategy::Auto,
            "graph" => core::FilterStrategy::Graph,
            "scan" => core::FilterStrategy::Scan,
            other => {
                return Err(to_py(
                    py,
                    Error::param(
                        "filter_strategy",
                        format!("must be \"auto\", \"graph\" or \"scan\", got {other:?}"),
                    ),
                ))
            }
        };
        let allowed = match (&filter_ids, &filter_mask) {
            (Some(a), None) => Some(core::Allowed::Ids(ids_slice(a)?)),
            (None, Some(m)) => {
                Some(core::Allowed::Mask(m.as_slice().map_err(|_| {
                    PyValueError::new_err("filter mask must be C-contiguous")
                })?))
            }
            (None, None) => None,
            (Some(_), Some(_)) => {
                return Err(PyValueError::new_err("pass filter ids or a mask, not both"))
            }
        };
        let filter = allowed.map(|allowed| core::Filter { allowed, strategy });
        let p = core::SearchParams { k, ef, rerank };
        let (ids, d) = py
            .detach(|| {
                let index = self.read();
                if dim != index.dim() {
                    return Err(Error::DimensionMismatch {
                        expected: index.dim(),
                        got: dim,
                    });
                }
                index.search_with(&q, &p, filter.as_ref(), threads)
            })
            .map_err(|e| to_py(py, e))?;
        to_numpy(py, ids, d, nq, k)
    }

    #[pyo3(signature = (data, ids=None, threads=None))]
    fn add<'py>(
        &self,
        py: Python<'py>,
        data: PyReadonlyArray2<'py, f32>,
        ids: Option<PyReadonlyArray1<'py, i64>>,
        threads: Option<usize>,
    ) -> PyResult<Bound<'py, PyArray1<i64>>> {
        let dim = data.shape()[1];
        let x = slice(&data, "vectors")?;
        let ids = match &ids {
            Some(a) => Some(ids_slice(a)?),
            None => None,
        };
        let out = py
            .detach(|| self.write().add(x, dim, ids, threads))
            .map_err(|e| to_py(py, e))?;
        Ok(out.into_pyarray(py))
    }

    #[pyo3(signature = (ids, threads=None))]
    fn delete(
        &self,
        py: Python<'_>,
        ids: PyReadonlyArray1<'_, i64>,
        threads: Option<usize>,
    ) -> PyResult<usize> {
        let ids = ids_slice(&ids)?;
        Ok(py.detach(|| self.write().delete(ids, threads)))
    }

    #[pyo3(signature = (data, ids, threads=None))]
    fn upsert(
        &self,
        py: Python<'_>,
        data: PyReadonlyArray2<'_, f32>,
        ids: PyReadonlyArray1<'_, i64>,
        threads: Option<usize>,
    ) -> PyResult<()> {
        let dim = data.shape()[1];
        let x = slice(&data, "vectors")?;
        let ids = ids_slice(&ids)?;
        py.detach(|| self.write().upsert(x, dim, ids, threads))
            .map_err(|e| to_py(py, e))
    }

    #[pyo3(signature = (threads=None))]
    fn consolidate(&self, py: Python<'_>, threads: Option<usize>) {
        py.detach(|| self.write().consolidate(threads))
    }

    fn ids<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
        py.detach(|| self.read().ids()).into_pyarray(py)
    }

    fn contains(&self, id: i64) -> bool {
        self.read().contains(id)
    }

    #[getter]
    fn bit_allocation(&self) -> Option<Vec<(usize, u32)>> {
        self.read().bit_allocation()
    }

    #[getter]
    fn deleted_count(&self) -> usize {
        self.read().deleted_count()
    }

    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| self.read().save(&path))
            .map_err(|e| to_py(py, e))
    }

    #[staticmethod]
    /// `mmap`: 0 reads the file, 1 maps codes and vectors, 2 maps the vectors only.
    #[pyo3(signature = (path, mmap=0))]
    fn load(py: Python<'_>, path: PathBuf, mmap: u8) -> PyResult<Index> {
        py.detach(|| match mmap {
            0 => core::Index::load(&path),
            1 => core::Index::load_mapped(&path, true),
            _ => core::Index::load_mapped(&path, false),
        })
        .map(Index::new)
        .map_err(|e| to_py(py, e))
    }

    /// The index as bytes in the file format (used for pickling).
    fn to_bytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
        let bytes = py.detach(|| self.read().to_bytes());
        Ok(pyo3::types::PyBytes::new(py, &bytes))
    }

    #[staticmethod]
    fn from_bytes(py: Python<'_>, data: Vec<u8>) -> PyResult<Index> {
        py.detach(|| core::Index::from_bytes(data))
            .map(Index::new)
            .map_err(|e| to_py(py, e))
    }

    fn __len__(&self) -> usize {
        self.read().len()
    }
    #[getter]
    fn dim(&self) -> usize {
        self.read().dim()
    }
    #[getter]
    fn metric(&self) -> &'static str {
        self.read().metric().name()
    }
    #[getter]
    fn encoding(&self) -> &'static str {
        self.read().encoding()
    }
    #[getter]
    fn keep_vectors(&self) -> bool {
        self.read().keep_vectors()
    }
    #[getter]
    fn quantized_graph(&self) -> bool {
        self.read().has_quantized_graph()
    }
    #[getter]
    fn degree(&self) -> usize {
        self.read().graph().degree()
    }
    #[getter]
    fn build_params<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let b = self.read().build_params();
        let d = PyDict::new(py);
        d.set_item("degree", b.degree)?;
        d.set_item("build_ef", b.build_ef)?;
        d.set_item("alpha", b.alpha)?;
        d.set_item("seed", b.seed)?;
        Ok(d)
    }
    fn memory_usage<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let m = self.read().memory_usage();
        let d = PyDict::new(py);
        d.set_item("codes", m.codes)?;
        d.set_item("graph", m.graph)?;
        d.set_item("vectors", m.vectors)?;
        d.set_item("params", m.params)?;
        d.set_item("ids", m.ids)?;
        d.set_item("quantized_graph", m.quantized_graph)?;
        d.set_item("neighbor_codes", m.neighbor_codes)?;
        d.set_item("total", m.total())?;
        d.set_item("mmap", m.mapped)?;
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

    /// `queries` of shape (dim,) or (n, dim), any layout (copied unless C-contiguous).
    #[pyo3(signature = (queries, k, ef, threads=None))]
    fn search<'py>(
        &self,
        py: Python<'py>,
        queries: numpy::PyReadonlyArrayDyn<'py, f32>,
        k: usize,
        ef: usize,
        threads: Option<usize>,
    ) -> PyResult<Neighbors<'py>> {
        let (nq, dim, q) = query_rows(py, &queries)?;
        if dim != self.inner.dim() {
            return Err(to_py(
                py,
                Error::DimensionMismatch {
                    expected: self.inner.dim(),
                    got: dim,
                },
            ));
        }
        if nq == 0 {
            return Err(to_py(
                py,
                Error::InvalidInput("queries is empty (0 rows)".into()),
            ));
        }
        let (ids, d) = py
            .detach(|| self.inner.search_batch(&q, k, ef, threads))
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
