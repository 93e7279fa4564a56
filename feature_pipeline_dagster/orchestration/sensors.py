"""The file-arrival sensor: new videos become partitions and runs in the same tick,
changed videos run again, deleted videos lose their partition and their rows, and
videos whose rows the database lacks (an audit every 10 minutes: rows deleted by hand,
another database or collection) run again, with a failed `rows_match_run` evaluation
naming them so the UI shows why.

Runs carry a device tag (least loaded first) that the run queue limits per device;
videos that arrive together go out as ranged runs, about one per device, so one
process and one model load serve many videos. Under `placement: kubernetes` a run's tags
also ask dagster-k8s for a pod with one GPU (orchestration/placement.py). Never imports
torch.
"""

import hashlib
import json
import time

from dagster import (
    AssetCheckEvaluation,
    AssetCheckKey,
    AssetKey,
    AssetObservation,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from feature_pipeline_dagster.core.errors import PipelineError
from feature_pipeline_dagster.core.folder_watch import diff_folder, plan_ranges, split_contiguous
from feature_pipeline_dagster.core.settings import Settings
from feature_pipeline_dagster.core.summary import owned_collections
from feature_pipeline_dagster.core.videos import content_digest, list_videos, partition_key, relpath_of
from feature_pipeline_dagster.orchestration.names import (
    CHECK_NAMES,
    DATA_VERSION_TAG,
    DEVICE_TAG,
    MAX_VIDEOS_PER_RUN,
    PARTITION_TAG,
    RANGE_END_TAG,
    RANGE_START_TAG,
    SUMMARY_ASSET,
    VIDEO_FILE,
)
from feature_pipeline_dagster.orchestration.partitions import videos_partitions
from feature_pipeline_dagster.orchestration.placement import device_tags, parallel_runs, run_tags
from feature_pipeline_dagster.orchestration.resources import VectorStoreResource

UNFINISHED = [s for s in DagsterRunStatus if s not in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE,
                                                       DagsterRunStatus.CANCELED)]


class _DevicePicker:
    """Least-loaded device first, counting the unfinished (queued or running) runs each
    device tag has."""

    def __init__(self, instance, devices: list[str]):
        self.load = {d: instance.get_runs_count(RunsFilter(tags={DEVICE_TAG: d}, statuses=UNFINISHED))
                     for d in devices}

    def take(self) -> str:
        device = min(self.load, key=self.load.get)
        self.load[device] += 1
        return device


def build_video_sensor(settings: Settings) -> SensorDefinition:
    features = [AssetKey(f) for f in settings.model.features]
    checks = [AssetCheckKey(k, name) for k in features for name in CHECK_NAMES]
    # The summary rides in the same run, after the blocking checks (which gate it per run):
    # left to the automation sensor, it waited for every queued run's checks (the checks
    # are not partitioned), so summaries stalled while files kept arriving (bench_load.py).
    targets = [*features, AssetKey(SUMMARY_ASSET)]
    devices = device_tags(settings)

    def request(videos: list[tuple[str, object]], device: str, again: str = "") -> RunRequest:
        """One run for consecutive videos; its key changes with any file's content (and
        with `again`: a video whose rows were lost is asked for anew)."""
        keys = [k for k, _ in videos]
        tags = run_tags(settings, device)
        if len(keys) > 1:
            tags.update({RANGE_START_TAG: keys[0], RANGE_END_TAG: keys[-1]})
        run_key = hashlib.sha1(json.dumps([again, *((k, v.fingerprint) for k, v in videos)]).encode()).hexdigest()
        return RunRequest(run_key=run_key, asset_selection=targets, asset_check_keys=checks,
                          partition_key=keys[0] if len(keys) == 1 else None, tags=tags)

    @sensor(name="video_folder_sensor", minimum_interval_seconds=10, default_status=DefaultSensorStatus.RUNNING,
            asset_selection=targets,
            description=f"Embeds videos as they arrive in {settings.video_input.path} (and forgets deleted ones).")
    def video_folder_sensor(context: SensorEvaluationContext,
                            vector_store: VectorStoreResource) -> SensorResult | SkipReason:
        if not settings.video_input.path.is_dir():  # unmounted or moved: never read as "all deleted"
            return SkipReason(f"video_input.path {settings.video_input.path} is not there; nothing changed")
        started = time.perf_counter()
        instance = context.instance
        order = instance.get_dynamic_partitions(videos_partitions.name)
        partitions = set(order)
        listing = list_videos(settings.video_input)
        changes = diff_folder(listing, partitions, context.cursor, time.time(), settings.video_input.settle_seconds,
                              embedded=lambda: _done(settings, vector_store, listing),
                              missing=lambda videos: _lacking(settings, vector_store, videos),
                              busy=lambda: _in_flight(instance, order))
        if changes.changed:  # a copy or a `touch` moves the fingerprint, not the content: not changed
            done = _done(settings, vector_store, [video for _, video in changes.changed])
            changes.changed = [(k, v) for k, v in changes.changed if k not in done]
        # A video that failed for its content as it is now waits for a change (core/ledger.py).
        failed = _failed_before(settings, vector_store, [v for _, v in changes.changed + changes.lost])
        changes.changed = [(k, v) for k, v in changes.changed if k not in failed]
        changes.lost = [(k, v) for k, v in changes.lost if k not in failed]
        picker = _DevicePicker(instance, devices)
        new_keys = [k for k, _ in changes.new]
        chunks = split_contiguous(changes.new, parallel_runs(settings), MAX_VIDEOS_PER_RUN)
        runs = [request(chunk, picker.take()) for chunk in chunks]
        runs += [request([video], picker.take()) for video in changes.changed]
        lost, again = dict(changes.lost), str(time.time_ns())
        runs += [request([(k, lost[k]) for k in keys], picker.take(), again)
                 for keys in plan_ranges(list(lost), order, parallel_runs(settings), MAX_VIDEOS_PER_RUN)]
        observations = [o for k, v in changes.new + changes.changed if (o := _observe(k, v))]
        if changes.lost:
            observations += _rows_lost(instance, features, [k for k, _ in changes.lost])
        if changes.deleted:
            _delete_rows(settings, vector_store, changes.deleted, context)
        partition_requests = []
        if new_keys:
            partition_requests.append(videos_partitions.build_add_request(new_keys))
        if changes.deleted:
            partition_requests.append(videos_partitions.build_delete_request(changes.deleted))
        context.log.info(
            f"{len(new_keys)} new, {len(changes.changed)} changed, {len(changes.deleted)} deleted, "
            f"{len(changes.lost)} lacking rows, "
            + (f"{len(failed)} skipped (failed before, unchanged), " if failed else "") +
            f"{changes.waiting} settling; {len(runs)} run(s); {time.perf_counter() - started:.2f}s"
        )
        return SensorResult(run_requests=runs, dynamic_partitions_requests=partition_requests,
                            asset_events=observations, cursor=changes.cursor)

    return video_folder_sensor


def _done(settings: Settings, vector_store: VectorStoreResource, videos: list) -> set[str]:
    """Partition keys of the videos whose current rows the database holds, in every
    feature's collection (the database is the truth: core/ledger.py)."""
    from feature_pipeline_dagster.core.ledger import done_in_every_collection

    store = vector_store.open()
    try:
        return {partition_key(path) for path in done_in_every_collection(store, settings, videos)}
    finally:
        store.close()


def _failed_before(settings: Settings, vector_store: VectorStoreResource, videos: list) -> set[str]:
    """Partition keys of the videos that failed for their content as they are now, with
    this code version: not asked for again until they change."""
    from feature_pipeline_dagster.core.ledger import failed_before

    if not videos:
        return set()
    store = vector_store.open()
    try:
        return {partition_key(path) for path in failed_before(store, settings, videos)}
    finally:
        store.close()


def _lacking(settings: Settings, vector_store: VectorStoreResource, videos: list) -> set[str]:
    """Keys of `videos` the database lacks (those being embedded now among them)."""
    done = _done(settings, vector_store, videos)
    return {k for v in videos if (k := partition_key(v.relpath)) not in done}


def _in_flight(instance, order: list[str]) -> set[str]:
    """Partition keys of the unfinished runs (one partition, or a range of the videos'
    partitions in their `order`, the tick's own listing of them)."""
    runs = instance.get_runs(RunsFilter(statuses=UNFINISHED))
    keys: set[str] = set()
    for run in runs:
        if key := run.tags.get(PARTITION_TAG):
            keys.add(key)
        elif (first := run.tags.get(RANGE_START_TAG)) in order and (last := run.tags.get(RANGE_END_TAG)) in order:
            keys.update(order[order.index(first) : order.index(last) + 1])
    return keys


def _rows_lost(instance, features: list[AssetKey], keys: list[str]) -> list[AssetCheckEvaluation]:
    """What the UI shows until the videos are embedded again: their rows check failed,
    against the asset's latest materialization. Named explicitly: without it the UI
    compares creation times, which SQLite keeps to the second, and showed no result
    for a check reported in the second of the last materialization (seen in CI)."""
    from dagster._core.definitions.asset_checks.asset_check_evaluation import (  # the documented argument's type; not exported
        AssetCheckEvaluationTargetMaterializationData as Target,
    )

    problems = {relpath_of(k): "its rows are not in Milvus (deleted by hand, or another database or collection); "
                "embedding it again" for k in keys}
    evaluations = []
    for feature in features:
        latest = instance.fetch_materializations(feature, limit=1).records
        target = Target(storage_id=latest[0].storage_id, run_id=latest[0].run_id,
                        timestamp=latest[0].timestamp) if latest else None
        evaluations.append(AssetCheckEvaluation(
            asset_key=feature, check_name=CHECK_NAMES[0], passed=False, target_materialization_data=target,
            metadata={"videos": len(keys), "problems": problems},
            description=f"{len(keys)} video(s) lack their rows in Milvus"))
    return evaluations


def _observe(key: str, video) -> AssetObservation | None:
    """The file's data version; None if it vanished since the listing (the next tick
    sees it deleted) or cannot be read (its run fails, naming why)."""
    try:
        return AssetObservation(VIDEO_FILE, partition=key, tags={DATA_VERSION_TAG: content_digest(video.path)})
    except OSError:
        return None


def _delete_rows(settings: Settings, vector_store: VectorStoreResource, keys: list[str], context) -> None:
    """A deleted file's rows go with it, from every collection it fed."""
    store = vector_store.open()
    specs = owned_collections(settings)
    try:
        for key in keys:
            for spec in specs:
                store.delete_video(spec, relpath_of(key))
    except PipelineError as err:
        context.log.error(f"{err}; rows of deleted videos are removed on a later tick")
        raise
    finally:
        store.close()
    context.log.info(f"deleted the rows of {len(keys)} removed video(s) from {len(specs)} collection(s)")
