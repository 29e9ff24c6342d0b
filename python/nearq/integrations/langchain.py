"""A LangChain vector store on a nearq index (``pip install "nearq[langchain]"``).

>>> from nearq.integrations.langchain import NearqVectorStore
>>> store = NearqVectorStore(embeddings)                        # any langchain Embeddings
>>> store.add_texts(["a cat", "a dog"], metadatas=[{"kind": "pet"}, {"kind": "pet"}])
>>> store.similarity_search("kitten", k=1, filter={"kind": "pet"})
>>> store.save("store/"); same = NearqVectorStore.load("store/", embeddings)

Documents live in Python beside the index, keyed by the int64 ids nearq uses (LangChain's string
ids are mapped to them). Filters are compiled into nearq's native allow-list, so a filtered
search returns the ``k`` nearest matching documents, never a post-filtered top-k:

* a dict: ``{"key": value}`` (equality; several keys must all hold), or per key an operator dict
  ``{"key": {"$in": [...]}}`` with ``$eq``, ``$ne``, ``$in``, ``$nin``, ``$gt``, ``$gte``,
  ``$lt``, ``$lte``; conditions combine with ``{"$and": [f, ...]}``, ``{"$or": [f, ...]}`` and
  ``{"$not": f}``. A missing key matches only ``$ne`` and ``$nin``.
* a callable ``predicate(metadata) -> bool``.

``similarity_search_with_score`` returns nearq's distances (smaller is nearer: ``1 - cos`` for
``"cosine"``, squared L2 for ``"l2"``, ``-ip`` for ``"ip"``); relevance scores
(``similarity_search_with_relevance_scores``, ``search_type="similarity_score_threshold"``) map
them to [0, 1], see :func:`nearq.integrations.relevance_score_fn`.
"""

from __future__ import annotations

import copy
import uuid
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Type,
    Union,
)

try:
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings
    from langchain_core.runnables.config import run_in_executor
    from langchain_core.vectorstores import VectorStore
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "nearq.integrations.langchain needs langchain-core: pip install 'nearq[langchain]'"
    ) from e

from ..errors import InvalidInputError
from ..index import Index
from . import SEARCH_KWARGS, _DocStore, relevance_score_fn

__all__ = ["NearqVectorStore"]

Filter = Union[Mapping[str, Any], Callable[[Mapping[str, Any]], bool], None]

_OPS = {
    "$eq": "eq",
    "$ne": "ne",
    "$gt": "gt",
    "$gte": "gte",
    "$lt": "lt",
    "$lte": "lte",
    "$in": "in",
    "$nin": "nin",
}

_KIND = "langchain"


def compile_filter(filter: Filter) -> Optional[tuple]:
    """Compiles a LangChain-style filter (see the module docstring) into the shared filter tree;
    ``None`` or ``{}`` means no filter."""
    if filter is None:
        return None
    if callable(filter) and not isinstance(filter, Mapping):
        return ("pred", filter)
    if not isinstance(filter, Mapping):
        raise InvalidInputError(
            f"filter must be a dict or a callable on metadata, got {type(filter).__name__}"
        )
    if not filter:
        return None
    return _compile_dict(filter)


def _compile_dict(f: Mapping[str, Any]) -> tuple:
    if not isinstance(f, Mapping):
        raise InvalidInputError(f"a filter must be a dict, got {f!r}")
    conds: List[tuple] = []
    for key, value in f.items():
        if key in ("$and", "$or"):
            if not isinstance(value, (list, tuple)):
                raise InvalidInputError(f"{key} needs a list of filters, got {value!r}")
            conds.append((key[1:], [_compile_dict(v) for v in value]))
        elif key == "$not":
            conds.append(("not", [_compile_dict(value)]))
        elif not isinstance(key, str) or key.startswith("$"):
            raise InvalidInputError(f"unknown filter operator {key!r}")
        elif (
            isinstance(value, Mapping)
            and value
            and all(isinstance(op, str) and op.startswith("$") for op in value)
        ):
            for op, operand in value.items():
                if op not in _OPS:
                    raise InvalidInputError(
                        f"unknown filter operator {op!r} on {key!r} (supported: {', '.join(_OPS)})"
                    )
                if op in ("$in", "$nin") and not isinstance(operand, (list, tuple, set, frozenset)):
                    raise InvalidInputError(f"{op} on {key!r} needs a list, got {operand!r}")
                conds.append(("cmp", key, _OPS[op], operand))
        else:
            conds.append(("cmp", key, "eq", value))
    return conds[0] if len(conds) == 1 else ("and", conds)


def _split_search_kwargs(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    unknown = set(kwargs) - set(SEARCH_KWARGS)
    if unknown:
        raise TypeError(
            f"unexpected keyword arguments {sorted(unknown)} "
            f"(nearq search takes {', '.join(SEARCH_KWARGS)})"
        )
    return {k: v for k, v in kwargs.items() if v is not None}


class NearqVectorStore(VectorStore):
    """LangChain ``VectorStore`` backed by a :class:`nearq.Index`.

    Args:
        embedding: the LangChain ``Embeddings`` used for documents and queries.
        index_kwargs: arguments of :meth:`nearq.Index.build` for the index, created on the first
            add (default ``metric="cosine"``, ``encoding="flat"``). Encodings other than flat
            train on that first batch, so make it representative (e.g. :meth:`from_texts`).
        search_kwargs: default per-query arguments of :meth:`nearq.Index.search`
            (``ef``, ``rerank``, ``threads``); each search call may override them.
        relevance_score_fn: maps a distance to a relevance score (default: by metric, in [0, 1]).
    """

    def __init__(
        self,
        embedding: Embeddings,
        *,
        index_kwargs: Optional[Mapping[str, Any]] = None,
        search_kwargs: Optional[Mapping[str, Any]] = None,
        relevance_score_fn: Optional[Callable[[float], float]] = None,
    ) -> None:
        self._embedding = embedding
        self._store = _DocStore(index_kwargs)
        self._search_kwargs = _split_search_kwargs(dict(search_kwargs or {}))
        self.override_relevance_score_fn = relevance_score_fn

    # ------------------------------------------------------------------ properties

    @property
    def embeddings(self) -> Embeddings:
        return self._embedding

    @property
    def index(self) -> Optional[Index]:
        """The nearq index (None until the first add)."""
        return self._store.index

    @property
    def index_kwargs(self) -> Dict[str, Any]:
        return dict(self._store.index_kwargs)

    def __len__(self) -> int:
        """Number of documents stored."""
        return len(self._store)

    def __bool__(self) -> bool:
        # an empty store is still a store (frameworks write `store or default_store`)
        return True

    # ------------------------------------------------------------------ writes

    def _prepare(
        self,
        texts: Iterable[str],
        metadatas: Optional[List[dict]],
        ids: Optional[Sequence[Optional[str]]],
    ) -> Tuple[List[str], List[dict], List[str]]:
        texts = list(texts)
        n = len(texts)
        if metadatas is not None and len(metadatas) != n:
            raise ValueError(f"got {len(metadatas)} metadatas for {n} texts")
        if ids is not None and len(ids) != n:
            raise ValueError(f"got {len(ids)} ids for {n} texts")
        metas = [copy.deepcopy(dict(m)) if m else {} for m in (metadatas or [None] * n)]
        keys = [
            str(i) if i is not None and i != "" else str(uuid.uuid4()) for i in (ids or [None] * n)
        ]
        return texts, metas, keys

    def _insert(
        self, texts: List[str], metas: List[dict], keys: List[str], vectors: Any
    ) -> List[str]:
        self._store.upsert(keys, vectors, texts, metas)
        return keys

    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: Optional[List[dict]] = None,
        *,
        ids: Optional[List[str]] = None,
        **kwargs: Any,
    ) -> List[str]:
        """Embeds and adds texts; an existing id is replaced (content, metadata and vector).
        Returns the ids (generated UUIDs where none was given)."""
        texts, metas, keys = self._prepare(texts, metadatas, ids)
        if not texts:
            return []
        vectors = self._embedding.embed_documents(texts)
        return self._insert(texts, metas, keys, vectors)

    async def aadd_texts(
        self,
        texts: Iterable[str],
        metadatas: Optional[List[dict]] = None,
        *,
        ids: Optional[List[str]] = None,
        **kwargs: Any,
    ) -> List[str]:
        texts, metas, keys = self._prepare(texts, metadatas, ids)
        if not texts:
            return []
        vectors = await self._embedding.aembed_documents(texts)
        return await run_in_executor(None, self._insert, texts, metas, keys, vectors)

    def add_embeddings(
        self,
        text_embeddings: Iterable[Tuple[str, List[float]]],
        metadatas: Optional[List[dict]] = None,
        *,
        ids: Optional[List[str]] = None,
        **kwargs: Any,
    ) -> List[str]:
        """Adds texts with precomputed embeddings."""
        pairs = list(text_embeddings)
        texts, metas, keys = self._prepare([t for t, _ in pairs], metadatas, ids)
        if not texts:
            return []
        return self._insert(texts, metas, keys, [e for _, e in pairs])

    def delete(self, ids: Optional[List[str]] = None, **kwargs: Any) -> Optional[bool]:
        """Deletes the documents with these ids (unknown ids are ignored); ``None`` deletes
        everything, the index included. With ``filter=`` instead of ids, deletes the matching
        documents."""
        flt = kwargs.pop("filter", None)
        if kwargs:
            raise TypeError(f"unexpected keyword arguments {sorted(kwargs)}")
        if flt is not None:
            if ids is not None:
                raise ValueError("pass ids or filter, not both")
            node = compile_filter(flt)
            if node is not None:
                self._store.delete_where(node)
                return True
            ids = None
        if ids is None:
            self._store.clear()
            return True
        self._store.delete(str(i) for i in ids)
        return True

    # ------------------------------------------------------------------ reads

    @staticmethod
    def _document(key: str, text: str, metadata: Mapping[str, Any]) -> Document:
        return Document(id=key, page_content=text, metadata=copy.deepcopy(dict(metadata)))

    def get_by_ids(self, ids: Sequence[str], /) -> List[Document]:
        """The documents with these ids (unknown ids are skipped), each once."""
        return [self._document(*hit) for hit in self._store.get(str(i) for i in ids)]

    def similarity_search_with_score_by_vector(
        self,
        embedding: List[float],
        k: int = 4,
        filter: Filter = None,
        **kwargs: Any,
    ) -> List[Tuple[Document, float]]:
        """The ``k`` nearest documents matching ``filter`` with their nearq distances
        (smaller is nearer). Keyword arguments ``ef``, ``rerank``, ``threads`` go to nearq."""
        search_kwargs = {**self._search_kwargs, **_split_search_kwargs(kwargs)}
        hits = self._store.search(embedding, k, compile_filter(filter), search_kwargs)
        return [(self._document(key, text, meta), d) for key, text, meta, d in hits]

    def similarity_search_by_vector(
        self, embedding: List[float], k: int = 4, filter: Filter = None, **kwargs: Any
    ) -> List[Document]:
        return [
            doc
            for doc, _ in self.similarity_search_with_score_by_vector(
                embedding, k, filter, **kwargs
            )
        ]

    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: Filter = None, **kwargs: Any
    ) -> List[Tuple[Document, float]]:
        """The ``k`` nearest documents matching ``filter`` with their nearq distances."""
        _split_search_kwargs(kwargs)
        if len(self._store) == 0:
            return []
        return self.similarity_search_with_score_by_vector(
            self._embedding.embed_query(query), k, filter, **kwargs
        )

    def similarity_search(
        self, query: str, k: int = 4, filter: Filter = None, **kwargs: Any
    ) -> List[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k, filter, **kwargs)]

    async def asimilarity_search_with_score(
        self, query: str, k: int = 4, filter: Filter = None, **kwargs: Any
    ) -> List[Tuple[Document, float]]:
        _split_search_kwargs(kwargs)
        if len(self._store) == 0:
            return []
        vector = await self._embedding.aembed_query(query)
        return await run_in_executor(
            None, self.similarity_search_with_score_by_vector, vector, k, filter, **kwargs
        )

    async def asimilarity_search(
        self, query: str, k: int = 4, filter: Filter = None, **kwargs: Any
    ) -> List[Document]:
        return [
            doc for doc, _ in await self.asimilarity_search_with_score(query, k, filter, **kwargs)
        ]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        if self.override_relevance_score_fn is not None:
            return self.override_relevance_score_fn
        return relevance_score_fn(self._store.metric)

    # ------------------------------------------------------------------ construction, persistence

    @classmethod
    def from_texts(
        cls: Type["NearqVectorStore"],
        texts: List[str],
        embedding: Embeddings,
        metadatas: Optional[List[dict]] = None,
        *,
        ids: Optional[List[str]] = None,
        index_kwargs: Optional[Mapping[str, Any]] = None,
        search_kwargs: Optional[Mapping[str, Any]] = None,
        relevance_score_fn: Optional[Callable[[float], float]] = None,
        **kwargs: Any,
    ) -> "NearqVectorStore":
        """Builds a store over ``texts`` in one batch (which trains a quantising encoding)."""
        if kwargs:
            raise TypeError(f"unexpected keyword arguments {sorted(kwargs)}")
        store = cls(
            embedding,
            index_kwargs=index_kwargs,
            search_kwargs=search_kwargs,
            relevance_score_fn=relevance_score_fn,
        )
        store.add_texts(texts, metadatas, ids=ids)
        return store

    def save(self, folder: Any) -> None:
        """Writes ``folder/index.nearq`` (the nearq index) and ``folder/docstore.json`` (ids,
        texts, metadata: must be JSON-serialisable). No pickle: loading executes no code."""
        self._store.save(folder, _KIND, {"search_kwargs": self._search_kwargs})

    @classmethod
    def load(
        cls: Type["NearqVectorStore"],
        folder: Any,
        embedding: Embeddings,
        *,
        mmap: bool = False,
        relevance_score_fn: Optional[Callable[[float], float]] = None,
    ) -> "NearqVectorStore":
        """Loads a store written by :meth:`save` (``embedding`` must be the model it was built
        with; ``mmap=True`` maps the index file instead of reading it)."""
        inner, extra = _DocStore.load(folder, _KIND, mmap=mmap)
        store = cls(embedding, relevance_score_fn=relevance_score_fn)
        store._store = inner
        store._search_kwargs = _split_search_kwargs(dict(extra.get("search_kwargs") or {}))
        return store
