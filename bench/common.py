"""Shared helpers for the nearq benchmark: data loading, ground truth, recall, memory."""
from __future__ import annotations

import os
import time

import numpy as np


def load_dataset(path, limit_train=None, limit_queries=None):
    """Load an ann-benchmarks HDF5 file.

    Returns a dict with train, test (float32, C-contiguous), neighbors (int64 or None)
    and metric ('angular' | 'euclidean' | 'ip').  When the train set is truncated the
    file's ground truth is invalid, so ``neighbors`` is None and the caller recomputes it.
    """
    import h5py

    with h5py.File(path, "r") as f:
        metric = f.attrs.get("distance", "euclidean")
        if isinstance(metric, bytes):
            metric = metric.decode()
        n_train = f["train"].shape[0]
        if limit_train and limit_train < n_train:
            train = np.asarray(f["train"][:limit_train], dtype=np.float32)
            neighbors = None
        else:
            train = np.asarray(f["train"][:], dtype=np.float32)
            neighbors = np.asarray(f["neighbors"][:], dtype=np.int64) if "neighbors" in f else None
        test = np.asarray(f["test"][:], dtype=np.float32)
    if limit_queries and limit_queries < len(test):
        test = test[:limit_queries]
        if neighbors is not None:
            neighbors = neighbors[:limit_queries]
    metric = {"dot": "ip", "inner_product": "ip", "cosine": "angular", "l2": "euclidean"}.get(metric, metric)
    return {
        "train": np.ascontiguousarray(train),
        "test": np.ascontiguousarray(test),
        "neighbors": neighbors,
        "metric": metric,
    }


def normalize(x):
    n = np.linalg.norm(x, axis=1, keepdims=True)
    n[n == 0] = 1.0
    return np.ascontiguousarray(x / n, dtype=np.float32)


def true_distances(train, queries, ids, metric):
    """Distance (smaller = nearer) from each query to the listed train ids; ids < 0 -> inf.

    For 'angular' the inputs must already be normalised (distance = 1 - cos)."""
    ids = np.asarray(ids, dtype=np.int64)
    out = np.full(ids.shape, np.inf, dtype=np.float64)
    valid = (ids >= 0) & (ids < len(train))
    for i in range(len(queries)):
        v = valid[i]
        if not v.any():
            continue
        cand = train[ids[i, v]]
        q = queries[i]
        if metric == "euclidean":
            d = ((cand - q) ** 2).sum(axis=1)
        elif metric == "angular":
            d = 1.0 - cand @ q
        else:  # ip
            d = -(cand @ q)
        out[i, v] = d
    return out


def exact_knn(train, queries, k, metric, block=256):
    """Brute-force k nearest neighbours in blocks (ids int64, nearest first)."""
    res = np.empty((len(queries), k), dtype=np.int64)
    if metric == "euclidean":
        tn = (train.astype(np.float32) ** 2).sum(axis=1)
    for s in range(0, len(queries), block):
        q = queries[s : s + block]
        dots = q @ train.T
        if metric == "euclidean":
            d = tn[None, :] - 2.0 * dots
        else:  # angular on normalised data, or ip
            d = -dots
        part = np.argpartition(d, k - 1, axis=1)[:, :k]
        pd = np.take_along_axis(d, part, axis=1)
        order = np.argsort(pd, axis=1, kind="stable")
        res[s : s + block] = np.take_along_axis(part, order, axis=1)
    return res


def recall_at_k(found, gt_ids, gt_kth_dist, found_dist, k=10, eps=1e-3):
    """Return (recall_ids, recall_dist).

    recall_ids: |found[:k] ∩ gt[:k]| / k  (plain id-set recall).
    recall_dist: ann-benchmarks 'knn' definition — a returned id counts when its true
    distance is <= the true k-th distance (1 + eps); robust to ties / duplicate vectors.
    """
    found = np.asarray(found)[:, :k]
    n = len(found)
    hits = 0
    for i in range(n):
        hits += len(set(found[i][found[i] >= 0].tolist()) & set(gt_ids[i, :k].tolist()))
    thr = gt_kth_dist[:, None] + eps * np.maximum(np.abs(gt_kth_dist[:, None]), 1e-6)
    dist_hits = (found_dist[:, :k] <= thr).sum()
    return hits / (n * k), float(dist_hits) / (n * k)


def rss_bytes():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def pad_ids(rows, k):
    """List of 1-D id arrays (possibly shorter than k) -> (n, k) int64 padded with -1."""
    out = np.full((len(rows), k), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        r = np.asarray(r, dtype=np.int64).ravel()[:k]
        out[i, : len(r)] = r
    return out


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *a):
        self.s = time.perf_counter() - self.t0
