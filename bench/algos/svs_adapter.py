"""Intel SVS (PyPI 'scalable-vs', module 'svs'): Vamana graph over float32 / float16."""
import numpy as np

from .base import Algo, import_or_skip, serialized_size


class SVSVamana(Algo):
    def fit(self, X, build_threads):
        svs = import_or_skip("svs")
        self.svs = svs
        dist = svs.DistanceType.MIP if self.metric == "ip" else svs.DistanceType.L2
        bp = svs.VamanaBuildParameters(
            graph_max_degree=self.params.get("R", 32),
            window_size=self.params.get("L", 128),
            alpha=self.params.get("alpha", 0.95 if self.metric == "ip" else 1.2),
        )
        data = X.astype(np.float16) if self.params.get("dtype") == "f16" else X
        self.qdtype = np.float32
        self.index = svs.Vamana.build(bp, data, dist, num_threads=build_threads)

    def set_threads(self, n):
        self.threads = n
        self.index.num_threads = n

    def set_query_arg(self, L):
        self.query_arg = L
        self.index.search_window_size = L

    def query(self, q, k):
        I, _ = self.index.search(q.reshape(1, -1), k)
        return np.asarray(I[0], dtype=np.int64)

    def batch_query(self, Q, k):
        I, _ = self.index.search(Q, k)
        return np.asarray(I, dtype=np.int64)

    def memory_bytes(self):
        # SVS has no in-memory size report; its saved config+graph+data is the payload.
        def save(p):
            import os

            os.makedirs(p)
            self.index.save(os.path.join(p, "config"), os.path.join(p, "graph"), os.path.join(p, "data"))

        return serialized_size(save), "svs save() size"
