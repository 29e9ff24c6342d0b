"""turbovec: TurboQuant 2-4 bit codes, exhaustive SIMD scan (no graph, no search knob)."""
import numpy as np

from .base import Algo, Skip, import_or_skip


class TurboVec(Algo):
    # Thread pool is sized from RAYON_NUM_THREADS at import: one process per mode.
    RUNTIME_THREADS = False

    def fit(self, X, build_threads):
        tv = import_or_skip("turbovec")
        if self.metric == "euclidean":
            raise Skip("turbovec scores by inner product; only angular/ip data are benchmarked")
        self.index = tv.TurboQuantIndex(dim=self.dim, bit_width=self.params.get("bits", 4))
        if self.params.get("calibrate", True):
            rng = np.random.default_rng(0)
            self.index.calibrate(X[rng.choice(len(X), min(len(X), 1024), replace=False)])
        self.index.add(X)
        self.index.prepare()

    def query(self, q, k):
        _, ids = self.index.search(q.reshape(1, -1), k)
        return np.asarray(ids[0], dtype=np.int64)

    def batch_query(self, Q, k):
        _, ids = self.index.search(Q, k)
        return np.asarray(ids, dtype=np.int64)

    def memory_bytes(self):
        return len(self.index.to_bytes()), "turbovec to_bytes() size"
