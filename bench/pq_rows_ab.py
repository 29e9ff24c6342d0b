"""A/B of 4-bit PQ traversal with and without neighbour-code rows, in one process.

    python bench/pq_rows_ab.py --data PATH [--m 192] [--ef 40] [--rounds 15]

Builds the same index twice (``quantized_graph=False`` / ``True``, floats kept and served from
a memory map, as the ``nearq-pq4-mmap`` configuration), then alternates the two over all test
queries (one thread, one batch call per round) and keeps each one's best process-CPU time,
so the ratio is robust to the machine's other load. Results must be identical; the script
checks it and prints recall@10, QPS of both and their ratio."""
import argparse
import os
import tempfile
import time

import h5py
import numpy as np

import nearq


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--m", type=int, default=192)
    ap.add_argument("--ef", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=15)
    a = ap.parse_args()
    with h5py.File(a.data, "r") as f:
        x = np.asarray(f["train"], dtype=np.float32)
        q = np.asarray(f["test"], dtype=np.float32)
        truth = np.asarray(f["neighbors"])[:, :10]
    idx = {}
    with tempfile.TemporaryDirectory() as d:
        for on in (False, True):
            path = os.path.join(d, f"{on}.nearq")
            nearq.Index.build(x, metric="cosine", encoding="pq", bits=4, subspaces=a.m, degree=32,
                              build_ef=128, seed=0, quantized_graph=on).save(path)
            idx[on] = nearq.Index.load(path, mmap="vectors")
        best = {False: float("inf"), True: float("inf")}
        res = {}
        for _ in range(a.rounds):
            for on in (False, True):
                t = time.process_time()
                res[on] = idx[on].search(q, k=10, ef=a.ef, threads=1)
                best[on] = min(best[on], time.process_time() - t)
    assert np.array_equal(res[False].ids, res[True].ids)
    rec = np.mean([len(set(r) & set(t)) / 10 for r, t in zip(res[True].ids, truth)])
    print(f"m={a.m} ef={a.ef} recall@10={rec:.4f} gather {len(q) / best[False]:.0f} QPS, "
          f"rows {len(q) / best[True]:.0f} QPS, rows/gather {best[False] / best[True]:.3f}")


if __name__ == "__main__":
    main()
