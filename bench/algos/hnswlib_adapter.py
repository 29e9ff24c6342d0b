"""hnswlib (nmslib): reference HNSW implementation."""
import numpy as np

from .base import Algo, import_or_skip, serialized_size


class Hnswlib(Algo):
    def fit(self, X, build_threads):
        hnswlib = import_or_skip("hnswlib")
        space = {"euclidean": "l2", "angular": "l2", "ip": "ip"}[self.metric]
        self.index = hnswlib.Index(space=space, dim=self.dim)
        self.index.init_index(
            max_elements=len(X), ef_construction=self.params.get("efConstruction", 200),
            M=self.params.get("M", 16), random_seed=0,
        )
        self.index.set_num_threads(build_threads)
        self.index.add_items(X, np.arange(len(X)), num_threads=build_threads)

    def set_threads(self, n):
        self.threads = n
        self.index.set_num_threads(n)

    def set_query_arg(self, ef):
        self.query_arg = ef
        self.index.set_ef(ef)

    def query(self, q, k):
        return self.index.knn_query(q.reshape(1, -1), k=k, num_threads=1)[0][0]

    def batch_query(self, Q, k):
        return self.index.knn_query(Q, k=k, num_threads=self.threads)[0].astype(np.int64)

    def memory_bytes(self):
        return serialized_size(self.index.save_index), "hnswlib save_index size"
