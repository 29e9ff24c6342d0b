"""nearq adapter for erikbern/ann-benchmarks.

Copy this folder to ann_benchmarks/algorithms/nearq/ in an ann-benchmarks checkout
(module.py, config.yml, Dockerfile).  Interface: ann_benchmarks.algorithms.base.module.BaseANN.
"""
import numpy as np

import nearq

from ..base.module import BaseANN


class NearQ(BaseANN):
    def __init__(self, metric, method_param):
        # ann-benchmarks metrics -> nearq metrics.  Angular vectors arrive unnormalised;
        # nearq's "cosine" normalises data and queries internally.
        self._metric = {"angular": "cosine", "euclidean": "l2", "dot": "ip", "ip": "ip"}[metric]
        self._param = dict(method_param)
        self._ef = None
        self._index = None
        self.res = None
        self.name = "nearq (%s)" % (self._param,)

    def fit(self, X):
        X = np.ascontiguousarray(X, dtype=np.float32)
        p = self._param
        self._index = nearq.Index.build(
            X,
            metric=self._metric,
            encoding=p.get("encoding", "flat"),
            bits=p.get("bits"),
            keep_vectors=p.get("keep_vectors", True),
            degree=p.get("degree", 32),
            build_ef=p.get("build_ef", 128),
            alpha=p.get("alpha", 1.2),
            threads=None,  # build with every core; searches below use one thread
            seed=0,
        )

    def set_query_arguments(self, ef):
        self._ef = int(ef)
        self.name = "nearq (%s, 'ef': %d)" % (self._param, self._ef)

    @staticmethod
    def _clean(row, n):
        # at most n unique, non-negative ids, nearest first
        out = []
        seen = set()
        for i in row.tolist():
            if i < 0 or i in seen:
                continue
            seen.add(i)
            out.append(i)
            if len(out) == n:
                break
        return np.asarray(out, dtype=np.int64)

    def query(self, v, n):
        q = np.ascontiguousarray(v, dtype=np.float32).reshape(1, -1)
        res = self._index.search(q, k=n, ef=self._ef, threads=1)
        return self._clean(np.asarray(res.ids)[0], n)

    def batch_query(self, X, n):
        Q = np.ascontiguousarray(X, dtype=np.float32)
        res = self._index.search(Q, k=n, ef=self._ef, threads=None)
        self.res = [self._clean(r, n) for r in np.asarray(res.ids)]

    def get_batch_results(self):
        return self.res

    def get_memory_usage(self):
        # kilobytes, as the harness expects; the index's own accounting, not process RSS
        if self._index is None:
            return 0
        return self._index.memory_usage() / 1024

    def get_additional(self):
        return {"encoding": self._param.get("encoding", "flat")}

    def done(self):
        self._index = None

    def freeIndex(self):
        self._index = None

    def __str__(self):
        return self.name
