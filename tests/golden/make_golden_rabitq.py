"""Writes golden RaBitQ index files in the code layout current when run.

RaBitQ's code layout is versioned inside its parameter block (a layout number in the high
half of the `bits` field; absent = layout 0, the 1-bit-traversal layout). The files
``v2-*-rabitq*-layout0.nearq`` were written by this script before layout 1 (the 4-bit
traversal prefix for 4+ bits) existed; tests/test_golden.py keeps checking that they load and
give the recorded results. Never regenerate existing files: that would hide a break.
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np

import nearq

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from make_golden import write_golden  # noqa: E402

# (metric, bits, keep_vectors)
CASES = [("l2", 4, False), ("cosine", 8, False), ("ip", 4, True)]


def main(tag: str) -> None:
    rng = np.random.default_rng(20261125)
    x = rng.standard_normal((300, 40)).astype(np.float32)
    q = rng.standard_normal((10, 40)).astype(np.float32)
    for metric, bits, keep in CASES:
        idx = nearq.Index.build(
            x, metric=metric, encoding="rabitq", bits=bits, keep_vectors=keep, degree=8,
            threads=1, seed=0,
        )
        write_golden(idx, q, metric, "rabitq", f"rabitq{bits}-{tag}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "layout1")
