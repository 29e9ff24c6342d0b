"""Intel SVS (PyPI 'scalable-vs', module 'svs'): Vamana graph over float32 / float16 / LVQ.

LVQ (``dtype="lvq4x8"`` etc.) runs only on Intel CPUs (SVS refuses other vendors); the data is
written to a temporary ``.fvecs`` file because SVS's LVQ loader compresses from a file loader.
``capacity`` > 1 sets the search buffer to ``capacity * L`` (more candidates re-ranked with the
residual level), SVS's knob for trading speed for recall with two-level LVQ.
"""
import os
import tempfile

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
        dtype = self.params.get("dtype", "f32")
        self.qdtype = np.float32
        if dtype.startswith("lvq"):
            bits = dtype[3:].split("x")
            primary, residual = int(bits[0]), int(bits[1]) if len(bits) > 1 else 0
            with tempfile.TemporaryDirectory() as d:
                path = os.path.join(d, "x.fvecs")
                svs.write_vecs(np.ascontiguousarray(X, dtype=np.float32), path)
                loader = svs.LVQLoader(
                    svs.VectorDataLoader(path, svs.DataType.float32),
                    primary=primary,
                    residual=residual,
                    padding=self.params.get("padding", 32),
                )
                self.index = svs.Vamana.build(bp, loader, dist, num_threads=build_threads)
        else:
            data = X.astype(np.float16) if dtype == "f16" else X
            self.index = svs.Vamana.build(bp, data, dist, num_threads=build_threads)

    def set_threads(self, n):
        self.threads = n
        self.index.num_threads = n

    def set_query_arg(self, L):
        self.query_arg = L
        cap = self.params.get("capacity", 1)
        if cap > 1:
            sp = self.index.search_parameters
            sp.buffer_config = self.svs.SearchBufferConfig(L, int(cap * L))
            self.index.search_parameters = sp
        else:
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
