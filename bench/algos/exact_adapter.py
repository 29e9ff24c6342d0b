"""Exact search baselines: numpy (BLAS matmul + argpartition) and faiss IndexFlat."""
import numpy as np

from .base import Algo


class NumpyExact(Algo):
    def fit(self, X, build_threads):
        self.X = X
        self.norms = (X ** 2).sum(axis=1) if self.metric == "euclidean" else None

    def set_threads(self, n):
        self.threads = n
        try:
            import threadpoolctl

            self._limit = threadpoolctl.threadpool_limits(n)
        except ImportError:
            pass

    def _scores(self, Q):
        d = -(Q @ self.X.T)
        if self.norms is not None:
            d = self.norms[None, :] + 2.0 * d
        return d

    def query(self, q, k):
        d = -(self.X @ q)
        if self.norms is not None:
            d = self.norms + 2.0 * d
        part = np.argpartition(d, k - 1)[:k]
        return part[np.argsort(d[part])]

    def batch_query(self, Q, k):
        d = self._scores(Q)
        part = np.argpartition(d, k - 1, axis=1)[:, :k]
        order = np.argsort(np.take_along_axis(d, part, axis=1), axis=1)
        return np.take_along_axis(part, order, axis=1)

    def memory_bytes(self):
        return int(self.X.nbytes), "raw float32 array"
