"""The file-arrival sensor: what it sees, what it asks for, and that it stays light."""

import json
import os
import subprocess
import sys
import time

import yaml
from dagster import AssetCheckEvaluation, AssetKey, DagsterInstance, build_sensor_context, materialize

from feature_pipeline_dagster.core.folder_watch import diff_folder
from feature_pipeline_dagster.core.samples import write_video
from feature_pipeline_dagster.core.settings import load_settings
from feature_pipeline_dagster.core.store import store_for
from feature_pipeline_dagster.core.videos import FolderEntry, list_videos
from feature_pipeline_dagster.orchestration.names import DEVICE_TAG, RANGE_END_TAG, RANGE_START_TAG
from feature_pipeline_dagster.orchestration.placement import WAITING_RUNS_PER_DEVICE
from feature_pipeline_dagster_tests.conftest import REPO


def sensor_of(defs):
    """The sensor, called as the daemon calls it: with the code location's resources."""
    sensor = next(s for s in defs.sensors if s.name == "video_folder_sensor")

    def tick(instance, cursor=None):
        with build_sensor_context(instance=instance, cursor=cursor, resources=defs.resources) as context:
            return sensor(context)

    return tick


def video(name, size=100, mtime=0.0):
    return FolderEntry(name, None, size, int(mtime * 1e9))


def test_files_settle_before_they_are_handed_out():
    now = 1000.0
    first = diff_folder([video("a.mp4", mtime=now - 1)], set(), None, now, settle_seconds=5)
    assert first.waiting == 1 and not first.new
    growing = diff_folder([video("a.mp4", 200, mtime=now + 2)], set(), first.cursor, now + 3, 5)
    assert growing.waiting == 1
    still = diff_folder([video("a.mp4", 200, mtime=now + 2)], set(), growing.cursor, now + 9, 5)
    assert [k for k, _ in still.new] == ["a.mp4"]
    again = diff_folder([video("a.mp4", 200, mtime=now + 2)], {"a.mp4"}, still.cursor, now + 20, 5)
    assert not again.new and not again.changed and not again.waiting


def test_changed_deleted_and_adopted_files():
    old = 0.0
    start = diff_folder([video("a.mp4"), video("b.mp4")], set(), None, 100.0, 5)
    cursor = start.cursor
    changed = diff_folder([video("a.mp4", 999), video("b.mp4")], {"a.mp4", "b.mp4"}, cursor, 200.0, 5)
    assert [k for k, _ in changed.changed] == ["a.mp4"] and not changed.new
    gone = diff_folder([video("a.mp4", 999)], {"a.mp4", "b.mp4"}, changed.cursor, 300.0, 5)
    assert gone.deleted == ["b.mp4"]
    # partitions registered by `feature-pipeline scan/run`: embedded ones are adopted, others run
    adopted = diff_folder([video("x.mp4", mtime=old), video("y.mp4", mtime=old)], {"x.mp4", "y.mp4"}, None, 100.0, 5,
                          embedded=lambda: {"x.mp4"})
    assert [k for k, _ in adopted.changed] == ["y.mp4"]


def test_a_tick_hands_out_at_most_limit_files():
    files = [video(f"{i:03d}.mp4") for i in range(25)]
    first = diff_folder(files, set(), None, 100.0, 5, limit=10)
    assert len(first.new) == 10 and first.waiting == 15
    second = diff_folder(files, {k for k, _ in first.new}, first.cursor, 101.0, 5, limit=10)
    assert [k for k, _ in second.new] == [f"{i:03d}.mp4" for i in range(10, 20)]


def test_an_audit_finds_videos_the_database_lacks_once_per_fingerprint():
    files = [video("a.mp4"), video("b.mp4"), video("c.mp4")]
    keys = {"a.mp4", "b.mp4", "c.mp4"}
    asked = []

    def missing(videos):
        asked.append([v.relpath for v in videos])
        return {"b.mp4"}

    start = diff_folder(files, set(), None, 100.0, 5, missing=missing)  # all new: nothing to audit
    assert len(start.new) == 3 and not start.lost and asked == []
    first = diff_folder(files, keys, start.cursor, 101.0, 5, missing=missing, audit_seconds=600)
    assert not first.lost and asked == []  # audited at the first look; not due yet
    due = diff_folder(files, keys, start.cursor, 800.0, 5, missing=missing, audit_seconds=600)
    assert [k for k, _ in due.lost] == ["b.mp4"] and asked == [["a.mp4", "b.mp4", "c.mp4"]]
    again = diff_folder(files, keys, due.cursor, 1500.0, 5, missing=missing, audit_seconds=600)
    assert not again.lost  # asked for once: a video that fails every time is not retried at each audit
    whole = diff_folder(files, keys, again.cursor, 2200.0, 5, missing=lambda videos: set(), audit_seconds=600)
    lost_again = diff_folder(files, keys, whole.cursor, 2900.0, 5, missing=missing, audit_seconds=600)
    assert [k for k, _ in lost_again.lost] == ["b.mp4"]  # found whole in between: asked for again
    running = diff_folder(files, keys, lost_again.cursor, 3600.0, 5, missing=missing, busy=lambda: {"b.mp4"},
                          audit_seconds=600)
    assert not running.lost  # its run is embedding it now
    failed = diff_folder(files, keys, running.cursor, 4300.0, 5, missing=missing, audit_seconds=600)
    assert not failed.lost  # that run failed: still asked for once, not again after an audit saw it running


def _two_devices(project):
    config = yaml.safe_load(project.config.read_text())
    config["gpus"] = ["cpu:0", "cpu:1"]
    config["video_input"]["settle_seconds"] = 0
    project.config.write_text(yaml.safe_dump(config))


def _busy(instance, device):
    """An unfinished run on `device`, as the queue counts them; its id."""
    from dagster import DagsterRun, DagsterRunStatus

    run = DagsterRun(job_name="elsewhere", status=DagsterRunStatus.STARTED, tags={DEVICE_TAG: device})
    instance.add_run(run)
    return run.run_id


def test_arrivals_wait_for_a_busy_queue_and_go_out_together(project):
    from dagster._daemon.sensor import MIN_INTERVAL_LOOP_TIME

    from feature_pipeline_dagster.orchestration.definitions import build_definitions

    _two_devices(project)
    defs = build_definitions()
    sensor = sensor_of(defs)
    # an arrival waits one tick at most: the sensor ticks at every pass of Dagster's sensor
    # loop (an interval equal to the loop's skipped the pass that came a few ms early)
    assert next(s for s in defs.sensors if s.name == "video_folder_sensor").minimum_interval_seconds < (
        MIN_INTERVAL_LOOP_TIME)
    limit = 1 + WAITING_RUNS_PER_DEVICE  # runs_per_device 1, and one run waiting for the lease
    with DagsterInstance.get() as instance:
        busy = {d: [_busy(instance, d) for _ in range(limit)] for d in ("cpu:0", "cpu:1")}
        cursor = None
        for batch in range(2):  # two drops while both devices run: partitions at once, runs held
            for i in range(batch * 3, batch * 3 + 3):
                write_video(project.videos / f"v{i}.mp4", seconds=1, seed=i)
            held = sensor(instance, cursor)
            assert not held.run_requests
            keys = held.dynamic_partitions_requests[0].partition_keys
            assert keys == [f"v{i}.mp4" for i in range(batch * 3, batch * 3 + 3)]
            instance.add_dynamic_partitions("videos", keys)
            cursor = held.cursor
        instance.delete_run(busy["cpu:1"][0])  # a slot of cpu:1 frees: everything held goes out in one run there
        result = sensor(instance, cursor)
        runs = result.run_requests
        assert [(r.tags[DEVICE_TAG], r.tags[RANGE_START_TAG], r.tags[RANGE_END_TAG]) for r in runs] == [
            ("cpu:1", "v0.mp4", "v5.mp4")]
        assert not sensor(instance, result.cursor).run_requests  # handed out once
        for run_id in busy["cpu:0"]:  # an idle queue answers at once, small work in one run
            instance.delete_run(run_id)
        write_video(project.videos / "v6.mp4", seconds=1, seed=6)
        idle = sensor(instance, result.cursor)
        assert [r.partition_key for r in idle.run_requests] == ["v6.mp4"]


def test_a_tick_answers_an_arrival_or_a_freed_slot_while_it_watches(project, tmp_path):
    """A tick with nothing to start watches the folder, every folder under it (one that holds no
    video yet too) and, while videos wait for a device, the devices' runs: what happens while it
    watches goes out in that tick, not 5 s later."""
    import threading

    from feature_pipeline_dagster.orchestration.definitions import build_definitions
    from feature_pipeline_dagster.orchestration.sensors import WATCH_SECONDS

    _two_devices(project)
    sensor = sensor_of(build_definitions())

    def during_a_tick(instance, cursor, happening):
        """The tick's result, `happening()` done a second into it, while it still ran."""
        out = {}
        tick = threading.Thread(target=lambda: out.update(result=sensor(instance, cursor)))
        started = time.monotonic()
        tick.start()
        time.sleep(1.0)
        happening()
        watching = tick.is_alive()
        tick.join()
        assert watching and time.monotonic() - started < WATCH_SECONDS + 5  # it was watching; it ended
        return out["result"]

    with DagsterInstance.get() as instance, DagsterInstance.get() as other:
        idle = sensor(instance)  # an empty folder: nothing to say, after watching for the window
        assert not idle.run_requests
        moved = write_video(tmp_path / "a.mp4", seconds=1)
        arrived = during_a_tick(instance, idle.cursor, lambda: os.rename(moved, project.videos / "a.mp4"))
        assert [r.partition_key for r in arrived.run_requests] == ["a.mp4"]
        (project.videos / "later").mkdir()  # a folder that holds no video when the tick looks
        moved = write_video(tmp_path / "c.mp4", seconds=1, seed=2)
        arrived = during_a_tick(instance, arrived.cursor, lambda: os.rename(moved, project.videos / "later/c.mp4"))
        assert [r.partition_key for r in arrived.run_requests] == ["later/c.mp4"]
        instance.add_dynamic_partitions("videos", ["a.mp4", "later/c.mp4"])
        busy = [_busy(instance, d) for d in ("cpu:0", "cpu:1") for _ in range(1 + WAITING_RUNS_PER_DEVICE)]
        write_video(project.videos / "b.mp4", seconds=1, seed=1)
        held = sensor(instance, arrived.cursor)  # waits the window out: no device frees
        assert not held.run_requests and held.dynamic_partitions_requests[0].partition_keys == ["b.mp4"]
        instance.add_dynamic_partitions("videos", ["b.mp4"])
        freed = during_a_tick(instance, held.cursor, lambda: other.delete_run(busy[0]))
        assert [(r.partition_key, r.tags[DEVICE_TAG]) for r in freed.run_requests] == [("b.mp4", "cpu:0")]


def test_free_slots_go_round_the_devices_least_busy_first(project):
    """Two runs go to two devices before a second waits at either; the queue's limit per
    device is its leases' slots and one run waiting for them."""
    from feature_pipeline_dagster.orchestration.sensors import _free_slots

    _two_devices(project)
    settings = load_settings(project.config)
    with DagsterInstance.get() as instance:
        assert _free_slots(instance, settings, ["cpu:0", "cpu:1"]) == ["cpu:0", "cpu:1"] * (1 + WAITING_RUNS_PER_DEVICE)
        _busy(instance, "cpu:0")
        assert _free_slots(instance, settings, ["cpu:0", "cpu:1"]) == ["cpu:1", "cpu:0", "cpu:1"]
        _busy(instance, "cpu:0")
        assert _free_slots(instance, settings, ["cpu:0", "cpu:1"]) == ["cpu:1", "cpu:1"]


def test_a_run_past_its_embedding_frees_its_devices_slot(project):
    """Its checks, summary and shots need no device: the run handed out in its place does not
    wait for the sensor's next tick, and the template's queue admits it beside the other."""
    from dagster import DagsterRun, DagsterRunStatus
    from dagster._core.events import DagsterEvent, DagsterEventType, StepSuccessData
    from dagster._utils.tags import TagConcurrencyLimitsCounter

    from feature_pipeline_dagster.orchestration.sensors import _free_slots

    _two_devices(project)
    settings = load_settings(project.config)
    with DagsterInstance.get() as instance:
        runs = [_busy(instance, "cpu:0") for _ in range(1 + WAITING_RUNS_PER_DEVICE)]
        assert _free_slots(instance, settings, ["cpu:0"]) == []

        def step_done(run_id: str, step: str) -> None:
            instance.report_dagster_event(DagsterEvent(DagsterEventType.STEP_SUCCESS.value, job_name="elsewhere",
                                                       step_key=step, event_specific_data=StepSuccessData(1.0)),
                                          run_id)

        step_done(runs[0], "video_embedding_rows_match_run")  # another step: still on the device
        assert _free_slots(instance, settings, ["cpu:0"]) == []
        step_done(runs[0], settings.model.features[0])
        assert _free_slots(instance, settings, ["cpu:0"]) == ["cpu:0"]
        queue = TagConcurrencyLimitsCounter(instance.get_concurrency_config().run_queue_config.tag_concurrency_limits,
                                            [instance.get_run_by_id(run_id) for run_id in runs])
        handed_out = DagsterRun(job_name="elsewhere", status=DagsterRunStatus.NOT_STARTED, tags={DEVICE_TAG: "cpu:0"})
        assert not queue.is_blocked(handed_out)  # Dagster's own test of a queued run against the limits
        queue.update_counters_with_launched_item(handed_out)
        assert queue.is_blocked(handed_out)  # and no more: the sensor's slots and one past its embedding


def test_ranged_run_fails_only_the_bad_video(project):
    from feature_pipeline_dagster.orchestration.definitions import build_definitions

    names = ["a.mp4", "b.mp4", "c.mp4"]
    write_video(project.videos / "a.mp4", seconds=2, seed=1)
    (project.videos / "b.mp4").write_bytes(os.urandom(5000))
    write_video(project.videos / "c.mp4", seconds=3, seed=2)
    defs = build_definitions()
    with DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("videos", names)
        result = materialize(
            [*defs.assets, *defs.asset_checks], selection=[AssetKey("video_embedding")],
            instance=instance, resources=defs.resources, raise_on_error=False,
            tags={RANGE_START_TAG: "a.mp4", RANGE_END_TAG: "c.mp4"})
        assert not result.success
        assert instance.get_materialized_partitions(AssetKey("video_embedding")) == {"a.mp4", "c.mp4"}
        failure = result.get_step_failure_events()[0].step_failure_data.user_failure_data.description
        # random bytes: FFmpeg may probe them as a container (then an audio-like one without video)
        assert failure.startswith("1 of 3 video(s) failed:") and (
            "b.mp4: cannot open video" in failure or "b.mp4: no video stream" in failure), failure
        metadata = {e.materialization.partition: e.materialization.metadata for e in result.get_asset_materialization_events()}
        assert metadata["a.mp4"]["rows"].value == 2 and metadata["c.mp4"]["rows"].value == 3
        assert metadata["a.mp4"]["device"].value == "cpu"
        sheet = metadata["a.mp4"]["contact_sheet"]
        assert type(sheet).__name__ == "MarkdownMetadataValue" and sheet.value.count("data:image/jpeg;base64,") == 2
        # what the UI shows: the thumbnails first, lease times as timestamps, not raw floats
        assert next(iter(metadata["a.mp4"])) == "contact_sheet"
        assert {type(metadata["a.mp4"][k]).__name__ for k in ("lease_acquired_at", "lease_released_at")} == {
            "TimestampMetadataValue"}
    settings = load_settings(project.config)
    store = store_for(settings.db)
    assert [store.count_rows(settings.db.collections[0], n) for n in names] == [2, 0, 3]
    store.close()


SENSOR_WITHOUT_TORCH = """
import sys, time
from dagster import DagsterInstance, build_sensor_context
import feature_pipeline_dagster
defs = feature_pipeline_dagster.defs
with DagsterInstance.get() as instance:
    started = time.perf_counter()
    sensor = next(s for s in defs.sensors if s.name == "video_folder_sensor")
    with build_sensor_context(instance=instance, resources=defs.resources) as context:
        result = sensor(context)
    print(len(result.run_requests), sorted(m for m in ("torch", "open_clip", "transformers", "decord") if m in sys.modules))
"""


def test_code_location_and_sensor_never_import_torch(project):
    write_video(project.videos / "a.mp4", seconds=1)
    os.utime(project.videos / "a.mp4", (time.time() - 60, time.time() - 60))
    env = dict(os.environ)
    out = subprocess.run([sys.executable, "-c", SENSOR_WITHOUT_TORCH], env=env, cwd=project.root,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "1 []"


def test_checks_pass_then_a_deleted_file_loses_partition_and_rows(project):
    from feature_pipeline_dagster.orchestration.definitions import build_definitions

    write_video(project.videos / "a.mp4", seconds=2)
    write_video(project.videos / "b.mp4", seconds=2, seed=3)
    defs = build_definitions()
    settings = load_settings(project.config)
    spec = settings.db.collections[0]
    with DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("videos", ["a.mp4", "b.mp4"])
        for key in ("a.mp4", "b.mp4"):
            result = materialize([*defs.assets, *defs.asset_checks], selection=[AssetKey("video_embedding")],
                                 instance=instance, resources=defs.resources, partition_key=key)
            checks = {e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data.passed
                      for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}
            assert result.success and checks == {"rows_match_run": True, "vectors_valid": True, "videos_complete": True}
        cursor = json.dumps({"seen": {v.relpath: v.fingerprint for v in list_videos(settings.video_input)}, "pending": {}})
        (project.videos / "a.mp4").unlink()
        result = sensor_of(defs)(instance, cursor)
        assert result.dynamic_partitions_requests[0].partition_keys == ["a.mp4"] and not result.run_requests
    store = store_for(settings.db)
    assert (store.count_rows(spec, "a.mp4"), store.count_rows(spec, "b.mp4")) == (0, 2)
    store.close()


def test_rows_deleted_by_hand_fail_the_rows_check_in_the_ui_and_run_again(project):
    """The sensor's audit asks the database, not Dagster's records: a video whose rows were
    deleted by hand runs again, and until it has, its asset shows the rows check failed."""
    from feature_pipeline_dagster.orchestration.definitions import build_definitions

    write_video(project.videos / "a.mp4", seconds=1)
    write_video(project.videos / "b.mp4", seconds=1, seed=3)
    for name in ("a.mp4", "b.mp4"):
        os.utime(project.videos / name, (time.time() - 60, time.time() - 60))
    defs = build_definitions()
    settings = load_settings(project.config)
    with DagsterInstance.get() as instance:
        first = sensor_of(defs)(instance)
        instance.add_dynamic_partitions("videos", ["a.mp4", "b.mp4"])
        for key in ("a.mp4", "b.mp4"):
            assert materialize([*defs.assets, *defs.asset_checks], selection=[AssetKey("video_embedding")],
                               instance=instance, resources=defs.resources, partition_key=key).success
        audit_now = json.dumps({**json.loads(first.cursor), "audited": 0})
        assert not sensor_of(defs)(instance, audit_now).run_requests  # everything there: nothing to do
        store = store_for(settings.db)
        store.delete_video(settings.db.collections[0], "b.mp4")  # by hand
        store.close()
        tick = sensor_of(defs)(instance, audit_now)
        assert [r.partition_key for r in tick.run_requests] == ["b.mp4"]
        # Against the latest materialization by its id: SQLite keeps the check's creation
        # time to the second, so a time comparison hid a check reported in the same second.
        latest = instance.fetch_materializations(AssetKey("video_embedding"), limit=1).records[0]
        assert [e.target_materialization_data.storage_id for e in tick.asset_events
                if isinstance(e, AssetCheckEvaluation)] == [latest.storage_id]
        for event in tick.asset_events:
            instance.report_runless_asset_event(event)  # what the daemon does with them
        assert check_in_ui(instance, "rows_match_run") == "FAILED"
        assert materialize([*defs.assets, *defs.asset_checks], selection=[AssetKey("video_embedding")],
                           instance=instance, resources=defs.resources, partition_key="b.mp4",
                           tags=tick.run_requests[0].tags).success
        assert check_in_ui(instance, "rows_match_run") == "SUCCEEDED"
        audit_now = json.dumps({**json.loads(tick.cursor), "audited": 0})
        assert not sensor_of(defs)(instance, audit_now).run_requests


def check_in_ui(instance, name: str) -> str:
    """The latest evaluation of a check of video_embedding, as the webserver's GraphQL gives it."""
    from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql

    query = """query ($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) { ... on AssetNode {
      assetChecksOrError { ... on AssetChecks { checks { name executionForLatestMaterialization {
        evaluation { success } status } } } } } } }"""
    with define_out_of_process_context(str(REPO / "workspace.yaml"), None, instance) as context:
        result = execute_dagster_graphql(context, query, {"key": {"path": ["video_embedding"]}})
    checks = result.data["assetNodeOrError"]["assetChecksOrError"]["checks"]
    return next(c["executionForLatestMaterialization"]["status"] for c in checks if c["name"] == name)


def stale_status(instance, defs, key: str):
    """What the UI shows for a partition: the webserver's own GraphQL query, against the
    project's workspace.yaml loaded in a code server, as `dagster dev` loads it."""
    from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql

    query = """query ($key: AssetKeyInput!, $partition: String!) {
      assetNodeOrError(assetKey: $key) { ... on AssetNode { staleStatusByPartition(partitions: [$partition]) } }
    }"""
    with define_out_of_process_context(str(REPO / "workspace.yaml"), None, instance) as context:
        result = execute_dagster_graphql(context, query, {"key": {"path": ["video_embedding"]}, "partition": key})
    return result.data["assetNodeOrError"]["staleStatusByPartition"][0]


def test_a_changed_file_makes_its_partition_stale(project):
    from feature_pipeline_dagster.orchestration.definitions import build_definitions

    _two_devices(project)
    write_video(project.videos / "a.mp4", seconds=1)
    defs = build_definitions()
    with DagsterInstance.get() as instance:
        first = sensor_of(defs)(instance)
        instance.add_dynamic_partitions("videos", ["a.mp4"])
        for event in first.asset_events:
            instance.report_runless_asset_event(event)  # what the daemon does with them
        assert materialize([*defs.assets], selection=[AssetKey("video_embedding")], instance=instance,
                           resources=defs.resources, partition_key="a.mp4").success
        assert stale_status(instance, defs, "a.mp4") == "FRESH"
        write_video(project.videos / "a.mp4", seconds=2, seed=5)
        changed = sensor_of(defs)(instance, first.cursor)
        assert [r.partition_key for r in changed.run_requests] == ["a.mp4"]
        for event in changed.asset_events:
            instance.report_runless_asset_event(event)
        assert stale_status(instance, defs, "a.mp4") == "STALE"


def test_a_missing_folder_is_not_read_as_everything_deleted(project):
    import shutil

    from dagster import SkipReason

    from feature_pipeline_dagster.orchestration.definitions import build_definitions

    defs = build_definitions()
    shutil.rmtree(project.videos)
    with DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("videos", ["a.mp4"])
        result = sensor_of(defs)(instance)
        assert isinstance(result, SkipReason) and "is not there" in result.skip_message
        assert instance.get_dynamic_partitions("videos") == ["a.mp4"]
