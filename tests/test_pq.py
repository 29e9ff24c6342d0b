"""PQ through the Python API, side by side with faiss.IndexPQ on the real-data slice."""

import numpy as np
import pytest

import nearq

M = 48  # sub-quantizers for d = 384: 8 dimensions each, 48-byte codes


def _recall(found, truth):
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k]) & set(t)) / k for f, t in zip(found, truth)]))


def _nearq_mse(x, **kw):
    """Reconstruction MSE read back through search: without float vectors, an l2 pq index
    returns ADC distances, and the ADC distance from x_i to its own code is ||x_i - x̂_i||^2."""
    idx = nearq.Index.build(x, metric="l2", encoding="pq", subspaces=M, keep_vectors=False, **kw)
    res = idx.search(x, k=10, ef=64)
    hit = res.ids == np.arange(len(x))[:, None]
    found = hit.any(1)
    err = np.where(hit, res.distances, 0.0).sum(1)
    return err, found


@pytest.fixture(scope="module")
def faiss_pq(real_data):
    faiss = pytest.importorskip("faiss")
    x = real_data[0]
    pq = faiss.IndexPQ(x.shape[1], M, 8)
    pq.pq.cp.niter = 25  # nearq's k-means iterations
    pq.train(x)
    pq.add(x)
    rec = pq.reconstruct_n(0, len(x))
    return ((x - rec) ** 2).sum(1)


def test_reconstruction_mse_no_worse_than_faiss(real_data, faiss_pq):
    x = real_data[0]
    err, found = _nearq_mse(x)
    assert found.mean() >= 0.98  # the own code is almost always among the 10 nearest
    ours, theirs = err[found].mean(), faiss_pq[found].mean()
    assert ours <= 1.02 * theirs, (ours, theirs)


def test_opq_reconstruction_no_worse_than_pq(real_data):
    x = real_data[0][:2000]
    e_pq, f_pq = _nearq_mse(x)
    e_opq, f_opq = _nearq_mse(x, opq=True)
    both = f_pq & f_opq
    assert e_opq[both].mean() <= 1.01 * e_pq[both].mean()


def test_recall_with_float_reranking(real_data, real_truth):
    (x, q), truth = real_data, real_truth["cosine"][0][:, :10]
    idx = nearq.Index.build(x, metric="cosine", encoding="pq", subspaces=M, keep_vectors=True)
    assert idx.encoding == "pq"
    ids = idx.search(q, k=10, ef=128, rerank=128).ids
    assert _recall(ids, truth) >= 0.95


def test_without_vectors_memory_and_adc_distances(real_data, real_truth):
    (x, q), truth = real_data, real_truth["cosine"][0][:, :10]
    flat = nearq.Index.build(x, metric="cosine")
    idx = nearq.Index.build(x, metric="cosine", encoding="pq", subspaces=96, keep_vectors=False)
    mem = idx.memory_usage(detail=True)
    assert mem["vectors"] == 0 and mem["codes"] >= 96 * len(x)
    assert idx.memory_usage() < 0.5 * flat.memory_usage()
    res = idx.search(q, k=10, ef=128)
    assert _recall(res.ids, truth) >= 0.7  # ADC estimates only, no re-ranking
    assert np.all(np.diff(res.distances, axis=1) >= 0)


def test_round_trip(tmp_path, real_data):
    x, q = real_data[0][:2000], real_data[1][:20]
    for kw in (dict(bits=8, opq=True), dict(bits=4)):
        idx = nearq.Index.build(x, metric="l2", encoding="pq", subspaces=32, keep_vectors=False, **kw)
        idx.save(tmp_path / "p.nearq")
        back = nearq.Index.load(tmp_path / "p.nearq")
        assert back.encoding == "pq"
        a, b = idx.search(q, k=5), back.search(q, k=5)
        assert (a.ids == b.ids).all() and np.array_equal(a.distances, b.distances)


@pytest.mark.parametrize(
    "kw, word",
    [
        (dict(bits=2), "bits"),
        (dict(bits=16), "bits"),
        (dict(subspaces=0), "subspaces"),
        (dict(subspaces=17), "subspaces"),
        (dict(subspaces=2.5), "subspaces"),
        (dict(opq="yes"), "opq"),
        (dict(encoding="sq8", subspaces=4), "subspaces"),
        (dict(encoding="flat", opq=True), "opq"),
    ],
)
def test_bad_parameters(kw, word):
    x = np.random.default_rng(0).standard_normal((100, 16)).astype(np.float32)
    kw = {"encoding": "pq", **kw}
    with pytest.raises(nearq.InvalidInputError, match=word):
        nearq.Index.build(x, **kw)


def test_training_progress_is_shown(capfd):
    """progress=True reports PQ (and OPQ) training as well as the graph build, on stderr."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1500, 32)).astype(np.float32)
    nearq.Index.build(x, encoding="pq", subspaces=8, opq=True, progress=True, threads=1)
    out, err = capfd.readouterr()
    assert out == ""
    train_lines = [l for l in err.replace("\r", "\n").splitlines() if "training pq" in l]
    assert train_lines and "100.0%" in train_lines[-1], err
    assert "building graph" in err
    nearq.Index.build(x, encoding="pq", subspaces=8, progress=False, threads=1)
    assert capfd.readouterr().err == ""


_FLOAT_LUT_SEARCH = """
import sys, numpy as np, nearq
idx = nearq.Index.load(sys.argv[1])
q = np.load(sys.argv[2])
res = idx.search(q, k=10, ef=int(sys.argv[3]))
np.save(sys.argv[4], np.asarray(res.ids))
"""


@pytest.mark.parametrize("keep", [True, False])
def test_4bit_fastscan_traversal_keeps_recall(tmp_path, real_data, real_truth, keep):
    """4-bit graph traversal scores neighbours with the u8 FastScan estimate; at a given ef its
    recall matches the float-LUT traversal (NEARQ_PQ_FASTSCAN=0, another process), and the
    final distances come from re-ranking: exact with floats kept, the float ADC otherwise."""
    import os
    import subprocess
    import sys

    (x, q), truth = real_data, real_truth["cosine"][0][:, :10]
    idx = nearq.Index.build(x, metric="cosine", encoding="pq", bits=4, subspaces=192,
                            keep_vectors=keep, seed=0)
    ef = 48
    res = idx.search(q, k=10, ef=ef)
    fast = _recall(res.ids, truth)
    assert np.all(np.diff(res.distances, axis=1) >= 0)
    if keep:
        want = 1.0 - np.einsum("qd,qkd->qk", q / np.linalg.norm(q, axis=1, keepdims=True),
                               x[res.ids] / np.linalg.norm(x[res.ids], axis=2, keepdims=True))
        np.testing.assert_allclose(res.distances, want, atol=2e-5)
    idx.save(tmp_path / "p.nearq")
    np.save(tmp_path / "q.npy", q)
    env = dict(os.environ, NEARQ_PQ_FASTSCAN="0")
    env["PYTHONPATH"] = os.pathsep.join(p for p in [os.path.dirname(os.path.dirname(nearq.__file__)),
                                                    env.get("PYTHONPATH", "")] if p)
    subprocess.run([sys.executable, "-c", _FLOAT_LUT_SEARCH, str(tmp_path / "p.nearq"),
                    str(tmp_path / "q.npy"), str(ef), str(tmp_path / "ids.npy")],
                   env=env, check=True)
    slow = _recall(np.load(tmp_path / "ids.npy"), truth)
    assert fast >= slow - 0.01, (fast, slow)
    assert fast >= (0.9 if keep else 0.5), fast


def test_4bit_neighbor_rows(tmp_path, real_data):
    """quantized_graph=True on a 4-bit PQ index keeps neighbour-code rows (off by default):
    the same results as the gather path, filtered too, through deletes and adds, and after
    save/load (memory-mapped too); the rows are reported under their own memory key."""
    x, q = real_data
    kw = dict(metric="cosine", encoding="pq", bits=4, subspaces=192, seed=0)
    off = nearq.Index.build(x, **kw)
    assert not off.quantized_graph
    assert off.memory_usage(detail=True)["neighbor_codes"] == 0
    on = nearq.Index.build(x, quantized_graph=True, **kw)
    assert on.quantized_graph
    mem = on.memory_usage(detail=True)
    assert mem["neighbor_codes"] >= len(x) * 32 * 96
    assert mem["total"] == sum(v for k, v in mem.items() if k not in ("total", "mmap"))

    def same(a, b, **s):
        ra, rb = a.search(q, k=10, ef=48, **s), b.search(q, k=10, ef=48, **s)
        np.testing.assert_array_equal(ra.ids, rb.ids)
        np.testing.assert_array_equal(ra.distances, rb.distances)

    same(on, off)
    same(on, off, filter=np.arange(0, len(x), 3))
    on.save(tmp_path / "on.nearq")
    for back in (nearq.Index.load(tmp_path / "on.nearq"),
                 nearq.Index.load(tmp_path / "on.nearq", mmap="vectors")):
        assert back.quantized_graph
        same(back, off)
    for idx in (on, off):
        idx.delete(np.arange(0, 200))
        idx.add(q[:50])
    same(on, off)
    with pytest.raises(nearq.InvalidInputError):
        nearq.Index.build(x[:100], quantized_graph="yes", **kw)
