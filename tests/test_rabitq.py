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


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_estimate_error_no_worse_than_faiss_rabitq(bits):
    """Side by side with faiss-cpu's IndexRaBitQ (multi-bit) on the same real vectors and
    bits: the mean relative error of nearq's squared-L2 estimates (the finest code, float
    query) over every (query, vector) pair is no larger than FAISS's."""
    faiss = pytest.importorskip("faiss")
    import nearq.datasets

    train, test = nearq.datasets.minilm_10k()
    x, q = train[:3000], test[:50]
    n, d = x.shape
    exact = ((q[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1)
    ref = faiss.IndexRaBitQ(d, faiss.METRIC_L2, bits)
    ref.train(x)
    ref.add(x)
    dist, ids = ref.search(q, n)
    est_faiss = np.empty_like(exact)
    np.put_along_axis(est_faiss, ids, dist, 1)
    index = nearq.Index.build(x, metric="l2", encoding="rabitq", bits=bits, keep_vectors=False)
    # Scan every code (an allow-list of all ids) and "re-rank" all of them from the finest
    # code: the returned distances are the estimates for all n vectors.
    r = index.search(q, n, ef=n, rerank=n, filter=np.arange(n), filter_strategy="scan")
    assert (r.ids >= 0).all()
    est_nearq = np.empty_like(exact)
    np.put_along_axis(est_nearq, r.ids, r.distances, 1)
    err_faiss = float(np.mean(np.abs(est_faiss - exact) / exact))
    err_nearq = float(np.mean(np.abs(est_nearq - exact) / exact))
    assert err_nearq <= err_faiss, (bits, err_nearq, err_faiss)
