"""Randomised operation sequences (build / search / save / load / pickle / exact search) with
invariant checks after every step. Time-boxed; the seed of a failing sequence is in the
assertion message, and NEARQ_SEQ_SECONDS / NEARQ_SEQ_SEED reproduce or lengthen a run."""

from __future__ import annotations

import os
import pickle
import time

import numpy as np
import pytest

import nearq
from conftest import ENCODINGS, METRICS, pair_distances

SECONDS = float(os.environ.get("NEARQ_SEQ_SECONDS", "4"))
FIRST_SEED = int(os.environ.get("NEARQ_SEQ_SEED", "0"))


def check_result(res, idx_len, n_queries, k, ctx):
    ids, dists = res
    assert ids.shape == dists.shape == (n_queries, k), ctx
    assert ids.dtype == np.int64 and dists.dtype == np.float32, ctx
    valid = ids >= 0
    assert np.all(ids < idx_len), ctx
    assert np.all(valid.sum(1) <= min(k, idx_len)), ctx
    # padding only at the end of a row (an unreachable part of a sparse graph may leave
    # fewer than min(k, n) results; test_api checks reachability with default parameters)
    assert np.all(valid[:, 1:] <= valid[:, :-1]), f"{ctx}: -1 padding in the middle of a row"
    assert np.all(np.isposinf(dists[~valid])) and np.all(np.isfinite(dists[valid])), ctx
    assert np.all(dists[:, 1:] >= dists[:, :-1]), f"{ctx}: row not sorted"
    for row, ok in zip(ids, valid):
        assert len(set(row[ok].tolist())) == ok.sum(), f"{ctx}: duplicate id"


def run_sequence(seed, tmp_path):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    d = int(rng.integers(1, 70))
    metric = str(rng.choice(METRICS))
    encoding = str(rng.choice(ENCODINGS))
    keep = bool(rng.integers(0, 2))
    x = (rng.standard_normal((n, d)) * rng.uniform(0.1, 10)).astype(np.float32)
    if metric == "cosine":
        x[np.linalg.norm(x, axis=1) == 0] = 1.0
    ctx = f"seed={seed} n={n} d={d} {metric}/{encoding} keep_vectors={keep}"
    idx = nearq.Index.build(
        x,
        metric=metric,
        encoding=encoding,
        keep_vectors=keep,
        degree=int(rng.integers(2, 48)),
        build_ef=int(rng.integers(1, 200)),
        threads=int(rng.integers(1, 3)),
        seed=seed,
    )
    assert (len(idx), idx.dim, idx.metric, idx.encoding) == (n, d, metric, encoding), ctx
    for step in range(int(rng.integers(2, 8))):
        op = rng.choice(["search", "save_load", "pickle", "exact"])
        sctx = f"{ctx} step={step} op={op}"
        q = rng.standard_normal((int(rng.integers(1, 20)), d)).astype(np.float32)
        k = int(rng.integers(1, n + 5))
        ef = None if rng.integers(0, 2) else int(rng.integers(1, 300))
        res = idx.search(q, k=k, ef=ef)
        check_result(res, n, len(q), k, sctx)
        if encoding == "flat" or keep:
            ok = res.ids >= 0
            expect = pair_distances(metric, q, x, np.where(ok, res.ids, 0))
            np.testing.assert_allclose(
                res.distances[ok], expect[ok], rtol=1e-3, atol=1e-3, err_msg=sctx
            )
        if op == "save_load":
            path = tmp_path / f"s{seed}-{step}.nearq"
            idx.save(path)
            loaded = nearq.Index.load(path)
        elif op == "pickle":
            loaded = pickle.loads(pickle.dumps(idx))
        else:
            loaded = idx
        again = loaded.search(q, k=k, ef=ef)
        np.testing.assert_array_equal(again.ids, res.ids, err_msg=sctx)
        np.testing.assert_array_equal(again.distances, res.distances, err_msg=sctx)
        if op == "exact":
            ex = nearq.exact_search(x, q, k=k, metric=metric)
            check_result(ex, n, len(q), k, sctx)
        idx = loaded


def test_random_sequences(tmp_path):
    deadline = time.monotonic() + SECONDS
    seed = FIRST_SEED
    runs = 0
    while runs < 3 or time.monotonic() < deadline:
        run_sequence(seed, tmp_path)
        seed += 1
        runs += 1
    if runs < 3:
        pytest.fail("too few sequences ran")
