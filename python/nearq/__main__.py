"""Command line: ``python -m nearq demo`` builds an index over the shipped MiniLM sample and
prints recall@10 against exact search, queries per second and memory."""

from __future__ import annotations

import argparse
import sys
import time
from typing import List, Optional

import numpy as np

import nearq
from nearq.datasets import minilm_10k


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k]) & set(t)) / k for f, t in zip(found, truth)]))


def demo(args: argparse.Namespace) -> int:
    train, test = minilm_10k()
    k = 10
    print(f"nearq {nearq.__version__}  simd={nearq.simd_info()['level']}")
    print(f"data: {train.shape[0]} MiniLM embeddings (dim {train.shape[1]}), {test.shape[0]} queries, cosine")
    truth = nearq.exact_search(train, test, k=k, metric="cosine").ids
    flat_bytes = None
    for encoding in args.encodings:
        t0 = time.perf_counter()
        index = nearq.Index.build(train, metric="cosine", encoding=encoding, threads=args.threads)
        build_s = time.perf_counter() - t0
        mem = index.memory_usage()
        flat_bytes = flat_bytes or mem
        print(f"\nencoding={encoding}: built in {build_s:.2f} s, memory {mem / 2**20:.1f} MiB "
              f"({mem / len(index):.0f} bytes/vector)")
        print(f"  {'ef':>5} {'recall@10':>10} {'QPS (1 query/call)':>19} {'QPS (batch)':>12}")
        for ef in args.ef:
            index.search(test[:50], k=k, ef=ef, threads=1)  # warm-up
            t0 = time.perf_counter()
            found = np.vstack([index.search(q, k=k, ef=ef, threads=1).ids for q in test])
            single = len(test) / (time.perf_counter() - t0)
            t0 = time.perf_counter()
            index.search(test, k=k, ef=ef, threads=args.threads)
            batch = len(test) / (time.perf_counter() - t0)
            print(f"  {ef:>5} {_recall(found, truth):>10.4f} {single:>19,.0f} {batch:>12,.0f}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="nearq", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="build and search an index over the shipped MiniLM sample")
    d.add_argument("--encodings", nargs="+", default=["flat", "sq8"])
    d.add_argument("--ef", nargs="+", type=int, default=[16, 32, 64, 128])
    d.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.cmd == "demo":
        return demo(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
