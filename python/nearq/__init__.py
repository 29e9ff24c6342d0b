"""nearq: approximate nearest-neighbour search over compressed vectors, with a Rust core.

>>> import numpy as np, nearq
>>> x = np.random.default_rng(0).standard_normal((1000, 32), dtype=np.float32)
>>> index = nearq.Index.build(x, metric="l2")
>>> ids, distances = index.search(x[:5], k=3)
>>> ids[:, 0].tolist()
[0, 1, 2, 3, 4]
"""

from __future__ import annotations

from typing import Any, Dict

from . import _nearq
from .errors import (
    DimensionMismatchError,
    IndexFormatError,
    InvalidInputError,
    NearqError,
    NearqIOError,
)
from .index import Index, SearchResult, exact_search

__version__: str = _nearq.__version__

__all__ = [
    "Index",
    "SearchResult",
    "exact_search",
    "simd_info",
    "set_num_threads",
    "get_num_threads",
    "NearqError",
    "InvalidInputError",
    "DimensionMismatchError",
    "IndexFormatError",
    "NearqIOError",
    "__version__",
]


def set_num_threads(n: int) -> None:
    """Sets the number of worker threads used when a call passes ``threads=None``
    (``0`` restores the default: all cores)."""
    from ._validate import as_int

    _nearq.set_num_threads(as_int("n", n, lo=0, hi=4096))


def get_num_threads() -> int:
    """The number of worker threads used when a call passes ``threads=None``."""
    return int(_nearq.get_num_threads())


def simd_info() -> Dict[str, Any]:
    """The SIMD level the distance kernels use (``"level"``), the levels this CPU supports
    (``"supported"``) and the ``NEARQ_SIMD`` override if set (``"forced"``)."""
    return dict(_nearq.simd_info())
