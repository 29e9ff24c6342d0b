"""Experimental indexes whose API may still change.

:class:`QuantizedGraph` is a graph in the SymphonyQG layout: every node's row holds its own
float vector and its neighbours' 2-bit RaBitQ codes in 4-bit FastScan blocks (one block per
bit plane), so expanding a node scores all its neighbours in one pass per plane, and every
expanded node is re-ranked exactly. It takes about 3.3x the memory of the float vectors.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from . import _nearq
from ._validate import as_float, as_int, as_matrix, as_str
from .errors import DimensionMismatchError
from .index import _MAX_THREADS, PathLike, SearchResult, _fspath, _threads

_F32 = np.dtype(np.float32)
_result = tuple.__new__


class QuantizedGraph:
    """A graph whose rows carry their neighbours' RaBitQ FastScan codes (L2 or cosine)."""

    __slots__ = ("_inner",)

    def __init__(self, _inner: "_nearq.QuantizedGraph") -> None:
        if not isinstance(_inner, _nearq.QuantizedGraph):
            raise TypeError("use nearq.experimental.QuantizedGraph.build(...)")
        self._inner = _inner

    @classmethod
    def build(
        cls,
        vectors: Any,
        metric: str = "l2",
        degree: int = 32,
        build_ef: int = 128,
        alpha: float = 1.1,
        threads: Optional[int] = None,
        seed: int = 0,
    ) -> "QuantizedGraph":
        """Builds the graph (``degree`` is rounded up to a multiple of 32).

        ``alpha`` defaults to 1.1 as in :meth:`nearq.Index.build`: every row is filled up to
        ``degree`` with near neighbours anyway (a FastScan block scores all its slots at the
        same cost), so fewer long edges leave room for more local ones."""
        x = as_matrix(vectors, "vectors", allow_1d=False)
        inner = _nearq.QuantizedGraph.build(
            x,
            as_str("metric", metric),
            as_int("degree", degree, lo=2, hi=1024),
            as_int("build_ef", build_ef, lo=1, hi=100_000),
            as_float("alpha", alpha),
            _threads(threads),
            as_int("seed", seed, lo=0, hi=2**64 - 1),
        )
        return cls(inner)

    def search(self, queries: Any, k: int = 10, ef: int = 64, threads: Optional[int] = None) -> SearchResult:
        """The ``k`` nearest neighbours of each query, exact distances, nearest first."""
        # Fast path for the common call (a float32 array, plain ints in range), which matters
        # for one query per call: the shape and dimension are checked natively, and a
        # SearchResult is a tuple, built without its Python-level constructor.
        if (
            type(queries) is np.ndarray
            and type(k) is int
            and type(ef) is int
            and queries.dtype == _F32
            and 1 <= k <= 1_000_000
            and 1 <= ef <= 1_000_000
            and (threads is None or (type(threads) is int and 1 <= threads <= _MAX_THREADS))
            and queries.size > 0
        ):
            return _result(SearchResult, self._inner.search(queries, k, ef, threads))
        q = as_matrix(queries, "queries", allow_1d=True)
        if q.shape[1] != self.dim:
            raise DimensionMismatchError(
                f"dimension mismatch: the index has dimension {self.dim}, the queries have {q.shape[1]}"
            )
        k = as_int("k", k, lo=1, hi=1_000_000)
        ef = as_int("ef", ef, lo=1, hi=1_000_000)
        ids, d = self._inner.search(q, k, ef, _threads(threads))
        return SearchResult(ids, d)

    def save(self, path: PathLike) -> None:
        """Writes the graph to ``path`` (atomically, checksummed)."""
        self._inner.save(_fspath(path))

    @classmethod
    def load(cls, path: PathLike) -> "QuantizedGraph":
        """Loads a graph written by :meth:`save`; a damaged or foreign file raises
        :class:`~nearq.IndexFormatError`."""
        return cls(_nearq.QuantizedGraph.load(_fspath(path)))

    def __len__(self) -> int:
        return len(self._inner)

    @property
    def dim(self) -> int:
        return self._inner.dim

    def memory_usage(self) -> int:
        """Bytes held in RAM."""
        return int(self._inner.memory_usage())
