#!/usr/bin/env python3
"""Paired, interleaved speed comparison of a few configurations in ONE process.

    python bench/paired.py --data PATH --algos A,B[,C...] [--target 0.95] [--rounds 15]
                           [--chunk 100] [--out DIR]

`run.py` runs every configuration in its own process, one after the other, so on a shared
machine two configurations are timed minutes apart and see different load: rounds of one point
differed by up to 2x on the benchmark machine. Here all configurations are built in one process
(same data, one search thread), each one's query argument is chosen once (the fastest argument
of its grid whose recall@10 reaches --target, the grids being ordered by effort), and then
the timed passes interleave: per round, the queries are cut into chunks of --chunk and every
chunk is run by each configuration in turn (order rotated per chunk), so load changes hit all
of them alike. Per round and configuration, QPS = queries / seconds on three clocks: process
CPU time, the calling thread's CPU time, and wall-clock time (see `timed_pass`); the report
gives, per clock, the median and best QPS, and for each pair the median of the per-round
ratios (the figure to quote) with its spread. On an otherwise idle machine the wall clock is
the one to quote: process CPU time also charges a configuration for CPU that other threads of
the process (a library's worker pool still spinning after its last call) burn meanwhile.

Recall at the chosen argument is measured on all queries (deterministic for a built index).
Queries are answered one per call (`query`), as in run.py's single mode.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

# One search thread, and no BLAS thread pool spinning on the process's CPU time (set before
# numpy is imported).
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
           "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
    os.environ.setdefault(_v, "1")

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import numpy as np  # noqa: E402

import algos  # noqa: E402
import common  # noqa: E402

K = 10


CLOCKS = ("process", "thread", "wall")


def timed_pass(algo, Q):
    """Seconds one pass over Q takes on each clock: process CPU time (every thread of the
    process, so a library's worker threads that keep spinning after a call are charged to
    whatever runs next), the calling thread's CPU time (misses work done in other threads),
    and wall-clock time (the one to quote on an otherwise idle machine)."""
    q = algo.query
    c0, t0, w0 = time.process_time(), time.thread_time(), time.perf_counter()
    for v in Q:
        q(v, K)
    return (time.process_time() - c0, time.thread_time() - t0, time.perf_counter() - w0)


def recall(algo, train, test, gt, gt_kth, metric):
    ids = common.pad_ids([algo.query(v, K) for v in test], K)
    dist = common.true_distances(train, test, ids, metric)
    return common.recall_at_k(ids, gt, gt_kth, dist, K)[1]


def choose_arg(name, algo, cfg, train, test, gt, gt_kth, metric, target):
    """The first (cheapest) query argument of the grid whose recall reaches `target`: the grids
    are ordered by search effort (beam width, probes), so it is the fastest such argument
    (choosing by timed sweeps instead would let noise pick a slower one)."""
    for qa in cfg["query_args"]:
        algo.set_query_arg(qa)
        rec = recall(algo, train, test, gt, gt_kth, metric)
        print(f"  [{name}] arg={qa!s:8s} recall={rec:.4f}", flush=True)
        if rec >= target:
            return qa, rec
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--algos", required=True, help="comma list of configuration names (bench/algos)")
    ap.add_argument("--target", type=float, default=0.95, help="recall@10 the chosen argument must reach")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--chunk", type=int, default=100, help="queries per interleaved chunk")
    ap.add_argument("--build-threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--limit-train", type=int, default=None)
    ap.add_argument("--limit-queries", type=int, default=None)
    ap.add_argument("--out", default=None, help="directory for paired.json and paired.md")
    a = ap.parse_args(argv)

    ds = common.load_dataset(a.data, a.limit_train, a.limit_queries)
    metric = ds["metric"]
    train, test = ds["train"], ds["test"]
    if metric == "angular":
        train, test = common.normalize(train), common.normalize(test)
    gt = ds["neighbors"]
    if gt is None or gt.shape[1] < K:
        gt = common.exact_knn(train, test, K, metric)
    gt = gt[:, :K]
    gt_kth = common.true_distances(train, test, gt, metric)[:, K - 1]
    train = np.ascontiguousarray(train, dtype=np.float32)
    test = np.ascontiguousarray(test, dtype=np.float32)

    names = [n.strip() for n in a.algos.split(",") if n.strip()]
    runs = {}
    for name in names:
        cls, cfg = algos.load(name)
        algo = cls(metric, train.shape[1], **cfg["params"])
        # Environment switches a configuration sets (`env={...}`) are undone after its build,
        # so the next configuration does not inherit them: in one process, only switches the
        # library reads at build or load time can differ between configurations.
        saved = dict(os.environ)
        t0 = time.perf_counter()
        algo.fit(train, a.build_threads)
        build_s = time.perf_counter() - t0
        os.environ.clear()
        os.environ.update(saved)
        algo.set_threads(1)
        mem, _ = algo.memory_bytes()
        print(f"[{name}] built in {build_s:.1f}s", flush=True)
        algo.set_query_arg(cfg["query_args"][0])
        timed_pass(algo, test[:200])  # warm-up
        pick = choose_arg(name, algo, cfg, train, test, gt, gt_kth, metric, a.target)
        if pick is None:
            print(f"[{name}] never reaches recall {a.target}: left out", flush=True)
            continue
        algo.set_query_arg(pick[0])
        runs[name] = dict(algo=algo, arg=pick[0], recall=pick[1], build_s=build_s,
                          bytes_per_vector=None if mem is None else mem / len(train),
                          qps={c: [] for c in CLOCKS})
        print(f"[{name}] chosen arg={pick[0]} recall={pick[1]:.4f}", flush=True)

    order = list(runs)
    chunks = [test[i:i + a.chunk] for i in range(0, len(test), a.chunk)]
    for r in range(a.rounds):
        secs = {n: [0.0] * len(CLOCKS) for n in order}
        for ci, ch in enumerate(chunks):
            rot = order[(ci + r) % len(order):] + order[:(ci + r) % len(order)]
            for n in rot:
                secs[n] = [a + b for a, b in zip(secs[n], timed_pass(runs[n]["algo"], ch))]
        line = []
        for n in order:
            for c, t in zip(CLOCKS, secs[n]):
                runs[n]["qps"][c].append(len(test) / max(t, 1e-9))
            line.append(f"{n}={runs[n]['qps']['process'][-1]:.0f}/{runs[n]['qps']['wall'][-1]:.0f}")
        print(f"round {r + 1} (process CPU / wall QPS): " + "  ".join(line), flush=True)

    out = dict(data=os.path.basename(a.data), target=a.target, rounds=a.rounds, chunk=a.chunk,
               queries=len(test), clocks={}, configs={})
    md_all = []
    for c in CLOCKS:
        rows, ratio_rows, ratios = [], [], {}
        for n in order:
            q = runs[n]["qps"][c]
            out["configs"].setdefault(n, dict(arg=runs[n]["arg"], recall=runs[n]["recall"],
                                              build_s=runs[n]["build_s"],
                                              bytes_per_vector=runs[n]["bytes_per_vector"]))
            out["configs"][n][f"qps_{c}"] = dict(rounds=q, median=statistics.median(q), best=max(q))
            rows.append(f"| {n} | {runs[n]['arg']} | {runs[n]['recall']:.4f} | {statistics.median(q):,.0f} | "
                        f"{max(q):,.0f} | {min(q):,.0f} |")
        for i, x in enumerate(order):
            for y in order[i + 1:]:
                rs = [p / s for p, s in zip(runs[x]["qps"][c], runs[y]["qps"][c])]
                qs = statistics.quantiles(rs, n=4) if len(rs) >= 2 else [rs[0]] * 3
                ratios[f"{x}/{y}"] = dict(per_round=rs, median=statistics.median(rs), q1=qs[0], q3=qs[2],
                                          min=min(rs), max=max(rs))
                ratio_rows.append(f"| {x} / {y} | {statistics.median(rs):.3f} | {qs[0]:.3f} – {qs[2]:.3f} | "
                                  f"{min(rs):.3f} – {max(rs):.3f} |")
        out["clocks"][c] = ratios
        md_all += [f"### {c} clock" + (" (CPU time of the whole process)" if c == "process" else
                                       " (CPU time of the calling thread)" if c == "thread" else ""),
                   "", "| config | query arg | recall@10 | median QPS | best QPS | worst QPS |",
                   "|---|--:|--:|--:|--:|--:|", *rows, "",
                   "| ratio (per round, paired) | median | quartiles | range |", "|---|--:|--:|--:|",
                   *ratio_rows, ""]
    print("\n".join(md_all))
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        json.dump(out, open(os.path.join(a.out, "paired.json"), "w"), indent=1)
        with open(os.path.join(a.out, "paired.md"), "w") as f:
            f.write(f"{a.rounds} rounds, chunks of {a.chunk} queries interleaved, one thread, "
                    f"one query per call, recall target {a.target}; QPS on three clocks\n\n"
                    + "\n".join(md_all) + "\n")


if __name__ == "__main__":
    main()
