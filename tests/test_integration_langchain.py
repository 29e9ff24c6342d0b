"""nearq.integrations.langchain: LangChain's standard vector-store tests plus filters, scores and
persistence. CI installs langchain-core and langchain-tests (tests/requirements.txt); the
importorskip guards only spare local runs without them."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("langchain_tests")

from langchain_core.documents import Document  # noqa: E402
from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings  # noqa: E402
from langchain_tests.integration_tests import VectorStoreIntegrationTests  # noqa: E402

import nearq  # noqa: E402
from nearq.integrations import relevance_score_fn  # noqa: E402
from nearq.integrations.langchain import NearqVectorStore, compile_filter  # noqa: E402

# The standard suite's async tests carry no asyncio marker (LangChain runs it in pytest-asyncio's
# auto mode). Mark this module's tests instead of changing the repository's pytest configuration;
# pytest-asyncio then warns about the marker on the sync tests, which is expected here.
pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.filterwarnings(
        "ignore:The test <Function .*> is marked with '@pytest.mark.asyncio'"
    ),
]


class TestNearqStandard(VectorStoreIntegrationTests):
    @pytest.fixture()
    def vectorstore(self) -> NearqVectorStore:  # type: ignore[override]
        return NearqVectorStore(self.get_embeddings())


class TestNearqStandardSq8(VectorStoreIntegrationTests):
    """The same suite on a quantised encoding with float re-ranking (trained on the first add)."""

    @pytest.fixture()
    def vectorstore(self) -> NearqVectorStore:  # type: ignore[override]
        return NearqVectorStore(self.get_embeddings(), index_kwargs={"encoding": "sq8"})


# --------------------------------------------------------------------------- helpers


class AxisEmbeddings(Embeddings):
    """Deterministic, meaningful embeddings: each known word is one axis (plus a small constant
    so no vector is zero)."""

    WORDS = ["cat", "dog", "fish", "bird", "car", "bus", "train", "boat"]

    def _embed(self, text: str) -> list:
        v = np.full(len(self.WORDS), 0.01)
        for w in text.lower().split():
            if w in self.WORDS:
                v[self.WORDS.index(w)] += 1.0
        return v.tolist()

    def embed_documents(self, texts):
        return [self._embed(t) for t in texts]

    def embed_query(self, text):
        return self._embed(text)


def _store(n=40, **kw) -> NearqVectorStore:
    store = NearqVectorStore(DeterministicFakeEmbedding(size=16), **kw)
    texts = [f"doc {i}" for i in range(n)]
    metas = [
        {
            "i": i,
            "parity": "even" if i % 2 == 0 else "odd",
            "tags": ["a", "b"] if i % 5 == 0 else ["c"],
        }
        for i in range(n)
    ]
    metas[3].pop("parity")  # a document without the key
    store.add_texts(texts, metas, ids=[f"id{i}" for i in range(n)])
    return store


def _ids(docs):
    return [d.id if isinstance(d, Document) else d[0].id for d in docs]


# --------------------------------------------------------------------------- basics


def test_import_nearq_does_not_import_frameworks():
    code = (
        "import sys, nearq, nearq.integrations; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('langchain_core', 'llama_index')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ})


def test_index_created_lazily_with_defaults():
    store = NearqVectorStore(DeterministicFakeEmbedding(size=8))
    assert store.index is None and len(store) == 0
    assert store.similarity_search("x", k=3) == []
    ids = store.add_texts(["a", "b", "c"])
    assert len(ids) == 3 and len(set(ids)) == 3
    assert isinstance(store.index, nearq.Index)
    assert (
        store.index.metric == "cosine" and store.index.encoding == "flat" and store.index.dim == 8
    )
    assert len(store) == len(store.index) == 3


def test_index_kwargs_reach_the_index():
    store = NearqVectorStore(
        DeterministicFakeEmbedding(size=8), index_kwargs={"metric": "l2", "degree": 8}
    )
    store.add_texts(["a", "b"])
    assert store.index.metric == "l2" and store.index.build_params["degree"] == 8


def test_exact_neighbours_and_k_larger_than_store():
    store = _store(20)
    docs = store.similarity_search("doc 7", k=100)
    assert len(docs) == 20 and docs[0].id == "id7" and docs[0].page_content == "doc 7"
    assert docs[0].metadata == {"i": 7, "parity": "odd", "tags": ["c"]}
    pairs = store.similarity_search_with_score("doc 7", k=3)
    assert pairs[0][1] == pytest.approx(0.0, abs=1e-5)
    assert [s for _, s in pairs] == sorted(s for _, s in pairs)


def test_upsert_replaces_text_metadata_and_vector():
    store = _store(10)
    store.add_texts(["brand new"], [{"i": 100}], ids=["id4"])
    assert len(store) == 10 and len(store.index) == 10
    assert store.similarity_search("brand new", k=1)[0].id == "id4"
    assert store.get_by_ids(["id4"])[0].metadata == {"i": 100}
    # the old metadata is gone from the filter index too
    assert store.similarity_search("doc 4", k=10, filter={"i": 4}) == []
    assert _ids(store.similarity_search("x", k=10, filter={"i": 100})) == ["id4"]


def test_duplicate_ids_in_one_batch_keep_the_last():
    store = NearqVectorStore(DeterministicFakeEmbedding(size=8))
    assert store.add_texts(["one", "two"], ids=["x", "x"]) == ["x", "x"]
    assert len(store) == 1 and store.get_by_ids(["x"])[0].page_content == "two"


def test_stored_metadata_is_a_copy():
    store = NearqVectorStore(DeterministicFakeEmbedding(size=8))
    meta = {"k": [1, 2]}
    store.add_texts(["a"], [meta], ids=["a"])
    meta["k"].append(3)
    got = store.get_by_ids(["a"])[0]
    assert got.metadata == {"k": [1, 2]}
    got.metadata["k"].append(4)
    assert store.get_by_ids(["a"])[0].metadata == {"k": [1, 2]}


def test_bad_input_changes_nothing():
    store = _store(5)
    with pytest.raises(ValueError):
        store.add_embeddings([("wrong dim", [0.1, 0.2, 0.3])], ids=["bad"])
    assert len(store) == 5 and store.get_by_ids(["bad"]) == []
    with pytest.raises(ValueError):
        store.add_texts(["a", "b"], metadatas=[{}])
    with pytest.raises(TypeError):
        store.similarity_search("doc 1", k=2, fetch_k=3)
    with pytest.raises(ValueError):
        store.similarity_search("doc 1", k=2, filter={"$where": 1})
    with pytest.raises(ValueError):
        store.similarity_search("doc 1", k=2, filter={"i": {"$regex": "x"}})
    with pytest.raises(ValueError):
        store.similarity_search("doc 1", k=2, filter={"i": {"$in": 3}})


def test_delete_all_and_rebuild():
    store = _store(5)
    assert store.delete() is True
    assert store.index is None and len(store) == 0
    assert store.similarity_search("doc 1", k=2) == []
    store.add_texts(["again"], ids=["z"])
    assert _ids(store.similarity_search("again", k=3)) == ["z"]


def test_delete_every_document_leaves_an_empty_but_usable_store():
    store = _store(4)
    store.delete([f"id{i}" for i in range(4)])
    assert len(store) == 0 and store.similarity_search("doc 1", k=2) == []
    store.add_texts(["doc 1"], ids=["id1"])
    assert _ids(store.similarity_search("doc 1", k=2)) == ["id1"]


def test_search_kwargs_pass_through():
    store = _store(30, search_kwargs={"ef": 32})
    assert _ids(store.similarity_search("doc 3", k=1, ef=64, rerank=40, threads=1)) == ["id3"]


def test_add_embeddings_and_search_by_vector():
    store = NearqVectorStore(AxisEmbeddings())
    store.add_embeddings(
        [("x", [1.0, 0, 0, 0, 0, 0, 0, 0]), ("y", [0, 1.0, 0, 0, 0, 0, 0, 0])], ids=["x", "y"]
    )
    assert _ids(store.similarity_search_by_vector([0.1, 0.9, 0, 0, 0, 0, 0, 0], k=1)) == ["y"]


# --------------------------------------------------------------------------- filters


def _brute(store, pred, k=100):
    """Ids of all documents satisfying pred, by a search with no filter."""
    docs = store.similarity_search("doc 0", k=k)
    return sorted(d.id for d in docs if pred(d.metadata))


@pytest.mark.parametrize(
    "flt, pred",
    [
        ({"parity": "even"}, lambda m: m.get("parity") == "even"),
        ({"parity": {"$eq": "odd"}}, lambda m: m.get("parity") == "odd"),
        (
            {"parity": {"$ne": "odd"}},
            lambda m: m.get("parity") != "odd",
        ),  # includes the doc without it
        ({"i": {"$in": [1, 5, 9, 33]}}, lambda m: m["i"] in (1, 5, 9, 33)),
        ({"i": {"$nin": [1, 5, 9]}}, lambda m: m["i"] not in (1, 5, 9)),
        ({"i": {"$gt": 30}}, lambda m: m["i"] > 30),
        ({"i": {"$gte": 30}}, lambda m: m["i"] >= 30),
        ({"i": {"$lt": 4}}, lambda m: m["i"] < 4),
        ({"i": {"$lte": 4}}, lambda m: m["i"] <= 4),
        (
            {"i": {"$gte": 10, "$lt": 20}, "parity": "even"},
            lambda m: 10 <= m["i"] < 20 and m.get("parity") == "even",
        ),
        ({"$or": [{"i": 2}, {"i": {"$gt": 37}}]}, lambda m: m["i"] == 2 or m["i"] > 37),
        (
            {"$and": [{"parity": "odd"}, {"i": {"$lt": 10}}]},
            lambda m: m.get("parity") == "odd" and m["i"] < 10,
        ),
        ({"$not": {"parity": "odd"}}, lambda m: m.get("parity") != "odd"),
        ({"tags": ["a", "b"]}, lambda m: m["tags"] == ["a", "b"]),
        ({"i": {"$gt": "a string"}}, lambda m: False),  # incomparable: no match, no error
        ({"missing": 1}, lambda m: False),
        (lambda m: m["i"] % 7 == 0, lambda m: m["i"] % 7 == 0),
    ],
)
def test_filters(flt, pred):
    store = _store(40)
    expected = _brute(store, pred)
    got = store.similarity_search("doc 0", k=100, filter=flt)
    assert sorted(d.id for d in got) == expected
    # k nearest *matching* documents, not a post-filtered top-k
    if expected:
        top = store.similarity_search("doc 0", k=3, filter=flt)
        assert len(top) == min(3, len(expected))
        assert all(pred(d.metadata) for d in top)


def test_filters_are_compiled_into_the_native_allow_list(monkeypatch):
    store = _store(40)
    seen = {}
    search = nearq.Index.search

    def spy(self, queries, k=10, **kw):
        seen.update(kw, k=k)
        return search(self, queries, k, **kw)

    monkeypatch.setattr(nearq.Index, "search", spy)
    docs = store.similarity_search("doc 0", k=2, filter={"parity": "odd", "i": {"$lt": 10}})
    assert [d.metadata["i"] for d in docs] and all(d.metadata["parity"] == "odd" for d in docs)
    allow = seen["filter"]
    assert isinstance(allow, np.ndarray) and allow.dtype == np.int64
    assert len(allow) == 4  # 1, 5, 7, 9 (3 has no parity)
    assert seen["k"] == 2


def test_filter_matches_a_document_far_from_the_query():
    """The only match is the farthest document: a post-filter of any small top-k would miss it."""
    store = NearqVectorStore(AxisEmbeddings())
    words = ["cat", "dog", "fish", "bird", "car", "bus", "train", "boat"]
    texts = [f"{w} {w}" for w in words for _ in range(10)]
    metas = [{"n": i} for i in range(len(texts))]
    store.add_texts(texts, metas)
    got = store.similarity_search("cat", k=1, filter={"n": len(texts) - 1})
    assert [d.page_content for d in got] == ["boat boat"]


def test_empty_filter_is_no_filter_and_no_match_is_empty():
    store = _store(10)
    assert len(store.similarity_search("doc 0", k=20, filter={})) == 10
    assert store.similarity_search("doc 0", k=20, filter={"i": -1}) == []
    assert compile_filter(None) is None and compile_filter({}) is None


def test_delete_by_filter():
    store = _store(10)
    store.delete(filter={"parity": "even"})
    assert sorted(d.metadata["i"] for d in store.similarity_search("doc 0", k=20)) == [
        1,
        3,
        5,
        7,
        9,
    ]
    assert len(store.index) == 5


def test_retriever_with_filter_and_score_threshold():
    store = NearqVectorStore(AxisEmbeddings())
    store.add_texts(
        ["cat", "dog", "car", "cat dog"],
        [{"t": "animal"}, {"t": "animal"}, {"t": "vehicle"}, {"t": "animal"}],
    )
    retriever = store.as_retriever(search_kwargs={"k": 2, "filter": {"t": "vehicle"}})
    assert [d.page_content for d in retriever.invoke("cat")] == ["car"]
    thr = store.as_retriever(
        search_type="similarity_score_threshold", search_kwargs={"k": 4, "score_threshold": 0.9}
    )
    assert [d.page_content for d in thr.invoke("cat")] == ["cat"]


# --------------------------------------------------------------------------- scores


@pytest.mark.parametrize("metric", ["cosine", "l2", "ip"])
def test_relevance_scores_in_unit_interval_and_monotone(metric):
    store = _store(30, index_kwargs={"metric": metric})
    pairs = store.similarity_search_with_relevance_scores("doc 5", k=30)
    scores = [s for _, s in pairs]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert scores == sorted(scores, reverse=True)
    dists = [d for _, d in store.similarity_search_with_score("doc 5", k=30)]
    fn = relevance_score_fn(metric)
    assert scores == pytest.approx([fn(d) for d in dists])


def test_relevance_score_definitions():
    cos, l2, ip = (relevance_score_fn(m) for m in ("cosine", "l2", "ip"))
    assert cos(0.0) == 1.0 and cos(1.0) == 0.5 and cos(2.0) == 0.0
    assert l2(0.0) == 1.0 and l2(1.0) == 0.5 and l2(1e30) < 1e-20
    assert (
        ip(0.0) == 0.5 and ip(-50) > 0.999 and ip(50) < 1e-20 and ip(1e6) == 0.0 and ip(-1e6) == 1.0
    )
    with pytest.raises(ValueError):
        relevance_score_fn("hamming")


def test_custom_relevance_score_fn():
    store = _store(5, relevance_score_fn=lambda d: 0.42)
    assert {s for _, s in store.similarity_search_with_relevance_scores("doc 1", k=2)} == {0.42}


# --------------------------------------------------------------------------- persistence


@pytest.mark.parametrize("encoding", ["flat", "sq8"])
def test_save_load_round_trip(tmp_path, encoding):
    store = _store(40, index_kwargs={"encoding": encoding}, search_kwargs={"ef": 48})
    store.delete(["id0", "id1"])
    store.save(tmp_path / "s")
    assert sorted(os.listdir(tmp_path / "s")) == ["docstore.json", "index.nearq"]
    state = json.loads((tmp_path / "s" / "docstore.json").read_text())  # plain JSON, no pickle
    assert state["kind"] == "langchain" and len(state["entries"]) == 38

    same = NearqVectorStore.load(tmp_path / "s", DeterministicFakeEmbedding(size=16))
    assert (
        len(same) == 38
        and same.index.encoding == encoding
        and same.index_kwargs == store.index_kwargs
    )
    for q, flt in [("doc 7", None), ("doc 8", {"parity": "odd"}), ("doc 9", {"i": {"$gte": 20}})]:
        a = store.similarity_search_with_score(q, k=5, filter=flt)
        b = same.similarity_search_with_score(q, k=5, filter=flt)
        assert [(d.id, d.page_content, d.metadata) for d, _ in a] == [
            (d.id, d.page_content, d.metadata) for d, _ in b
        ]
        assert [s for _, s in a] == pytest.approx([s for _, s in b])
    assert same.get_by_ids(["id0", "id2"]) == store.get_by_ids(["id2"])
    # the loaded store keeps working: new ids do not collide with used ones
    same.add_texts(["fresh"], ids=["new"])
    same.add_texts(["doc 3 again"], ids=["id3"])
    assert len(same) == 39 and same.similarity_search("fresh", k=1)[0].id == "new"


def test_load_with_mmap(tmp_path):
    store = _store(30)
    store.save(tmp_path)
    same = NearqVectorStore.load(tmp_path, DeterministicFakeEmbedding(size=16), mmap=True)
    assert same.index.memory_usage(detail=True)["mmap"] > 0
    assert _ids(same.similarity_search("doc 4", k=3, filter={"parity": "even"}))[0] == "id4"
    same.add_texts(["more"], ids=["more"])  # the first change copies the mapped parts
    same.delete(["id4"])
    assert _ids(same.similarity_search("more", k=1)) == ["more"] and len(same) == 30


def test_save_load_empty_store(tmp_path):
    store = NearqVectorStore(DeterministicFakeEmbedding(size=8), index_kwargs={"metric": "l2"})
    store.save(tmp_path)
    same = NearqVectorStore.load(tmp_path, DeterministicFakeEmbedding(size=8))
    assert same.index is None and same.index_kwargs["metric"] == "l2"
    same.add_texts(["a"])
    assert same.index.metric == "l2"


def test_load_rejects_mismatched_files(tmp_path):
    a, b = _store(5), _store(6)
    a.save(tmp_path / "a")
    b.save(tmp_path / "b")
    os.replace(tmp_path / "b" / "index.nearq", tmp_path / "a" / "index.nearq")
    with pytest.raises(ValueError, match="disagree"):
        NearqVectorStore.load(tmp_path / "a", DeterministicFakeEmbedding(size=16))


def test_save_refuses_non_json_metadata(tmp_path):
    store = NearqVectorStore(DeterministicFakeEmbedding(size=8))
    store.add_texts(["a"], [{"obj": object()}])
    with pytest.raises(TypeError):
        store.save(tmp_path)


def test_from_texts_and_from_documents():
    store = NearqVectorStore.from_texts(
        ["cat", "dog"],
        AxisEmbeddings(),
        [{"n": 1}, {"n": 2}],
        ids=["c", "d"],
        index_kwargs={"metric": "ip"},
    )
    assert store.index.metric == "ip" and _ids(store.similarity_search("dog", k=1)) == ["d"]
    docs = [Document(page_content="bird", id="b"), Document(page_content="boat")]
    store2 = NearqVectorStore.from_documents(docs, AxisEmbeddings())
    assert len(store2) == 2 and store2.get_by_ids(["b"])[0].page_content == "bird"


async def test_async_paths():
    store = NearqVectorStore(AxisEmbeddings())
    ids = await store.aadd_texts(["cat", "car"], [{"t": "a"}, {"t": "v"}])
    assert len(ids) == 2
    docs = await store.asimilarity_search("cat", k=2, filter={"t": "v"})
    assert [d.page_content for d in docs] == ["car"]
    pairs = await store.asimilarity_search_with_relevance_scores("cat", k=1)
    assert pairs[0][0].page_content == "cat" and pairs[0][1] == pytest.approx(1.0, abs=1e-5)
    await store.adelete([ids[0]])
    assert [d.page_content for d in await store.asimilarity_search("cat", k=2)] == ["car"]


async def test_concurrent_adds_and_searches():
    store = NearqVectorStore(DeterministicFakeEmbedding(size=16))
    await store.aadd_texts(["seed"], ids=["seed"])

    async def add(i):
        await store.aadd_texts([f"t{i} a", f"t{i} b"], [{"i": i}, {"i": i}], ids=[f"{i}a", f"{i}b"])

    async def search(i):
        docs = await store.asimilarity_search("seed", k=3, filter={"i": {"$gte": 0}})
        assert all(d.metadata["i"] >= 0 for d in docs)

    await asyncio.gather(*[f(i) for i in range(30) for f in (add, search)])
    assert len(store) == 61 and len(store.index) == 61
    assert sorted(store.index.ids().tolist()) == list(range(61))
