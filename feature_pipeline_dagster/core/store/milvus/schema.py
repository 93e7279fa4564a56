"""Milvus collections from the config: fields (`video_path` the partition key where
configured), the configured vector index (AUTOINDEX where Milvus Lite cannot build it),
Strong consistency; an existing collection checked against the fields the config declares."""

from __future__ import annotations

import logging
import time

from feature_pipeline_dagster.core.errors import ConfigError, StoreError, one_line
from feature_pipeline_dagster.core.settings import LITE_INDEX_TYPES, CollectionSpec
from feature_pipeline_dagster.core.store.milvus.client import call, is_lite

log = logging.getLogger("feature_pipeline.store")


def index_type(spec: CollectionSpec, uri: str) -> str:
    """The configured index, or AUTOINDEX where Milvus Lite cannot build it (DISKANN):
    one config serves the laptop and the cluster."""
    if is_lite(uri) and spec.index.type not in LITE_INDEX_TYPES:
        return "AUTOINDEX"
    return spec.index.type


def create_collection(client, uri: str, spec: CollectionSpec) -> None:
    """Create the collection with its fields and index; if another process is creating it
    at the same moment, check the one it made instead."""
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=True, enable_dynamic_field=False)
    for f in spec.fields:
        extra = {k: v for k, v in (("max_length", f.max_length), ("dim", f.dim)) if v is not None}
        if f.name == "video_path" and spec.partition_key:
            # A server hashes videos over its partitions (16 by default in 2.3): a
            # video's delete, count and fetch touch one partition, not all of them.
            extra["is_partition_key"] = True
        schema.add_field(f.name, DataType[f.dtype], is_primary=f.is_primary, auto_id=f.auto_id, **extra)
    index = client.prepare_index_params()
    kind = index_type(spec, uri)
    if kind != spec.index.type:
        log.warning("collection %s: Milvus Lite has no %s index: AUTOINDEX instead (a server builds %s)",
                    spec.name, spec.index.type, spec.index.type)
    params = dict(spec.index.params) if kind == spec.index.type else {}
    index.add_index(field_name=spec.vector_field.name, index_type=kind, metric_type=spec.index.metric,
                    params=params)
    try:
        # Strong: a server otherwise answers queries at "Bounded" staleness (pymilvus'
        # default), and a count right after a commit could miss the rows or see the
        # deleted ones; the ledger and the checks count exactly. Lite is always current.
        client.create_collection(spec.name, schema=schema, consistency_level="Strong")
    except Exception as err:
        # Another process may be creating it right now: its collection shows up in a moment.
        for _ in range(20):
            if call(uri, "has_collection", client.has_collection, spec.name):
                return check_schema(client, uri, spec)
            time.sleep(0.25)
        raise StoreError(f"Milvus at {uri}: create collection {spec.name} failed ({one_line(err)})") from None
    # Not waited for: pymilvus sleeps 0.5 s before it first asks whether an index is built, and
    # an empty collection's is at once (2 s of a fresh database's four collections, on the
    # critical path of `run`'s start-up). Loading the collection waits for what it needs.
    call(uri, "create_index", client.create_index, spec.name, index, sync=False)


def check_schema(client, uri: str, spec: CollectionSpec) -> None:
    """A ConfigError naming both field lists where the collection differs from the config."""
    described = call(uri, "describe_collection", client.describe_collection, spec.name)
    have = {f["name"]: (f["type"].name, f.get("params", {}).get("dim")) for f in described["fields"]}
    want = {f.name: (f.dtype, f.dim) for f in spec.fields}
    if have != want:
        raise ConfigError(
            f"db.collections: collection {spec.name} in {uri} has fields "
            f"{_describe(have)} but the config declares {_describe(want)}: "
            "use another collection name or drop the old collection"
        )


def _describe(fields: dict) -> str:
    return ", ".join(f"{n}:{t}" + (f"[{d}]" if d else "") for n, (t, d) in sorted(fields.items()))
