"""Index life-cycle measurements on a real dataset (issue 8): recall after adding half of the
data incrementally vs a full build, recall after deleting 30% vs a fresh build of the rest,
filtered search at several selectivities vs exact filtered search (recall and QPS), and
loading with and without a memory map.

    python bench/lifecycle.py --data ../shared/data/pypi-minilm-384-angular-50k.hdf5 \
        --encodings flat,sq8 --out bench/results/lifecycle.json

One thread for searches (one query per call, after a warm-up pass) and all cores for builds;
QPS are wall-clock.
"""
from __future__ import annotations

import os

# One BLAS thread: the exact references use numpy, and idle BLAS workers spinning after a call
# would be counted in the process CPU time of the timed searches.
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import load_dataset  # noqa: E402

import nearq  # noqa: E402

K = 10


def exact(train, test, k=K):
    """Exact cosine neighbours (rows normalised), in float32 blocks."""
    xn = train / np.linalg.norm(train, axis=1, keepdims=True)
    qn = test / np.linalg.norm(test, axis=1, keepdims=True)
    out = np.empty((len(test), k), dtype=np.int64)
    for s in range(0, len(test), 256):
        sim = qn[s : s + 256] @ xn.T
        part = np.argpartition(-sim, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sim, part, 1), axis=1)
        out[s : s + 256] = np.take_along_axis(part, order, 1)
    return out


def recall(found, truth):
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found.tolist(), truth.tolist())]))


def one_by_one(index, test, **kw):
    """One query per call, one thread; a warm-up pass first, then wall-clock QPS."""
    for q in test[:100]:
        index.search(q, K, threads=1, **kw)
    t0 = time.perf_counter()
    ids = np.vstack([index.search(q, K, threads=1, **kw).ids for q in test])
    return ids, len(test) / max(time.perf_counter() - t0, 1e-9)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--encodings", default="flat,sq8")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--ef", type=int, default=64)
    ap.add_argument("--out")
    a = ap.parse_args()
    ds = load_dataset(a.data, limit_queries=a.queries)
    train, test = ds["train"], ds["test"]
    n = len(train)
    truth = exact(train, test)
    rows = []
    for enc in a.encodings.split(","):
        keep = enc == "flat"
        kw = dict(metric="cosine", encoding=enc, keep_vectors=keep, seed=0)
        r = {"encoding": enc, "keep_vectors": keep, "n": n}
        t0 = time.perf_counter()
        full = nearq.Index.build(train, **kw)
        r["build_s"] = time.perf_counter() - t0
        ids, qps = one_by_one(full, test, ef=a.ef)
        r["full_recall"], r["full_qps"] = recall(ids, truth), qps
        inc = nearq.Index.build(train[: n // 2], **kw)
        t0 = time.perf_counter()
        for chunk in np.array_split(train[n // 2 :], 10):
            inc.add(chunk)
        r["add_half_s"] = time.perf_counter() - t0
        ids, _ = one_by_one(inc, test, ef=a.ef)
        r["incremental_recall"] = recall(ids, truth)
        # delete 30%
        rng = np.random.default_rng(0)
        dead = rng.choice(n, size=int(0.3 * n), replace=False)
        live = np.setdiff1d(np.arange(n), dead)
        t0 = time.perf_counter()
        for part in np.array_split(dead, 3):
            full.delete(part)
        r["delete_30_s"] = time.perf_counter() - t0
        sub_truth = live[exact(train[live], test)]
        ids, _ = one_by_one(full, test, ef=a.ef)
        assert not np.isin(ids, dead).any()
        r["after_delete_recall"] = recall(ids, sub_truth)
        fresh = nearq.Index.build(train[live], ids=live, **kw)
        ids, _ = one_by_one(fresh, test, ef=a.ef)
        r["fresh_recall"] = recall(ids, sub_truth)
        # filters (on a fresh full build)
        full = nearq.Index.build(train, **kw)
        r["filters"] = []
        for sel in (0.5, 0.1, 0.01):
            allowed = np.sort(rng.choice(n, size=int(sel * n), replace=False))
            ftruth = allowed[exact(train[allowed], test)]
            ids, qps = one_by_one(full, test, ef=a.ef, filter=allowed)
            r["filters"].append({"selectivity": sel, "recall": recall(ids, ftruth), "qps": qps,
                                 "k_results": float((ids >= 0).all(axis=1).mean())})
        # load vs mmap load
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "i.nearq")
            full.save(p)
            t0 = time.perf_counter()
            nearq.Index.load(p)
            r["load_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            m = nearq.Index.load(p, mmap=True)
            r["mmap_load_s"] = time.perf_counter() - t0
            r["mmap_ram_bytes"] = m.memory_usage()
            r["ram_bytes"] = full.memory_usage()
            ids, qps = one_by_one(m, test, ef=a.ef)
            r["mmap_recall"], r["mmap_qps"] = recall(ids, truth), qps
        rows.append(r)
        print(json.dumps(r, indent=1), flush=True)
    if a.out:
        pathlib.Path(a.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
