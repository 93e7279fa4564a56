"""insert_columns against a real Milvus Lite server (no mock): the request it builds
equals pymilvus' own, the rows come back exactly, the public fallback stores the same.
The client CPU per 1000 rows of both paths: bench/bench_fast_insert.py."""

import logging
import uuid

import numpy as np
import pymilvus
import pytest
from pymilvus import DataType, MilvusClient
from pymilvus.exceptions import DataNotMatchException, MilvusException, ParamError

from feature_pipeline_dagster.core.store import fast_insert
from feature_pipeline_dagster.core.store.fast_insert import insert_columns
from feature_pipeline_dagster.core.store.lite_server import LiteServer

DIM = 1152
PATHS = ['/videos/plain.mp4', '/videos/"quoted" \'it\'s\' \\back.mp4', "/vidéos/日本語 🎬.mp4"]
SCALARS = ["video_path", "frame_id", "timestamp_ms", "generation", "row_idx", "col_idx"]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    data = tmp_path_factory.mktemp("fast_insert") / "t.db"
    try:
        state = LiteServer(data).ensure_running()
        milvus = MilvusClient(uri=state.uri, token="", timeout=30, dedicated=True)
        yield milvus
        milvus.close()
    finally:
        LiteServer(data).stop()


@pytest.fixture
def collection(client):
    name = f"t_{uuid.uuid4().hex[:8]}"
    schema = MilvusClient.create_schema(auto_id=True, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True, auto_id=True)
    schema.add_field("video_path", DataType.VARCHAR, max_length=1024)
    schema.add_field("frame_id", DataType.INT32)
    schema.add_field("timestamp_ms", DataType.INT64)
    schema.add_field("generation", DataType.INT64)
    schema.add_field("row_idx", DataType.INT16)
    schema.add_field("col_idx", DataType.INT16)
    schema.add_field("embeddings", DataType.FLOAT_VECTOR, dim=DIM)
    index = client.prepare_index_params()
    index.add_index(field_name="embeddings", index_type="AUTOINDEX", metric_type="COSINE")
    client.create_collection(name, schema=schema, index_params=index)
    yield name
    client.release_collection(name)  # Milvus Lite drops a released collection several times faster
    client.drop_collection(name)


def make_rows(n: int, seed: int = 0, generation: int = 1):
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors[0, :4] = [0.0, -0.0, 1e-45, 3.4028235e38]  # zeros, a subnormal, the largest float32
    frame = np.arange(n, dtype=np.int64)
    columns = {
        "video_path": [PATHS[i % len(PATHS)] for i in range(n)],
        "frame_id": frame.astype(np.int32),
        "timestamp_ms": frame * 33_366_000_000 - 5,  # beyond int32, and one negative
        "generation": np.full(n, generation, dtype=np.int64),
        "row_idx": (frame % 7 - 3).astype(np.int16),
        "col_idx": (frame % 11).astype(np.int16),
    }
    return vectors, columns


def public_rows(vectors, columns):
    """Rows as the project builds them for client.insert."""
    values = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in columns.items()}
    return [{"embeddings": vector, **{k: v[i] for k, v in values.items()}} for i, vector in enumerate(vectors.tolist())]


def stored(client, collection, generation):
    """The collection's rows of one generation as (vectors, scalar columns), by frame_id."""
    rows = client.query(collection, filter=f"generation == {generation}", output_fields=["embeddings", *SCALARS],
                        limit=16384)
    rows.sort(key=lambda r: r["frame_id"])
    vectors = np.asarray([r["embeddings"] for r in rows], dtype=np.float32)
    return vectors, {k: [r[k] for r in rows] for k in SCALARS}


def assert_stored(client, collection, generation, vectors, columns):
    got_vectors, got = stored(client, collection, generation)
    assert got_vectors.shape == vectors.shape
    assert got_vectors.tobytes() == vectors.tobytes()  # bit for bit, -0.0 and subnormals included
    for name, values in columns.items():
        assert got[name] == (values.tolist() if isinstance(values, np.ndarray) else values), name


@pytest.fixture
def recorded(client, monkeypatch):
    """Every InsertRequest the client sends, recorded on its way to the real server."""
    handler = client._get_connection()
    send = handler._stub.Insert
    requests = []

    def insert(request, **kwargs):
        requests.append(request)
        return send(request, **kwargs)

    monkeypatch.setattr(handler._stub, "Insert", insert)
    return requests


def test_request_equals_pymilvus_request(client, collection, recorded):
    vectors, columns = make_rows(300)
    client.insert(collection, public_rows(vectors, columns))
    assert insert_columns(client, collection, "embeddings", vectors, columns) == 300
    public, fast = recorded
    assert [f.field_name for f in fast.fields_data] == [f.field_name for f in public.fields_data]
    for mine, theirs in zip(fast.fields_data, public.fields_data):
        assert mine.SerializeToString(deterministic=True) == theirs.SerializeToString(deterministic=True)
    assert fast == public
    assert fast.SerializeToString(deterministic=True) == public.SerializeToString(deterministic=True)


def test_round_trip(client, collection):
    vectors, columns = make_rows(2500, seed=1, generation=7)
    assert insert_columns(client, collection, "embeddings", vectors, columns) == 2500
    client.flush(collection)
    assert_stored(client, collection, 7, vectors, columns)


def test_fallback_stores_the_same_rows(client, collection, monkeypatch):
    vectors, columns = make_rows(500, seed=2, generation=1)
    again = {**columns, "generation": columns["generation"] + 1}
    assert insert_columns(client, collection, "embeddings", vectors, columns) == 500
    with monkeypatch.context() as patch:
        patch.setattr(fast_insert, "_fast_handler", lambda client: None)
        assert insert_columns(client, collection, "embeddings", vectors, again) == 500
    client.flush(collection)
    assert_stored(client, collection, 1, vectors, columns)
    assert_stored(client, collection, 2, vectors, again)


def test_version_guard(client, monkeypatch):
    assert fast_insert._fast_handler(client) is client._get_connection()
    monkeypatch.setattr(pymilvus, "__version__", "3.1.0")
    assert fast_insert._fast_handler(client) is None


def test_errors_like_pymilvus(client, collection, caplog):
    caplog.set_level(logging.CRITICAL, logger="pymilvus.decorators")  # pymilvus logs each failure's traceback
    vectors, columns = make_rows(3)
    with pytest.raises(DataNotMatchException, match="frame_id"):
        insert_columns(client, collection, "embeddings", vectors, {k: v for k, v in columns.items() if k != "frame_id"})
    with pytest.raises(DataNotMatchException, match="nonsense"):
        insert_columns(client, collection, "embeddings", vectors, {**columns, "nonsense": [1, 2, 3]})
    with pytest.raises(DataNotMatchException):
        insert_columns(client, collection, "embeddings", vectors[:, :100], columns)
    with pytest.raises(ParamError, match="length of string exceeds max length"):
        insert_columns(client, collection, "embeddings", vectors, {**columns, "video_path": ["x" * 2000] * 3})
    with pytest.raises(MilvusException) as public_error:
        client.insert("no_such_collection", public_rows(vectors, columns))
    with pytest.raises(MilvusException) as fast_error:
        insert_columns(client, "no_such_collection", "embeddings", vectors, columns)
    assert (fast_error.value.code, fast_error.value.message) == (public_error.value.code, public_error.value.message)
