"""Threading: concurrent use from Python threads, the threads= knob, GIL release, fork."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import nearq


def _same(a, b):
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.distances, b.distances)


# Synthetic data, so that these tests also run on CI machines without the real dataset.
@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6000, 96)).astype(np.float32)
    q = (x[rng.choice(len(x), 200, replace=False)] + 0.3 * rng.standard_normal((200, 96))).astype(
        np.float32
    )
    return x, q


@pytest.fixture(scope="module")
def indexes(data):
    x, _ = data
    return {enc: nearq.Index.build(x, metric="cosine", encoding=enc) for enc in ("flat", "sq8")}


@pytest.fixture(scope="module")
def workload(indexes, data):
    return indexes["flat"], data[1]


def test_concurrent_python_threads_match_sequential(workload):
    idx, test = workload
    chunks = np.array_split(test, 8)
    sequential = [idx.search(c, k=10, ef=64, threads=1) for c in chunks]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(2):
            concurrent = list(pool.map(lambda c: idx.search(c, k=10, ef=64), chunks))
            for s, c in zip(sequential, concurrent):
                _same(s, c)


def test_concurrent_single_queries_and_exact_search(small_index, small_data):
    x, q = small_data
    expected = [small_index.search(row, k=5) for row in q]
    expected_exact = nearq.exact_search(x, q, k=5)
    errors = []

    def worker(seed):
        order = np.random.default_rng(seed).permutation(len(q))
        for i in order:
            r = small_index.search(q[i], k=5)
            if not np.array_equal(r.ids, expected[i].ids):
                errors.append(i)
        if not np.array_equal(nearq.exact_search(x, q, k=5).ids, expected_exact.ids):
            errors.append("exact")

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


@pytest.mark.parametrize("encoding", ["flat", "sq8"])
def test_batch_threads_do_not_change_results(indexes, data, encoding):
    _, test = data
    idx = indexes[encoding]
    _same(idx.search(test, k=10, ef=64, threads=1), idx.search(test, k=10, ef=64, threads=2))
    _same(idx.search(test, k=10, ef=64, threads=1), idx.search(test, k=10, ef=64))


def test_exact_search_threads_do_not_change_results(data):
    train, test = data
    _same(
        nearq.exact_search(train, test, k=10, threads=1),
        nearq.exact_search(train, test, k=10, threads=2),
    )


def _ticks_during(fn, min_seconds=0.3):
    """Runs fn() while a Python thread ticks every millisecond; returns (ticks, seconds)."""
    stop = threading.Event()
    stamps = []

    def tick():
        while not stop.is_set():
            stamps.append(time.perf_counter())
            time.sleep(0.001)

    t = threading.Thread(target=tick, daemon=True)
    t.start()
    time.sleep(0.05)  # let the ticker get going
    t0 = time.perf_counter()
    fn()
    t1 = time.perf_counter()
    stop.set()
    t.join()
    if t1 - t0 < min_seconds:
        pytest.skip(f"the call took only {t1 - t0:.3f}s: too short to observe the GIL")
    return sum(t0 < s < t1 for s in stamps), t1 - t0


def test_build_releases_the_gil(data):
    train, _ = data
    ticks, secs = _ticks_during(lambda: nearq.Index.build(train, threads=1, seed=1))
    # Holding the GIL for the whole build would allow at most a tick or two at the edges.
    assert ticks >= max(10, 0.1 * secs / 0.001), f"{ticks} ticks in {secs:.2f}s of build"


def test_search_releases_the_gil(workload):
    idx, test = workload
    big = np.tile(test, (10, 1))
    ticks, secs = _ticks_during(lambda: idx.search(big, k=10, ef=400, threads=1), 0.2)
    assert ticks >= max(10, 0.1 * secs / 0.001), f"{ticks} ticks in {secs:.2f}s of search"


def test_exact_search_releases_the_gil(data):
    train, test = data
    big = np.tile(test, (40, 1))
    ticks, secs = _ticks_during(lambda: nearq.exact_search(train, big, k=10, threads=1), 0.2)
    assert ticks >= max(10, 0.1 * secs / 0.001), f"{ticks} ticks in {secs:.2f}s"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_use_after_fork():
    """A forked child can build and search after the parent used the thread pool."""
    script = textwrap.dedent(
        """
        import os, sys
        import numpy as np, nearq
        x = np.random.default_rng(0).standard_normal((2000, 16)).astype(np.float32)
        idx = nearq.Index.build(x, threads=2)          # the parent starts its worker threads
        expected = idx.search(x[:50], k=5, threads=2).ids
        pid = os.fork()
        if pid == 0:
            ok = np.array_equal(idx.search(x[:50], k=5, threads=2).ids, expected)
            nearq.Index.build(x[:500], threads=2)
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        sys.exit(os.waitstatus_to_exitcode(status))
        """
    )
    # own session, so that a deadlocked child (a grandchild of this test) can be killed too
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("deadlock: the forked child hung (the thread pool is not fork-aware)")
    assert proc.returncode == 0, err[-2000:]
