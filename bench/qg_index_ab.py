"""Interleaved A/B in one process: nearq.Index(encoding="rabitq", keep_vectors=True), which
searches through its quantized graph, vs nearq.experimental.QuantizedGraph on the same data
(one query per call, 1 thread, best of 7 rounds).  Usage: python bench/qg_index_ab.py [DATA.hdf5]"""
import time, h5py, numpy as np, nearq
from nearq.experimental import QuantizedGraph
import sys
f = h5py.File(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/data/pypi-minilm-384-angular-50k.hdf5")
X = np.asarray(f["train"], dtype=np.float32); Q = np.asarray(f["test"][:1000], dtype=np.float32)
gt = np.asarray(f["neighbors"][:1000, :10])
def rec(ids): return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, gt)])
idx = nearq.Index.build(X, metric="cosine", encoding="rabitq", bits=4, degree=32, build_ef=128, seed=0)
exp = QuantizedGraph.build(X, metric="cosine", degree=32, build_ef=128, seed=0)
print("build done", idx.quantized_graph, idx.build_params, flush=True)
for ef in (48, 64, 192):
    ri, re = rec(idx.search(Q, k=10, ef=ef).ids), rec(exp.search(Q, k=10, ef=ef).ids)
    bi = be = 1e9
    for rnd in range(7):
        t = time.perf_counter()
        for q in Q: idx.search(q, k=10, ef=ef, threads=1)
        bi = min(bi, time.perf_counter() - t)
        t = time.perf_counter()
        for q in Q: exp.search(q, k=10, ef=ef, threads=1)
        be = min(be, time.perf_counter() - t)
    print(f"ef={ef}: Index recall {ri:.4f} {len(Q)/bi:.0f} qps | experimental recall {re:.4f} {len(Q)/be:.0f} qps | ratio {be/bi:.3f}", flush=True)
