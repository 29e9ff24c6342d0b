"""Contract test for the ann-benchmarks adapter (bench/ann_benchmarks/nearq/module.py).

Runs without ann-benchmarks: when ann_benchmarks.algorithms.base.module is not importable
a minimal stub BaseANN is installed under that name.  Run: pytest bench/ann_benchmarks
"""
import importlib
import importlib.util
import os
import sys
import types

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def _load_module():
    # pytest's rootdir-prepend puts this folder on sys.path, where "nearq/" is the adapter
    # folder, not the library: drop it so `import nearq` finds the installed package.
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
    m = sys.modules.get("nearq")
    if m is not None and not hasattr(m, "Index"):
        del sys.modules["nearq"]
    pytest.importorskip("nearq")
    try:
        base = importlib.import_module("ann_benchmarks.algorithms.base.module")
        BaseANN = base.BaseANN
    except ImportError:
        class BaseANN:  # the harness's interface, reduced to what module.py relies on
            def get_memory_usage(self):
                return None

            def batch_query(self, X, n):
                self.res = [self.query(q, n) for q in X]

            def get_batch_results(self):
                return self.res

            def get_additional(self):
                return {}

            def done(self):
                pass

            def __str__(self):
                return self.name

        for name in ("ann_benchmarks", "ann_benchmarks.algorithms", "ann_benchmarks.algorithms.base"):
            mod = types.ModuleType(name)
            mod.__path__ = []
            sys.modules[name] = mod
        stub = types.ModuleType("ann_benchmarks.algorithms.base.module")
        stub.BaseANN = BaseANN
        sys.modules["ann_benchmarks.algorithms.base.module"] = stub
    pkg = "ann_benchmarks.algorithms.nearq"
    if pkg not in sys.modules:
        p = types.ModuleType(pkg)
        p.__path__ = [os.path.join(HERE, "nearq")]
        sys.modules[pkg] = p
    spec = importlib.util.spec_from_file_location(pkg + ".module", os.path.join(HERE, "nearq", "module.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod, BaseANN


def _data(metric, n=2000, d=48, nq=40, seed=7):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((20, d)).astype(np.float32) * 3
    X = centers[rng.integers(0, 20, n)] + rng.standard_normal((n, d)).astype(np.float32)
    if metric == "angular":
        X *= rng.uniform(0.5, 5.0, (n, 1)).astype(np.float32)  # arrives unnormalised
    nq = min(nq, n)
    Q = X[rng.choice(n, nq, replace=False)] + 0.1 * rng.standard_normal((nq, d)).astype(np.float32)
    return X, Q


def _dist(X, q, metric):
    if metric == "angular":
        Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
        return 1.0 - Xn @ (q / np.linalg.norm(q))
    return ((X - q) ** 2).sum(axis=1)


@pytest.mark.parametrize("metric", ["euclidean", "angular"])
@pytest.mark.parametrize("encoding", ["flat", "sq8"])
def test_query_contract(metric, encoding):
    mod, BaseANN = _load_module()
    X, Q = _data(metric)
    algo = mod.NearQ(metric, {"encoding": encoding, "degree": 16, "build_ef": 64})
    assert isinstance(algo, BaseANN)
    algo.fit(X)
    algo.set_query_arguments(64)
    assert "nearq" in str(algo)
    hits = 0
    for q in Q:
        for n in (1, 10):
            ids = np.asarray(algo.query(q, n))
            assert ids.ndim == 1 and len(ids) <= n
            assert len(ids) == n  # 2000 points: never short
            assert len(set(ids.tolist())) == len(ids), "duplicate ids"
            assert (ids >= 0).all() and (ids < len(X)).all()
            d = _dist(X, q, metric)[ids]
            assert np.all(np.diff(d) >= -1e-4 * max(1.0, float(np.abs(d).max()))), "not nearest-first"
        true10 = np.argsort(_dist(X, q, metric))[:10]
        hits += len(set(ids.tolist()) & set(true10.tolist()))
    assert hits / (10 * len(Q)) >= 0.9
    algo.batch_query(Q, 10)
    res = algo.get_batch_results()
    assert len(res) == len(Q)
    for r, q in zip(res, Q):
        assert len(r) <= 10 and len(set(np.asarray(r).tolist())) == len(r)
    mem = algo.get_memory_usage()
    assert mem is None or mem > 0


def test_query_more_than_n_points():
    mod, _ = _load_module()
    X, Q = _data("euclidean", n=30)
    algo = mod.NearQ("euclidean", {"degree": 8, "build_ef": 16})
    algo.fit(X)
    algo.set_query_arguments(16)
    ids = np.asarray(algo.query(Q[0], 50))
    assert len(ids) <= 30 and len(set(ids.tolist())) == len(ids) and (ids >= 0).all()
