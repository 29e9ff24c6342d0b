"""LVQ through the Python API: bits forms, re-ranking from the residual level, memory,
persistence."""

import numpy as np
import pytest

import nearq


def _recall(found, truth):
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k]) & set(t)) / k for f, t in zip(found, truth)]))


def test_two_level_without_vectors(real_data, real_truth):
    (x, q), truth = real_data, real_truth["cosine"][0][:, :10]
    flat = nearq.Index.build(x, metric="cosine")
    idx = nearq.Index.build(x, metric="cosine", encoding="lvq", bits=(4, 8), keep_vectors=False)
    assert idx.encoding == "lvq"
    assert idx.memory_usage(detail=True)["vectors"] == 0
    assert idx.memory_usage() <= 0.45 * flat.memory_usage()
    ids = idx.search(q, k=10, ef=128, rerank=64).ids
    assert _recall(ids, truth) >= 0.9


def test_one_level_with_float_reranking(real_data, real_truth):
    (x, q), truth = real_data, real_truth["cosine"][0][:, :10]
    idx = nearq.Index.build(x, metric="cosine", encoding="lvq", bits=8)
    assert _recall(idx.search(q, k=10, ef=128).ids, truth) >= 0.95


@pytest.mark.parametrize("bits", [4, 8, (4, 4), [4, 8], (8, 8), "4x8", np.int64(8), None])
def test_bits_forms(bits):
    x = np.random.default_rng(0).standard_normal((300, 24)).astype(np.float32)
    idx = nearq.Index.build(x, metric="l2", encoding="lvq", bits=bits, keep_vectors=False)
    ids = idx.search(x[:5], k=1).ids
    assert (ids[:, 0] == np.arange(5)).all()


@pytest.mark.parametrize("bits", [2, 16, (4, 2), (4, 8, 8), (), "4y8", "x", 4.0, (4, "8")])
def test_bad_bits(bits):
    x = np.random.default_rng(0).standard_normal((100, 16)).astype(np.float32)
    with pytest.raises(nearq.InvalidInputError, match="bits"):
        nearq.Index.build(x, encoding="lvq", bits=bits)


def test_two_levels_only_for_lvq():
    x = np.random.default_rng(0).standard_normal((100, 16)).astype(np.float32)
    with pytest.raises(nearq.InvalidInputError, match="bits"):
        nearq.Index.build(x, encoding="sq8", bits=(8, 8))


def test_round_trip(tmp_path, real_data):
    x, q = real_data[0][:2000], real_data[1][:20]
    idx = nearq.Index.build(x, metric="l2", encoding="lvq", bits=(4, 8), keep_vectors=False)
    idx.save(tmp_path / "l.nearq")
    back = nearq.Index.load(tmp_path / "l.nearq")
    assert back.encoding == "lvq"
    a, b = idx.search(q, k=5), back.search(q, k=5)
    assert (a.ids == b.ids).all() and np.array_equal(a.distances, b.distances)
