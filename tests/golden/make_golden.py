"""Writes the golden index files for the current file-format version.

Run once per format version (``python tests/golden/make_golden.py``) and commit the output;
files of earlier versions stay in the repository so that tests/test_golden.py keeps loading
them. Never regenerate the files of an existing version: that would hide a compatibility break.
"""

from __future__ import annotations

import pathlib

import numpy as np

import nearq

HERE = pathlib.Path(__file__).resolve().parent
CASES = [("l2", "flat", True), ("cosine", "sq8", True), ("ip", "sq8", False)]


def write_golden(idx: "nearq.Index", q: np.ndarray, metric: str, encoding: str, name: str) -> None:
    """Saves `idx` as ``v{format version}-{metric}-{name}.nearq`` with the search results
    the test expects beside it (``.expected.npz``)."""
    path = HERE / f"tmp-{metric}-{name}.nearq"
    idx.save(path)
    version = int.from_bytes(path.read_bytes()[8:12], "little")
    stem = f"v{version}-{metric}-{name}"
    path.replace(HERE / f"{stem}.nearq")
    res = idx.search(q, k=10, ef=50)
    np.savez(
        HERE / f"{stem}.expected.npz",
        queries=q,
        ids=res.ids,
        distances=res.distances,
        n=len(idx),
        dim=idx.dim,
        metric=metric,
        encoding=encoding,
        version=nearq.__version__,
    )
    print("wrote", stem)


def main() -> None:
    rng = np.random.default_rng(20261124)
    x = rng.standard_normal((200, 16)).astype(np.float32)
    q = rng.standard_normal((10, 16)).astype(np.float32)
    for metric, encoding, keep in CASES:
        # Since format v2: user ids, an incremental add and a few tombstones are stored too.
        idx = nearq.Index.build(
            x[:180], metric=metric, encoding=encoding, keep_vectors=keep, degree=8, threads=1,
            seed=0, ids=np.arange(180) * 7 + 3,
        )
        idx.add(x[180:], threads=1)
        idx.delete([3, 10, 17 * 7 + 3], threads=1)
        write_golden(idx, q, metric, encoding, encoding)


if __name__ == "__main__":
    main()
