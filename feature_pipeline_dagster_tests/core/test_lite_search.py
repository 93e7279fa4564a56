"""The Lite server's search executor and valid-row mask (core/store/lite_search.py) answer
exactly as Milvus Lite's own: the same rows, distances and order, over flushed segments with
and without an index, the memtable, upserts that shadow a flushed row, deletes flushed and
not, partitions, filters and grouping, for searches, queries and row counts; and the server
the project starts runs them."""

from __future__ import annotations

import time

import numpy as np
import pytest

from feature_pipeline_dagster.core.store import lite_search

DIM = 16


@pytest.fixture()
def collection(tmp_path):
    from milvus_lite.db import MilvusLite
    from milvus_lite.schema.types import CollectionSchema, DataType, FieldSchema

    db = MilvusLite(str(tmp_path / "lite"))
    schema = CollectionSchema([
        FieldSchema("id", DataType.INT64, is_primary=True),
        FieldSchema("video_path", DataType.VARCHAR, max_length=64, is_partition_key=True),
        FieldSchema("frame_id", DataType.INT32),
        FieldSchema("embeddings", DataType.FLOAT_VECTOR, dim=DIM),
    ])
    found = db.create_collection("frames", schema)
    yield found
    db.close()


def rows(rng, first: int, count: int, videos: int = 5) -> list[dict]:
    vectors = rng.standard_normal((count, DIM)).astype(np.float32)
    return [{"id": first + i, "video_path": f"v{(first + i) % videos}.mp4", "frame_id": first + i,
             "embeddings": v.tolist()} for i, v in enumerate(vectors)]


def answers(collection, queries, **kwargs) -> list:
    return collection.search(queries.tolist(), top_k=kwargs.pop("top_k", 7), metric_type="COSINE",
                             output_fields=["video_path", "frame_id"], **kwargs)


def both(ask) -> tuple:
    """Lite's own answer to `ask()`, then the replacement's, on the same data: Lite builds a
    flushed segment's HNSW in the background (searching it by brute force meanwhile), so the
    pair counts only where Lite's answer is the same before and after."""
    from milvus_lite.engine import collection as module
    from milvus_lite.search import bitmap

    stock = module.execute_search_with_index, bitmap.build_valid_mask
    expected = ask()
    for _ in range(50):
        try:
            assert lite_search.install() == lite_search.INSTALLED_LINE
            got = ask()
        finally:
            module.execute_search_with_index, bitmap.build_valid_mask = stock
        again = ask()
        if again == expected:
            return expected, got
        expected = again
        time.sleep(0.1)
    raise AssertionError("Lite's own answer kept changing")


def searched(collection, queries, **kwargs):
    return lambda: answers(collection, queries, **kwargs)


def queried(collection, expr):
    fields = ["video_path", "frame_id"]
    return lambda: (collection.query(expr, output_fields=fields), collection.num_entities,
                    collection.query(expr, output_fields=fields, limit=20, offset=3, order_by_pk=True))


QUERIES = ("frame_id >= 0", 'video_path in ["v1.mp4", "v2.mp4"]', "frame_id in [10, 14, 131, 201, 205]")
CASES = {
    "plain": {},
    "more than the rows": {"top_k": 500},
    "filter": {"expr": 'video_path in ["v1.mp4", "v3.mp4"] and frame_id > 20'},
    "filter matching nothing": {"expr": "frame_id < 0"},
    "grouped": {"group_by_field": "video_path", "group_size": 3, "top_k": 3},
}


@pytest.mark.parametrize("indexed", [False, True], ids=["brute force", "HNSW"])
def test_the_replacement_answers_as_lite_does(collection, indexed):
    rng = np.random.default_rng(7)
    if indexed:
        collection.create_index("embeddings", {"index_type": "HNSW", "metric_type": "COSINE",
                                               "params": {"M": 8, "efConstruction": 64}})
        collection.load()
    collection.insert(rows(rng, 0, 120))
    collection.flush()
    collection.insert(rows(rng, 120, 80))
    collection.flush()  # two segments per partition
    collection.upsert(rows(rng, 10, 15))  # in the memtable, shadowing flushed rows
    collection.delete([0, 1, 2, 130, 131])  # flushed rows, deleted from the memtable
    collection.insert(rows(rng, 200, 30))  # memtable only
    collection.delete([201, 14])  # a memtable row, and an upserted one
    queries = rng.standard_normal((4, DIM)).astype(np.float32)
    for name, kwargs in CASES.items():
        expected, got = both(searched(collection, queries, **kwargs))
        assert got == expected, name
        assert bool(sum(map(len, got))) == (name != "filter matching nothing"), name
    for expr in QUERIES:
        expected, got = both(queried(collection, expr))
        assert got == expected, expr
    collection.flush()  # the tombstones and upserts now in segments and delta files
    collection.upsert(rows(rng, 150, 5))
    for name, kwargs in {**CASES, "one partition": {"partition_names": ["_default"]}}.items():
        expected, got = both(searched(collection, queries, **kwargs))
        assert got == expected, name
    for expr in QUERIES:
        expected, got = both(queried(collection, expr))
        assert got == expected, expr
    returned = {hit["id"] for hit in both(searched(collection, queries, top_k=500))[1][0]}
    assert not returned & {0, 1, 2, 130, 131, 201, 14} and {10, 150, 229} <= returned
    found, count, _ = both(queried(collection, "frame_id >= 0"))[1]
    assert count == len(found) == 230 - 7 and not {r["frame_id"] for r in found} & {0, 1, 2, 130, 131, 201, 14}


@pytest.mark.parametrize("choice", [None, "milvus-lite"])
def test_the_project_started_lite_server_runs_it_unless_told(tmp_path, monkeypatch, choice):
    from feature_pipeline_dagster.core.store.lite_server import LiteServer

    if choice:
        monkeypatch.setenv(lite_search.SEARCH_ENV, choice)
    server = LiteServer(str(tmp_path / "search.db"))
    server.ensure_running()
    try:
        said = server.log_file.read_text()
    finally:
        server.stop()
    assert (lite_search.INSTALLED_LINE in said) == (choice is None)
    assert ("Milvus Lite's own executor (FEATURE_PIPELINE_LITE_SEARCH=milvus-lite)" in said) == bool(choice)


def test_an_unknown_choice_is_one_clear_line(tmp_path, monkeypatch):
    from feature_pipeline_dagster.core.errors import StoreError
    from feature_pipeline_dagster.core.store.lite_server import LiteServer

    monkeypatch.setenv(lite_search.SEARCH_ENV, "fast")
    with pytest.raises(StoreError) as failed:
        LiteServer(str(tmp_path / "search.db")).ensure_running()
    assert str(failed.value).endswith(
        "FEATURE_PIPELINE_LITE_SEARCH='fast': expected one of project, milvus-lite)"), failed.value
