"""nearq (this project): the graph index with any encoding.

``mmap=True`` builds with float vectors kept, saves the index and reloads it with
``mmap="vectors"``: the codes are in RAM and the float vectors, read only to re-rank, are
served from a memory map and not counted by ``memory_usage()``."""
import os
import tempfile

import numpy as np

from .base import Algo, import_or_skip


def _set_env(params):
    """Environment switches of nearq for this configuration, read on first use (each
    configuration runs in its own process): ``simd="avx2"`` etc. caps the kernel level
    (``NEARQ_SIMD``), ``hugepages=False`` turns off the huge-page advice
    (``NEARQ_HUGEPAGES=0``), ``pq_fastscan=False`` makes 4-bit PQ traversal score one code at
    a time with the float LUT (``NEARQ_PQ_FASTSCAN=0``, the path before FastScan traversal);
    ``env={...}`` sets any other variables (A/B switches read by the library when an index is
    built); those are set for this configuration's build only and restored afterwards, since
    ``bench/paired.py`` builds every configuration in one process. Returns the restore."""
    if params.get("simd"):
        os.environ["NEARQ_SIMD"] = params["simd"]
    if params.get("hugepages") is False:
        os.environ["NEARQ_HUGEPAGES"] = "0"
    if params.get("pq_fastscan") is False:
        os.environ["NEARQ_PQ_FASTSCAN"] = "0"
    old = {k: os.environ.get(k) for k in params.get("env", {})}
    for k, v in params.get("env", {}).items():
        os.environ[k] = str(v)

    def restore():
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    return restore


class NearQ(Algo):
    def fit(self, X, build_threads):
        restore = _set_env(self.params)
        try:
            self._fit(X, build_threads)
        finally:
            restore()

    def _fit(self, X, build_threads):
        nearq = import_or_skip("nearq")
        if not hasattr(nearq, "Index"):
            from .base import Skip

            raise Skip("nearq imported but has no Index (extension not built?)")
        metric = {"euclidean": "l2", "angular": "cosine", "ip": "ip"}[self.metric]
        p = self.params
        self.index = nearq.Index.build(
            X,
            metric=metric,
            encoding=p.get("encoding", "flat"),
            bits=p.get("bits"),
            keep_vectors=p.get("keep_vectors", True),
            degree=p.get("degree", 32),
            build_ef=p.get("build_ef", 128),
            threads=build_threads,
            seed=0,
            **{k: p[k] for k in ("variant", "subspaces", "opq", "alpha", "quantized_graph") if k in p},
        )
        if p.get("mmap"):
            self._tmp = tempfile.TemporaryDirectory()
            path = os.path.join(self._tmp.name, "index.nearq")
            self.index.save(path)
            self.index = nearq.Index.load(path, mmap="vectors")

    def set_query_arg(self, ef):
        self.query_arg = ef
        # rerank="ef": re-rank the whole beam (encodings whose estimates are coarse)
        self.rerank = ef if self.params.get("rerank") == "ef" else self.params.get("rerank")

    def query(self, q, k):
        ids = self.index.search(q, k=k, ef=self.query_arg, threads=self.threads, rerank=self.rerank).ids[0]
        return ids if ids[-1] >= 0 else ids[ids >= 0]

    def batch_query(self, Q, k):
        return np.asarray(
            self.index.search(Q, k=k, ef=self.query_arg, threads=self.threads, rerank=self.rerank).ids
        )

    def memory_bytes(self):
        m = self.index.memory_usage(detail=True)
        how = "nearq.memory_usage()" + (f" (+{m['mmap']} B memory-mapped)" if m.get("mmap") else "")
        return int(m["total"]), how
