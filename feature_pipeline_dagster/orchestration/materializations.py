"""What the instance recorded for partitions: the latest materialization of each, read in
pages for many partitions at once (one query per page, not one per partition), and once
per run for the steps that follow the embedding's (its three checks and the summary read
the same partitions: 4 reads of 500 took about 1 s of a run's tail, bench_gpu_standin.py
under py-spy), or not at all where the embedding's step ran in the same process."""

from __future__ import annotations

from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, MetadataValue


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


_in_run: dict = {}  # (run id, asset key) -> partition key -> its metadata values; one run's


def recorded_in_run(context, asset_key: AssetKey, keys: list[str]) -> dict[str, dict]:
    """Each of `keys` with the metadata values of its latest materialization ({} for one
    never materialized), for a step of the run that wrote them: as the step that wrote them
    in this process left them (`remember_in_run`), or read once per run and process, so that
    every step after it sees the same."""
    run_id = context.run.run_id
    known = _in_run.get((run_id, asset_key))
    if known is None or not all(key in known for key in keys):
        latest = latest_materializations(context.instance, asset_key, keys)
        _in_run.clear()
        known = _in_run[(run_id, asset_key)] = {key: metadata_values(latest.get(key)) for key in keys}
    return {key: known[key] for key in keys}


def remember_in_run(run_id: str, asset_key: AssetKey, written: dict[str, dict]) -> None:
    """The metadata a step is about to record for these partitions, for `recorded_in_run`
    in the steps after it in this process (the in-process executor's): the checks and the
    summary then read no event back (1000 partitions' materializations: 0.3 s of a run's
    tail, bench_gpu_standin.py under a sampler)."""
    _in_run.clear()
    _in_run[(run_id, asset_key)] = {key: {name: value.value if isinstance(value, MetadataValue) else value
                                          for name, value in meta.items()} for key, meta in written.items()}


def metadata_values(materialization) -> dict:
    """Its metadata as plain values."""
    return {} if materialization is None else {k: v.value for k, v in materialization.metadata.items()}
