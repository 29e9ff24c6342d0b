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
def test_golden_file_loads_with_recorded_results(path):
    expected = np.load(path.with_suffix(".expected.npz"), allow_pickle=False)
    idx = nearq.Index.load(path)
    assert len(idx) == int(expected["n"])
    assert idx.dim == int(expected["dim"])
    assert idx.metric == str(expected["metric"])
    assert idx.encoding == str(expected["encoding"])
    ids, dists = idx.search(expected["queries"], k=10, ef=50)
    np.testing.assert_array_equal(ids, expected["ids"])
    np.testing.assert_allclose(dists, expected["distances"], rtol=1e-6, atol=1e-6)
