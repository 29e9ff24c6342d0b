"""faiss-cpu peers: HNSWFlat, HNSWPQ(+refine), IVF-PQ FastScan + refine, IVF-RaBitQ (+refine), flat."""
import math

import numpy as np

from .base import Algo, Skip, import_or_skip


class _Faiss(Algo):
    def _faiss(self):
        self.faiss = import_or_skip("faiss")
        return self.faiss

    def _metric(self):
        f = self.faiss
        return f.METRIC_INNER_PRODUCT if self.metric == "ip" else f.METRIC_L2

    def set_threads(self, n):
        self.threads = n
        self.faiss.omp_set_num_threads(n)

    def query(self, q, k):
        _, I = self.index.search(q.reshape(1, -1), k)
        ids = I[0]
        return ids[ids >= 0]

    def batch_query(self, Q, k):
        _, I = self.index.search(Q, k)
        return I

    def memory_bytes(self):
        return int(self.faiss.serialize_index(self.index).size), "faiss.serialize_index size"


class FaissHNSWFlat(_Faiss):
    def fit(self, X, build_threads):
        f = self._faiss()
        f.omp_set_num_threads(build_threads)
        self.index = f.IndexHNSWFlat(self.dim, self.params.get("M", 32), self._metric())
        self.index.hnsw.efConstruction = self.params.get("efConstruction", 200)
        self.index.add(X)

    def set_query_arg(self, ef):
        self.query_arg = ef
        self.index.hnsw.efSearch = ef


class FaissHNSWPQ(_Faiss):
    """IndexHNSWPQ; with k_factor > 0 wrapped in IndexRefineFlat (exact re-rank)."""

    def fit(self, X, build_threads):
        f = self._faiss()
        f.omp_set_num_threads(build_threads)
        pq_m = self.params.get("pq_m", self.dim // 4)
        base = f.IndexHNSWPQ(self.dim, pq_m, self.params.get("M", 32), 8, self._metric())
        base.hnsw.efConstruction = self.params.get("efConstruction", 200)
        self.hnsw = base
        kf = self.params.get("k_factor", 0)
        if kf:
            self.index = f.IndexRefineFlat(base)
            self.index.k_factor = kf
        else:
            self.index = base
        self.index.train(X[: min(len(X), 65536)])
        self.index.add(X)

    def set_query_arg(self, ef):
        self.query_arg = ef
        self.hnsw.hnsw.efSearch = ef


def _nlist(n, override=None):
    if override:
        return override
    return max(16, min(4096, int(2 * math.sqrt(n))))


class FaissIVFFactory(_Faiss):
    """Any 'IVF{nlist},<codec>[,RFlat]' factory string; query arg = nprobe or (nprobe, k_factor)."""

    def fit(self, X, build_threads):
        f = self._faiss()
        f.omp_set_num_threads(build_threads)
        nlist = _nlist(len(X), self.params.get("nlist"))
        spec = self.params["factory"].format(nlist=nlist, m4=self.dim // 2, m8=self.dim // 4)
        self.spec = spec
        try:
            self.index = f.index_factory(self.dim, spec, self._metric())
        except Exception as e:
            raise Skip(f"faiss {f.__version__} cannot build '{spec}': {e}")
        self.index.train(X[: min(len(X), max(50 * nlist, 65536))])
        self.index.add(X)
        self.ivf = f.extract_index_ivf(self.index)
        if self.params.get("qb") is not None and hasattr(self.ivf, "qb"):
            self.ivf.qb = self.params["qb"]
        if hasattr(self.index, "k_factor"):
            self.index.k_factor = self.params.get("k_factor", 4)

    def set_query_arg(self, arg):
        self.query_arg = arg
        if isinstance(arg, (list, tuple)):
            nprobe, kf = arg
            self.index.k_factor = kf
        else:
            nprobe = arg
        self.ivf.nprobe = nprobe


class FaissRaBitQFlat(_Faiss):
    """IndexRaBitQ (1-bit, no IVF) + exact refine; query arg = k_factor."""

    def fit(self, X, build_threads):
        f = self._faiss()
        if not hasattr(f, "IndexRaBitQ"):
            raise Skip(f"faiss {f.__version__} has no IndexRaBitQ")
        f.omp_set_num_threads(build_threads)
        self.base = f.IndexRaBitQ(self.dim, self._metric())
        self.index = f.IndexRefineFlat(self.base)
        self.index.train(X)
        self.index.add(X)

    def set_query_arg(self, kf):
        self.query_arg = kf
        self.index.k_factor = kf


class FaissFlat(_Faiss):
    def fit(self, X, build_threads):
        f = self._faiss()
        self.index = f.IndexFlatIP(self.dim) if self.metric == "ip" else f.IndexFlatL2(self.dim)
        self.index.add(X)
