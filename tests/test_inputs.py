"""Input validation: bad input raises the documented exception with a useful message, and
accepted non-canonical arrays (dtype, layout) give exactly the float32 C-contiguous results."""

from __future__ import annotations

import re

import numpy as np
import pytest

import nearq

D = 16


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(99)
    x = rng.standard_normal((300, D)).astype(np.float32)
    q = rng.standard_normal((8, D)).astype(np.float32)
    return x, q


@pytest.fixture(scope="module")
def index(data):
    x, _ = data
    return nearq.Index.build(x, threads=1, seed=0)


def raises(exc, pattern):
    """pytest.raises with a case-insensitive message pattern."""
    return pytest.raises(exc, match=re.compile(pattern, re.IGNORECASE))


def with_value(a, value, where=(0, 0)):
    a = a.copy()
    a[where] = value
    return a


# ---------------------------------------------------------------- build


def test_build_empty(data):
    with raises(nearq.InvalidInputError, r"empty|no vectors|zero|at least"):
        nearq.Index.build(np.empty((0, D), dtype=np.float32))


def test_build_zero_dimensions():
    with raises(nearq.InvalidInputError, r"dim|empty|zero|at least"):
        nearq.Index.build(np.empty((5, 0), dtype=np.float32))


@pytest.mark.parametrize("shape", [(D,), (4, 5, D), ()])
def test_build_wrong_ndim(shape):
    x = np.ones(shape, dtype=np.float32)
    with raises(nearq.InvalidInputError, r"2-?d|two.dim|ndim|dimension|shape"):
        nearq.Index.build(x)


@pytest.mark.parametrize(
    "value, pattern", [(np.nan, r"nan|finite"), (np.inf, r"inf|finite"), (-np.inf, r"inf|finite")]
)
def test_build_non_finite(data, value, pattern):
    x, _ = data
    with raises(nearq.InvalidInputError, pattern):
        nearq.Index.build(with_value(x, value, (123, 7)))


def test_build_float64_overflowing_float32_is_rejected(data):
    # 1e39 is finite in float64 but becomes inf when converted to float32.
    x, _ = data
    with raises(nearq.InvalidInputError, r"inf|finite|overflow|range"):
        nearq.Index.build(with_value(x.astype(np.float64), 1e39, (5, 5)))


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.bool_, np.complex64, object])
def test_build_rejects_non_float_dtypes(data, dtype):
    x, _ = data
    with raises(nearq.InvalidInputError, r"dtype|float|type"):
        nearq.Index.build(x.astype(dtype))


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"metric": "hamming"}, r"metric|hamming"),
        ({"metric": ""}, r"metric"),
        ({"encoding": "pq99"}, r"encoding|pq99"),
        ({"degree": 0}, r"degree"),
        ({"degree": -1}, r"degree"),
        ({"build_ef": 0}, r"build_ef|ef"),
        ({"build_ef": -5}, r"build_ef|ef"),
        ({"alpha": float("nan")}, r"alpha"),
        ({"alpha": -1.0}, r"alpha"),
        ({"seed": -1}, r"seed"),
        ({"encoding": "flat", "bits": 8}, r"bits"),
        ({"encoding": "sq8", "bits": 3}, r"bits"),
        ({"metric": 2}, r"metric"),
    ],
)
def test_build_bad_params(data, kwargs, pattern):
    x, _ = data
    with raises(nearq.InvalidInputError, pattern):
        nearq.Index.build(x, **kwargs)


def test_build_ragged_list():
    with raises(nearq.InvalidInputError, r"array|shape|sequence"):
        nearq.Index.build([[1.0, 2.0], [3.0]])


def test_sq8_default_bits_spelled_out(data):
    x, q = data
    a = nearq.Index.build(x, encoding="sq8", threads=1)
    b = nearq.Index.build(x, encoding="sq8", bits=8, threads=1)
    _same(a.search(q, k=5), b.search(q, k=5))


def test_exact_search_bad_metric(data):
    x, q = data
    with raises(nearq.InvalidInputError, r"metric|hamming"):
        nearq.exact_search(x, q, metric="hamming")


def test_cosine_rejects_zero_vector_or_handles_it(data):
    # Zero vectors have no direction. Either refuse them clearly or return finite distances.
    x, q = data
    x = with_value(x, 0.0, (slice(0, 1), slice(None)))
    try:
        idx = nearq.Index.build(x, metric="cosine", threads=1)
    except nearq.InvalidInputError as e:
        assert re.search(r"zero|norm", str(e), re.IGNORECASE), str(e)
        return
    _, dists = idx.search(q, k=len(x))
    assert not np.isnan(dists).any()


# ---------------------------------------------------------------- search


def test_query_dimension_mismatch(index):
    q = np.ones((2, D + 3), dtype=np.float32)
    with raises(nearq.DimensionMismatchError, rf"\b{D}\b.*\b{D + 3}\b|\b{D + 3}\b.*\b{D}\b"):
        index.search(q)
    with pytest.raises(nearq.InvalidInputError):
        index.search(q)
    with pytest.raises(ValueError):
        index.search(q)
    with pytest.raises(nearq.DimensionMismatchError):
        index.search(np.ones(D - 1, dtype=np.float32))


def test_exact_search_dimension_mismatch(data):
    x, _ = data
    with pytest.raises(nearq.DimensionMismatchError):
        nearq.exact_search(x, np.ones((2, D + 1), dtype=np.float32))


@pytest.mark.parametrize("value, pattern", [(np.nan, r"nan|finite"), (np.inf, r"inf|finite")])
def test_query_non_finite(index, data, value, pattern):
    _, q = data
    with raises(nearq.InvalidInputError, pattern):
        index.search(with_value(q, value, (3, 2)))
    with raises(nearq.InvalidInputError, pattern):
        nearq.exact_search(data[0], with_value(q, value, (3, 2)))


def test_query_empty(index):
    with raises(nearq.InvalidInputError, r"empty|no quer|zero|at least"):
        index.search(np.empty((0, D), dtype=np.float32))


def test_query_3d(index):
    with raises(nearq.InvalidInputError, r"2-?d|1-?d|ndim|dimension|shape"):
        index.search(np.ones((2, 2, D), dtype=np.float32))


@pytest.mark.parametrize("k", [0, -1])
def test_bad_k(index, data, k):
    _, q = data
    with raises(nearq.InvalidInputError, r"\bk\b"):
        index.search(q, k=k)
    with raises(nearq.InvalidInputError, r"\bk\b"):
        nearq.exact_search(data[0], q, k=k)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"ef": 0}, r"\bef\b"),
        ({"ef": -3}, r"\bef\b"),
        ({"k": 2**40}, r"\bk\b"),
        ({"k": True}, r"\bk\b"),
        ({"k": 2.5}, r"\bk\b"),
    ],
)
def test_bad_search_params(index, data, kwargs, pattern):
    _, q = data
    with raises(nearq.InvalidInputError, pattern):
        index.search(q, **kwargs)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.complex128, object])
def test_query_non_float_dtype(index, data, dtype):
    _, q = data
    with raises(nearq.InvalidInputError, r"dtype|float|type"):
        index.search(q.astype(dtype))


def test_index_loses_nothing_after_errors(data):
    x, q = data
    idx = nearq.Index.build(x, threads=1, seed=0)
    before = idx.search(q, k=10)
    bad_calls = [
        lambda: idx.search(np.ones((2, D + 1), np.float32)),
        lambda: idx.search(with_value(q, np.nan)),
        lambda: idx.search(q, k=0),
        lambda: idx.search(q, k=-1),
        lambda: idx.search(q.astype(np.int32)),
        lambda: idx.search(np.empty((0, D), np.float32)),
        lambda: idx.search(np.ones((2, 2, D), np.float32)),
    ]
    for call in bad_calls:
        with pytest.raises(nearq.InvalidInputError):
            call()
    after = idx.search(q, k=10)
    assert len(idx) == len(x) and idx.dim == D
    np.testing.assert_array_equal(before.ids, after.ids)
    np.testing.assert_array_equal(before.distances, after.distances)


# ---------------------------------------------------------------- accepted conversions


def _same(a, b):
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.distances, b.distances)


def _build(x, metric="l2"):
    return nearq.Index.build(x, metric=metric, threads=1, seed=0)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_float64_inputs_equal_float32_copy(data, metric):
    x, q = data
    x64, q64 = x.astype(np.float64), q.astype(np.float64)  # exactly representable in float32
    ref = _build(x, metric)
    _same(_build(x64, metric).search(q, k=10), ref.search(q, k=10))
    _same(ref.search(q64, k=10), ref.search(q, k=10))
    _same(nearq.exact_search(x64, q64, metric=metric), nearq.exact_search(x, q, metric=metric))


def test_float16_inputs_equal_float32_copy(data):
    x, q = data
    x16, q16 = x.astype(np.float16), q.astype(np.float16)
    x32, q32 = x16.astype(np.float32), q16.astype(np.float32)
    ref = _build(x32)
    _same(_build(x16).search(q32, k=10), ref.search(q32, k=10))
    _same(ref.search(q16, k=10), ref.search(q32, k=10))


def test_non_contiguous_inputs_equal_contiguous_copy(data):
    x, q = data
    wide_x = np.repeat(x, 2, axis=1)  # [n, 2D]
    wide_q = np.repeat(q, 2, axis=1)
    strided_x, strided_q = wide_x[:, ::2], wide_q[:, ::2]
    assert not strided_x.flags.c_contiguous
    ref = _build(np.ascontiguousarray(strided_x))
    _same(_build(strided_x).search(q, k=10), ref.search(q, k=10))
    _same(ref.search(strided_q, k=10), ref.search(np.ascontiguousarray(strided_q), k=10))
    # a strided 1-D query
    _same(ref.search(wide_q[0, ::2], k=10), ref.search(q[0], k=10))


def test_fortran_order_inputs_equal_c_order(data):
    x, q = data
    fx, fq = np.asfortranarray(x), np.asfortranarray(q)
    assert not fx.flags.c_contiguous
    ref = _build(x)
    _same(_build(fx).search(q, k=10), ref.search(q, k=10))
    _same(ref.search(fq, k=10), ref.search(q, k=10))
    _same(nearq.exact_search(fx, fq), nearq.exact_search(x, q))


def test_reversed_rows_view(data):
    x, q = data
    ref = nearq.exact_search(np.ascontiguousarray(x[::-1]), q)
    _same(nearq.exact_search(x[::-1], q), ref)


def test_big_endian_float32_accepted_or_rejected_cleanly(data):
    x, q = data
    xb = x.astype(">f4")
    try:
        res = nearq.exact_search(xb, q)
    except nearq.InvalidInputError:
        return
    _same(res, nearq.exact_search(x, q))
