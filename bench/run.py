#!/usr/bin/env python3
"""Benchmark nearq against its peers on any ann-benchmarks HDF5 file.

    python bench/run.py --data PATH [--algos nearq,faiss-hnsw,...] [--threads 1,all]
                        [--batch] [--out bench/results/NAME] [--limit-train N] [--quick]

Every algorithm configuration runs in its own subprocess (isolation from crashes, clean
RSS for memory, thread env set before any library import).  Outputs in --out:
results.json, table.md, recall_qps.png (if matplotlib is importable).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import numpy as np  # noqa: E402

import common  # noqa: E402

THREAD_ENV = ["OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
              "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "RAYON_NUM_THREADS"]
THRESHOLDS = (0.90, 0.95, 0.99)
K = 10


def parse_threads(spec):
    n = os.cpu_count() or 1
    out = []
    for t in spec.split(","):
        t = t.strip()
        out.append(n if t == "all" else int(t))
    return list(dict.fromkeys(out))


# ----------------------------------------------------------------------------- child
def child_main(a):
    """Build one configuration and sweep its query arguments for the given thread modes."""
    import algos

    d = a.child_data
    train = np.load(os.path.join(d, "train.npy"), mmap_mode="r")
    train = np.ascontiguousarray(train)
    test = np.load(os.path.join(d, "test.npy"))
    gt = np.load(os.path.join(d, "gt.npy"))
    gt_kth = np.load(os.path.join(d, "gt_kth.npy"))
    meta = json.load(open(os.path.join(d, "meta.json")))
    metric = meta["metric"]
    threads_list = [int(t) for t in a.child_threads.split(",")]
    modes = a.child_modes.split(",")
    out = {"algo": a.child, "points": [], "status": "ok"}

    def dump():
        with open(a.child_out, "w") as f:
            json.dump(out, f)

    try:
        cls, cfg = algos.load(a.child)
        algo = cls(metric, train.shape[1], **cfg["params"])
        out["params"] = cfg["params"]
        rss0 = common.rss_bytes()
        t0 = time.perf_counter()
        algo.fit(train, a.build_threads)
        build_s = time.perf_counter() - t0
        rss1 = common.rss_bytes()
        mem, how = algo.memory_bytes()
        if mem is None:
            mem, how = max(0, rss1 - rss0), "RSS delta over fit()"
        out.update(build_s=build_s, build_threads=a.build_threads, memory_bytes=int(mem),
                   memory_method=how, rss_delta_bytes=int(rss1 - rss0),
                   bytes_per_vector=float(mem) / len(train))
        print(f"  [{a.child}] built in {build_s:.1f}s, {mem / len(train):.0f} B/vector ({how})", flush=True)
        qargs = cfg["quick_args"] if a.quick else cfg["query_args"]
        warm_n = min(len(test), 200)
        for threads in threads_list:
            algo.set_threads(threads)
            for mode in modes:
                algo.set_query_arg(qargs[0])
                _run(algo, test[:warm_n], mode)  # warm-up (caches, thread pools, lazy init)
                for qa in qargs:
                    algo.set_query_arg(qa)
                    _run(algo, test[: min(50, len(test))], mode)
                    best = best_cpu = None
                    for _ in range(a.repeats):
                        ids, secs, cpu = _run(algo, test, mode)
                        best = secs if best is None else min(best, secs)
                        best_cpu = cpu if best_cpu is None else min(best_cpu, cpu)
                    dist = common.true_distances(train, test, ids, metric)
                    rec_ids, rec = common.recall_at_k(ids, gt, gt_kth, dist, K)
                    p = dict(algo=a.child, family=cfg["family"], params=cfg["params"],
                             query_arg=qa, threads=threads, mode=mode, recall=rec,
                             recall_ids=rec_ids, qps=len(test) / best,
                             qps_cpu=len(test) / max(best_cpu, 1e-9), build_s=build_s,
                             bytes_per_vector=out["bytes_per_vector"])
                    out["points"].append(p)
                    print(f"  [{a.child}] t={threads} {mode:6s} arg={qa!s:10s} recall={rec:.4f} "
                          f"qps={p['qps']:.0f} cpu-qps={p['qps_cpu']:.0f}", flush=True)
                    dump()
                    if rec >= a.stop_recall:
                        break
    except Exception as e:  # noqa: BLE001
        from algos.base import Skip

        if isinstance(e, Skip):
            out["status"] = "skipped"
            out["reason"] = str(e)
        else:
            import traceback

            traceback.print_exc()
            out["status"] = "error"
            out["reason"] = f"{type(e).__name__}: {e}"
        print(f"  [{a.child}] {out['status']}: {out['reason']}", flush=True)
    dump()


def _run(algo, Q, mode):
    """Run all queries; return (ids, wall seconds, process CPU seconds)."""
    if mode == "batch":
        c0, t0 = time.process_time(), time.perf_counter()
        ids = algo.batch_query(Q, K)
        return np.asarray(ids), time.perf_counter() - t0, time.process_time() - c0
    res = []
    q = algo.query
    c0, t0 = time.process_time(), time.perf_counter()
    for v in Q:
        res.append(q(v, K))
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    return common.pad_ids(res, K), secs, cpu


# ----------------------------------------------------------------------------- parent
def prepare_data(a, tmp):
    print(f"loading {a.data}", flush=True)
    ds = common.load_dataset(a.data, a.limit_train, a.limit_queries)
    metric = ds["metric"]
    if metric not in ("euclidean", "angular", "ip"):
        raise SystemExit(f"unsupported distance '{metric}' in {a.data}")
    train, test = ds["train"], ds["test"]
    if metric == "angular":
        # Every peer gets unit vectors (L2 on them ranks like cosine); nearq is still
        # built with metric='cosine'.
        train, test = common.normalize(train), common.normalize(test)
    gt = ds["neighbors"]
    if gt is None or gt.shape[1] < K:
        print(f"computing exact ground truth for {len(test)} queries over {len(train)} vectors", flush=True)
        gt = common.exact_knn(train, test, K, metric)
    gt = gt[:, :K]
    gt_kth = common.true_distances(train, test, gt, metric)[:, K - 1]
    np.save(os.path.join(tmp, "train.npy"), train)
    np.save(os.path.join(tmp, "test.npy"), test)
    np.save(os.path.join(tmp, "gt.npy"), gt)
    np.save(os.path.join(tmp, "gt_kth.npy"), gt_kth)
    meta = dict(metric=metric, n_train=len(train), n_test=len(test), dim=train.shape[1])
    json.dump(meta, open(os.path.join(tmp, "meta.json"), "w"))
    return meta


def spawn(a, name, tmp, threads, env_threads):
    part = os.path.join(tmp, f"{name}-{'_'.join(map(str, threads))}.json")
    env = dict(os.environ)
    for k in THREAD_ENV:
        env[k] = str(env_threads)
    modes = (["single"] if not a.batch_only else []) + (["batch"] if a.batch or a.batch_only else [])
    cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--child-data", tmp,
           "--child-out", part, "--child-threads", ",".join(map(str, threads)),
           "--child-modes", ",".join(modes), "--build-threads", str(a.build_threads),
           "--repeats", str(a.repeats), "--stop-recall", str(a.stop_recall)]
    if a.quick:
        cmd.append("--quick")
    t0 = time.time()
    try:
        rc = subprocess.run(cmd, env=env, timeout=a.algo_timeout).returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    res = json.load(open(part)) if os.path.exists(part) else {"algo": name, "points": []}
    if rc != 0 and res.get("status", "ok") == "ok":
        res["status"] = "error"
        res["reason"] = f"child exited with {rc} after {time.time() - t0:.0f}s (partial points kept)"
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="ann-benchmarks HDF5 file")
    ap.add_argument("--algos", default="", help="comma list of configs or families (default: a broad set; 'all')")
    ap.add_argument("--list", action="store_true", help="list configurations and exit")
    ap.add_argument("--threads", default="1", help="search thread modes, e.g. '1', 'all', '1,all'")
    ap.add_argument("--build-threads", type=int, default=os.cpu_count() or 1,
                    help="threads for index construction (default: all cores)")
    ap.add_argument("--batch", action="store_true", help="also measure batch QPS (all queries in one call)")
    ap.add_argument("--batch-only", action="store_true", help="measure only batch QPS")
    ap.add_argument("--out", default=None, help="output directory (default bench/results/<dataset>)")
    ap.add_argument("--limit-train", type=int, default=None, help="use the first N train vectors (exact GT recomputed)")
    ap.add_argument("--limit-queries", type=int, default=None)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 10k train / 200 queries unless given, short sweeps, 1 repeat")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per point, best kept (default 2)")
    ap.add_argument("--stop-recall", type=float, default=0.999, help="stop a sweep once recall reaches this")
    ap.add_argument("--algo-timeout", type=int, default=3600, help="seconds per configuration")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--rounds", type=int, default=1, help="run the whole list this many times in turn (best kept)")
    for h in ("--child", "--child-data", "--child-out", "--child-threads", "--child-modes"):
        ap.add_argument(h, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.repeats is None:
        a.repeats = 1 if a.quick else 2
    if a.child:
        return child_main(a)

    import algos

    if a.list:
        for n, c in algos.CONFIGS.items():
            print(f"{n:28s} {'*' if n in algos.DEFAULT else ' '} {c['family']:14s} {c['params']}")
        return
    if not a.data:
        ap.error("--data is required")
    if a.quick:
        a.limit_train = a.limit_train or 10000
        a.limit_queries = a.limit_queries or 200
    names = algos.select(a.algos)
    threads = parse_threads(a.threads)
    out = a.out or os.path.join(HERE, "results", os.path.splitext(os.path.basename(a.data))[0])
    os.makedirs(out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="nearq-bench-")
    meta = prepare_data(a, tmp)
    print(f"{meta['n_train']} x {meta['dim']} ({meta['metric']}), {meta['n_test']} queries; "
          f"configs: {', '.join(names)}; search threads {threads}", flush=True)
    runs = {}
    # --rounds N: the whole list runs N times in turn, so a slow spell of a shared machine
    # hits every configuration alike; each point keeps its best round, each build its fastest.
    for rnd in range(a.rounds):
        for name in names:
            cls, _ = algos.load(name)
            print(f"== {name}" + (f" (round {rnd + 1}/{a.rounds})" if a.rounds > 1 else ""), flush=True)
            if cls.RUNTIME_THREADS:
                r = spawn(a, name, tmp, threads, max(threads))
            else:
                r = None
                for t in threads:
                    rt = spawn(a, name, tmp, [t], t)
                    if r is None:
                        r = rt
                    else:
                        r["points"].extend(rt.get("points", []))
            prev = runs.get(name)
            if prev is not None:
                r["points"] = prev.get("points", []) + r.get("points", [])
                if prev.get("build_s") is not None and (r.get("build_s") is None or prev["build_s"] < r["build_s"]):
                    r["build_s"] = prev["build_s"]
            runs[name] = r
            write_outputs(out, a, meta, list(runs.values()), threads)
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {out}/results.json, table.md" + ("" if a.no_plot else ", recall_qps.png"))
    print(open(os.path.join(out, "table.md")).read())


def environment():
    info = dict(python=sys.version.split()[0], platform=platform.platform(), machine=platform.machine(),
                cpu_count=os.cpu_count())
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib import metadata

    vers = {}
    for p in ("nearq", "faiss-cpu", "hnswlib", "chroma-hnswlib", "usearch", "scalable-vs", "rabitqlib", "turbovec", "numpy"):
        try:
            vers[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    info["versions"] = vers
    try:
        import nearq

        info["nearq_simd"] = nearq.simd_info()
    except Exception:  # noqa: BLE001
        pass
    return info


def write_outputs(out, a, meta, runs, threads):
    import report

    points = [p for r in runs for p in r.get("points", [])]
    builds = {r["algo"]: {k: r.get(k) for k in ("status", "reason", "params", "build_s", "build_threads",
                                                 "memory_bytes", "memory_method", "bytes_per_vector",
                                                 "rss_delta_bytes")} for r in runs}
    doc = dict(dataset=os.path.basename(a.data), k=K, recall_definition=(
        "recall = ann-benchmarks knn recall@10 (returned id counts if its true distance <= 10th true "
        "distance*(1+1e-3)); recall_ids = plain id-set overlap with the file's neighbors[:, :10]"),
        meta=meta, environment=environment(), args={k: v for k, v in vars(a).items() if not k.startswith("child")},
        configs=builds, points=points)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(doc, f, indent=1, default=str)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(report.table_md(doc))
    if not a.no_plot:
        report.plot(doc, os.path.join(out, "recall_qps.png"))


if __name__ == "__main__":
    main()
