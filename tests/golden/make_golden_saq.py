"""Writes golden SAQ index files in the code layout current when run.

SAQ's code layout is versioned inside its parameter block (a layout number in the high half
of the traversal-segments field; absent = layout 0, every segment as bit planes). The files
``v3-*-saq*-layout0.nearq`` were written by this script with the code from before layout 1
(the nibble-packed traversal codes) existed; ``*-layout1`` with layout 1. tests/test_golden.py
checks that they load and give the recorded results. Never regenerate existing files: that
would hide a break.
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np

import nearq

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from make_golden import write_golden  # noqa: E402

# (metric, bits, keep_vectors)
CASES = [("l2", 4, False), ("cosine", 6, False), ("ip", 3, True)]


def main(tag: str) -> None:
    rng = np.random.default_rng(20261126)
    # A decaying spectrum, so the allocation mixes segments of more and fewer than 4 bits.
    d = 200
    scale = (0.985 ** np.arange(d)).astype(np.float32)
    x = (rng.standard_normal((400, d)) * scale).astype(np.float32)
    q = (rng.standard_normal((10, d)) * scale).astype(np.float32)
    for metric, bits, keep in CASES:
        idx = nearq.Index.build(
            x, metric=metric, encoding="saq", bits=bits, keep_vectors=keep, degree=8,
            threads=1, seed=0,
        )
        print(metric, bits, idx.bit_allocation)
        write_golden(idx, q, metric, "saq", f"saq{bits}-{tag}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "layout1")
