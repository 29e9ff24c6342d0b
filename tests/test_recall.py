"""Recall on real text embeddings against exact search, and exact search against FAISS."""

from __future__ import annotations

import numpy as np
import pytest

import nearq
from conftest import K, assert_same_neighbours, recall

EF = 100


@pytest.mark.parametrize("metric", ["l2", "cosine", "ip"])
def test_flat_recall(real_index, real_data, real_truth, metric):
    _, test = real_data
    truth, _ = real_truth[metric]
    ids, _ = real_index(metric, "flat").search(test, k=K, ef=EF)
    r = recall(ids, truth)
    assert r >= 0.95, f"{metric} flat recall@{K} = {r:.4f} at ef={EF}"


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_sq8_recall(real_index, real_data, real_truth, metric):
    _, test = real_data
    truth, _ = real_truth[metric]
    ids, _ = real_index(metric, "sq8").search(test, k=K, ef=EF)
    r = recall(ids, truth)
    assert r >= 0.95, f"{metric} sq8 recall@{K} = {r:.4f} at ef={EF}"


def test_recall_grows_with_ef(real_index, real_data, real_truth):
    _, test = real_data
    truth, _ = real_truth["cosine"]
    idx = real_index("cosine", "flat")
    efs = [10, 20, 40, 80, 160]
    recalls = [recall(idx.search(test, k=K, ef=ef).ids, truth) for ef in efs]
    for (ef_a, ra), (ef_b, rb) in zip(zip(efs, recalls), zip(efs[1:], recalls[1:])):
        assert rb >= ra - 0.005, f"recall fell from {ra:.4f} (ef={ef_a}) to {rb:.4f} (ef={ef_b})"
    assert recalls[-1] > recalls[0] or recalls[0] >= 0.999


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_ef_equal_to_len_is_practically_exact(real_index, real_data, real_truth, metric):
    train, test = real_data
    idx = real_index(metric, "flat")
    truth, _ = real_truth[metric]
    ids, dists = idx.search(test, k=K, ef=len(idx))
    r = recall(ids, truth)
    assert r >= 0.999, f"recall@{K} = {r:.4f} with ef = len(index)"


def test_exact_search_matches_float64_truth(real_data, real_truth):
    train, test = real_data
    for metric in ("l2", "cosine", "ip"):
        truth, truth_d = real_truth[metric]
        ids, dists = nearq.exact_search(train, test, k=K, metric=metric)
        assert_same_neighbours(metric, test, train, ids, truth)
        np.testing.assert_allclose(dists, truth_d, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- against FAISS


@pytest.fixture(scope="module")
def faiss():
    faiss = pytest.importorskip("faiss", reason="faiss-cpu is not installed")
    faiss.omp_set_num_threads(1)
    return faiss


def _faiss_search(faiss, index, train, test):
    index.add(train)
    d, i = index.search(test, K)
    return i.astype(np.int64), d


def test_exact_search_agrees_with_faiss_l2(faiss, real_data):
    train, test = real_data
    f_ids, f_d = _faiss_search(faiss, faiss.IndexFlatL2(train.shape[1]), train, test)
    ids, dists = nearq.exact_search(train, test, k=K, metric="l2")
    assert_same_neighbours("l2", test, train, ids, f_ids)
    np.testing.assert_allclose(dists, f_d, rtol=1e-4, atol=1e-5)


def test_exact_search_agrees_with_faiss_ip(faiss, real_data):
    train, test = real_data
    f_ids, f_sim = _faiss_search(faiss, faiss.IndexFlatIP(train.shape[1]), train, test)
    ids, dists = nearq.exact_search(train, test, k=K, metric="ip")
    assert_same_neighbours("ip", test, train, ids, f_ids)
    np.testing.assert_allclose(dists, -f_sim, rtol=1e-4, atol=1e-5)


def test_exact_search_agrees_with_faiss_cosine(faiss, real_data):
    train, test = real_data
    xn = train / np.linalg.norm(train, axis=1, keepdims=True)
    qn = test / np.linalg.norm(test, axis=1, keepdims=True)
    f_ids, f_sim = _faiss_search(faiss, faiss.IndexFlatIP(train.shape[1]), xn, qn)
    ids, dists = nearq.exact_search(train, test, k=K, metric="cosine")
    assert_same_neighbours("cosine", test, train, ids, f_ids)
    np.testing.assert_allclose(dists, 1.0 - f_sim, rtol=1e-4, atol=1e-5)


def test_exact_search_agrees_with_faiss_on_unnormalised_data(faiss):
    rng = np.random.default_rng(8)
    x = (rng.standard_normal((3000, 40)) * rng.uniform(0.1, 5, (3000, 1))).astype(np.float32)
    q = rng.standard_normal((50, 40)).astype(np.float32)
    f_ids, f_d = _faiss_search(faiss, faiss.IndexFlatL2(40), x, q)
    ids, dists = nearq.exact_search(x, q, k=K, metric="l2")
    assert_same_neighbours("l2", q, x, ids, f_ids, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dists, f_d, rtol=1e-4, atol=1e-3)


# ---------------------------------------------------------------- reproducibility


def test_same_seed_single_thread_builds_identical_graphs(real_data):
    train, test = real_data
    sub = train[:2000]
    a = nearq.Index.build(sub, metric="cosine", seed=7, threads=1)
    b = nearq.Index.build(sub, metric="cosine", seed=7, threads=1)
    ra, rb = a.search(test, k=K, ef=32), b.search(test, k=K, ef=32)
    np.testing.assert_array_equal(ra.ids, rb.ids)
    np.testing.assert_array_equal(ra.distances, rb.distances)


def test_graph_does_not_depend_on_thread_count(real_data):
    train, test = real_data
    sub = train[:2000]
    a = nearq.Index.build(sub, metric="cosine", seed=3, threads=1)
    b = nearq.Index.build(sub, metric="cosine", seed=3, threads=2)
    ra, rb = a.search(test, k=K, ef=32), b.search(test, k=K, ef=32)
    np.testing.assert_array_equal(ra.ids, rb.ids)
    np.testing.assert_array_equal(ra.distances, rb.distances)


def test_sq8_without_kept_vectors_recall(real_data, real_truth):
    # distances estimated from the codes only, no exact re-ranking
    train, test = real_data
    idx = nearq.Index.build(train, metric="cosine", encoding="sq8", keep_vectors=False)
    r = recall(idx.search(test, k=K, ef=EF).ids, real_truth["cosine"][0])
    assert r >= 0.90, f"sq8 (codes only) recall@{K} = {r:.4f} at ef={EF}"
