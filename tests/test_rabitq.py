"""RaBitQ through the Python API: bits, re-ranking sources, memory, persistence."""

import numpy as np
import pytest

import nearq


def _recall(found, truth):
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k]) & set(t)) / k for f, t in zip(found, truth)]))


@pytest.mark.parametrize("bits", [1, 4, 8])
def test_recall_with_float_reranking(real_data, real_truth, bits):
    (x, q), truth = real_data, real_truth["cosine"][0][:, :10]
    idx = nearq.Index.build(x, metric="cosine", encoding="rabitq", bits=bits, keep_vectors=True)
    ids = idx.search(q, k=10, ef=128, rerank=128).ids
    assert _recall(ids, truth) >= 0.95


def test_without_vectors_uses_less_memory_and_reranks_from_codes(real_data, real_truth):
    (x, q), truth = real_data, real_truth["cosine"][0][:, :10]
    flat = nearq.Index.build(x, metric="cosine")
    idx = nearq.Index.build(x, metric="cosine", encoding="rabitq", bits=8, keep_vectors=False)
    assert idx.memory_usage() < 0.5 * flat.memory_usage()
    assert idx.memory_usage(detail=True)["vectors"] == 0
    ids = idx.search(q, k=10, ef=128, rerank=128).ids
    assert _recall(ids, truth) >= 0.9


def test_round_trip(tmp_path, real_data):
    x, q = real_data[0][:2000], real_data[1][:20]
    idx = nearq.Index.build(x, metric="l2", encoding="rabitq", bits=4, keep_vectors=False)
    idx.save(tmp_path / "r.nearq")
    back = nearq.Index.load(tmp_path / "r.nearq")
    assert back.encoding == "rabitq"
    a, b = idx.search(q, k=5), back.search(q, k=5)
    assert (a.ids == b.ids).all() and np.array_equal(a.distances, b.distances)


@pytest.mark.parametrize("bits", [0, 9])
def test_bad_bits(bits):
    x = np.random.default_rng(0).standard_normal((100, 16)).astype(np.float32)
    with pytest.raises(nearq.InvalidInputError, match="bits"):
        nearq.Index.build(x, encoding="rabitq", bits=bits)
