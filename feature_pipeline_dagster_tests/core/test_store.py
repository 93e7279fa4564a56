"""The store against a real Milvus Lite file, a Milvus Lite server and (inside the
namespace end_to_end/test_milvus_server.py makes) a real Milvus 2.3 standalone server;
no mock."""

import numpy as np
import pytest

from feature_pipeline_dagster.core.settings import ConfigError, load_settings
from feature_pipeline_dagster.core.errors import VideoError
from feature_pipeline_dagster.core.batches import EmbeddingBatch
from feature_pipeline_dagster.core.ledger import LedgerRecord
from feature_pipeline_dagster.core.store.lite_server import LiteServer
from feature_pipeline_dagster.core.store import RowFilter, open_store, store_for
from feature_pipeline_dagster.core.store.milvus.client import rows_per_request
from feature_pipeline_dagster.core.store.milvus.filters import quote
from feature_pipeline_dagster_tests.conftest import clip_config, stop_lite_server, write_config
from feature_pipeline_dagster_tests.store_rows import nearest, stored_rows, write_rows
from feature_pipeline_dagster_tests.milvus_server import BACKEND, MilvusStandalone, backends

INJECTION = '" or frame_id >= 0 or video_path == ".mp4'


def batch(n: int, seed: int = 0, start: int = 0) -> EmbeddingBatch:
    vectors = np.random.default_rng(seed).standard_normal((n, 32)).astype(np.float32)
    ids = np.arange(start, start + n, dtype=np.int64)
    return EmbeddingBatch(vectors, {"frame_id": ids, "timestamp_ms": ids * 1000})


@pytest.fixture(params=backends("lite-file", "server"))
def store_and_spec(request, tmp_path, tiny_clip, monkeypatch):
    """The same tests against a Milvus Lite file, a Milvus Lite server on loopback
    (`milvus-lite server`, started here) and a Milvus standalone server, with the token
    read from the variable the config names."""
    config = clip_config(tmp_path, tiny_clip, tmp_path)
    server = None
    if request.param == "server":
        server = LiteServer(tmp_path / "server" / "milvus.db")
        config["db"].update(uri=server.ensure_running().uri, token_env="TEST_MILVUS_TOKEN")
        monkeypatch.setenv("TEST_MILVUS_TOKEN", "root:Milvus")
    elif request.param == BACKEND:
        config["db"].update(uri=request.getfixturevalue("milvus_server").uri, token_env="TEST_MILVUS_TOKEN")
        monkeypatch.setenv("TEST_MILVUS_TOKEN", "root:Milvus")
    settings = load_settings(write_config(tmp_path, config))
    store = store_for(settings.db)
    assert store._token == (None if request.param == "lite-file" else "root:Milvus")
    spec = settings.db.collections[0]
    store.ensure_collection(spec)
    yield store, spec
    store.close()
    if server:
        server.stop()
    stop_lite_server(tmp_path)


def test_rewrite_replaces_rows_exactly(store_and_spec):
    store, spec = store_and_spec
    assert write_rows(store, spec, "a.mp4", batch(7)) == 7
    assert write_rows(store, spec, "b.mp4", batch(4)) == 4
    assert write_rows(store, spec, "a.mp4", batch(3), batch(3, start=3)) == 6
    assert store.count_rows(spec, "a.mp4") == 6 and store.count_rows(spec, "b.mp4") == 4
    frame_ids = sorted(r["frame_id"] for r in stored_rows(store, spec, "a.mp4", ("frame_id",)))
    assert frame_ids == list(range(6))


def test_a_crash_between_insert_and_delete_is_recovered(store_and_spec):
    store, spec = store_and_spec
    write_rows(store, spec, "a.mp4", batch(5))
    # The new generation is in, the old not yet deleted: a duplicate, never a loss.
    store.insert(spec, batch(5, seed=1), ["a.mp4"] * 5, generation=1)
    assert store.count_rows(spec, "a.mp4") == 10
    write_rows(store, spec, "a.mp4", batch(5, seed=2))
    assert store.count_rows(spec, "a.mp4") == 5


def test_injection_file_name_touches_only_its_own_rows(store_and_spec):
    store, spec = store_and_spec
    write_rows(store, spec, "victim.mp4", batch(4))
    write_rows(store, spec, INJECTION, batch(2))
    write_rows(store, spec, INJECTION, batch(3))
    assert store.count_rows(spec, INJECTION) == 3 and store.count_rows(spec, "victim.mp4") == 4
    store.delete_video(spec, INJECTION)
    assert store.count_rows(spec) == 4
    write_rows(store, spec, "a\nb.mp4", batch(1))  # a newline, and a backslash + n:
    write_rows(store, spec, "a\\nb.mp4", batch(2))  # two videos, never confused
    assert (store.count_rows(spec, "a\nb.mp4"), store.count_rows(spec, "a\\nb.mp4")) == (1, 2)


@pytest.mark.parametrize("name", ["it's \\ odd.mp4", "ünï ✓ cöde.mp4", "a, b [c].mp4", 'q"uote.mp4',
                                  "new\nline\ttab\r.mp4", "\\n not a newline.mp4", "x" * 251 + ".mp4"])
def test_names_round_trip(store_and_spec, name):
    store, spec = store_and_spec
    write_rows(store, spec, name, batch(2))
    rows = stored_rows(store, spec, name, ("video_path",))
    assert {r["video_path"] for r in rows} == {name} and len(rows) == 2


def test_control_characters_milvus_cannot_spell_are_refused():
    assert quote("line\nbreak.mp4") == '"line\\nbreak.mp4"'
    with pytest.raises(VideoError, match="control characters other than newline and tab"):
        quote("bell\x07.mp4")


def test_existing_collection_with_other_fields_is_named(tmp_path, tiny_clip, store_and_spec):
    store, spec = store_and_spec
    config = clip_config(tmp_path, tiny_clip, tmp_path)
    config["db"]["collections"][0]["fields"][2]["dtype"] = "INT64"
    other = load_settings(write_config(tmp_path, config, "other.yaml")).db.collections[0]
    with pytest.raises(ConfigError, match="collection frames in .* has fields"):
        store.ensure_collection(other)


def test_search_finds_the_nearest_frame(store_and_spec):
    store, spec = store_and_spec
    rows = batch(6, seed=3)
    write_rows(store, spec, "s.mp4", rows)
    hits = nearest(store, spec, rows.vectors[4], limit=2)
    assert hits[0]["frame_id"] == 4 and hits[0]["video_path"] == "s.mp4"


def test_a_token_variable_that_is_not_set_is_named(tmp_path, tiny_clip):
    config = clip_config(tmp_path, tiny_clip, tmp_path)
    config["db"].update(uri="http://127.0.0.1:19530", token_env="NO_SUCH_TOKEN_VARIABLE")
    with pytest.raises(ConfigError, match="db.token_env: environment variable NO_SUCH_TOKEN_VARIABLE is not set"):
        store_for(load_settings(write_config(tmp_path, config)).db)


def test_inserts_stay_under_the_request_limit_whatever_the_batch_size(store_and_spec):
    store, spec = store_and_spec
    assert rows_per_request(spec, limit_bytes=10_000) < 5
    big = rows_per_request(spec) + 5  # more rows than one request may carry
    rows = EmbeddingBatch(np.ones((big, 32), np.float32), {"frame_id": np.arange(big), "timestamp_ms": np.arange(big)})
    assert write_rows(store, spec, "big.mp4", rows) == big
    assert store.count_rows(spec, "big.mp4") == big


def test_the_configured_index_and_partition_key(store_and_spec, tmp_path, tiny_clip):
    """HNSW with its parameters and video_path as the partition key, as configured; a
    DISKANN config gets AUTOINDEX on Milvus Lite (which cannot build it), the index
    itself on a server, so one config serves both."""
    store, _ = store_and_spec
    config = clip_config(tmp_path, tiny_clip, tmp_path)
    collection = config["db"]["collections"][0]
    specs = {}
    for kind, params, search in (("HNSW", {"M": 8, "efConstruction": 64}, {"ef": 32}), ("DISKANN", {}, {})):
        collection.update(name=f"idx_{kind.lower()}", index={"type": kind, "params": params, "search_params": search})
        specs[kind] = load_settings(write_config(tmp_path, config, f"{kind}.yaml")).db.collections[0]
    for kind, spec in specs.items():
        store.ensure_collection(spec)
        index = store.client.describe_index(spec.name, spec.vector_field.name)
        built = "AUTOINDEX" if store.is_lite and kind == "DISKANN" else kind
        assert (index["index_type"], index["metric_type"]) == (built, "COSINE")
        if kind == "HNSW" and store.uri == MilvusStandalone.uri:  # Milvus Lite does not report build parameters
            assert (int(index["M"]), int(index["efConstruction"])) == (8, 64)
        fields = {f["name"]: f for f in store.client.describe_collection(spec.name)["fields"]}
        assert fields["video_path"].get("is_partition_key") is True
        rows = batch(5, seed=4)
        write_rows(store, spec, "p.mp4", rows)
        write_rows(store, spec, "q.mp4", batch(3, seed=5))
        hits = nearest(store, spec, rows.vectors[2], limit=1)  # with the configured search parameters
        assert (hits[0]["video_path"], hits[0]["frame_id"]) == ("p.mp4", 2)
        assert (store.count_rows(spec, "p.mp4"), store.count_rows(spec, "q.mp4")) == (5, 3)


@pytest.mark.parametrize("store_and_spec", [BACKEND], indirect=True)  # skips outside the server's namespace
def test_a_server_commit_is_visible_at_once_without_a_flush(store_and_spec):
    """On a server the store never flushes: an acknowledged insert or delete is in the
    server's log, and the collection's Strong consistency makes the next count exact.
    A flush of Milvus 2.3 costs seconds (measured and printed here)."""
    import time

    store, spec = store_and_spec
    started = time.perf_counter()
    for i in range(3):
        write_rows(store, spec, "v.mp4", batch(4 + i, seed=i))
        assert store.count_rows(spec, "v.mp4") == 4 + i  # the new generation in, the old one gone
    writes = (time.perf_counter() - started) / 3
    started = time.perf_counter()
    store.client.flush(spec.name)
    flush = time.perf_counter() - started
    print(f"server: write+commit+count {writes:.2f}s per video without flush; one flush {flush:.2f}s")
    assert store.client.describe_collection(spec.name)["consistency_level"] in (0, "Strong")


def test_a_search_store_finds_what_was_committed_before_it(store_and_spec, tmp_path):
    """The search path's store (`reads_may_lag`: Bounded consistency, no wait for a server's
    newest time tick) sees rows and ledger entries committed more than the server's
    graceful time (5 s) before, on every backend."""
    import time

    store, spec = store_and_spec
    rows = batch(5, seed=11)
    write_rows(store, spec, "old.mp4", rows)
    store.record_videos(spec, [LedgerRecord("old.mp4", "1-1", "digest", "v1", 5)], generation=7)
    time.sleep(0 if store.is_lite else 6)  # Lite is always current; a server's Bounded lag is at most 5 s
    search = open_store(store.uri, store._token, reads_may_lag=True)
    try:
        assert [(h["video_path"], h["frame_id"]) for h in nearest(search, spec, rows.vectors[3], limit=1)] == [("old.mp4", 3)]
        assert search.committed(spec, ["old.mp4"])["old.mp4"].generation == 7
        assert len(search.query_rows(spec, RowFilter(videos=("old.mp4",)), ("frame_id",))) == 5
    finally:
        search.close()


def test_reads_past_a_plain_query_limit_come_whole(store_and_spec):
    """A read that fits one plain query takes one; past Milvus' 16384 rows it pages."""
    store, spec = store_and_spec
    write_rows(store, spec, "big.mp4", batch(16390, seed=2))
    write_rows(store, spec, "small.mp4", batch(3, seed=4))
    big = store.query_rows(spec, RowFilter(videos=("big.mp4",)), ("frame_id",))
    assert sorted(r["frame_id"] for r in big) == list(range(16390))
    assert sorted(r["frame_id"] for r in store.query_rows(spec, RowFilter(videos=("small.mp4",)), ("frame_id",))) == [0, 1, 2]
