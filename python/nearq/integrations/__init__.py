"""Vector stores for RAG frameworks, built on :class:`nearq.Index`.

* :mod:`nearq.integrations.langchain` — ``NearqVectorStore``, a LangChain ``VectorStore``
  (``pip install "nearq[langchain]"``).
* :mod:`nearq.integrations.llama_index` — ``NearqVectorStore``, a LlamaIndex vector store
  (``pip install "nearq[llama-index]"``).

Importing this package (or :mod:`nearq`) never imports either framework; each submodule imports
its own framework when it is imported.

Both stores share the machinery below: the nearq index is created on the first add (the vector
dimension is unknown before); documents and their metadata live beside it in Python, keyed by the
int64 id nearq uses, with the frameworks' string ids mapped to those ids; metadata filters are
compiled into nearq's native allow-list (the ``filter=`` argument of :meth:`nearq.Index.search`),
so a filtered search returns the ``k`` nearest *matching* documents rather than filtering a top-k
afterwards; ``save``/``load`` write the nearq index file plus a JSON file (no pickle).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
)

import numpy as np

from ..errors import InvalidInputError
from ..index import Index

__all__ = ["relevance_score_fn", "DEFAULT_INDEX_KWARGS"]

#: Build defaults of the stores (override through ``index_kwargs``).
DEFAULT_INDEX_KWARGS: Dict[str, Any] = {"metric": "cosine", "encoding": "flat"}

#: Keyword arguments of :meth:`nearq.Index.search` a store passes through per query.
SEARCH_KWARGS = ("ef", "rerank", "threads")

_INDEX_FILE = "index.nearq"
_STATE_FILE = "docstore.json"
_STATE_VERSION = 1


# --------------------------------------------------------------------------- relevance scores


def relevance_score_fn(metric: str) -> Callable[[float], float]:
    """Maps a nearq distance to a relevance score in [0, 1] (higher is more relevant),
    monotonically and consistently with the metric:

    * ``"cosine"`` (distance ``1 - cos``): ``1 - d / 2``, i.e. ``(1 + cos) / 2``;
    * ``"l2"`` (squared Euclidean distance): ``1 / (1 + d)``;
    * ``"ip"`` (distance ``-<q, x>``): ``1 / (1 + exp(d))``, the logistic of the inner product.
    """
    if metric == "cosine":
        return _cosine_score
    if metric == "l2":
        return _l2_score
    if metric == "ip":
        return _ip_score
    raise InvalidInputError(f"unknown metric {metric!r}")


def _cosine_score(d: float) -> float:
    return min(1.0, max(0.0, 1.0 - d / 2.0))


def _l2_score(d: float) -> float:
    return 1.0 / (1.0 + max(d, 0.0))


def _ip_score(d: float) -> float:
    if d >= 0:
        e = math.exp(-d)
        return e / (1.0 + e)
    return 1.0 / (1.0 + math.exp(d))


# --------------------------------------------------------------------------- metadata filters
#
# A filter is compiled into a small tree of tuples:
#   ("cmp", key, op, value)   one condition on metadata[key]
#   ("and", [children]), ("or", [children]), ("not", [children])  (not: none of them matches)
#   ("pred", callable)        a predicate on the metadata mapping
#   ("keys", frozenset)       entries with these string keys (the frameworks' ids)
#   ("groups", frozenset)     entries in these groups (LlamaIndex's ref_doc_id)
# and evaluated against the documents' metadata into a set of ids, which becomes nearq's
# allow-list. Equality and membership conditions are answered from an inverted index
# (key -> value -> ids) and narrow the candidates before the other conditions are scanned.
#
# Semantics (the same as LlamaIndex's in-memory store): a missing key or a None value matches
# only "ne", "nin" and "is_empty"; comparisons between values that do not compare (str < int)
# do not match instead of raising.

OPS = frozenset(
    [
        "eq",
        "ne",
        "gt",
        "gte",
        "lt",
        "lte",
        "in",
        "nin",
        "contains",
        "any",
        "all",
        "text_match",
        "text_match_insensitive",
        "is_empty",
    ]
)

_MISSING = object()


def _hashable(v: Any) -> bool:
    if v is None:
        return False
    try:
        hash(v)
    except TypeError:
        return False
    return True


def _match(op: str, value: Any, mv: Any) -> bool:
    """Whether metadata value ``mv`` (``_MISSING`` if absent) satisfies ``op value``."""
    if op == "is_empty":
        return (
            mv is _MISSING
            or mv is None
            or mv == ""
            or (isinstance(mv, (list, tuple)) and len(mv) == 0)
        )
    if mv is _MISSING or mv is None:
        return op in ("ne", "nin")
    try:
        if op == "eq":
            return bool(mv == value)
        if op == "ne":
            return bool(mv != value)
        if op == "gt":
            return bool(mv > value)
        if op == "gte":
            return bool(mv >= value)
        if op == "lt":
            return bool(mv < value)
        if op == "lte":
            return bool(mv <= value)
        if op == "in":
            return mv in value
        if op == "nin":
            return mv not in value
        if op == "contains":
            return isinstance(mv, (list, tuple, set, frozenset, str)) and value in mv
        if op == "any":
            return isinstance(mv, (list, tuple, set, frozenset)) and any(v in mv for v in value)
        if op == "all":
            return isinstance(mv, (list, tuple, set, frozenset)) and all(v in mv for v in value)
        if op == "text_match":
            return isinstance(mv, str) and isinstance(value, str) and value in mv
        if op == "text_match_insensitive":
            return isinstance(mv, str) and isinstance(value, str) and value.lower() in mv.lower()
    except TypeError:
        return False
    raise InvalidInputError(f"unknown filter operator {op!r}")


def _indexable(node: tuple) -> bool:
    """Whether a condition can be answered from the inverted index alone."""
    if node[0] in ("keys", "groups"):
        return True
    if node[0] != "cmp":
        return False
    _, _, op, value = node
    if op == "eq":
        return _hashable(value)
    if op == "in":
        return isinstance(value, (list, tuple, set, frozenset)) and all(_hashable(v) for v in value)
    return False


def _check_node(node: Any) -> None:
    """Validates a compiled filter tree (raises InvalidInputError)."""
    if not isinstance(node, tuple) or not node:
        raise InvalidInputError(f"bad compiled filter {node!r}")
    kind = node[0]
    if kind == "cmp":
        _, key, op, value = node
        if op not in OPS:
            raise InvalidInputError(f"unknown filter operator {op!r}")
        if op in ("in", "nin", "any", "all") and not isinstance(
            value, (list, tuple, set, frozenset)
        ):
            raise InvalidInputError(
                f"filter operator {op!r} on {key!r} needs a list, got {value!r}"
            )
    elif kind in ("and", "or", "not"):
        for child in node[1]:
            _check_node(child)
    elif kind == "pred":
        if not callable(node[1]):
            raise InvalidInputError("a filter predicate must be callable")
    elif kind not in ("keys", "groups") or not isinstance(node[1], (set, frozenset)):
        raise InvalidInputError(f"bad compiled filter {node!r}")


# --------------------------------------------------------------------------- locking


class _RWLock:
    """Many readers (searches) or one writer (add/delete). nearq releases the GIL while it
    searches, so concurrent searches from threads (async stores run in executors) overlap, and
    a mutation never runs while a search holds the index."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._readers:
                self._cond.wait()
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


# --------------------------------------------------------------------------- the store


class _Entry:
    __slots__ = ("key", "payload", "metadata", "group")

    def __init__(self, key: str, payload: Any, metadata: Mapping[str, Any], group: Optional[str]):
        self.key = key
        self.payload = payload
        self.metadata = metadata
        self.group = group


class _DocStore:
    """A nearq index plus the documents beside it, keyed by the index's int64 ids.

    Framework-neutral: each entry has a string ``key`` (the framework's id), an opaque
    ``payload`` (what the framework needs to rebuild its document; JSON-serialisable to be
    saved), the ``metadata`` filters look at, and an optional ``group`` (LlamaIndex's
    ``ref_doc_id``) that can be deleted at once.
    """

    def __init__(self, index_kwargs: Optional[Mapping[str, Any]] = None) -> None:
        kwargs = dict(DEFAULT_INDEX_KWARGS)
        if index_kwargs:
            kwargs.update(index_kwargs)
        for bad in ("vectors", "ids"):
            if bad in kwargs:
                raise InvalidInputError(f"index_kwargs cannot set {bad!r}")
        relevance_score_fn(kwargs["metric"])  # validates the metric early
        self.index_kwargs: Dict[str, Any] = kwargs
        self.index: Optional[Index] = None
        self._entries: Dict[int, _Entry] = {}
        self._ids: Dict[str, int] = {}
        self._postings: Dict[str, Dict[Any, Set[int]]] = {}
        self._groups: Dict[str, Set[int]] = {}
        self._next_id = 0
        self._lock = _RWLock()

    # ------------------------------------------------------------------ basics

    @property
    def metric(self) -> str:
        return str(self.index.metric if self.index is not None else self.index_kwargs["metric"])

    def score(self, distance: float) -> float:
        return relevance_score_fn(self.metric)(distance)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._ids

    def get(self, keys: Iterable[str]) -> List[Tuple[str, Any, Mapping[str, Any]]]:
        """(key, payload, metadata) of the keys present, in the order given, each key once."""
        out = []
        seen: Set[str] = set()
        with self._lock.read():
            for key in keys:
                i = self._ids.get(key)
                if i is not None and key not in seen:
                    seen.add(key)
                    e = self._entries[i]
                    out.append((key, e.payload, e.metadata))
        return out

    def items(self, node: Optional[tuple] = None) -> List[Tuple[str, Any, Mapping[str, Any]]]:
        """(key, payload, metadata) of every entry matching the compiled filter ``node`` (all
        if None), in insertion order."""
        if node is not None:
            _check_node(node)
        with self._lock.read():
            if node is None:
                ids: Iterable[int] = self._entries.keys()
            else:
                ids = sorted(self._eval(node, None))
            return [
                (self._entries[i].key, self._entries[i].payload, self._entries[i].metadata)
                for i in ids
            ]

    # ------------------------------------------------------------------ writes

    def upsert(
        self,
        keys: Sequence[str],
        vectors: Any,
        payloads: Sequence[Any],
        metadatas: Sequence[Mapping[str, Any]],
        groups: Optional[Sequence[Optional[str]]] = None,
    ) -> None:
        """Inserts entries, replacing those whose key exists; a key repeated within the batch
        keeps its last occurrence. All or nothing: when nearq rejects the vectors (wrong
        dimension, NaN, a zero vector under cosine, ...) nothing changes."""
        n = len(keys)
        if groups is None:
            groups = [None] * n
        if not (len(payloads) == len(metadatas) == len(groups) == n):
            raise InvalidInputError("keys, payloads, metadatas and groups differ in length")
        for k in keys:
            if not isinstance(k, str):
                raise InvalidInputError(f"ids must be strings, got {type(k).__name__} {k!r}")
        if n == 0:
            return
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[0] != n:
            raise InvalidInputError(
                f"expected {n} embeddings of equal length, got an array of shape {x.shape}"
            )
        last: Dict[str, int] = {}
        for row, k in enumerate(keys):
            last[k] = row
        rows = sorted(last.values())
        if len(rows) != n:
            x = x[rows]
        with self._lock.write():
            next_id = self._next_id
            ids = np.empty(len(rows), dtype=np.int64)
            for j, row in enumerate(rows):
                i = self._ids.get(keys[row])
                if i is None:
                    i = next_id
                    next_id += 1
                ids[j] = i
            if self.index is None:
                self.index = Index.build(x, ids=ids, **self.index_kwargs)
            else:
                self.index.upsert(x, ids)
            self._next_id = next_id
            for j, row in enumerate(rows):
                i = int(ids[j])
                old = self._entries.get(i)
                if old is not None:
                    self._unindex(i, old)
                entry = _Entry(keys[row], payloads[row], metadatas[row], groups[row])
                self._entries[i] = entry
                self._ids[entry.key] = i
                self._index(i, entry)

    def delete(self, keys: Iterable[str]) -> int:
        """Deletes the entries with these keys (unknown keys are ignored); returns how many."""
        with self._lock.write():
            ids = sorted({self._ids[k] for k in keys if k in self._ids})
            return self._delete_ids(ids)

    def delete_group(self, group: str) -> int:
        with self._lock.write():
            return self._delete_ids(sorted(self._groups.get(group, ())))

    def delete_where(self, node: tuple) -> int:
        _check_node(node)
        with self._lock.write():
            return self._delete_ids(sorted(self._eval(node, None)))

    def clear(self) -> None:
        """Removes everything, the index included (the next add builds a new one)."""
        with self._lock.write():
            self.index = None
            self._entries.clear()
            self._ids.clear()
            self._postings.clear()
            self._groups.clear()

    def _delete_ids(self, ids: Sequence[int]) -> int:
        if not ids:
            return 0
        assert self.index is not None
        self.index.delete(np.asarray(ids, dtype=np.int64))
        for i in ids:
            entry = self._entries.pop(i)
            del self._ids[entry.key]
            self._unindex(i, entry)
        return len(ids)

    def _index(self, i: int, entry: _Entry) -> None:
        for key, value in entry.metadata.items():
            if _hashable(value):
                self._postings.setdefault(key, {}).setdefault(value, set()).add(i)
        if entry.group is not None:
            self._groups.setdefault(entry.group, set()).add(i)

    def _unindex(self, i: int, entry: _Entry) -> None:
        for key, value in entry.metadata.items():
            if _hashable(value):
                by_value = self._postings[key]
                ids = by_value[value]
                ids.discard(i)
                if not ids:
                    del by_value[value]
                    if not by_value:
                        del self._postings[key]
        if entry.group is not None:
            ids = self._groups[entry.group]
            ids.discard(i)
            if not ids:
                del self._groups[entry.group]

    # ------------------------------------------------------------------ filters and search

    def _lookup(self, key: str, value: Any) -> Set[int]:
        return self._postings.get(key, {}).get(value, set())

    def _eval(self, node: tuple, within: Optional[Set[int]]) -> Set[int]:
        """Ids (restricted to ``within`` when given) that satisfy ``node``."""
        kind = node[0]
        if kind == "keys":
            found = {self._ids[k] for k in node[1] if k in self._ids}
            return found if within is None else found & within
        if kind == "groups":
            found = set()
            for g in node[1]:
                found |= self._groups.get(g, set())
            return found if within is None else found & within
        if kind == "cmp" and _indexable(node):
            _, key, op, value = node
            if op == "eq":
                found = set(self._lookup(key, value))
            else:
                found = set()
                for v in value:
                    found |= self._lookup(key, v)
            return found if within is None else found & within
        if kind == "and":
            children = sorted(node[1], key=lambda c: not _indexable(c))
            result = within
            for child in children:
                result = self._eval(child, result)
                if not result:
                    return set()
            return set(self._entries) if result is None else result
        if kind == "or":
            out: Set[int] = set()
            for child in node[1]:
                out |= self._eval(child, within)
            return out
        if kind == "not":
            universe = set(self._entries) if within is None else within
            for child in node[1]:
                universe = universe - self._eval(child, universe)
            return universe
        candidates: Iterable[int] = self._entries.keys() if within is None else within
        if kind == "cmp":
            _, key, op, value = node
            return {
                i
                for i in candidates
                if _match(op, value, self._entries[i].metadata.get(key, _MISSING))
            }
        if kind == "pred":
            fn = node[1]
            return {i for i in candidates if fn(self._entries[i].metadata)}
        raise InvalidInputError(f"bad compiled filter {node!r}")

    def search(
        self,
        vector: Any,
        k: int,
        node: Optional[tuple] = None,
        search_kwargs: Optional[Mapping[str, Any]] = None,
    ) -> List[Tuple[str, Any, Mapping[str, Any], float]]:
        """The ``k`` nearest entries satisfying ``node``: (key, payload, metadata, distance),
        nearest first. The filter is evaluated into an allow-list that nearq's search honours."""
        kwargs = dict(search_kwargs or {})
        unknown = set(kwargs) - set(SEARCH_KWARGS)
        if unknown:
            raise TypeError(f"unexpected search arguments: {sorted(unknown)}")
        if isinstance(k, bool) or int(k) != k or k < 1:
            raise InvalidInputError(f"k must be a positive integer, got {k!r}")
        k = int(k)
        if node is not None:
            _check_node(node)
        q = np.asarray(vector, dtype=np.float32).reshape(-1)
        with self._lock.read():
            if self.index is None or not self._entries:
                return []
            allow = None
            available = len(self._entries)
            if node is not None:
                matching = self._eval(node, None)
                allow = np.fromiter(matching, dtype=np.int64, count=len(matching))
                available = len(allow)
                if available == 0:
                    return []
            result = self.index.search(q, k=min(k, available), filter=allow, **kwargs)
            out = []
            for i, d in zip(result.ids[0].tolist(), result.distances[0].tolist()):
                if i < 0:
                    break
                entry = self._entries[i]
                out.append((entry.key, entry.payload, entry.metadata, float(d)))
            return out

    # ------------------------------------------------------------------ persistence

    def save(
        self, folder: "os.PathLike[str] | str", kind: str, extra: Optional[Mapping[str, Any]] = None
    ) -> None:
        """Writes ``folder/index.nearq`` (nearq's format) and ``folder/docstore.json``
        (keys, payloads, metadata, groups, build arguments). Each file is written atomically;
        :meth:`load` checks that the two agree."""
        folder = os.fspath(folder)
        os.makedirs(folder, exist_ok=True)
        with self._lock.read():
            state = {
                "format": "nearq.integrations",
                "version": _STATE_VERSION,
                "kind": kind,
                "index_kwargs": self.index_kwargs,
                "next_id": self._next_id,
                "index_file": _INDEX_FILE if self.index is not None else None,
                "extra": dict(extra or {}),
                "entries": [
                    {
                        "id": i,
                        "key": e.key,
                        "group": e.group,
                        "metadata": e.metadata,
                        "payload": e.payload,
                    }
                    for i, e in self._entries.items()
                ],
            }
            text = json.dumps(state, ensure_ascii=False)
            if self.index is not None:
                self.index.save(os.path.join(folder, _INDEX_FILE))
            path = os.path.join(folder, _STATE_FILE)
            tmp = f"{path}.tmp{os.getpid()}.{threading.get_ident()}"
            try:
                with open(tmp, "w", encoding="utf-8") as f:
                    f.write(text)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.remove(tmp)
                raise

    @classmethod
    def load(
        cls, folder: "os.PathLike[str] | str", kind: str, mmap: bool = False
    ) -> Tuple["_DocStore", Dict[str, Any]]:
        """Reads what :meth:`save` wrote; returns the store and the ``extra`` dict."""
        folder = os.fspath(folder)
        with open(os.path.join(folder, _STATE_FILE), encoding="utf-8") as f:
            state = json.load(f)
        if not isinstance(state, dict) or state.get("format") != "nearq.integrations":
            raise InvalidInputError(f"{folder} does not hold a saved nearq vector store")
        if state.get("version") != _STATE_VERSION:
            raise InvalidInputError(f"unsupported saved store version {state.get('version')!r}")
        if state.get("kind") != kind:
            raise InvalidInputError(
                f"{folder} holds a {state.get('kind')!r} store, not a {kind!r} one"
            )
        store = cls(state["index_kwargs"])
        if state["index_file"] is not None:
            path = os.path.join(folder, state["index_file"])
            store.index = Index.load(path, mmap=True) if mmap else Index.load(path)
        store._next_id = int(state["next_id"])
        for rec in state["entries"]:
            i = int(rec["id"])
            entry = _Entry(rec["key"], rec["payload"], rec["metadata"], rec["group"])
            if i in store._entries or entry.key in store._ids:
                raise InvalidInputError(f"{folder}: duplicate entry {entry.key!r}")
            store._entries[i] = entry
            store._ids[entry.key] = i
            store._index(i, entry)
        live = set() if store.index is None else set(store.index.ids().tolist())
        if live != set(store._entries):
            raise InvalidInputError(
                f"{folder}: {_INDEX_FILE} and {_STATE_FILE} disagree ({len(live)} vectors, "
                f"{len(store._entries)} documents); were they written by the same save?"
            )
        return store, dict(state.get("extra") or {})
