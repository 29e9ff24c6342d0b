"""nearq.experimental.QuantizedGraph (SymphonyQG layout)."""
import numpy as np

from .base import Algo, import_or_skip


class NearQG(Algo):
    def fit(self, X, build_threads):
        from .nearq_adapter import _set_env

        _set_env(self.params)
        import_or_skip("nearq")
        from nearq.experimental import QuantizedGraph

        metric = {"euclidean": "l2", "angular": "cosine"}[self.metric]
        p = self.params
        extra = {"alpha": p["alpha"]} if "alpha" in p else {}
        self.index = QuantizedGraph.build(
            X, metric=metric, degree=p.get("degree", 32), build_ef=p.get("build_ef", 128), threads=build_threads,
            **extra,
        )

    def set_query_arg(self, ef):
        self.query_arg = ef

    def query(self, q, k):
        ids = self.index.search(q, k=k, ef=self.query_arg, threads=self.threads).ids[0]
        return ids if ids[-1] >= 0 else ids[ids >= 0]

    def batch_query(self, Q, k):
        return np.asarray(self.index.search(Q, k=k, ef=self.query_arg, threads=self.threads).ids)

    def memory_bytes(self):
        return int(self.index.memory_usage()), "QuantizedGraph.memory_usage()"
