"""nearq.experimental.QuantizedGraph: results, recall on real data, input errors."""

import numpy as np
import pytest

import nearq
from nearq.experimental import QuantizedGraph


def _recall(found, truth):
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k]) & set(t)) / k for f, t in zip(found, truth)]))


def test_recall_and_exact_distances(real_data, real_truth):
    (x, q), (truth, tdist) = real_data, real_truth["cosine"]
    g = QuantizedGraph.build(x, metric="cosine")
    assert len(g) == len(x) and g.dim == x.shape[1]
    ids, d = g.search(q, k=10, ef=128)
    assert ids.shape == (len(q), 10) and ids.dtype == np.int64 and d.dtype == np.float32
    assert _recall(ids, truth[:, :10]) >= 0.95
    # distances are exact 1 - cosine of the returned ids, sorted
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    want = 1.0 - np.einsum("ij,ikj->ik", qn, xn[ids])
    np.testing.assert_allclose(d, want, atol=2e-5)
    assert (np.diff(d, axis=1) >= 0).all()
    # batch and single-query searches agree
    one = np.vstack([g.search(v, k=10, ef=128).ids for v in q[:20]])
    assert (one == ids[:20]).all()


def test_l2_padding_and_errors():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 40)).astype(np.float32)
    g = QuantizedGraph.build(x, metric="l2", threads=1)
    ids, d = g.search(x[0], k=310, ef=400)
    assert ids[0, 0] == 0 and d[0, 0] == pytest.approx(0.0, abs=1e-4)
    assert (ids[0, 300:] == -1).all() and np.isinf(d[0, 300:]).all()
    with pytest.raises(nearq.DimensionMismatchError):
        g.search(np.zeros(39, dtype=np.float32))
    with pytest.raises(nearq.InvalidInputError):
        g.search(x[:1], k=0)
    with pytest.raises(nearq.InvalidInputError):
        QuantizedGraph.build(x, metric="ip")
    bad = x.copy()
    bad[5, 3] = np.nan
    with pytest.raises(nearq.InvalidInputError, match="non-finite"):
        QuantizedGraph.build(bad)


def test_save_load(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((400, 24)).astype(np.float32)
    g = QuantizedGraph.build(x, metric="cosine", threads=1)
    g.save(tmp_path / "g.nearq")
    back = QuantizedGraph.load(tmp_path / "g.nearq")
    a, b = g.search(x[:10], k=5), back.search(x[:10], k=5)
    assert (a.ids == b.ids).all() and np.array_equal(a.distances, b.distances)
    # a plain index file is not a quantized graph, and the other way round
    nearq.Index.build(x).save(tmp_path / "i.nearq")
    with pytest.raises(nearq.IndexFormatError):
        QuantizedGraph.load(tmp_path / "i.nearq")
    with pytest.raises(nearq.IndexFormatError):
        nearq.Index.load(tmp_path / "g.nearq")
    data = (tmp_path / "g.nearq").read_bytes()
    (tmp_path / "t.nearq").write_bytes(data[: len(data) // 2])
    with pytest.raises(nearq.IndexFormatError):
        QuantizedGraph.load(tmp_path / "t.nearq")
    with pytest.raises(nearq.NearqIOError):
        QuantizedGraph.load(tmp_path / "missing.nearq")


def test_search_input_forms_agree():
    """The fast path (float32 arrays, plain ints) and the converting path give one answer."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((500, 32)).astype(np.float32)
    q = rng.standard_normal((7, 32)).astype(np.float32)
    g = QuantizedGraph.build(x, metric="l2", threads=1)
    want = g.search(q, k=5, ef=40)
    for form in (
        q.astype(np.float64),
        np.asfortranarray(q),
        q.tolist(),
        np.repeat(q, 2, axis=1)[:, ::2],
    ):
        got = g.search(form, k=5, ef=40)
        assert (got.ids == want.ids).all() and np.array_equal(got.distances, want.distances)
    one = g.search(q[3], k=np.int64(5), ef=40, threads=1)
    assert one.ids.shape == (1, 5) and (one.ids[0] == want.ids[3]).all()
    assert isinstance(want, nearq.SearchResult) and want.ids is want[0]
    with pytest.raises(nearq.DimensionMismatchError):
        g.search(q[:, :31])
    with pytest.raises(nearq.DimensionMismatchError):
        g.search(q[0, :31])
    with pytest.raises(nearq.InvalidInputError):
        g.search(q.reshape(7, 2, 16))
    with pytest.raises(nearq.InvalidInputError):
        g.search(q[:0])
    for bad in (dict(k=0), dict(ef=0), dict(k=True), dict(threads=0), dict(k=2.0)):
        with pytest.raises(nearq.InvalidInputError):
            g.search(q, **bad)


# ------------------------------------------- the quantized graph behind nearq.Index (rabitq)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_index_rabitq_with_vectors_searches_through_the_quantized_graph(real_data, real_truth, metric):
    (x, q), (truth, _) = real_data, real_truth[metric]
    idx = nearq.Index.build(x, metric=metric, encoding="rabitq", bits=4, keep_vectors=True, seed=0)
    assert idx.quantized_graph and idx.build_params["alpha"] == pytest.approx(1.1)
    res = idx.search(q, k=10, ef=64)
    r = _recall(res.ids, truth[:, :10])
    assert r >= 0.95, r
    # exact distances (every expanded node is re-ranked from its row), nearest first
    np.testing.assert_allclose(res.distances, _dist(metric, q, x, res.ids), atol=2e-4, rtol=1e-4)
    assert (np.diff(res.distances, axis=1) >= 0).all()
    # the same results as the experimental graph built over the same graph parameters (whose
    # rows hold f32 vectors: so do the index's with NEARQ_QG_HALF=0)
    g = QuantizedGraph.build(x, metric=metric, seed=0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NEARQ_QG_HALF", "0")
        f32rows = nearq.Index.build(x, metric=metric, encoding="rabitq", bits=4, seed=0)
    np.testing.assert_array_equal(g.search(q, k=10, ef=64).ids, f32rows.search(q, k=10, ef=64).ids)
    # memory: the rows are reported, and they hold a second copy of the float vectors
    m = idx.memory_usage(detail=True)
    assert m["quantized_graph"] > m["vectors"] >= x.nbytes
    assert m["total"] == sum(m[p] for p in ("codes", "graph", "vectors", "params", "ids", "quantized_graph"))


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_index_quantized_graph_code_bits(real_data, real_truth, metric, monkeypatch):
    """1-bit indexes get 1-bit neighbour codes in their rows, the others 2-bit codes
    (NEARQ_QG_BITS=1 or 2, read when the rows are built, overrides): both reach recall 0.95
    with exact distances; 2-bit rows are one bit plane larger (d/8 bytes per neighbour), and
    their finer estimates find more of the true neighbours at a narrow beam."""
    (x, q), (truth, _) = real_data, real_truth[metric]
    one = nearq.Index.build(x, metric=metric, encoding="rabitq", bits=1, seed=0)
    two = nearq.Index.build(x, metric=metric, encoding="rabitq", bits=4, seed=0)
    monkeypatch.setenv("NEARQ_QG_BITS", "1")
    two_as_one = nearq.Index.build(x, metric=metric, encoding="rabitq", bits=4, seed=0)
    monkeypatch.setenv("NEARQ_QG_BITS", "2")
    one_as_two = nearq.Index.build(x, metric=metric, encoding="rabitq", bits=1, seed=0)
    monkeypatch.delenv("NEARQ_QG_BITS")
    per = lambda i: i.memory_usage(detail=True)["quantized_graph"] / len(x)  # noqa: E731
    plane = x.shape[1] // 8 * 32
    slack = 64 + 2 * 2**20 / len(x)  # 64-byte rows in 2 MiB pages
    assert abs(per(two) - per(two_as_one) - plane) <= slack, (per(two), per(two_as_one))
    assert abs(per(one_as_two) - per(one) - plane) <= slack, (per(one_as_two), per(one))
    for idx in (one, two, two_as_one, one_as_two):
        assert idx.quantized_graph
        res = idx.search(q, k=10, ef=64)
        assert _recall(res.ids, truth[:, :10]) >= 0.95
        np.testing.assert_allclose(res.distances, _dist(metric, q, x, res.ids), atol=2e-4, rtol=1e-4)
    narrow = [_recall(i.search(q, k=10, ef=12).ids, truth[:, :10]) for i in (two_as_one, two)]
    assert narrow[1] > narrow[0], narrow


def _dist(metric, q, x, ids):
    if metric == "cosine":
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        qn = q / np.linalg.norm(q, axis=1, keepdims=True)
        return 1.0 - np.einsum("ij,ikj->ik", qn, xn[ids])
    return np.einsum("ikj,ikj->ik", x[ids] - q[:, None], x[ids] - q[:, None])


def test_index_quantized_graph_opt_out_and_where_it_applies(real_data):
    x, q = real_data
    x = x[:2000]
    off = nearq.Index.build(x, metric="cosine", encoding="rabitq", quantized_graph=False)
    assert not off.quantized_graph and off.build_params["alpha"] == pytest.approx(1.1)
    assert off.memory_usage(detail=True)["quantized_graph"] == 0
    # the choice survives pickling
    import pickle

    assert not pickle.loads(pickle.dumps(off)).quantized_graph
    for kw in (dict(keep_vectors=False), dict(metric="ip")):
        i = nearq.Index.build(x, **{"metric": "cosine", "encoding": "rabitq", **kw})
        assert not i.quantized_graph
    assert not nearq.Index.build(x, metric="cosine", encoding="sq8").quantized_graph
    with pytest.raises(nearq.InvalidInputError):
        nearq.Index.build(x, encoding="rabitq", quantized_graph="yes")


def test_index_quantized_graph_round_trips_and_changes(real_data, tmp_path):
    x, q = real_data
    idx = nearq.Index.build(x[:3000], metric="cosine", encoding="rabitq", ids=np.arange(3000) + 10)
    idx.add(x[3000:3500])
    idx.delete(np.arange(10, 200, 3))  # tombstones, below the consolidation threshold
    assert idx.quantized_graph and idx.memory_usage(detail=True)["ids"] > 0
    a = idx.search(q, k=10, ef=64)
    assert not np.isin(a.ids, np.arange(10, 200, 3)).any()
    path = tmp_path / "qg.nearq"
    idx.save(path)
    import pickle

    for other in (nearq.Index.load(path), nearq.Index.load(path, mmap=True), pickle.loads(pickle.dumps(idx))):
        assert other.quantized_graph
        b = other.search(q, k=10, ef=64)
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.distances, b.distances)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_index_quantized_graph_half_precision_rows(real_data, real_truth, metric, monkeypatch, tmp_path):
    """The rows hold the vectors in f16 by default (NEARQ_QG_HALF=0, read when the rows are
    built, keeps f32): the final candidates' distances are corrected from 8-bit codes of the
    f32 vectors' rounding residuals (a record of dim + 12 bytes, 64-byte aligned, per vector),
    so they match float64 distances to within f32 rounding (the f16 rows alone err by about
    1e-4); recall matches the f32 rows; the rows round-trip through a file (the residual
    records are rebuilt at load) and follow adds and deletes."""
    (x, q), (truth, _) = real_data, real_truth[metric]
    monkeypatch.setenv("NEARQ_QG_HALF", "0")
    full = nearq.Index.build(x, metric=metric, encoding="rabitq", bits=4, seed=0)
    monkeypatch.delenv("NEARQ_QG_HALF")
    idx = nearq.Index.build(x, metric=metric, encoding="rabitq", bits=4, seed=0)
    assert idx.quantized_graph
    m, mf = idx.memory_usage(detail=True), full.memory_usage(detail=True)
    # each row's vector takes 2 bytes per dimension instead of 4, and each vector has a
    # residual record (rows and records are 64-byte aligned, and allocations of 2 MiB and
    # more are rounded up to 2 MiB pages)
    record = -(-(x.shape[1] + 12) // 64) * 64
    saved = (mf["quantized_graph"] - m["quantized_graph"]) / len(x)
    slack = 64 + 4 * 2**20 / len(x)
    assert 2 * x.shape[1] - record - slack <= saved <= 2 * x.shape[1] - record + slack, saved
    res, ref = idx.search(q, k=10, ef=64), full.search(q, k=10, ef=64)
    want = _dist(metric, q.astype(np.float64), x.astype(np.float64), res.ids)
    np.testing.assert_allclose(res.distances, want, atol=3e-6, rtol=0)
    assert (np.diff(res.distances, axis=1) >= 0).all()
    r, rf = _recall(res.ids, truth[:, :10]), _recall(ref.ids, truth[:, :10])
    assert r >= 0.95 and abs(r - rf) <= 0.01, (r, rf)
    # where both find a vector, they report the same (exact) distance
    for a, da, b, db in zip(res.ids, res.distances, ref.ids, ref.distances):
        common = set(a) & set(b)
        for i in common:
            assert da[list(a).index(i)] == pytest.approx(db[list(b).index(i)], rel=1e-5, abs=1e-6)
    # k beyond the index pads with -1; a single query agrees with the batch
    monkeypatch.setenv("NEARQ_QG_HALF", "0")
    small = nearq.Index.build(x[:20], metric=metric, encoding="rabitq", bits=4)
    monkeypatch.delenv("NEARQ_QG_HALF")
    small_h = nearq.Index.build(x[:20], metric=metric, encoding="rabitq", bits=4)
    s, sh = small.search(q[:3], k=25), small_h.search(q[:3], k=25)
    np.testing.assert_array_equal(s.ids, sh.ids)
    assert (sh.ids[:, 20:] == -1).all()
    one = idx.search(q[5], k=10, ef=64)
    np.testing.assert_array_equal(one.ids[0], res.ids[5])
    # adds and deletes, then a file round trip keep the half rows and the results
    idx.delete(np.arange(0, 300, 7))
    idx.add(q[:50])
    a = idx.search(q, k=10, ef=64)
    assert not np.isin(a.ids, np.arange(0, 300, 7)).any()
    assert (a.ids[:50, 0] == np.arange(len(x), len(x) + 50)).all()
    # the residual records follow the adds (and a consolidation's renumbering)
    allv = np.vstack([x, q[:50]]).astype(np.float64)
    np.testing.assert_allclose(a.distances, _dist(metric, q.astype(np.float64), allv, a.ids), atol=3e-6, rtol=0)
    idx.save(tmp_path / "c.nearq")
    c = nearq.Index.load(tmp_path / "c.nearq")
    c.consolidate()
    cr = c.search(q, k=10, ef=64)
    np.testing.assert_allclose(cr.distances, _dist(metric, q.astype(np.float64), allv, cr.ids), atol=3e-6, rtol=0)
    path = tmp_path / "half.nearq"
    idx.save(path)
    for other in (nearq.Index.load(path), nearq.Index.load(path, mmap=True)):
        # still half-precision rows (the loaded rows are allocated to size, without spare room)
        per = other.memory_usage(detail=True)["quantized_graph"] / (len(x) + 50)
        assert per <= mf["quantized_graph"] / len(x) - 2 * x.shape[1] + record + slack, per
        b = other.search(q, k=10, ef=64)
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.distances, b.distances)
