"""What the instance recorded for partitions: the latest materialization of each, read in
pages for many partitions at once (one query per page, not one per partition), and once
per run for the steps that follow the embedding's (its three checks and the summary read
the same partitions: 4 reads of 500 took about 1 s of a run's tail, bench_gpu_standin.py
under py-spy)."""

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


_read_in_run: dict = {}  # (run id, asset key, partition keys) -> what latest_materializations read; one run's


def latest_in_run(context, asset_key: AssetKey, keys: list[str]) -> dict:
    """`latest_materializations` for a step of the run that wrote them, read once per run
    and process: every step after the one that materializes `asset_key` sees the same."""
    key = (context.run.run_id, asset_key, tuple(keys))
    if key not in _read_in_run:
        _read_in_run.clear()
        _read_in_run[key] = latest_materializations(context.instance, asset_key, keys)
    return _read_in_run[key]


def metadata_values(materialization) -> dict:
    """Its metadata as plain values."""
    return {} if materialization is None else {k: v.value for k, v in materialization.metadata.items()}
