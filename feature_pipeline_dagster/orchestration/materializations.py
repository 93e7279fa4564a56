"""What the instance recorded for partitions: the latest materialization of each, read in
pages for many partitions at once (one query per page, not one per partition)."""

from __future__ import annotations

from dagster import AssetKey, AssetRecordsFilter, DagsterInstance


def latest_materializations(instance: DagsterInstance, asset_key: AssetKey, keys: list[str]) -> dict:
    """Partition key -> its latest `AssetMaterialization` (partitions never materialized are absent)."""
    latest: dict = {}
    cursor = None
    while keys:
        page = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=asset_key, asset_partitions=keys), limit=1000, cursor=cursor, ascending=False)
        for record in page.records:
            if record.asset_materialization is not None and record.partition_key not in latest:
                latest[record.partition_key] = record.asset_materialization
        if not page.has_more or len(latest) == len(keys):
            break
        cursor = page.cursor
    return latest


def metadata_values(materialization) -> dict:
    """Its metadata as plain values."""
    return {} if materialization is None else {k: v.value for k, v in materialization.metadata.items()}
