"""TurboQuant through the Python API: bits, variants, re-ranking sources, memory, persistence."""

import numpy as np
import pytest

import nearq


def _recall(found, truth):
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k]) & set(t)) / k for f, t in zip(found, truth)]))


@pytest.mark.parametrize("variant", ["mse", "prod"])
def test_recall_at_4_bits_with_float_reranking(real_data, real_truth, variant):
    (x, q), truth = real_data, real_truth["cosine"][0][:, :10]
    idx = nearq.Index.build(
        x, metric="cosine", encoding="turboquant", bits=4, variant=variant, keep_vectors=True
    )
    assert idx.encoding == "turboquant"
    ids = idx.search(q, k=10, ef=128, rerank=128).ids
    assert _recall(ids, truth) >= 0.95


def test_without_vectors_uses_less_memory(real_data, real_truth):
    (x, q), truth = real_data, real_truth["cosine"][0][:, :10]
    flat = nearq.Index.build(x, metric="cosine")
    idx = nearq.Index.build(x, metric="cosine", encoding="turboquant", bits=4, keep_vectors=False)
    assert idx.memory_usage() <= 0.5 * flat.memory_usage()
    assert idx.memory_usage(detail=True)["vectors"] == 0
    # The candidates are re-ranked with the float-codebook estimate (distance_fine).
    ids = idx.search(q, k=10, ef=128).ids
    assert _recall(ids, truth) >= 0.75


@pytest.mark.parametrize("variant", ["mse", "prod"])
def test_round_trip(tmp_path, real_data, variant):
    x, q = real_data[0][:2000], real_data[1][:20]
    idx = nearq.Index.build(
        x, metric="l2", encoding="turboquant", bits=3, variant=variant, keep_vectors=False
    )
    idx.save(tmp_path / "t.nearq")
    back = nearq.Index.load(tmp_path / "t.nearq")
    assert back.encoding == "turboquant"
    a, b = idx.search(q, k=5), back.search(q, k=5)
    assert (a.ids == b.ids).all() and np.array_equal(a.distances, b.distances)


@pytest.mark.parametrize("bits", [0, 9])
def test_bad_bits(bits):
    x = np.random.default_rng(0).standard_normal((100, 16)).astype(np.float32)
    with pytest.raises(nearq.InvalidInputError, match="bits"):
        nearq.Index.build(x, encoding="turboquant", bits=bits)


def test_variant_validation():
    x = np.random.default_rng(0).standard_normal((100, 16)).astype(np.float32)
    for bits in (1, 8):
        for variant in ("mse", "prod", "PROD"):
            nearq.Index.build(x, encoding="turboquant", bits=bits, variant=variant)
    with pytest.raises(nearq.InvalidInputError, match="variant"):
        nearq.Index.build(x, encoding="turboquant", variant="fast")
    with pytest.raises(nearq.InvalidInputError, match="variant"):
        nearq.Index.build(x, encoding="rabitq", variant="mse")
    with pytest.raises(nearq.InvalidInputError, match="variant"):
        nearq.Index.build(x, encoding="turboquant", variant=1)
