"""Index life-cycle on real embeddings (the MiniLM slice shipped with the package): user ids,
incremental adds, deletes and upserts, filtered search, memory-mapped loading, concurrent
searches during adds, and a time-boxed random operation sequence checked against an exact
reference."""

from __future__ import annotations

import os
import pickle
import threading
import time

import numpy as np
import pytest

import nearq
import nearq.datasets
from conftest import exact_knn, recall

K = 10


@pytest.fixture(scope="module")
def minilm():
    train, test = nearq.datasets.minilm_10k()
    return train[:6000], test[:200]


def _exact_subset(train, test, rows, ids, k=K):
    t, _ = exact_knn("cosine", test, train[rows], k)
    return np.asarray(ids)[np.asarray(rows)][t]


@pytest.mark.parametrize("encoding,keep", [("flat", True), ("sq8", False), ("lvq", False), ("rabitq", True)])
def test_adding_half_incrementally_is_as_good_as_a_full_build(minilm, encoding, keep):
    train, test = minilm
    n = len(train)
    truth, _ = exact_knn("cosine", test, train, K)
    kw = dict(metric="cosine", encoding=encoding, keep_vectors=keep, seed=0)
    full = nearq.Index.build(train, **kw)
    inc = nearq.Index.build(train[: n // 2], **kw)
    at = n // 2
    for m in (1, 500, n - n // 2 - 501):
        got = inc.add(train[at : at + m])
        np.testing.assert_array_equal(got, np.arange(at, at + m))
        at += m
    assert len(inc) == n
    assert inc.quantized_graph == (encoding == "rabitq")
    ra = recall(full.search(test, K, ef=64).ids, truth)
    rb = recall(inc.search(test, K, ef=64).ids, truth)
    assert rb >= ra - 0.01, (rb, ra)


@pytest.mark.parametrize("encoding,keep", [("flat", True), ("sq8", False), ("rabitq", True)])
def test_deleting_30_percent_keeps_the_recall_of_a_fresh_build(minilm, encoding, keep):
    train, test = minilm
    n = len(train)
    kw = dict(metric="cosine", encoding=encoding, keep_vectors=keep, seed=0)
    index = nearq.Index.build(train, **kw)
    rng = np.random.default_rng(7)
    dead = rng.choice(n, size=int(0.3 * n), replace=False)
    for part in np.array_split(dead, 4):
        assert index.delete(part) == len(part)
    assert index.delete(dead[:5]) == 0
    assert index.quantized_graph == (encoding == "rabitq")
    live = np.setdiff1d(np.arange(n), dead)
    assert len(index) == len(live)
    np.testing.assert_array_equal(np.sort(index.ids()), live)
    truth = _exact_subset(train, test, live, np.arange(n))
    fresh = nearq.Index.build(train[live], ids=live, **kw)
    ra = recall(fresh.search(test, K, ef=64).ids, truth)
    ids = index.search(test, K, ef=64).ids
    assert not np.isin(ids, dead).any()
    rb = recall(ids, truth)
    assert rb >= ra - 0.02, (rb, ra)


@pytest.mark.parametrize("selectivity", [0.5, 0.1, 0.01])
@pytest.mark.parametrize("encoding", ["flat", "sq8", "rabitq"])
def test_filtered_search_matches_exact_filtered_search(minilm, selectivity, encoding):
    train, test = minilm
    n = len(train)
    index = nearq.Index.build(train, metric="cosine", encoding=encoding, seed=0)
    rng = np.random.default_rng(int(selectivity * 1000))
    allowed = np.sort(rng.choice(n, size=int(selectivity * n), replace=False))
    truth = _exact_subset(train, test, allowed, np.arange(n))
    mask = np.zeros(n, dtype=bool)
    mask[allowed] = True
    for flt in (allowed, mask, set(allowed.tolist()), list(allowed)):
        ids = index.search(test, K, ef=64, filter=flt).ids
        assert (ids >= 0).all(), "a selective filter must still return k results"
        assert mask[ids].all(), "a filtered-out id was returned"
        assert recall(ids, truth) >= 0.95, recall(ids, truth)
    for strategy in ("graph", "scan"):
        ids = index.search(test, K, ef=64, filter=allowed, filter_strategy=strategy).ids
        assert mask[ids[ids >= 0]].all()
        assert recall(ids, truth) >= 0.9, (strategy, recall(ids, truth))


def test_user_ids(minilm):
    train, test = minilm
    x = train[:1000]
    ids = np.arange(1000, dtype=np.int64) * 1_000_003 - 10**12
    index = nearq.Index.build(x, metric="cosine", ids=ids)
    res = index.search(x[:5], 1)
    np.testing.assert_array_equal(res.ids[:, 0], ids[:5])
    assert ids[3] in index and 12345 not in index and "x" not in index
    with pytest.raises(nearq.InvalidInputError, match="duplicate"):
        nearq.Index.build(x[:3], ids=[1, 2, 1])
    with pytest.raises(nearq.InvalidInputError):
        nearq.Index.build(x[:3], ids=[1, 2])
    with pytest.raises(nearq.InvalidInputError):
        nearq.Index.build(x[:3], ids=[1.0, 2.0, 3.0])
    before = index.to_bytes() if hasattr(index, "to_bytes") else None
    with pytest.raises(nearq.InvalidInputError, match="already"):
        index.add(x[:2], ids=[5, ids[0]])
    with pytest.raises(nearq.InvalidInputError):
        index.add(x[:2], ids=[5, 5])
    with pytest.raises(nearq.DimensionMismatchError):
        index.add(x[:2, :10])
    bad = x[:2].copy()
    bad[1, 3] = np.nan
    with pytest.raises(nearq.InvalidInputError):
        index.add(bad)
    assert len(index) == 1000
    new = index.add(x[:2])
    np.testing.assert_array_equal(new, [ids.max() + 1, ids.max() + 2])
    del before


def test_upsert_replaces(minilm):
    train, _ = minilm
    index = nearq.Index.build(train[:2000], metric="cosine", encoding="sq8")
    index.upsert(train[[1500, 1501]], ids=[3, 9000])
    assert len(index) == 2001
    assert 3 not in index.search(train[3], 5).ids[0]
    assert set(index.search(train[1500], 2).ids[0]) == {3, 1500}
    assert set(index.search(train[1501], 2).ids[0]) == {9000, 1501}


def test_mmap_load_serves_from_the_file(minilm, tmp_path):
    train, test = minilm
    index = nearq.Index.build(train, metric="cosine", encoding="sq8", keep_vectors=True,
                              ids=np.arange(len(train)) + 100)
    index.delete([100, 101, 102])
    path = tmp_path / "i.nearq"
    index.save(path)
    a = index.search(test, K)
    m = nearq.Index.load(path, mmap=True)
    b = m.search(test, K)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.distances, b.distances)
    mu = m.memory_usage(detail=True)
    assert mu["mmap"] >= len(train) * 384 * 4 and mu["vectors"] == 0 and mu["codes"] == 0
    assert m.memory_usage() < index.memory_usage() / 4
    # a change copies the mapped parts; the file is untouched
    before = path.read_bytes()
    m.add(train[:3], ids=[-1, -2, -3])
    assert -2 in m and path.read_bytes() == before
    with pytest.raises(nearq.InvalidInputError):
        nearq.Index.load(path, mmap="yes")
    v = nearq.Index.load(path, mmap="vectors")
    np.testing.assert_array_equal(v.search(test, K).ids, a.ids)
    mv = v.memory_usage(detail=True)
    assert mv["codes"] > 0 and mv["vectors"] == 0 and mv["mmap"] == len(train) * 384 * 4


def test_pickle_keeps_ids_and_deletes(minilm):
    train, test = minilm
    index = nearq.Index.build(train[:1500], metric="cosine", ids=np.arange(1500) * 2)
    index.delete([0, 2, 4])
    index.add(train[1500:1600])
    back = pickle.loads(pickle.dumps(index))
    np.testing.assert_array_equal(back.ids(), index.ids())
    np.testing.assert_array_equal(back.search(test, K).ids, index.search(test, K).ids)


def test_searches_from_many_threads_while_another_thread_adds(minilm):
    train, test = minilm
    base, extra = train[:3000], train[3000:5000]
    index = nearq.Index.build(base, metric="cosine", encoding="sq8")
    truth_base, _ = exact_knn("cosine", test[:50], base, K)
    errors: list = []
    stop = threading.Event()

    def searcher():
        try:
            while not stop.is_set():
                res = index.search(test[:50], K, threads=1)
                ids = res.ids
                # every result is a vector present at some point; ids of the base set keep
                # their meaning, so the base neighbours that are still nearest must be found
                assert ((ids >= 0) & (ids < 5000)).all()
                assert np.all(np.diff(res.distances, axis=1) >= 0)
                n_now = len(index)
                assert 3000 <= n_now <= 5000
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=searcher) for _ in range(4)]
    for t in threads:
        t.start()
    for chunk in np.array_split(extra, 10):
        index.add(chunk)
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert len(index) == 5000
    truth_all, _ = exact_knn("cosine", test[:50], train[:5000], K)
    assert recall(index.search(test[:50], K).ids, truth_all) >= 0.9
    del truth_base


def test_filter_input_errors(minilm):
    train, test = minilm
    index = nearq.Index.build(train[:500], metric="cosine")
    with pytest.raises(nearq.InvalidInputError):
        index.search(test, K, filter=np.array([0.5, 1.5]))
    with pytest.raises(nearq.InvalidInputError):
        index.search(test, K, filter=np.zeros((2, 2), dtype=bool))
    with pytest.raises(nearq.InvalidInputError):
        index.search(test, K, filter=[1, 2], filter_strategy="fast")
    res = index.search(test[:2], K, filter=[])
    assert (res.ids == -1).all()
    res = index.search(test[:2], K, filter=[3, 10**15])
    assert (res.ids[:, 0] == 3).all() and (res.ids[:, 1:] == -1).all()


SECONDS = float(os.environ.get("NEARQ_SEQ_SECONDS", "4"))


def test_random_operation_sequences(tmp_path):
    """add / delete / upsert / search / filtered search / save / load / mmap, with the live
    set and the vector of every id tracked exactly; a flat index with ef >= n is exact."""
    deadline = time.monotonic() + SECONDS
    seed = 0
    while time.monotonic() < deadline:
        rng = np.random.default_rng(seed)
        d = int(rng.integers(2, 24))
        x0 = rng.standard_normal((int(rng.integers(1, 60)), d)).astype(np.float32)
        ids0 = rng.choice(10**6, size=len(x0), replace=False)
        index = nearq.Index.build(x0, metric="l2", ids=ids0, degree=8, build_ef=32, seed=seed)
        live = dict(zip(ids0.tolist(), x0))
        for step in range(30):
            ctx = f"seed {seed} step {step}"
            op = rng.integers(0, 7)
            if op == 0:
                m = int(rng.integers(1, 20))
                v = rng.standard_normal((m, d)).astype(np.float32)
                new = index.add(v)
                assert len(set(new.tolist()) & set(live)) == 0, ctx
                live.update(zip(new.tolist(), v))
            elif op == 1 and live:
                ks = list(live)
                dead = rng.choice(ks, size=int(rng.integers(1, len(ks) + 1)), replace=False)
                assert index.delete(np.append(dead, -777)) == len(dead), ctx
                for i in dead.tolist():
                    live.pop(i)
            elif op == 2:
                m = int(rng.integers(1, 10))
                ks = list(live)
                ups = [int(i) for i in rng.choice(ks, size=min(m, len(ks)), replace=False)] if ks else []
                ups += [int(10**7 + step * 100 + j) for j in range(m - len(ups))]
                v = rng.standard_normal((len(ups), d)).astype(np.float32)
                index.upsert(v, ids=ups)
                live.update(zip(ups, v))
            elif op == 3:
                p = tmp_path / "seq.nearq"
                index.save(p)
                index = nearq.Index.load(p, mmap=bool(rng.integers(0, 2)))
            elif op == 4:
                index = pickle.loads(pickle.dumps(index))
            assert len(index) == len(live), ctx
            assert set(index.ids().tolist()) == set(live), ctx
            q = rng.standard_normal((3, d)).astype(np.float32)
            k = int(rng.integers(1, 8))
            if live:
                keys = np.array(list(live), dtype=np.int64)
                mat = np.stack([live[i] for i in keys.tolist()])
                sub = keys if op != 5 else rng.choice(keys, size=max(1, len(keys) // 3), replace=False)
                flt = None if op != 5 else sub
                res = index.search(q, k, ef=max(64, 2 * len(live)), filter=flt)
                allowed = np.isin(keys, sub)
                dist = ((q[:, None, :] - mat[None, allowed, :]) ** 2).sum(-1)
                want = np.sort(dist, axis=1)[:, :k]
                got = res.distances[:, : want.shape[1]]
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=ctx)
                assert (res.ids[:, want.shape[1]:] == -1).all(), ctx
                assert np.isin(res.ids[:, : want.shape[1]], keys[allowed]).all(), ctx
            else:
                res = index.search(q, k)
                assert (res.ids == -1).all(), ctx
        seed += 1
    assert seed > 0
