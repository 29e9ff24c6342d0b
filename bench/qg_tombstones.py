"""Tombstones with the quantized graph: QPS/recall of the accept check (deleted nodes route but
are not returned) vs no tombstones vs the codes path (quantized_graph=False), 30k MiniLM
vectors, 5% deleted (below the consolidation threshold).  Usage: python bench/qg_tombstones.py [DATA.hdf5]"""
import time, h5py, numpy as np, nearq
import sys
f = h5py.File(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/data/pypi-minilm-384-angular-50k.hdf5")
X = np.asarray(f["train"][:30000], dtype=np.float32); Q = np.asarray(f["test"][:500], dtype=np.float32)
idx = nearq.Index.build(X, metric="cosine", encoding="rabitq", bits=4, threads=2)
import pickle
dead = np.arange(0, 30000, 20)  # 5%: stays below the 10% consolidation threshold
live = np.setdiff1d(np.arange(30000), dead)
gt = nearq.exact_search(X[live], Q, k=10, metric="cosine")[0]
gt = live[gt]
def rec(ids): return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, gt)])
noqg = nearq.Index.build(X, metric="cosine", encoding="rabitq", bits=4, threads=2, quantized_graph=False, alpha=1.1)
clean = pickle.loads(pickle.dumps(idx))
idx.delete(dead); noqg.delete(dead)
assert idx.quantized_graph and len(idx) == len(live)
gt_all = nearq.exact_search(X, Q, k=10, metric="cosine")[0]
def rec_all(ids): return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, gt_all)])
best = {}
for rnd in range(3):
    for ef in (32, 64, 128):
        for name, ix, kw, r in (("qg+tombstones(accept)", idx, {}, rec), ("qg no tombstones", clean, {}, rec_all), ("codes path+tombstones", noqg, {"rerank": ef}, rec)):
            t = time.perf_counter()
            for q in Q: ix.search(q, k=10, ef=ef, threads=1, **kw)
            dt = time.perf_counter() - t
            res = ix.search(Q, k=10, ef=ef, threads=1, **kw).ids
            assert not np.isin(res, dead).any() or name == "qg no tombstones"
            key = (name, ef)
            best[key] = (r(res), max(best.get(key, (0, 0))[1], len(Q) / dt))
for (name, ef), (r, qps) in sorted(best.items()):
    print(f"{name:24s} ef={ef:4d} recall={r:.3f} qps={qps:.0f}")
