"""A LlamaIndex vector store on a nearq index (``pip install "nearq[llama-index]"``).

>>> from llama_index.core import StorageContext, VectorStoreIndex
>>> from nearq.integrations.llama_index import NearqVectorStore
>>> store = NearqVectorStore()                       # index_kwargs={"metric": "cosine", ...}
>>> index = VectorStoreIndex.from_documents(
...     documents, storage_context=StorageContext.from_defaults(vector_store=store))
>>> index.as_retriever(similarity_top_k=3, filters=MetadataFilters(...)).retrieve("question")
>>> store.save("store/"); store = NearqVectorStore.load("store/")

The store keeps the nodes (``stores_text=True``) in Python beside the index, keyed by the int64
ids nearq uses (node ids are mapped to them). ``MetadataFilters`` (every ``FilterOperator``;
``and``/``or``/``not`` conditions, nested), ``doc_ids`` and ``node_ids`` of a query are compiled
into nearq's native allow-list, so a filtered query returns the ``similarity_top_k`` nearest
*matching* nodes, never a post-filtered top-k. A missing metadata key matches only ``!=``,
``nin`` and ``is_empty``. Besides the node's own metadata, filters can use ``ref_doc_id``,
``doc_id`` and ``document_id`` (the node's source document), like LlamaIndex's other stores.

Similarities are nearq distances mapped to [0, 1] by metric, see
:func:`nearq.integrations.relevance_score_fn`.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

try:
    from llama_index.core.bridge.pydantic import Field, PrivateAttr
    from llama_index.core.schema import (
        BaseNode,
        Document,
        ImageDocument,
        ImageNode,
        IndexNode,
        Node,
        TextNode,
    )
    from llama_index.core.vector_stores.types import (
        BasePydanticVectorStore,
        FilterCondition,
        FilterOperator,
        MetadataFilter,
        MetadataFilters,
        VectorStoreQuery,
        VectorStoreQueryMode,
        VectorStoreQueryResult,
    )
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "nearq.integrations.llama_index needs llama-index-core: pip install 'nearq[llama-index]'"
    ) from e

from ..errors import InvalidInputError
from ..index import Index
from . import SEARCH_KWARGS, _DocStore

__all__ = ["NearqVectorStore", "compile_filters"]

_KIND = "llama_index"

_OPS = {
    FilterOperator.EQ: "eq",
    FilterOperator.NE: "ne",
    FilterOperator.GT: "gt",
    FilterOperator.GTE: "gte",
    FilterOperator.LT: "lt",
    FilterOperator.LTE: "lte",
    FilterOperator.IN: "in",
    FilterOperator.NIN: "nin",
}
# operators that not every llama-index-core version has
for _name, _op in (
    ("CONTAINS", "contains"),
    ("ANY", "any"),
    ("ALL", "all"),
    ("TEXT_MATCH", "text_match"),
    ("TEXT_MATCH_INSENSITIVE", "text_match_insensitive"),
    ("IS_EMPTY", "is_empty"),
):
    if hasattr(FilterOperator, _name):
        _OPS[getattr(FilterOperator, _name)] = _op

_NODE_CLASSES = {
    cls.class_name(): cls for cls in (TextNode, ImageNode, IndexNode, Node, Document, ImageDocument)
}

_REF_KEYS = ("ref_doc_id", "doc_id", "document_id")


def compile_filters(filters: Optional[MetadataFilters]) -> Optional[tuple]:
    """Compiles ``MetadataFilters`` into the shared filter tree (None: no filter)."""
    if filters is None:
        return None
    if isinstance(filters, MetadataFilter):
        return _compile_one(filters)
    if not isinstance(filters, MetadataFilters):
        raise InvalidInputError(f"filters must be MetadataFilters, got {type(filters).__name__}")
    if not filters.filters:
        return None
    children = [
        compile_filters(f) if isinstance(f, MetadataFilters) else _compile_one(f)
        for f in filters.filters
    ]
    children = [c if c is not None else ("and", []) for c in children]
    condition = filters.condition or FilterCondition.AND
    if condition == FilterCondition.AND:
        return children[0] if len(children) == 1 else ("and", children)
    if condition == FilterCondition.OR:
        return ("or", children)
    if getattr(FilterCondition, "NOT", None) is not None and condition == FilterCondition.NOT:
        return ("not", children)  # none of the filters matches
    raise InvalidInputError(f"unsupported filter condition {condition!r}")


def _compile_one(f: MetadataFilter) -> tuple:
    op = _OPS.get(f.operator)
    if op is None:
        raise InvalidInputError(f"unsupported filter operator {f.operator!r}")
    value = f.value
    if op in ("in", "nin", "any", "all"):
        if value is None:
            value = []
        elif not isinstance(value, (list, tuple)):
            value = [value]
    return ("cmp", f.key, op, value)


class NearqVectorStore(BasePydanticVectorStore):
    """LlamaIndex vector store backed by a :class:`nearq.Index` (``stores_text=True``).

    Args:
        index_kwargs: arguments of :meth:`nearq.Index.build` for the index, created on the first
            add (default ``metric="cosine"``, ``encoding="flat"``). Encodings other than flat
            train on that first batch, so make it representative.
        search_kwargs: per-query arguments of :meth:`nearq.Index.search` (``ef``, ``rerank``,
            ``threads``); ``query(..., ef=...)`` overrides them.
    """

    stores_text: bool = True
    is_embedding_query: bool = True
    flat_metadata: bool = False

    index_kwargs: Dict[str, Any] = Field(default_factory=dict)
    search_kwargs: Dict[str, Any] = Field(default_factory=dict)

    _store: Any = PrivateAttr(default=None)

    def __init__(
        self,
        index_kwargs: Optional[Mapping[str, Any]] = None,
        search_kwargs: Optional[Mapping[str, Any]] = None,
        **kwargs: Any,
    ) -> None:
        search_kwargs = dict(search_kwargs or {})
        _check_search_kwargs(search_kwargs)
        store = _DocStore(index_kwargs)
        super().__init__(
            index_kwargs=dict(store.index_kwargs), search_kwargs=search_kwargs, **kwargs
        )
        self._store = store

    @classmethod
    def class_name(cls) -> str:
        return "NearqVectorStore"

    @property
    def client(self) -> Optional[Index]:
        """The nearq index (None until the first add)."""
        return self._store.index

    def __len__(self) -> int:
        """Number of documents stored."""
        return len(self._store)

    def __bool__(self) -> bool:
        # an empty store is still a store (frameworks write `store or default_store`)
        return True

    # ------------------------------------------------------------------ writes

    def add(self, nodes: Sequence[BaseNode], **add_kwargs: Any) -> List[str]:
        """Adds nodes (their embeddings must be set); a node id already present is replaced."""
        if not nodes:
            return []
        keys, vectors, payloads, metadatas, groups = [], [], [], [], []
        for node in nodes:
            embedding = node.get_embedding()  # raises if the node has none
            data = node.model_dump(mode="json")
            data["embedding"] = None
            meta = dict(data.get("metadata") or {})
            ref = node.ref_doc_id
            if ref is not None:
                for k in _REF_KEYS:
                    meta.setdefault(k, ref)
            keys.append(node.node_id)
            vectors.append(embedding)
            payloads.append({"type": node.class_name(), "node": data})
            metadatas.append(meta)
            groups.append(ref)
        self._store.upsert(keys, vectors, payloads, metadatas, groups)
        return keys

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Deletes every node of the source document ``ref_doc_id``."""
        self._store.delete_group(ref_doc_id)

    def delete_nodes(
        self,
        node_ids: Optional[List[str]] = None,
        filters: Optional[MetadataFilters] = None,
        **delete_kwargs: Any,
    ) -> None:
        """Deletes the nodes that are in ``node_ids`` (if given) and match ``filters`` (if
        given); with neither, deletes every node (as LlamaIndex's in-memory store does)."""
        self._store.delete_where(_restrict(compile_filters(filters), node_ids) or ("and", []))

    def clear(self) -> None:
        """Deletes everything, the index included (the next add builds a new one)."""
        self._store.clear()

    # ------------------------------------------------------------------ reads

    @staticmethod
    def _node(payload: Mapping[str, Any]) -> BaseNode:
        cls = _NODE_CLASSES.get(payload["type"], TextNode)
        return cls.from_dict(dict(payload["node"]))

    def get_nodes(
        self,
        node_ids: Optional[List[str]] = None,
        filters: Optional[MetadataFilters] = None,
    ) -> List[BaseNode]:
        """The nodes in ``node_ids`` (in that order, if given) matching ``filters``."""
        node = compile_filters(filters)
        if node_ids is None:
            return [self._node(p) for _, p, _ in self._store.items(node)]
        if node is None:
            return [self._node(p) for _, p, _ in self._store.get(node_ids)]
        matching = {k for k, _, _ in self._store.items(_and(node, ("keys", frozenset(node_ids))))}
        return [self._node(p) for k, p, _ in self._store.get(node_ids) if k in matching]

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """The ``similarity_top_k`` nearest nodes to ``query.query_embedding`` among those
        matching ``query.filters``, ``query.doc_ids`` and ``query.node_ids`` (an empty id list
        restricts nothing). Keyword arguments ``ef``, ``rerank``, ``threads`` go to nearq's
        search."""
        if query.mode != VectorStoreQueryMode.DEFAULT:
            raise NotImplementedError(
                f"NearqVectorStore supports only the default query mode, not {query.mode!r}"
            )
        if query.query_embedding is None:
            raise ValueError("NearqVectorStore needs query.query_embedding")
        _check_search_kwargs(kwargs)
        node = compile_filters(query.filters)
        # an empty list means no restriction: VectorStoreIndex.as_retriever passes node_ids=[]
        # (its own list of node ids, empty for a store that keeps the text)
        if query.doc_ids:
            node = _and(node, ("groups", frozenset(query.doc_ids)))
        if query.node_ids:
            node = _restrict(node, query.node_ids)
        hits = self._store.search(
            query.query_embedding,
            query.similarity_top_k,
            node,
            {**self.search_kwargs, **{k: v for k, v in kwargs.items() if v is not None}},
        )
        return VectorStoreQueryResult(
            nodes=[self._node(p) for _, p, _, _ in hits],
            similarities=[self._store.score(d) for _, _, _, d in hits],
            ids=[k for k, _, _, _ in hits],
        )

    # ------------------------------------------------------------------ persistence

    def save(self, folder: Any) -> None:
        """Writes ``folder/index.nearq`` (the nearq index) and ``folder/docstore.json`` (the
        nodes, JSON). No pickle: loading executes no code."""
        self._store.save(folder, _KIND, {"search_kwargs": self.search_kwargs})

    @classmethod
    def load(cls, folder: Any, *, mmap: bool = False) -> "NearqVectorStore":
        """Loads a store written by :meth:`save` (``mmap=True`` maps the index file)."""
        inner, extra = _DocStore.load(folder, _KIND, mmap=mmap)
        store = cls(index_kwargs=inner.index_kwargs, search_kwargs=extra.get("search_kwargs") or {})
        store._store = inner
        return store

    def persist(self, persist_path: str, fs: Any = None) -> None:
        """Called by ``StorageContext.persist``: saves into the folder ``persist_path`` without
        its ``.json`` suffix (``<persist_dir>/default__vector_store``). Local files only."""
        _local_only(fs)
        self.save(_folder(persist_path))

    @classmethod
    def from_persist_path(cls, persist_path: str, fs: Any = None) -> "NearqVectorStore":
        _local_only(fs)
        return cls.load(_folder(persist_path))

    @classmethod
    def from_persist_dir(
        cls, persist_dir: str, namespace: str = "default", fs: Any = None
    ) -> "NearqVectorStore":
        """Loads what ``StorageContext.persist(persist_dir)`` saved for this store."""
        return cls.from_persist_path(
            os.path.join(persist_dir, f"{namespace}__vector_store.json"), fs=fs
        )


def _check_search_kwargs(kwargs: Mapping[str, Any]) -> None:
    unknown = set(kwargs) - set(SEARCH_KWARGS)
    if unknown:
        raise TypeError(
            f"unexpected keyword arguments {sorted(unknown)} "
            f"(nearq search takes {', '.join(SEARCH_KWARGS)})"
        )


def _and(a: Optional[tuple], b: tuple) -> tuple:
    return b if a is None else ("and", [a, b])


def _restrict(node: Optional[tuple], node_ids: Optional[Sequence[str]]) -> Optional[tuple]:
    """``node`` restricted to ``node_ids`` (if given); None (no restriction) if neither."""
    if node_ids is not None:
        return _and(node, ("keys", frozenset(node_ids)))
    return node


def _folder(persist_path: Any) -> str:
    path = os.fspath(persist_path)
    return path[: -len(".json")] if path.endswith(".json") else path


def _local_only(fs: Any) -> None:
    if fs is None:
        return
    protocol = getattr(fs, "protocol", None)
    protocols = (protocol,) if isinstance(protocol, str) else tuple(protocol or ())
    if not ({"file", "local"} & set(protocols)):
        raise NotImplementedError("NearqVectorStore persists to the local file system only")
