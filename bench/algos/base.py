"""Adapter interface every benchmarked algorithm implements."""
from __future__ import annotations

import numpy as np


class Skip(Exception):
    """Raised by an adapter when its library (or a feature of it) is unavailable."""


class Algo:
    #: Can the thread count be changed after import (True) or only through the
    #: environment at process start (False)?  run.py spawns one process per thread
    #: mode for the latter.
    RUNTIME_THREADS = True

    def __init__(self, metric: str, dim: int, **params):
        # metric: 'euclidean' | 'angular' | 'ip'.  For 'angular' run.py hands over
        # L2-normalised vectors, so L2 on them ranks exactly like cosine.
        self.metric = metric
        self.dim = dim
        self.params = params
        self.threads = 1
        self.query_arg = None

    # -- build ---------------------------------------------------------------
    def fit(self, X: np.ndarray, build_threads: int) -> None:
        raise NotImplementedError

    # -- search --------------------------------------------------------------
    def set_threads(self, n: int) -> None:
        self.threads = n

    def set_query_arg(self, arg) -> None:
        self.query_arg = arg

    def query(self, q: np.ndarray, k: int) -> np.ndarray:
        """One query (1-D float32) -> 1-D ids, nearest first."""
        raise NotImplementedError

    def batch_query(self, Q: np.ndarray, k: int) -> np.ndarray:
        """All queries at once -> (n, k) ids (-1 padded); default loops over query()."""
        from common import pad_ids

        return pad_ids([self.query(q, k) for q in Q], k)

    # -- memory --------------------------------------------------------------
    def memory_bytes(self):
        """(bytes, method) of the index itself, or (None, None) to fall back to RSS delta."""
        return None, None

    def l2_or_ip(self):
        return "ip" if self.metric == "ip" else "l2"


def import_or_skip(name):
    import importlib

    try:
        return importlib.import_module(name)
    except Exception as e:  # ImportError, or a broken binary wheel
        raise Skip(f"python package '{name}' not importable: {type(e).__name__}: {e}")


def serialized_size(save_fn):
    """Size in bytes of whatever save_fn(path) writes (file or directory)."""
    import os
    import tempfile

    with tempfile.TemporaryDirectory(prefix="nearq-bench-") as d:
        p = os.path.join(d, "index")
        save_fn(p)
        if os.path.isdir(p):
            return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(p) for f in fs)
        tot = 0
        for f in os.listdir(d):
            fp = os.path.join(d, f)
            if os.path.isdir(fp):
                tot += sum(os.path.getsize(os.path.join(r, x)) for r, _, xs in os.walk(fp) for x in xs)
            else:
                tot += os.path.getsize(fp)
        return tot
