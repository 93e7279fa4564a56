"""Insert numpy columns into Milvus without pymilvus' per-float packing.

Why: `MilvusClient.insert(collection, rows)` turns every vector component into a
Python float and appends them one by one to protobuf. Measured with pymilvus 3.0.2
against a loopback Milvus Lite server on a 2-core machine (test_fast_insert.py,
`pytest -s`): 115-165 ms of client CPU per 1000 rows of 1152-d float32, building the
row dicts included. `insert_columns` puts the FLOAT_VECTOR column into the request as
one block of bytes: the `FloatArray` message is parsed from its wire form (tag 0x0a, a
varint length, the little-endian float32 bytes, i.e. a packed `repeated float`), which
protobuf copies whole. Scalar columns are small and go through pymilvus' own column
packer. The request is sent as `MilvusClient.insert` sends it (same stub, metadata,
retries, errors) and equals the one pymilvus builds for the same rows (the test
checks). Measured: 6-8 ms per 1000 rows, of which about 1.5 ms builds the request; the
rest is gRPC serializing and sending 4.6 MB, which the public path pays as well.

pymilvus internals it depends on (tried with 3.0.2; `_fast_handler` falls back to the
public `client.insert` on other versions or when one is missing):
  MilvusClient._get_connection() -> GrpcHandler, MilvusClient._generate_call_context();
  GrpcHandler._get_schema (cached describe), ._stub.Insert, .server_address,
    ._invalidate_schema (used by retry_on_schema_mismatch);
  pymilvus.decorators.retry_on_rpc_failure, retry_on_schema_mismatch (as on insert_rows);
  client.call_context._api_level_md, client.utils.check_status,
  client.ts_utils.update_collection_ts, client.prepare.Prepare._is_input_field,
  client.entity_helper.entity_to_field_data;
  grpc_gen milvus_pb2.InsertRequest and schema_pb2.FieldData/VectorField/FloatArray.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pymilvus

try:
    from pymilvus.client import entity_helper, ts_utils
    from pymilvus.client.call_context import _api_level_md
    from pymilvus.client.prepare import Prepare
    from pymilvus.client.types import DataType
    from pymilvus.client.utils import check_status
    from pymilvus.decorators import retry_on_rpc_failure, retry_on_schema_mismatch
    from pymilvus.exceptions import DataNotMatchException, ExceptionsMessage, ParamError
    from pymilvus.grpc_gen import milvus_pb2

    _INTERNALS = True
except ImportError:  # another pymilvus layout: only the public path
    _INTERNALS = False

TESTED_PYMILVUS = ("3.0.",)  # version prefixes the fast path was checked against


def insert_columns(client, collection: str, vectors_field: str, vectors: np.ndarray,
                   columns: dict[str, np.ndarray | list], *, partition_name: str = "",
                   timeout: float | None = None) -> int:
    """Insert len(vectors) rows: `vectors` float32 (n, dim) C-contiguous into the
    FLOAT_VECTOR field `vectors_field`, and each scalar column (numpy int arrays for
    INT8/16/32/64 fields, a list of str for VARCHAR fields) into its field. Returns rows
    inserted. Raises like client.insert would on server errors."""
    if len(vectors) == 0:
        return 0
    handler = _fast_handler(client)
    if handler is None:
        return _insert_public(client, collection, vectors_field, vectors, columns, partition_name, timeout)
    build = partial(_build_request, collection, partition_name, vectors_field, vectors, columns)
    return _send(handler, collection, build=build, timeout=timeout, context=client._generate_call_context())


def _fast_handler(client):
    """pymilvus' GrpcHandler behind `client` when the fast path may use it; None means
    use the public `client.insert` (untested pymilvus version, or an internal is gone)."""
    if not _INTERNALS or not pymilvus.__version__.startswith(TESTED_PYMILVUS):
        return None
    try:
        handler = client._get_connection()
        _ = (handler._stub.Insert, handler._get_schema, handler._invalidate_schema, handler.server_address,
             client._generate_call_context)  # AttributeError where one is gone
    except AttributeError:
        return None
    return handler


def _insert_public(client, collection, vectors_field, vectors, columns, partition_name, timeout) -> int:
    values = {k: v.tolist() if isinstance(v, np.ndarray) else list(v) for k, v in columns.items()}
    vector_rows = np.asarray(vectors).tolist()
    rows = [{vectors_field: vector_rows[i], **{k: v[i] for k, v in values.items()}} for i in range(len(vector_rows))]
    return client.insert(collection, rows, timeout=timeout, partition_name=partition_name)["insert_count"]


def _insert_once(handler, collection: str, *, build, timeout=None, context=None) -> int:
    """GrpcHandler.insert_rows with `build` in place of Prepare.row_insert_param."""
    schema, schema_timestamp = handler._get_schema(collection, timeout=timeout, context=context)
    request = build(schema, schema_timestamp)
    response = handler._stub.Insert(request=request, timeout=timeout, metadata=_api_level_md(context))
    check_status(response.status)
    ts_utils.update_collection_ts(collection, response.timestamp, handler.server_address, context.get_db_name())
    return response.insert_cnt


if _INTERNALS:
    # As on GrpcHandler.insert_rows: retries on transient gRPC errors and rate limits, logs
    # failures, and once rebuilds with a freshly described schema on a schema mismatch.
    _send = retry_on_rpc_failure()(retry_on_schema_mismatch()(_insert_once))


def _build_request(collection, partition_name, vectors_field, vectors, columns, schema, schema_timestamp):
    """The InsertRequest Prepare.row_insert_param builds for these rows: one FieldData per
    input field, in schema order."""
    if schema.get("enable_dynamic_field") or schema.get("struct_array_fields"):
        raise ParamError(message=f"insert_columns: {collection} has a dynamic or struct array field; "
                                 "use client.insert")
    n = len(vectors)
    fields = [f for f in schema["fields"] if Prepare._is_input_field(f, is_upsert=False)]
    primary = next((f for f in schema["fields"] if f.get("is_primary")), None)
    if primary and primary.get("auto_id") and primary["name"] in columns:
        fields.append(primary)  # as pymilvus: an auto_id key may still be given
    known = {f["name"] for f in fields}
    for name in (vectors_field, *columns):
        if name not in known:
            raise DataNotMatchException(message=ExceptionsMessage.InsertUnexpectedField % name)
    request = milvus_pb2.InsertRequest(collection_name=collection, partition_name=partition_name or "",
                                       num_rows=n, schema_timestamp=schema_timestamp)
    for field in fields:
        name = field["name"]
        if name == vectors_field:
            _add_float_vectors(request, field, vectors)
        elif name in columns or field.get("nullable") or field.get("default_value"):
            values = columns.get(name, [])  # none given: all null or default, as pymilvus
            values = values.tolist() if isinstance(values, np.ndarray) else list(values)
            if name in columns and len(values) != n:
                raise ParamError(message=f"insert_columns: column {name} has {len(values)} values for {n} vectors")
            entity = {"name": name, "type": field["type"], "values": values}
            request.fields_data.append(entity_helper.entity_to_field_data(entity, field, n))
        else:
            raise DataNotMatchException(message=ExceptionsMessage.InsertMissedField % name)
    return request


def _add_float_vectors(request, field: dict, vectors: np.ndarray) -> None:
    if field["type"] != DataType.FLOAT_VECTOR or field.get("nullable"):
        raise ParamError(message=f"insert_columns: {field['name']} is not a non-nullable FLOAT_VECTOR field")
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or vectors.dtype.kind != "f":
        raise ParamError(message=f"insert_columns: vectors must be a float (rows, dim) array, "
                                 f"got {vectors.dtype} {vectors.shape}")
    dim = int(field.get("params", {}).get("dim", 0))
    if vectors.shape[1] != dim:
        raise DataNotMatchException(message=f"insert_columns: {field['name']} has dim {dim}, "
                                            f"vectors have {vectors.shape[1]}")
    data = np.ascontiguousarray(vectors, dtype="<f4").data.cast("B")  # no copy for float32 input
    field_data = request.fields_data.add(field_name=field["name"], type=field["type"])
    field_data.vectors.dim = dim
    # FloatArray wire form: field 1, wire type 2 (tag 0x0a), byte length, packed floats.
    field_data.vectors.float_vector.MergeFromString(b"".join((b"\x0a", _varint(data.nbytes), data)))


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
