"""USearch (unum-cloud): HNSW with f32 / f16 / i8 storage."""
import numpy as np

from .base import Algo, import_or_skip


class USearch(Algo):
    def fit(self, X, build_threads):
        u = import_or_skip("usearch.index")
        metric = {"euclidean": "l2sq", "angular": "cos", "ip": "ip"}[self.metric]
        self.index = u.Index(
            ndim=self.dim, metric=metric, dtype=self.params.get("dtype", "f32"),
            connectivity=self.params.get("M", 32),
            expansion_add=self.params.get("efConstruction", 200), expansion_search=64,
        )
        self.index.add(np.arange(len(X), dtype=np.uint64), X, threads=build_threads)

    def set_query_arg(self, ef):
        self.query_arg = ef
        self.index.expansion_search = ef

    def query(self, q, k):
        m = self.index.search(q, k, threads=1)
        return np.asarray(m.keys, dtype=np.int64)

    def batch_query(self, Q, k):
        m = self.index.search(Q, k, threads=self.threads)
        keys = np.asarray(m.keys).astype(np.int64)
        counts = np.asarray(m.counts)
        for i, c in enumerate(counts):
            keys[i, c:] = -1
        return keys

    def memory_bytes(self):
        return int(self.index.memory_usage), "usearch Index.memory_usage"
