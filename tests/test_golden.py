"""Index files written by earlier releases (tests/golden/v<format>-*.nearq) still load and
give the results recorded when they were written."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

import nearq

GOLDEN = pathlib.Path(__file__).resolve().parent / "golden"
FILES = sorted(GOLDEN.glob("v*.nearq"))


def test_golden_files_exist():
    assert FILES, f"no golden index files in {GOLDEN}"


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_golden_file_loads_with_recorded_results(path, monkeypatch):
    expected = np.load(path.with_suffix(".expected.npz"), allow_pickle=False)
    # The recorded results of SAQ files come from the f32 query projection; the default is
    # now its half-precision copy (NEARQ_SAQ_HALF_QUERIES, read at load), checked below.
    monkeypatch.setenv("NEARQ_SAQ_HALF_QUERIES", "0")
    idx = nearq.Index.load(path)
    monkeypatch.delenv("NEARQ_SAQ_HALF_QUERIES")
    assert len(idx) == int(expected["n"])
    assert idx.dim == int(expected["dim"])
    assert idx.metric == str(expected["metric"])
    assert idx.encoding == str(expected["encoding"])
    ids, dists = idx.search(expected["queries"], k=10, ef=50)
    np.testing.assert_array_equal(ids, expected["ids"])
    np.testing.assert_allclose(dists, expected["distances"], rtol=1e-6, atol=1e-6)
    if idx.encoding == "saq":
        # The default (half-precision query projection) moves estimated distances in about
        # their 5th digit (saq.rs, "Query projection in half precision"): the same neighbours
        # but for near ties, at distances within 1e-4 of the recorded ones.
        d_ids, d_dists = nearq.Index.load(path).search(expected["queries"], k=10, ef=50)
        same = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(d_ids, expected["ids"])])
        assert same >= 0.98, same
        match = d_ids == expected["ids"]
        np.testing.assert_allclose(d_dists[match], expected["distances"][match], rtol=1e-4, atol=1e-4)
