"""The public surface: result types and shapes, index attributes, distance definitions."""

from __future__ import annotations

import importlib.metadata
import re

import numpy as np
import pytest

import nearq
from conftest import ENCODINGS, METRICS, pair_distances


def test_version_is_a_string_matching_the_distribution():
    assert isinstance(nearq.__version__, str)
    assert re.match(r"^\d+\.\d+\.\d+", nearq.__version__), nearq.__version__
    try:
        dist_version = importlib.metadata.version("nearq")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("nearq is importable but not installed as a distribution")
    assert nearq.__version__ == dist_version


def test_exception_hierarchy():
    assert issubclass(nearq.NearqError, Exception)
    assert issubclass(nearq.InvalidInputError, nearq.NearqError)
    assert issubclass(nearq.InvalidInputError, ValueError)
    assert issubclass(nearq.DimensionMismatchError, nearq.InvalidInputError)
    assert issubclass(nearq.IndexFormatError, nearq.NearqError)
    assert issubclass(nearq.IndexFormatError, ValueError)
    assert issubclass(nearq.NearqIOError, nearq.NearqError)
    assert issubclass(nearq.NearqIOError, OSError)


def test_simd_info():
    info = nearq.simd_info()
    assert isinstance(info, dict)
    assert info["level"] in {"scalar", "avx2", "avx512", "neon"}
    supported = list(info["supported"])
    assert "scalar" in supported
    assert info["level"] in supported


# ---------------------------------------------------------------- result object


def test_result_shapes_dtypes_and_unpacking(small_index, small_data):
    _, q = small_data
    res = small_index.search(q, k=7)
    assert res.ids.shape == (len(q), 7)
    assert res.distances.shape == (len(q), 7)
    assert res.ids.dtype == np.int64
    assert res.distances.dtype == np.float32
    ids, dists = res
    np.testing.assert_array_equal(ids, res.ids)
    np.testing.assert_array_equal(dists, res.distances)


def test_one_dimensional_query_gives_one_row(small_index, small_data):
    _, q = small_data
    res = small_index.search(q[3], k=5)
    assert res.ids.shape == (1, 5)
    assert res.distances.shape == (1, 5)
    batch = small_index.search(q[3:4], k=5)
    np.testing.assert_array_equal(res.ids, batch.ids)
    np.testing.assert_array_equal(res.distances, batch.distances)


def test_rows_sorted_nearest_first_with_distinct_valid_ids(small_index, small_data):
    x, q = small_data
    ids, dists = small_index.search(q, k=20)
    assert np.all(np.diff(dists, axis=1) >= 0), "rows must be sorted nearest first"
    assert np.all((ids >= 0) & (ids < len(x)))
    for row in ids:
        assert len(set(row.tolist())) == len(row), "an id appears twice in one row"


def test_k_larger_than_index_pads_with_minus_one_and_inf():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((20, 8)).astype(np.float32)
    q = rng.standard_normal((4, 8)).astype(np.float32)
    idx = nearq.Index.build(x, threads=1)
    ids, dists = idx.search(q, k=30)
    assert ids.shape == (4, 30)
    for row_ids, row_d in zip(ids, dists):
        assert sorted(row_ids[:20].tolist()) == list(range(20))
        assert np.all(row_ids[20:] == -1)
        assert np.all(np.isfinite(row_d[:20]))
        assert np.all(np.isposinf(row_d[20:]))
    # brute force pads the same way
    eids, edists = nearq.exact_search(x, q, k=30)
    assert np.all(eids[:, 20:] == -1) and np.all(np.isposinf(edists[:, 20:]))


def test_ef_smaller_than_k_still_returns_k_results(small_index, small_data):
    _, q = small_data
    ids, dists = small_index.search(q, k=20, ef=5)
    assert ids.shape == (len(q), 20)
    assert np.all(ids >= 0) and np.all(np.isfinite(dists))


def test_progress_flag_builds_the_same_index(small_data, capsys):
    x, q = small_data
    a = nearq.Index.build(x, threads=1, seed=0, progress=True)
    b = nearq.Index.build(x, threads=1, seed=0)
    np.testing.assert_array_equal(a.search(q).ids, b.search(q).ids)
    assert capsys.readouterr().out == "", "progress must not write to stdout"


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_every_vector_is_reachable_with_default_parameters(metric, encoding):
    # ef = k = len(index) must return every id: a node without in-edges can never be found,
    # whatever ef is. Varied norms are the hard case for "ip" (small vectors lose their edges).
    rng = np.random.default_rng(17)
    x = rng.standard_normal((3000, 32)) * rng.uniform(0.2, 3.0, (3000, 1))
    idx = nearq.Index.build(x.astype(np.float32), metric=metric, encoding=encoding)
    ids, _ = idx.search(x[:4], k=len(x), ef=len(x))
    for row in ids:
        missing = len(x) - int((row >= 0).sum())
        assert missing == 0, f"{missing} of {len(x)} vectors unreachable from the entry point"


def test_single_vector_index():
    x = np.ones((1, 4), dtype=np.float32)
    idx = nearq.Index.build(x)
    ids, dists = idx.search(np.zeros(4, dtype=np.float32), k=3)
    assert ids.tolist() == [[0, -1, -1]]
    assert dists[0, 0] == pytest.approx(4.0)


# ---------------------------------------------------------------- attributes


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_attributes(small_data, metric, encoding):
    x, _ = small_data
    idx = nearq.Index.build(x, metric=metric, encoding=encoding, threads=1)
    assert len(idx) == len(x)
    assert idx.dim == x.shape[1]
    assert idx.metric == metric
    assert idx.encoding == encoding
    mem = idx.memory_usage()
    assert isinstance(mem, int) and mem > 0


def test_memory_usage_reflects_encoding(small_data):
    x, _ = small_data
    n, d = x.shape
    flat = nearq.Index.build(x, encoding="flat", keep_vectors=False, threads=1)
    sq8 = nearq.Index.build(x, encoding="sq8", keep_vectors=False, threads=1)
    sq8_kept = nearq.Index.build(x, encoding="sq8", keep_vectors=True, threads=1)
    assert flat.memory_usage() >= n * d * 4, "flat must hold the float32 vectors"
    assert sq8.memory_usage() >= n * d, "sq8 must hold one byte per component"
    assert flat.memory_usage() > sq8.memory_usage()
    assert sq8_kept.memory_usage() >= sq8.memory_usage() + n * d * 4 * 0.9, (
        "keep_vectors=True must account for the kept float32 vectors"
    )


# ---------------------------------------------------------------- distance definitions


@pytest.mark.parametrize("metric", METRICS)
def test_flat_distances_match_metric_definition(small_data, metric):
    x, q = small_data
    idx = nearq.Index.build(x, metric=metric, encoding="flat", threads=1)
    ids, dists = idx.search(q, k=10)
    expected = pair_distances(metric, q, x, ids)
    np.testing.assert_allclose(dists, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("metric", METRICS)
def test_exact_search_distances_match_metric_definition(small_data, metric):
    x, q = small_data
    res = nearq.exact_search(x, q, k=10, metric=metric)
    assert res.ids.dtype == np.int64 and res.distances.dtype == np.float32
    assert res.ids.shape == (len(q), 10)
    expected = pair_distances(metric, q, x, res.ids)
    np.testing.assert_allclose(res.distances, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("metric", METRICS)
def test_sq8_with_kept_vectors_reranks_with_exact_distances(small_data, metric):
    x, q = small_data
    idx = nearq.Index.build(x, metric=metric, encoding="sq8", keep_vectors=True, threads=1)
    ids, dists = idx.search(q, k=10)
    np.testing.assert_allclose(dists, pair_distances(metric, q, x, ids), rtol=1e-4, atol=1e-4)
    assert np.all(np.diff(dists, axis=1) >= 0)


@pytest.mark.parametrize("metric", METRICS)
def test_sq8_distances_approximate_metric_definition(small_data, metric):
    # sq8 distances may be estimates from the codes; they must still be close to the truth.
    x, q = small_data
    idx = nearq.Index.build(x, metric=metric, encoding="sq8", keep_vectors=False, threads=1)
    ids, dists = idx.search(q, k=10)
    expected = pair_distances(metric, q, x, ids)
    scale = np.abs(pair_distances(metric, q, x, np.zeros_like(ids))).mean() + 1.0
    assert np.max(np.abs(dists - expected)) < 0.05 * scale


def test_cosine_distance_ignores_vector_norm():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((50, 16)).astype(np.float32)
    q = rng.standard_normal((5, 16)).astype(np.float32)
    scaled = x * rng.uniform(0.1, 10.0, size=(50, 1)).astype(np.float32)
    a = nearq.exact_search(x, q, k=5, metric="cosine")
    b = nearq.exact_search(scaled, q * 3.0, k=5, metric="cosine")
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.distances, b.distances, rtol=1e-4, atol=1e-5)


def test_ip_distance_is_negative_inner_product():
    x = np.array([[1, 0], [0, 2], [3, 3]], dtype=np.float32)
    q = np.array([[1, 1]], dtype=np.float32)
    ids, dists = nearq.exact_search(x, q, k=3, metric="ip")
    assert ids.tolist() == [[2, 1, 0]]
    np.testing.assert_allclose(dists, [[-6.0, -2.0, -1.0]])


def test_l2_distance_is_squared():
    x = np.array([[0, 0], [3, 4]], dtype=np.float32)
    ids, dists = nearq.exact_search(x, np.zeros((1, 2), np.float32), k=2, metric="l2")
    assert ids.tolist() == [[0, 1]]
    np.testing.assert_allclose(dists, [[0.0, 25.0]])


def test_search_does_not_modify_inputs():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((200, 12)).astype(np.float32)
    q = rng.standard_normal((6, 12)).astype(np.float32)
    x0, q0 = x.copy(), q.copy()
    idx = nearq.Index.build(x, metric="cosine", threads=1)
    idx.search(q, k=5)
    nearq.exact_search(x, q, k=5, metric="cosine")
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(q, q0)


def test_search_on_the_indexed_vectors_finds_themselves(small_index, small_data):
    x, _ = small_data
    ids, dists = small_index.search(x[:50], k=1, ef=64)
    assert (ids[:, 0] == np.arange(50)).mean() >= 0.98
    assert np.all(dists[:, 0][ids[:, 0] == np.arange(50)] < 1e-3)


def test_demo_runs_and_reports_recall():
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "nearq", "demo"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout.lower()
    assert "recall" in out, proc.stdout
    assert "qps" in out, proc.stdout
