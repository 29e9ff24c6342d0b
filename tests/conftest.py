"""Shared fixtures: small synthetic data, a slice of the real dataset, exact ground truth.

The real data is the ann-benchmarks file described in ``shared/data/README.md``.  Tests use a
slice (the first ``N_TRAIN`` train vectors and ``N_QUERIES`` queries) and recompute the exact
neighbours of that slice in float64, because the stored neighbours refer to the whole file.

Index builds are the expensive part of the suite, so every built index is cached for the whole
session (``real_index``); tests must treat these indexes as read-only.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest

import nearq

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "pypi-minilm-384-angular-50k.hdf5"

N_TRAIN = 5000
N_QUERIES = 200
K = 10

METRICS = ("l2", "ip", "cosine")
ENCODINGS = ("flat", "sq8")


def data_path() -> pathlib.Path:
    return pathlib.Path(os.environ.get("NEARQ_DATA", str(DEFAULT_DATA)))


# ---------------------------------------------------------------- exact references (float64)


def metric_distances(metric: str, queries: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Distances by the documented definitions, in float64: [n_queries, n_vectors]."""
    q = np.asarray(queries, dtype=np.float64)
    x = np.asarray(vectors, dtype=np.float64)
    if metric == "l2":
        d = (q * q).sum(1)[:, None] - 2.0 * (q @ x.T) + (x * x).sum(1)[None, :]
        return np.maximum(d, 0.0)
    if metric == "ip":
        return -(q @ x.T)
    if metric == "cosine":
        qn = q / np.linalg.norm(q, axis=1, keepdims=True)
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        return 1.0 - qn @ xn.T
    raise ValueError(metric)


def exact_knn(metric: str, queries: np.ndarray, vectors: np.ndarray, k: int = K):
    """(ids, distances) of the k nearest, nearest first, ties broken by lower id."""
    d = metric_distances(metric, queries, vectors)
    ids = np.argsort(d, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(d, ids, axis=1)


def pair_distances(metric: str, queries: np.ndarray, vectors: np.ndarray, ids: np.ndarray):
    """float64 distance between query i and vectors[ids[i, j]] (ids must be valid)."""
    q = np.asarray(queries, dtype=np.float64)
    x = np.asarray(vectors, dtype=np.float64)[ids]  # [n, k, d]
    if metric == "l2":
        return ((x - q[:, None, :]) ** 2).sum(-1)
    if metric == "ip":
        return -np.einsum("nkd,nd->nk", x, q)
    if metric == "cosine":
        qn = q / np.linalg.norm(q, axis=1, keepdims=True)
        xn = x / np.linalg.norm(x, axis=2, keepdims=True)
        return 1.0 - np.einsum("nkd,nd->nk", xn, qn)
    raise ValueError(metric)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the true k neighbours that were found (recall@k)."""
    k = truth.shape[1]
    hits = sum(len(set(f[:k].tolist()) & set(t.tolist())) for f, t in zip(found, truth))
    return hits / (k * len(truth))


def assert_same_neighbours(metric, queries, vectors, ids_a, ids_b, rtol=1e-5, atol=1e-5):
    """ids_a and ids_b agree, except where tied distances make either choice correct."""
    if np.array_equal(ids_a, ids_b):
        return
    da = pair_distances(metric, queries, vectors, ids_a)
    db = pair_distances(metric, queries, vectors, ids_b)
    np.testing.assert_allclose(da, db, rtol=rtol, atol=atol, err_msg="ids differ beyond ties")


# ---------------------------------------------------------------- synthetic data


@pytest.fixture(scope="session")
def small_data():
    """Gaussian vectors [600, 32] and queries [25, 32], float32 C-contiguous, no ties."""
    rng = np.random.default_rng(12345)
    x = rng.standard_normal((600, 32)).astype(np.float32)
    q = rng.standard_normal((25, 32)).astype(np.float32)
    return x, q


@pytest.fixture(scope="session")
def small_index(small_data):
    """A flat l2 index over small_data; read-only for tests."""
    x, _ = small_data
    return nearq.Index.build(x, metric="l2", threads=1, seed=0)


# ---------------------------------------------------------------- real data slice


@pytest.fixture(scope="session")
def real_data():
    """(train[:N_TRAIN], test[:N_QUERIES]) as float32, or skip when the file is missing."""
    path = data_path()
    if not path.is_file():
        pytest.skip(f"real dataset not found at {path} (set NEARQ_DATA to its path)")
    h5py = pytest.importorskip("h5py", reason="h5py is needed to read the real dataset")
    with h5py.File(path, "r") as f:
        train = np.ascontiguousarray(f["train"][:N_TRAIN], dtype=np.float32)
        test = np.ascontiguousarray(f["test"][:N_QUERIES], dtype=np.float32)
    return train, test


@pytest.fixture(scope="session")
def real_truth(real_data):
    """metric -> exact (ids, distances) for the real slice, computed in float64."""
    train, test = real_data
    return {m: exact_knn(m, test, train, K) for m in METRICS}


_INDEX_CACHE: dict = {}


@pytest.fixture(scope="session")
def real_index(real_data):
    """Factory ``real_index(metric, encoding)``: cached builds over the real slice."""
    train, _ = real_data

    def get(metric: str = "cosine", encoding: str = "flat"):
        key = (metric, encoding)
        if key not in _INDEX_CACHE:
            _INDEX_CACHE[key] = nearq.Index.build(train, metric=metric, encoding=encoding, seed=0)
        return _INDEX_CACHE[key]

    return get
