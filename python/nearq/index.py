"""The :class:`Index` and :class:`SearchResult` types."""

from __future__ import annotations

import os
from typing import Any, Dict, NamedTuple, Optional, Tuple, Union

import numpy as np

from . import _nearq
from ._validate import _F32, as_bits, as_filter, as_float, as_ids, as_int, as_matrix, as_str
from .errors import DimensionMismatchError, InvalidInputError

PathLike = Union[str, "os.PathLike[str]"]

_MAX_THREADS = 4096
_result = tuple.__new__


class SearchResult(NamedTuple):
    """Search results: ``ids`` (int64, shape (n, k)) and ``distances`` (float32, shape (n, k)).

    Rows are sorted nearest first; missing results are padded with id -1 and distance +inf.
    Unpacks as ``ids, distances = result``.
    """

    ids: np.ndarray
    distances: np.ndarray


def _threads(threads: Any) -> Optional[int]:
    return as_int("threads", threads, lo=1, hi=_MAX_THREADS, optional=True)


class Index:
    """A graph index over encoded vectors.

    Build one with :meth:`Index.build` or load one with :meth:`Index.load`.
    Distances are squared L2 (``metric="l2"``), ``1 - cosine`` (``"cosine"``) or
    ``-inner product`` (``"ip"``); smaller is always nearer.
    """

    __slots__ = ("_inner",)

    def __init__(self, _inner: "_nearq.Index") -> None:
        if not isinstance(_inner, _nearq.Index):
            raise TypeError("use nearq.Index.build(...) or nearq.Index.load(...) to create an index")
        self._inner = _inner

    @classmethod
    def build(
        cls,
        vectors: Any,
        metric: str = "l2",
        encoding: str = "flat",
        bits: Union[int, Tuple[int, int], str, None] = None,
        keep_vectors: bool = True,
        degree: int = 32,
        build_ef: int = 128,
        alpha: float = 1.1,
        threads: Optional[int] = None,
        seed: int = 0,
        progress: bool = False,
        variant: Optional[str] = None,
        subspaces: Optional[int] = None,
        opq: bool = False,
        ids: Any = None,
        quantized_graph: Optional[bool] = None,
    ) -> "Index":
        """Builds an index over ``vectors`` (array-like of shape (n, dim), float16/32/64).

        Args:
            metric: ``"l2"``, ``"ip"`` or ``"cosine"``.
            encoding: ``"flat"`` (float32) or ``"sq8"`` (8-bit scalar quantisation).
            bits: bits per dimension where the encoding offers a choice (``None``: default);
                for ``"saq"`` an average budget, fractional allowed (e.g. ``3.5``; default 4);
                for ``"lvq"`` 4 or 8, or two levels ``(primary, residual)`` such as ``(4, 8)``
                (also written ``"4x8"``; default ``(4, 8)``).
            keep_vectors: keep full-precision vectors in RAM to re-rank the candidates of an
                encoding that estimates distances (no effect for ``"flat"``).
            degree: maximum out-degree of the graph.
            build_ef: beam width of the searches that find each point's neighbours.
            alpha: pruning factor (>= 1, on squared distances); larger keeps longer edges and
                fewer short ones. 1.1 reached recall@10 0.95 with a narrower beam than 1.2 on
                50k MiniLM vectors (one query per call, same cost per beam width);
                low-dimensional clustered data can need the longer edges of 1.2.
            threads: worker threads (default: all cores). The graph does not depend on it.
            seed: seed of the insertion order; the same seed gives the same index.
            progress: show a progress bar on stderr for builds that take more than a moment.
            variant: for ``"turboquant"``, ``"mse"`` (default: ``bits``-bit MSE-optimal codes) or
                ``"prod"`` (``bits - 1``-bit codes plus a 1-bit QJL sketch of the residual,
                unbiased inner products); no other encoding takes a variant.
            subspaces: for ``"pq"``, the number of sub-quantizers M (1 to dim; default dim/4 for
                8-bit and dim/2 for 4-bit codes, i.e. 2 bits per dimension). Each code is M bytes
                (``bits=8``, the default) or M/2 bytes (``bits=4``); when M does not divide dim the
                first ``dim % M`` sub-vectors get one extra dimension.
            opq: for ``"pq"``, learn an orthogonal rotation first (OPQ); slower to train, lower
                quantisation error on correlated data. With ``keep_vectors=False`` a ``"pq"`` index
                returns its look-up-table (ADC) distance estimates.
            ids: int64 id of each vector (array-like of length n, all distinct), returned by
                :meth:`search`; default ``0..n-1``.
            quantized_graph: for ``"rabitq"`` with ``keep_vectors=True`` and metric ``"l2"`` or
                ``"cosine"``: also lay the graph out as a quantized graph (SymphonyQG design:
                each node's row holds its vector, in half precision where that represents the
                data, and its neighbours' 2-bit RaBitQ codes, 1-bit for ``bits=1``; degree
                rounded up to a multiple of 32), which serves unfiltered searches, about
                ``dim * 2 + degree * (dim / 4 + 12)`` more bytes per vector. ``False`` opts out
                (searches then traverse the ``bits``-bit codes and re-rank). For ``"pq"`` with
                ``bits=4``: keep neighbour-code rows, each node holding its neighbours' codes
                already packed in FastScan blocks, so a traversal step scores them without
                gathering and transposing their codes (same estimates, faster search), at
                ``ceil(degree / 32) * 32 * ceil(M / 2)`` more bytes per vector (3 KiB at
                degree 32, M = 192: several times the codes). ``None`` (the default) means on
                for ``"rabitq"`` and off for ``"pq"`` (the rows would defeat a compressed
                index's memory budget; turn them on where the memory is available). Ignored
                elsewhere.
        """
        x = as_matrix(vectors, "vectors", allow_1d=False)
        metric = as_str("metric", metric)
        encoding = as_str("encoding", encoding)
        variant = None if variant is None else as_str("variant", variant)
        saq_bits = None
        if encoding.lower() == "saq" and bits is not None:
            # SAQ takes an average budget, fractional allowed (e.g. 3.5 bits per dimension).
            if isinstance(bits, (bool, np.bool_)) or not isinstance(bits, (int, float, np.integer, np.floating)):
                raise InvalidInputError(f"saq bits must be a number in (0, 12], got {bits!r}")
            saq_bits, bits = float(bits), None
        bits_list = as_bits(bits)
        subspaces = as_int("subspaces", subspaces, lo=1, hi=2**32 - 1, optional=True)
        if not isinstance(opq, (bool, np.bool_)):
            raise InvalidInputError(f"opq must be a bool, got {opq!r}")
        degree = as_int("degree", degree, lo=2, hi=1024)
        build_ef = as_int("build_ef", build_ef, lo=1, hi=100_000)
        if quantized_graph is not None and not isinstance(quantized_graph, (bool, np.bool_)):
            raise InvalidInputError(f"quantized_graph must be a bool or None, got {quantized_graph!r}")
        alpha = as_float("alpha", alpha)
        seed = as_int("seed", seed, lo=0, hi=2**64 - 1)
        id_array = None if ids is None else as_ids("ids", ids, n=x.shape[0])
        inner = _nearq.Index.build(
            x, metric, encoding, bits_list, bool(keep_vectors), degree, build_ef, alpha,
            _threads(threads), seed, bool(progress), variant=variant,
            subspaces=subspaces, opq=bool(opq), ids=id_array, saq_bits=saq_bits,
            quantized_graph=None if quantized_graph is None else bool(quantized_graph),
        )
        return cls(inner)

    def search(
        self,
        queries: Any,
        k: int = 10,
        ef: Optional[int] = None,
        threads: Optional[int] = None,
        rerank: Optional[int] = None,
        filter: Any = None,
        filter_strategy: str = "auto",
    ) -> SearchResult:
        """Finds the ``k`` nearest neighbours of each query.

        Args:
            queries: array-like of shape (dim,) or (n, dim).
            k: neighbours per query; more than ``len(index)`` is padded with id -1.
            ef: beam width (default ``max(k, 64)``); larger is slower and more accurate.
            threads: worker threads for a batch (default: all cores).
            rerank: candidates re-ranked with exact distances (or a finer code), for
                encodings that estimate distances (default ``max(3k, 30)``, at most ``ef``;
                a larger value widens the beam). An unfiltered search of an index with a
                quantized graph (:attr:`quantized_graph`) re-ranks every vector it expands
                exactly; there ``rerank`` only widens the beam to ``max(ef, rerank)``.
            filter: restrict results to some ids: an array-like (or set) of allowed int64 ids,
                or a boolean mask indexed by id (``mask[id]`` True = allowed; ids beyond the
                mask are excluded). Applied inside the graph traversal (rejected vectors still
                route the search, and the beam widens as the filter gets more selective), or
                by scanning the allowed vectors when that is cheaper, so a selective filter
                still returns ``k`` results when ``k`` exist.
            filter_strategy: ``"auto"`` (default), ``"graph"`` or ``"scan"``.
        """
        # Fast path for the common call (a float32 array, plain ints in range, no filter),
        # which matters for one query per call: the dimension is checked natively, and a
        # SearchResult is a tuple, built without its Python-level constructor.
        if (
            filter is None
            and type(queries) is np.ndarray
            and type(k) is int
            and (ef is None or (type(ef) is int and 1 <= ef <= 1_000_000))
            and rerank is None
            and queries.dtype == _F32
            and 1 <= k <= 1_000_000
            and (threads is None or (type(threads) is int and 1 <= threads <= _MAX_THREADS))
            and filter_strategy == "auto"
            and queries.size > 0
        ):
            return _result(SearchResult, self._inner.search(queries, k, ef, None, threads))
        q = as_matrix(queries, "queries", allow_1d=True)
        k = as_int("k", k, lo=1, hi=1_000_000)
        ef = as_int("ef", ef, lo=1, hi=1_000_000, optional=True)
        rerank = as_int("rerank", rerank, lo=1, hi=1_000_000, optional=True)
        if q.shape[1] != self.dim:
            raise DimensionMismatchError(
                f"dimension mismatch: the index has dimension {self.dim}, the queries have {q.shape[1]}"
            )
        fids, fmask = as_filter(filter)
        strategy = as_str("filter_strategy", filter_strategy)
        ids, dists = self._inner.search(
            q, k, ef, rerank, _threads(threads), filter_ids=fids, filter_mask=fmask,
            filter_strategy=strategy,
        )
        return SearchResult(ids, dists)

    def add(self, vectors: Any, ids: Any = None, threads: Optional[int] = None) -> np.ndarray:
        """Adds vectors (shape (m, dim) or (dim,)) and returns their int64 ids.

        Without ``ids`` the new vectors get ids counting up from one past the largest id the
        index has used. Ids already present raise :class:`~nearq.InvalidInputError` (use
        :meth:`upsert` to replace), and so does any bad input; nothing changes on error.
        The encoding is not retrained: new vectors are encoded with the parameters learned at
        build time (data-oblivious encodings such as ``"flat"`` and ``"turboquant"`` lose
        nothing; trained ones assume the new data looks like the old).
        """
        x = as_matrix(vectors, "vectors", allow_1d=True)
        if x.shape[1] != self.dim:
            raise DimensionMismatchError(
                f"dimension mismatch: the index has dimension {self.dim}, the vectors have {x.shape[1]}"
            )
        id_array = None if ids is None else as_ids("ids", ids, n=x.shape[0])
        return self._inner.add(x, id_array, _threads(threads))

    def delete(self, ids: Any, threads: Optional[int] = None) -> int:
        """Deletes the vectors with these ids (unknown ids are ignored) and returns how many
        were deleted. They are never returned from this call on. Deleted vectors are
        tombstoned; once they make up 10% of the index, the graph is repaired around them and
        their memory reclaimed (see :meth:`consolidate`)."""
        return self._inner.delete(as_ids("ids", ids), _threads(threads))

    def upsert(self, vectors: Any, ids: Any, threads: Optional[int] = None) -> None:
        """Inserts vectors under the given ids, replacing the vectors of ids already present."""
        x = as_matrix(vectors, "vectors", allow_1d=True)
        if x.shape[1] != self.dim:
            raise DimensionMismatchError(
                f"dimension mismatch: the index has dimension {self.dim}, the vectors have {x.shape[1]}"
            )
        self._inner.upsert(x, as_ids("ids", ids, n=x.shape[0]), _threads(threads))

    def consolidate(self, threads: Optional[int] = None) -> None:
        """Repairs the graph around deleted vectors now and reclaims their memory."""
        self._inner.consolidate(_threads(threads))

    def ids(self) -> np.ndarray:
        """The ids of the vectors in the index (int64, storage order)."""
        return self._inner.ids()

    def __contains__(self, id: Any) -> bool:
        try:
            i = as_int("id", id, lo=-(2**63), hi=2**63 - 1)
        except InvalidInputError:
            return False
        return self._inner.contains(i)

    def save(self, path: PathLike) -> None:
        """Writes the index to ``path`` (atomically: a temporary file renamed into place)."""
        self._inner.save(_fspath(path))

    @classmethod
    def load(cls, path: PathLike, mmap: Union[bool, str] = False) -> "Index":
        """Loads an index written by :meth:`save` (this or an earlier format version).

        Raises :class:`~nearq.IndexFormatError` for a corrupt, truncated, foreign or too-new
        file and :class:`~nearq.NearqIOError` when the file cannot be read. Loading never
        executes code.

        With ``mmap=True`` the codes and float vectors are served from a memory map of the
        file instead of being read: opening is fast, memory is shared between processes and
        only pages a search touches are read (``memory_usage(detail=True)["mmap"]``). The
        structure is validated but the checksum is not (it would read the whole file). The
        first change (``add``/``delete``) copies the mapped parts into RAM; the file itself is
        never modified. Do not overwrite the file in place while it is mapped (:meth:`save`
        replaces files atomically, which is safe).

        ``mmap="vectors"`` maps only the float vectors: the codes, read at every hop, are
        loaded into RAM, and the vectors, read only to re-rank a few candidates per query,
        stay on disk (the low-memory way to re-rank exactly).
        """
        if isinstance(mmap, str) and mmap == "vectors":
            mode = 2
        elif isinstance(mmap, (bool, np.bool_)):
            mode = int(bool(mmap))
        else:
            raise InvalidInputError(f'mmap must be a bool or "vectors", got {mmap!r}')
        return cls(_nearq.Index.load(_fspath(path), mode))

    def __len__(self) -> int:
        """Number of vectors (deleted ones excluded)."""
        return len(self._inner)

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return self._inner.dim

    @property
    def metric(self) -> str:
        """``"l2"``, ``"ip"`` or ``"cosine"``."""
        return self._inner.metric

    @property
    def encoding(self) -> str:
        """Name of the vector encoding."""
        return self._inner.encoding

    @property
    def keep_vectors(self) -> bool:
        return self._inner.keep_vectors

    @property
    def quantized_graph(self) -> bool:
        """Whether searches go through a quantized graph or (4-bit ``"pq"``) neighbour-code
        rows (see :meth:`build`)."""
        return self._inner.quantized_graph

    @property
    def bit_allocation(self) -> Optional[list]:
        """For ``"saq"``: the bits chosen per segment of principal directions, as
        ``[(dimensions, bits), ...]`` from the leading (highest-variance) segment on;
        ``None`` for other encodings."""
        a = self._inner.bit_allocation
        return None if a is None else [tuple(x) for x in a]

    @property
    def build_params(self) -> Dict[str, Any]:
        """Graph parameters the index was built with."""
        return dict(self._inner.build_params)

    def memory_usage(self, detail: bool = False) -> Any:
        """Bytes the index holds in RAM. With ``detail=True``, a dict by part
        (``codes``, ``graph``, ``vectors``, ``params``, ``ids`` (user ids and tombstones),
        ``quantized_graph`` (its rows, which hold a second copy of the float vectors),
        ``neighbor_codes`` (4-bit ``"pq"``'s neighbour-code rows), ``total``, and ``mmap``: bytes served from a memory map, not counted in ``total``)."""
        m = dict(self._inner.memory_usage())
        return m if detail else int(m["total"])

    def __repr__(self) -> str:
        return (
            f"nearq.Index(n={len(self)}, dim={self.dim}, metric={self.metric!r}, "
            f"encoding={self.encoding!r}, degree={self._inner.degree})"
        )

    def __reduce__(self):
        return (_from_bytes, (bytes(self._inner.to_bytes()),))


def _from_bytes(data: bytes) -> Index:
    return Index(_nearq.Index.from_bytes(data))


def _fspath(path: Any) -> str:
    try:
        p = os.fspath(path)
    except TypeError:
        raise InvalidInputError(f"path must be a str or os.PathLike, got {type(path).__name__}") from None
    if isinstance(p, bytes):
        p = os.fsdecode(p)
    return p


def exact_search(
    vectors: Any, queries: Any, k: int = 10, metric: str = "l2", threads: Optional[int] = None
) -> SearchResult:
    """Exact k-nearest-neighbour search by brute force (the ground truth for recall)."""
    x = as_matrix(vectors, "vectors", allow_1d=False)
    q = as_matrix(queries, "queries", allow_1d=True)
    k = as_int("k", k, lo=1, hi=1_000_000)
    if q.shape[1] != x.shape[1]:
        raise DimensionMismatchError(
            f"dimension mismatch: the vectors have dimension {x.shape[1]}, the queries have {q.shape[1]}"
        )
    ids, d = _nearq.exact_search(x, q, k, as_str("metric", metric), _threads(threads))
    return SearchResult(ids, d)
