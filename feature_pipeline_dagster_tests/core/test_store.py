"""The store against a real Milvus Lite file (no mock)."""

import numpy as np
import pytest

from feature_pipeline_dagster.core.settings import ConfigError, load_settings
from feature_pipeline_dagster.core.errors import VideoError
from feature_pipeline_dagster.core.engine.batches import EmbeddingBatch
from feature_pipeline_dagster.core.store.lite_server import LiteServer
from feature_pipeline_dagster.core.store import store_for
from feature_pipeline_dagster.core.store.milvus import quote, rechunk, rows_per_request
from feature_pipeline_dagster_tests.conftest import clip_config, stop_lite_server, write_config

INJECTION = '" or frame_id >= 0 or video_path == ".mp4'


def batch(n: int, seed: int = 0, start: int = 0) -> EmbeddingBatch:
    vectors = np.random.default_rng(seed).standard_normal((n, 32)).astype(np.float32)
    ids = np.arange(start, start + n, dtype=np.int64)
    return EmbeddingBatch(vectors, {"frame_id": ids, "timestamp_ms": ids * 1000})


@pytest.fixture(params=["lite-file", "server"])
def store_and_spec(request, tmp_path, tiny_clip, monkeypatch):
    """The same tests against a Milvus Lite file and against a Milvus server on loopback
    (`milvus-lite server`, started here), with the token read from the variable the
    config names."""
    config = clip_config(tmp_path, tiny_clip, tmp_path)
    server = None
    if request.param == "server":
        server = LiteServer(tmp_path / "server" / "milvus.db")
        config["db"].update(uri=server.ensure_running().uri, token_env="TEST_MILVUS_TOKEN")
        monkeypatch.setenv("TEST_MILVUS_TOKEN", "root:Milvus")
    settings = load_settings(write_config(tmp_path, config))
    store = store_for(settings.db)
    assert store._token == ("root:Milvus" if server else None)
    spec = settings.db.collections[0]
    store.ensure_collection(spec)
    yield store, spec
    store.close()
    if server:
        server.stop()
    stop_lite_server(tmp_path)


def test_rewrite_replaces_rows_exactly(store_and_spec):
    store, spec = store_and_spec
    assert store.write_video(spec, "a.mp4", [batch(7)], batch_size=3) == 7
    assert store.write_video(spec, "b.mp4", [batch(4)], batch_size=3) == 4
    assert store.write_video(spec, "a.mp4", [batch(3), batch(3, start=3)], batch_size=3) == 6
    assert store.count_rows(spec, "a.mp4") == 6 and store.count_rows(spec, "b.mp4") == 4
    frame_ids = sorted(r["frame_id"] for r in store.fetch_video(spec, "a.mp4", ("frame_id",)))
    assert frame_ids == list(range(6))


def test_a_crash_between_insert_and_delete_is_recovered(store_and_spec):
    store, spec = store_and_spec
    store.write_video(spec, "a.mp4", [batch(5)], batch_size=100)
    # The new generation is in, the old not yet deleted: a duplicate, never a loss.
    store.insert(spec, batch(5, seed=1), ["a.mp4"] * 5, generation=1)
    assert store.count_rows(spec, "a.mp4") == 10
    store.write_video(spec, "a.mp4", [batch(5, seed=2)], batch_size=100)
    assert store.count_rows(spec, "a.mp4") == 5


def test_injection_file_name_touches_only_its_own_rows(store_and_spec):
    store, spec = store_and_spec
    store.write_video(spec, "victim.mp4", [batch(4)], batch_size=10)
    store.write_video(spec, INJECTION, [batch(2)], batch_size=10)
    store.write_video(spec, INJECTION, [batch(3)], batch_size=10)
    assert store.count_rows(spec, INJECTION) == 3 and store.count_rows(spec, "victim.mp4") == 4
    store.delete_video(spec, INJECTION)
    assert store.count_rows(spec) == 4
    store.write_video(spec, "a\nb.mp4", [batch(1)], batch_size=10)  # a newline, and a backslash + n:
    store.write_video(spec, "a\\nb.mp4", [batch(2)], batch_size=10)  # two videos, never confused
    assert (store.count_rows(spec, "a\nb.mp4"), store.count_rows(spec, "a\\nb.mp4")) == (1, 2)


@pytest.mark.parametrize("name", ["it's \\ odd.mp4", "ünï ✓ cöde.mp4", "a, b [c].mp4", 'q"uote.mp4',
                                  "new\nline\ttab\r.mp4", "\\n not a newline.mp4", "x" * 251 + ".mp4"])
def test_names_round_trip(store_and_spec, name):
    store, spec = store_and_spec
    store.write_video(spec, name, [batch(2)], batch_size=10)
    rows = store.fetch_video(spec, name, ("video_path",))
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
    store.write_video(spec, "s.mp4", [rows], batch_size=10)
    hits = store.search(spec, rows.vectors[4], limit=2)
    assert hits[0]["frame_id"] == 4 and hits[0]["video_path"] == "s.mp4"


def test_rechunk_gives_exact_sizes():
    sizes = [len(b) for b in rechunk([batch(4), batch(1), batch(7), batch(2)], 5)]
    assert sizes == [5, 5, 4]
    assert [len(b) for b in rechunk([], 5)] == []


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
    assert store.write_video(spec, "big.mp4", [rows], batch_size=10**9) == big
    assert store.count_rows(spec, "big.mp4") == big
