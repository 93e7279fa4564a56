"""The file-arrival sensor: new videos become partitions and runs in the same tick,
changed videos run again, deleted videos lose their partition and their rows, and
videos whose rows the database lacks (an audit every 10 minutes: rows deleted by hand,
another database or collection) run again, with a failed `rows_match_run` evaluation
naming them so the UI shows why.

Runs carry a device tag that the run queue limits per device (its leases' slots, one
run waiting at the door and one past its embedding, placement.py); what is ready goes out
when a device has a free slot (a run past its embedding steps holds none), as ranged runs
packed by work (one per free slot), and waits in the cursor while every device is busy, so
one process and one model load serve many videos. A tick with nothing to start watches the
folder and the busy devices before it returns (`WATCH_SECONDS`). Under `placement: kubernetes` a run's
tags also ask dagster-k8s for a pod with one GPU (orchestration/placement.py). Never imports
torch.
"""

import hashlib
import json
import time
from pathlib import Path

from dagster import (
    AssetCheckEvaluation,
    AssetCheckKey,
    AssetKey,
    AssetObservation,
    DagsterEventType,
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
from feature_pipeline_dagster.core.folder_watch import (
    diff_folder,
    held_keys,
    folder_times,
    wait_for_change,
    with_held,
)
from feature_pipeline_dagster.core.run_sizing import expected_frames, pack_runs
from feature_pipeline_dagster.core.settings import Settings
from feature_pipeline_dagster.core.collections import owned_collections
from feature_pipeline_dagster.core.videos import content_digest, list_videos, partition_key, relpath_of
from feature_pipeline_dagster.orchestration.event_log import report_observations
from feature_pipeline_dagster.orchestration.names import (
    CHECK_NAMES,
    DATA_VERSION_TAG,
    DEVICE_TAG,
    PARTITION_TAG,
    RANGE_END_TAG,
    RANGE_START_TAG,
    SEGMENTS_ASSET,
    SUMMARY_ASSET,
    VIDEO_FILE,
)
from feature_pipeline_dagster.orchestration.partitions import videos_partitions
from feature_pipeline_dagster.orchestration.placement import device_slots, device_tags, run_tags
from feature_pipeline_dagster.orchestration.resources import VectorStoreResource
from feature_pipeline_dagster.core.ledger import done_in_every_collection, failed_before

UNFINISHED = [s for s in DagsterRunStatus if s not in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE,
                                                       DagsterRunStatus.CANCELED)]


def _free_slots(instance, settings: Settings, devices: list[str]) -> list[str]:
    """The runs to hand out now, as their devices: per device its slots (`device_slots`) less
    its unfinished (queued or running) runs that still need the device, taken round the devices
    (the least busy first) so that two runs go to two devices before a second one waits at
    either. A run whose embedding steps are done (its checks, summary and shots left) needs
    the device no more: the run handed out in its place starts at once (the queue admits
    one finishing run a device beyond the slots), where it had waited for this sensor's
    next tick after the other's end (bench_gpu_standin.py's sensor: 9.4 s in one timeline)."""
    limit, embedding = device_slots(settings), set(settings.model.features)
    free = {}
    for device in devices:
        runs = instance.get_run_records(RunsFilter(tags={DEVICE_TAG: device}, statuses=UNFINISHED))
        free[device] = max(0, limit - sum(not _past_embedding(instance, r.dagster_run.run_id, embedding)
                                          for r in runs))
    order = sorted(devices, key=lambda d: -free[d])
    return [d for i in range(limit) for d in order if free[d] > i]


def _past_embedding(instance, run_id: str, embedding: set[str]) -> bool:
    """Whether every embedding step of the run has succeeded."""
    done = instance.get_records_for_run(run_id, of_type=DagsterEventType.STEP_SUCCESS).records
    return embedding <= {r.event_log_entry.step_key for r in done}


def _runs_for_free_devices(settings: Settings, instance, devices: list[str], request, order: list[str],
                           listing: list, changes, cursor: str | None) -> tuple[list[RunRequest], dict[str, str]]:
    """What is ready (this tick's new, changed and lost videos, and those held before) goes
    out when a device is free, packed by work into one ranged run per free slot
    (core/run_sizing.py); while every device is busy it is held in the cursor, so arrivals
    during a run go out together when it ends: a busy queue batches by itself and an idle
    one answers at once. Returns the runs and what is still held (key -> why)."""
    files = {partition_key(v.relpath): v for v in listing}
    held = {k: why for k, why in held_keys(cursor).items() if k in files and k not in changes.deleted}
    held.update({k: "new" for k, _ in changes.new})
    held.update({k: "changed" for k, _ in changes.changed})
    held.update({k: "lost" for k, _ in changes.lost})
    slots = _free_slots(instance, settings, devices)
    if not held or not slots:
        return [], held
    order = [k for k in order if k not in changes.deleted] + [k for k, _ in changes.new]
    work = {k: expected_frames(files[k].path, settings.video_input.sample_fps, settings.video_input.max_frames)
            for k in held}
    again = str(time.time_ns())  # a lost video is asked for anew, not matched to its old run key
    runs = [request([(k, files[k]) for k in chunk], device, again if any(held[k] == "lost" for k in chunk) else "")
            for chunk, device in zip(pack_runs(list(held), order, work, len(slots)), slots * len(held))]
    return runs, {}


TICK_SECONDS = 4
"""The folder sensor's minimum interval, under Dagster's sensor loop (a pass every 5 s at
best), so that it ticks at every pass: a file that arrives while no tick watches waits up to
one pass before its run is created (at 10 s, the GPU stand-in's first sensor run was created 14.2 s after the
first drop). At 5 s, a pass that came a few ms early skipped the tick: 3 of 10 intervals of
an idle daemon were 10 s; at 4 s all were 5.0 +- 0.1 s. A tick over 10,000 idle files takes
0.36-0.45 s of CPU (bench_sensor.py): 8 % of a core every 5 s."""


WATCH_SECONDS = 4.5
"""Until when, from its start, a tick with nothing to start watches the folder (a stat a folder
every 0.1 s) and, while videos wait for a device, the devices' runs (every 0.5 s), and looks
again as soon as either changes: an arrival or a freed slot in that window is answered in
0.1-0.5 s, not at the next pass of Dagster's loop (5 s after this tick's start). With its own
work the tick ends about when that pass comes (past it, the next pass starts at once); at 3.5 s
a second of each pass went unwatched. Each look is followed by a rest as long as itself, so
files arriving without pause cost at most half a core in looks (10,000 files: 0.4 s a look)."""


def _look(settings: Settings, instance, vector_store: VectorStoreResource, cursor: str | None):
    """The folder against the cursor: the partitions' order, the listing, what changed
    (copies and touches, and videos that failed as they are now, left out), those failed, and
    every folder walked."""
    order = instance.get_dynamic_partitions(videos_partitions.name)
    partitions = set(order)
    folders: set[Path] = set()
    listing = list_videos(settings.video_input, folders)
    changes = diff_folder(listing, partitions, cursor, time.time(), settings.video_input.settle_seconds,
                          embedded=lambda: _done(settings, vector_store, listing),
                          missing=lambda videos: _lacking(settings, vector_store, videos),
                          busy=lambda: _in_flight(instance, order) | set(held_keys(cursor)))
    if changes.changed:  # a copy or a `touch` moves the fingerprint, not the content: not changed
        done = _done(settings, vector_store, [video for _, video in changes.changed])
        changes.changed = [(k, v) for k, v in changes.changed if k not in done]
    # A video that failed for its content as it is now waits for a change (core/ledger.py).
    failed = _failed_before(settings, vector_store, [v for _, v in changes.changed + changes.lost])
    changes.changed = [(k, v) for k, v in changes.changed if k not in failed]
    changes.lost = [(k, v) for k, v in changes.lost if k not in failed]
    return order, listing, changes, failed, folders


def build_video_sensor(settings: Settings) -> SensorDefinition:
    features = [AssetKey(f) for f in settings.model.features]
    checks = [AssetCheckKey(k, name) for k in features for name in CHECK_NAMES]
    # The summary rides in the same run, after the blocking checks (which gate it per run):
    # left to the automation sensor, it waited for every queued run's checks (the checks
    # are not partitioned), so summaries stalled while files kept arriving (bench_load.py).
    targets = [*features, AssetKey(SUMMARY_ASSET), AssetKey(SEGMENTS_ASSET)]
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

    @sensor(name="video_folder_sensor", minimum_interval_seconds=TICK_SECONDS,
            default_status=DefaultSensorStatus.RUNNING, asset_selection=targets,
            description=f"Embeds videos as they arrive in {settings.video_input.path} (and forgets deleted ones).")
    def video_folder_sensor(context: SensorEvaluationContext,
                            vector_store: VectorStoreResource) -> SensorResult | SkipReason:
        if not settings.video_input.path.is_dir():  # unmounted or moved: never read as "all deleted"
            return SkipReason(f"video_input.path {settings.video_input.path} is not there; nothing changed")
        started, instance = time.perf_counter(), context.instance
        until = time.monotonic() + WATCH_SECONDS
        folders = {settings.video_input.path.resolve()}  # as the look's walk names it
        while True:
            before = folder_times(folders)  # taken before the look: a file added during it wakes the wait
            looked = time.monotonic()
            order, listing, changes, failed, folders = _look(settings, instance, vector_store, context.cursor)
            runs, held = _runs_for_free_devices(settings, instance, devices, request, order, listing, changes,
                                                context.cursor)
            if runs or changes.deleted or changes.lost or changes.audited:
                break
            # Nothing to start yet: watch the folder, and the devices while videos wait for one.
            free = (lambda: bool(_free_slots(instance, settings, devices))) if held else None
            if not wait_for_change({**folder_times(folders), **before}, until, free, rest=time.monotonic() - looked):
                break
        new_keys = [k for k, _ in changes.new]
        # Written now, before the runs: their materializations read the files' data versions.
        report_observations(instance, [o for k, v in changes.new + changes.changed if (o := _observe(k, v))])
        check_results = _rows_lost(instance, features, [k for k, _ in changes.lost]) if changes.lost else []
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
            f"{changes.waiting} settling; {len(runs)} run(s), {len(held)} held for a busy device; "
            f"{time.perf_counter() - started:.2f}s (watching included)"
        )
        return SensorResult(run_requests=runs, dynamic_partitions_requests=partition_requests,
                            asset_events=check_results, cursor=with_held(changes.cursor, held))

    return video_folder_sensor


def _done(settings: Settings, vector_store: VectorStoreResource, videos: list) -> set[str]:
    """Partition keys of the videos whose current rows the database holds, in every
    feature's collection (the database is the truth: core/ledger.py)."""
    store = vector_store.open()
    try:
        return {partition_key(path) for path in done_in_every_collection(store, settings, videos)}
    finally:
        store.close()


def _failed_before(settings: Settings, vector_store: VectorStoreResource, videos: list) -> set[str]:
    """Partition keys of the videos that failed for their content as they are now, with
    this code version: not asked for again until they change."""
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
    Target = _target_type()
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


def _target_type() -> type:
    """The type of `AssetCheckEvaluation`'s documented `target_materialization_data`:
    Dagster 1.13 exports the argument but not its type, so it is read from the public
    constructor's signature rather than imported from `dagster._core`."""
    import typing

    hint = typing.get_type_hints(AssetCheckEvaluation.__new__)["target_materialization_data"]
    return next(t for t in typing.get_args(hint) if t is not type(None))


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
