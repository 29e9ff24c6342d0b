"""nearq.integrations.llama_index: the vector store on its own (add, query, filters compiled into
nearq's allow-list, deletes, persistence) and inside a real VectorStoreIndex. CI installs
llama-index-core (tests/requirements.txt); the importorskip guard only spares local runs without
it."""

from __future__ import annotations

import asyncio
import json
import os
from typing import List

import numpy as np
import pytest

pytest.importorskip("llama_index.core")

from llama_index.core import Document, StorageContext, VectorStoreIndex, load_index_from_storage  # noqa: E402
from llama_index.core.base.embeddings.base import BaseEmbedding  # noqa: E402
from llama_index.core.embeddings import MockEmbedding  # noqa: E402
from llama_index.core.node_parser import SentenceSplitter  # noqa: E402
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode  # noqa: E402
from llama_index.core.vector_stores.types import (  # noqa: E402
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
)

import nearq  # noqa: E402
from nearq.integrations.llama_index import NearqVectorStore  # noqa: E402

WORDS = ["cat", "dog", "fish", "bird", "car", "bus", "train", "boat"]


def _axis(text: str) -> List[float]:
    v = np.full(len(WORDS), 0.01)
    for w in text.lower().replace(".", " ").split():
        if w in WORDS:
            v[WORDS.index(w)] += 1.0
    return v.tolist()


class AxisEmbedding(BaseEmbedding):
    """Deterministic, meaningful embeddings: each known word is one axis."""

    def _get_query_embedding(self, query: str) -> List[float]:
        return _axis(query)

    async def _aget_query_embedding(self, query: str) -> List[float]:
        return _axis(query)

    def _get_text_embedding(self, text: str) -> List[float]:
        return _axis(text)


def _nodes(n=40, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    nodes = []
    for i in range(n):
        meta = {
            "i": i,
            "parity": "even" if i % 2 == 0 else "odd",
            "tags": ["a", "b"] if i % 5 == 0 else ["c"],
        }
        if i == 3:
            del meta["parity"]
        node = TextNode(id_=f"n{i}", text=f"node {i}", metadata=meta, embedding=vecs[i].tolist())
        node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=f"doc{i // 4}")
        nodes.append(node)
    return nodes, vecs


def _store(n=40, **kw):
    store = NearqVectorStore(**kw)
    nodes, vecs = _nodes(n)
    assert store.add(nodes) == [f"n{i}" for i in range(n)]
    return store, nodes, vecs


def _q(vec, k, **kw):
    return VectorStoreQuery(query_embedding=list(map(float, vec)), similarity_top_k=k, **kw)


def F(key, value, op=FilterOperator.EQ):
    return MetadataFilter(key=key, value=value, operator=op)


# --------------------------------------------------------------------------- the store alone


def test_lazy_index_defaults_and_basic_query():
    store = NearqVectorStore()
    assert store.stores_text and store.client is None and len(store) == 0
    assert store.query(_q([1.0] * 16, 3)).ids == []
    store, nodes, vecs = _store()
    assert isinstance(store.client, nearq.Index)
    assert (
        store.client.metric == "cosine"
        and store.client.encoding == "flat"
        and len(store.client) == 40
    )
    res = store.query(_q(vecs[7], 5))
    assert res.ids[0] == "n7" and len(res.ids) == 5
    assert res.similarities[0] == pytest.approx(1.0, abs=1e-5)
    assert all(0.0 <= s <= 1.0 for s in res.similarities)
    assert res.similarities == sorted(res.similarities, reverse=True)
    node = res.nodes[0]
    assert isinstance(node, TextNode) and node.node_id == "n7" and node.text == "node 7"
    assert node.metadata == {"i": 7, "parity": "odd", "tags": ["c"]} and node.ref_doc_id == "doc1"
    assert node.embedding is None


def test_k_larger_than_store_and_upsert():
    store, nodes, vecs = _store(10)
    assert len(store.query(_q(vecs[0], 50)).ids) == 10
    replaced = TextNode(id_="n4", text="replaced", metadata={"i": 99}, embedding=vecs[9].tolist())
    store.add([replaced])
    assert len(store) == 10 and len(store.client) == 10
    res = store.query(_q(vecs[9], 2))
    assert set(res.ids) == {"n4", "n9"}
    assert store.get_nodes(["n4"])[0].text == "replaced"
    assert store.query(_q(vecs[9], 5, filters=MetadataFilters(filters=[F("i", 4)]))).ids == []


def test_node_without_embedding_is_rejected_and_nothing_changes():
    store, nodes, vecs = _store(5)
    with pytest.raises(ValueError):
        store.add([TextNode(id_="x", text="no embedding")])
    with pytest.raises(ValueError):
        store.add([TextNode(id_="y", text="wrong dim", embedding=[1.0, 2.0])])
    assert len(store) == 5 and store.get_nodes(["x", "y"]) == []


# (filter, the same condition on a metadata dict); the semantics of LlamaIndex's in-memory store
# (0.14): a missing key matches only !=, nin and is_empty
FLAT_FILTERS = [
    (F("parity", "even"), lambda m: m.get("parity") == "even"),
    (F("parity", "odd", FilterOperator.NE), lambda m: m.get("parity") != "odd"),
    (F("i", [1, 5, 9, 33], FilterOperator.IN), lambda m: m["i"] in (1, 5, 9, 33)),
    (F("i", [1, 5, 9], FilterOperator.NIN), lambda m: m["i"] not in (1, 5, 9)),
    (F("i", 30, FilterOperator.GT), lambda m: m["i"] > 30),
    (F("i", 30, FilterOperator.GTE), lambda m: m["i"] >= 30),
    (F("i", 4, FilterOperator.LT), lambda m: m["i"] < 4),
    (F("i", 4, FilterOperator.LTE), lambda m: m["i"] <= 4),
    (F("i", 4.5, FilterOperator.LTE), lambda m: m["i"] <= 4.5),
    (F("parity", "x", FilterOperator.GT), lambda m: "parity" in m and m["parity"] > "x"),
    (F("i", "x", FilterOperator.GT), lambda m: False),  # incomparable: no match, no error
    (F("tags", "a", FilterOperator.CONTAINS), lambda m: "a" in m["tags"]),
    (F("tags", ["b", "c"], FilterOperator.ANY), lambda m: bool({"b", "c"} & set(m["tags"]))),
    (F("tags", ["a", "b"], FilterOperator.ALL), lambda m: {"a", "b"} <= set(m["tags"])),
    (F("parity", "ve", FilterOperator.TEXT_MATCH), lambda m: "ve" in m.get("parity", "")),
    (F("parity", None, FilterOperator.IS_EMPTY), lambda m: "parity" not in m),
    (F("missing", 1), lambda m: False),
]


@pytest.mark.parametrize("condition", ["and", "or"])
@pytest.mark.parametrize(
    "flt, pred", FLAT_FILTERS, ids=lambda f: getattr(getattr(f, "operator", None), "name", "")
)
def test_filters(flt, pred, condition):
    store, nodes, vecs = _store()
    filters = MetadataFilters(filters=[flt, F("i", 20, FilterOperator.LT)], condition=condition)
    combine = all if condition == "and" else any
    expected = sorted(n.node_id for n in nodes if combine([pred(n.metadata), n.metadata["i"] < 20]))
    res = store.query(_q(vecs[0], 100, filters=filters))
    assert sorted(res.ids) == expected
    if expected:  # the k nearest matching nodes, not a post-filtered top-k
        top = store.query(_q(vecs[0], 3, filters=filters))
        assert len(top.ids) == min(3, len(expected)) and set(top.ids) <= set(expected)
        assert top.ids == [i for i in res.ids if i in top.ids][: len(top.ids)]


def test_nested_and_not_conditions():
    store, nodes, vecs = _store()
    nested = MetadataFilters(
        filters=[
            F("parity", "odd"),
            MetadataFilters(
                filters=[F("i", 5, FilterOperator.LT), F("i", 35, FilterOperator.GT)],
                condition="or",
            ),
        ],
        condition=FilterCondition.AND,
    )
    assert sorted(store.query(_q(vecs[0], 100, filters=nested)).ids) == sorted(["n1", "n37", "n39"])
    if hasattr(FilterCondition, "NOT"):
        neg = MetadataFilters(
            filters=[F("parity", "odd"), F("i", 10, FilterOperator.GTE)], condition="not"
        )
        assert sorted(store.query(_q(vecs[0], 100, filters=neg)).ids) == sorted(
            f"n{i}" for i in (0, 2, 3, 4, 6, 8)
        )


def test_filter_reaches_nearq_as_an_allow_list(monkeypatch):
    store, nodes, vecs = _store()
    seen = {}
    search = nearq.Index.search

    def spy(self, queries, k=10, **kw):
        seen.update(kw, k=k)
        return search(self, queries, k, **kw)

    monkeypatch.setattr(nearq.Index, "search", spy)
    filters = MetadataFilters(filters=[F("parity", "odd"), F("i", 10, FilterOperator.LT)])
    res = store.query(_q(vecs[0], 2, filters=filters))
    assert len(res.ids) == 2
    allow = seen["filter"]
    assert (
        isinstance(allow, np.ndarray) and allow.dtype == np.int64 and len(allow) == 4
    )  # 1, 5, 7, 9
    assert seen["k"] == 2


def test_filter_finds_the_farthest_node():
    store = NearqVectorStore()
    rng = np.random.default_rng(1)
    base = rng.standard_normal(8)
    nodes = [
        TextNode(
            id_=f"n{i}",
            text="",
            metadata={"n": i},
            embedding=(base * (1 if i < 199 else -1) + 0.01 * rng.standard_normal(8)).tolist(),
        )
        for i in range(200)
    ]
    store.add(nodes)
    res = store.query(_q(base, 1, filters=MetadataFilters(filters=[F("n", 199)])))
    assert res.ids == ["n199"] and res.similarities[0] < 0.1


def test_doc_ids_and_node_ids_restrict_the_query():
    store, nodes, vecs = _store()
    assert sorted(store.query(_q(vecs[0], 100, doc_ids=["doc2", "doc9"])).ids) == sorted(
        ["n8", "n9", "n10", "n11", "n36", "n37", "n38", "n39"]
    )
    res = store.query(
        _q(
            vecs[0],
            100,
            node_ids=["n1", "n2", "n3", "nope"],
            filters=MetadataFilters(filters=[F("parity", "odd")]),
        )
    )
    assert sorted(res.ids) == ["n1"]
    # the node's source document is filterable like in LlamaIndex's other stores
    res = store.query(_q(vecs[0], 100, filters=MetadataFilters(filters=[F("doc_id", "doc3")])))
    assert sorted(res.ids) == ["n12", "n13", "n14", "n15"]


def test_delete_by_ref_doc_and_nodes():
    store, nodes, vecs = _store()
    store.delete("doc0")
    assert len(store) == 36 and len(store.client) == 36
    assert not {"n0", "n1", "n2", "n3"} & set(store.query(_q(vecs[0], 100)).ids)
    store.delete("no such doc")
    store.delete_nodes(["n4", "n5"])
    assert len(store) == 34
    store.delete_nodes(filters=MetadataFilters(filters=[F("i", 30, FilterOperator.GTE)]))
    assert sorted(n.metadata["i"] for n in store.get_nodes()) == list(range(6, 30))
    store.delete_nodes(["n6", "n7"], filters=MetadataFilters(filters=[F("parity", "even")]))
    assert {n.node_id for n in store.get_nodes(["n6", "n7"])} == {"n7"}
    store.clear()
    assert len(store) == 0 and store.client is None and store.query(_q(vecs[0], 3)).ids == []
    store.add(nodes[:2])
    assert sorted(store.query(_q(vecs[0], 3)).ids) == ["n0", "n1"]


def test_get_nodes():
    store, nodes, vecs = _store(10)
    assert [n.node_id for n in store.get_nodes(["n3", "n1", "zz", "n3"])] == ["n3", "n1"]
    odd = MetadataFilters(filters=[F("parity", "odd")])
    assert [n.node_id for n in store.get_nodes(filters=odd)] == ["n1", "n5", "n7", "n9"]
    assert [n.node_id for n in store.get_nodes(["n9", "n2", "n1"], filters=odd)] == ["n9", "n1"]
    assert len(store.get_nodes()) == 10


def test_unsupported_query_modes_and_arguments():
    store, nodes, vecs = _store(5)
    with pytest.raises(NotImplementedError):
        store.query(_q(vecs[0], 2, mode=VectorStoreQueryMode.MMR))
    with pytest.raises(ValueError):
        store.query(VectorStoreQuery(query_str="text only", similarity_top_k=2))
    with pytest.raises(TypeError):
        store.query(_q(vecs[0], 2), fetch_k=10)
    assert store.query(_q(vecs[0], 2), ef=32, rerank=8, threads=1).ids[0] == "n0"


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_other_metrics(metric):
    store, nodes, vecs = _store(30, index_kwargs={"metric": metric})
    assert store.client.metric == metric
    res = store.query(_q(vecs[11], 30))
    assert res.ids[0] == "n11" or metric == "ip"
    assert all(0.0 <= s <= 1.0 for s in res.similarities)
    assert res.similarities == sorted(res.similarities, reverse=True)


@pytest.mark.parametrize("encoding", ["flat", "sq8"])
def test_save_load_round_trip(tmp_path, encoding):
    store, nodes, vecs = _store(index_kwargs={"encoding": encoding}, search_kwargs={"ef": 40})
    store.delete("doc0")
    store.save(tmp_path / "s")
    assert sorted(os.listdir(tmp_path / "s")) == ["docstore.json", "index.nearq"]
    assert json.loads((tmp_path / "s" / "docstore.json").read_text())["kind"] == "llama_index"
    same = NearqVectorStore.load(tmp_path / "s")
    assert len(same) == 36 and same.client.encoding == encoding and same.search_kwargs == {"ef": 40}
    filters = MetadataFilters(filters=[F("parity", "odd")])
    for q in (
        _q(vecs[5], 5),
        _q(vecs[6], 5, filters=filters),
        _q(vecs[7], 5, doc_ids=["doc3", "doc4"]),
    ):
        a, b = store.query(q), same.query(q)
        assert a.ids == b.ids and a.similarities == pytest.approx(b.similarities)
        assert [n.text for n in a.nodes] == [n.text for n in b.nodes]
        assert [n.metadata for n in a.nodes] == [n.metadata for n in b.nodes]
    same.delete("doc1")
    assert len(same) == 32
    same.add(nodes[:4])
    assert len(same) == 36


def test_async_defaults():
    store, nodes, vecs = _store(8)

    async def run():
        res = await store.aquery(_q(vecs[2], 1))
        assert res.ids == ["n2"]
        await store.adelete("doc0")
        await store.async_add([TextNode(id_="extra", text="x", embedding=vecs[0].tolist())])

    asyncio.run(run())
    assert len(store) == 5 and bool(NearqVectorStore())


# ------------------------------------------------------------------ inside a VectorStoreIndex


DOCS = [
    Document(
        text="The cat sat. A cat naps.", doc_id="d-cat", metadata={"kind": "animal", "year": 2001}
    ),
    Document(
        text="The dog barks at the dog.", doc_id="d-dog", metadata={"kind": "animal", "year": 2005}
    ),
    Document(
        text="The car drives. The bus stops.",
        doc_id="d-car",
        metadata={"kind": "vehicle", "year": 2010},
    ),
    Document(
        text="A boat and a train.", doc_id="d-boat", metadata={"kind": "vehicle", "year": 2020}
    ),
]


def _index(store):
    # a whitespace tokenizer keeps the splitter offline (no tokenizer download)
    splitter = SentenceSplitter(chunk_size=64, chunk_overlap=0, tokenizer=str.split)
    return VectorStoreIndex.from_documents(
        DOCS,
        storage_context=StorageContext.from_defaults(vector_store=store),
        embed_model=AxisEmbedding(),
        transformations=[splitter],
    )


def test_vector_store_index_round_trip(tmp_path):
    store = NearqVectorStore()
    index = _index(store)
    assert len(store) == 4
    top = index.as_retriever(similarity_top_k=1).retrieve("cat")
    assert top[0].node.ref_doc_id == "d-cat" and top[0].score == pytest.approx(1.0, abs=1e-3)

    vehicles = MetadataFilters(filters=[F("kind", "vehicle")])
    got = index.as_retriever(similarity_top_k=1, filters=vehicles).retrieve("cat")
    assert [n.node.ref_doc_id for n in got] == ["d-car"] or [n.node.ref_doc_id for n in got] == [
        "d-boat"
    ]
    late = MetadataFilters(
        filters=[F("year", 2005, FilterOperator.GT), F("kind", "animal")], condition="or"
    )
    got = index.as_retriever(similarity_top_k=10, filters=late).retrieve("train")
    assert got[0].node.ref_doc_id == "d-boat" and {n.node.ref_doc_id for n in got} == {
        "d-cat",
        "d-dog",
        "d-car",
        "d-boat",
    }
    got = index.as_retriever(similarity_top_k=10, doc_ids=["d-dog"]).retrieve("cat")
    assert [n.node.ref_doc_id for n in got] == ["d-dog"]

    index.delete_ref_doc("d-cat")
    assert "d-cat" not in {
        n.node.ref_doc_id for n in index.as_retriever(similarity_top_k=10).retrieve("cat")
    }
    index.insert(
        Document(
            text="A fish and a bird.", doc_id="d-fish", metadata={"kind": "animal", "year": 2024}
        )
    )
    assert index.as_retriever(similarity_top_k=1).retrieve("bird")[0].node.ref_doc_id == "d-fish"

    # StorageContext.persist -> NearqVectorStore.from_persist_dir -> load_index_from_storage
    index.storage_context.persist(persist_dir=str(tmp_path))
    assert os.path.isfile(tmp_path / "default__vector_store" / "docstore.json")
    loaded_store = NearqVectorStore.from_persist_dir(str(tmp_path))
    ctx = StorageContext.from_defaults(persist_dir=str(tmp_path), vector_store=loaded_store)
    again = load_index_from_storage(ctx, embed_model=AxisEmbedding())
    got = again.as_retriever(
        similarity_top_k=2, filters=MetadataFilters(filters=[F("kind", "animal")])
    ).retrieve("bird")
    assert [n.node.ref_doc_id for n in got] == ["d-fish", "d-dog"]


def test_vector_store_index_with_mock_embedding():
    store = NearqVectorStore()
    index = VectorStoreIndex(
        [TextNode(id_=f"t{i}", text=f"text {i}", metadata={"i": i}) for i in range(6)],
        storage_context=StorageContext.from_defaults(vector_store=store),
        embed_model=MockEmbedding(embed_dim=8),
    )
    got = index.as_retriever(
        similarity_top_k=3, filters=MetadataFilters(filters=[F("i", 4, FilterOperator.GTE)])
    ).retrieve("q")
    assert sorted(n.node.node_id for n in got) == ["t4", "t5"]
    assert all(n.score == pytest.approx(1.0, abs=1e-5) for n in got)  # identical vectors
