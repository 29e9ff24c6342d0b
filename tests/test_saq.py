"""SAQ through the Python API on real embeddings (the shipped MiniLM slice): fractional bit
budgets, the visible bit allocation, recall with float re-ranking and from the codes alone,
memory, persistence, and bad parameters."""

import numpy as np
import pytest

import nearq
import nearq.datasets
from conftest import exact_knn, recall

K = 10


@pytest.fixture(scope="module")
def minilm():
    train, test = nearq.datasets.minilm_10k()
    return train[:5000], test[:200]


@pytest.fixture(scope="module")
def truth(minilm):
    train, test = minilm
    return exact_knn("cosine", test, train, K)[0]


def test_recall_and_allocation(minilm, truth):
    train, test = minilm
    index = nearq.Index.build(train, metric="cosine", encoding="saq", bits=4, keep_vectors=False)
    assert index.encoding == "saq"
    alloc = index.bit_allocation
    assert alloc and all(d > 0 and 0 <= b <= 12 for d, b in alloc)
    # more bits go to the leading (higher-variance) segments
    bits = [b for _, b in alloc]
    assert bits == sorted(bits, reverse=True)
    assert sum(d * b for d, b in alloc) <= 4 * 384 + 128
    r = recall(index.search(test, K, ef=128).ids, truth)
    assert r >= 0.9, r
    flat = nearq.Index.build(train, metric="cosine")
    assert index.memory_usage() <= flat.memory_usage() / 2
    keep = nearq.Index.build(train, metric="cosine", encoding="saq", bits=2)
    assert recall(keep.search(test, K, ef=128).ids, truth) >= 0.95


def test_fractional_bits_and_persistence(minilm, tmp_path):
    train, test = minilm
    index = nearq.Index.build(train[:2000], metric="cosine", encoding="saq", bits=3.5,
                              keep_vectors=False)
    a = index.bit_allocation
    b4 = nearq.Index.build(train[:2000], metric="cosine", encoding="saq", bits=4,
                           keep_vectors=False).bit_allocation
    assert sum(d * b for d, b in a) < sum(d * b for d, b in b4)
    p = tmp_path / "saq.nearq"
    index.save(p)
    back = nearq.Index.load(p)
    assert back.bit_allocation == a
    np.testing.assert_array_equal(back.search(test, K).ids, index.search(test, K).ids)


@pytest.mark.parametrize("bits", [0, -1, 12.5, float("nan"), "4", True])
def test_bad_bits(minilm, bits):
    train, _ = minilm
    with pytest.raises(nearq.InvalidInputError):
        nearq.Index.build(train[:300], encoding="saq", bits=bits)


def test_fractional_bits_only_for_saq(minilm):
    train, _ = minilm
    with pytest.raises(nearq.InvalidInputError):
        nearq.Index.build(train[:300], encoding="rabitq", bits=3.5)
