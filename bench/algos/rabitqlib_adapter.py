"""RaBitQ-Library (PyPI 'rabitqlib'): SymphonyQG graph, HNSW+RaBitQ (4/8 bit), IVF+RaBitQ."""
import numpy as np

from .base import Algo, import_or_skip, serialized_size


def _clusters(X, k, threads):
    """k-means for the HNSW/IVF partitions: faiss if present, else rabitqlib's own."""
    try:
        import faiss

        faiss.omp_set_num_threads(threads)
        km = faiss.Kmeans(X.shape[1], k, niter=10, seed=1, max_points_per_centroid=256)
        km.train(X)
        _, a = km.index.search(X, 1)
        return np.ascontiguousarray(km.centroids, dtype=np.float32), a[:, 0].astype(np.uint32)
    except ImportError:
        import rabitqlib

        km = rabitqlib.RaBitQKMeans(X.shape[1], k, niter=10, num_threads=threads)
        km.train(X)
        return np.ascontiguousarray(km.centroids, dtype=np.float32), np.asarray(km.assignments, dtype=np.uint32)


class _RQ(Algo):
    def _metric(self):
        return "ip" if self.metric == "ip" else "l2"

    def query(self, q, k):
        ids, _ = self._search(q.reshape(1, -1), k, 1)
        return np.asarray(ids[0], dtype=np.int64)

    def batch_query(self, Q, k):
        ids, _ = self._search(Q, k, self.threads)
        return np.asarray(ids, dtype=np.int64)

    def memory_bytes(self):
        return serialized_size(self.index.save), "rabitqlib save() size"


class RQSymqg(_RQ):
    def fit(self, X, build_threads):
        r = import_or_skip("rabitqlib")
        self.index = r.SymqgIndex(self.dim, self.params.get("degree", 32), metric=self._metric(),
                                  quantization_bits=self.params.get("bits", 0))
        self.index.build(X, self.params.get("efConstruction", 200), num_threads=build_threads)

    def _search(self, Q, k, t):
        return self.index.search(Q, k, self.query_arg, num_threads=t)


class RQHnsw(_RQ):
    def fit(self, X, build_threads):
        r = import_or_skip("rabitqlib")
        cents, assign = _clusters(X, self.params.get("clusters", 16), build_threads)
        self.index = r.HnswIndex(self.dim, len(X), M=self.params.get("M", 16),
                                 ef_construction=self.params.get("efConstruction", 200),
                                 nbits=self.params.get("bits", 8), metric=self._metric())
        self.index.build(X, cents, assign, num_threads=build_threads)

    def _search(self, Q, k, t):
        return self.index.search(Q, k, ef=self.query_arg, num_threads=t)


class RQIvf(_RQ):
    def fit(self, X, build_threads):
        r = import_or_skip("rabitqlib")
        import math

        nlist = self.params.get("nlist") or max(16, int(2 * math.sqrt(len(X))))
        cents, assign = _clusters(X, nlist, build_threads)
        self.index = r.IvfIndex(self.dim, len(X), nlist, self.params.get("bits", 4), metric=self._metric())
        self.index.build(X, cents, assign, num_threads=build_threads)

    def _search(self, Q, k, t):
        return self.index.search(Q, k, nprobe=self.query_arg, num_threads=t)
