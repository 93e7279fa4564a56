"""A run some of whose videos fail: the good ones are whole (frames, summary, shots, checks),
and a video that failed for its content waits for a change before it is tried again."""

import os

from dagster import AssetKey, DagsterInstance, materialize

from feature_pipeline_dagster.core.samples import write_video
from feature_pipeline_dagster.core.settings import load_settings
from feature_pipeline_dagster.core.shots import segments_collection
from feature_pipeline_dagster.core.store import store_for
from feature_pipeline_dagster.core.summary import summary_collection
from feature_pipeline_dagster.orchestration.names import RANGE_END_TAG, RANGE_START_TAG, SEGMENTS_ASSET, SUMMARY_ASSET
from feature_pipeline_dagster_tests.orchestration.test_sensor import check_in_ui

NAMES = ["a.mp4", "b.mp4", "c.mp4"]


def _run_everything(defs, instance, keys):
    """As `feature-pipeline run` and the sensor's runs: every asset and check, one ranged run."""
    targets = [a.key for a in defs.assets if getattr(a, "is_executable", False)]
    tags = {RANGE_START_TAG: keys[0], RANGE_END_TAG: keys[-1]} if len(keys) > 1 else {}
    return materialize([*defs.assets, *defs.asset_checks], selection=targets, instance=instance,
                       resources=defs.resources, raise_on_error=False, tags=tags,
                       partition_key=keys[0] if len(keys) == 1 else None)


def test_a_failed_video_costs_the_good_ones_nothing_of_their_summary(project):
    from feature_pipeline_dagster.orchestration.definitions import build_definitions

    write_video(project.videos / "a.mp4", seconds=2, seed=1)
    (project.videos / "b.mp4").write_bytes(write_video(project.root / "whole.mp4", seconds=3).read_bytes()[:3000])
    write_video(project.videos / "c.mp4", seconds=3, seed=2)
    defs = build_definitions()
    with DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("videos", NAMES)
        result = _run_everything(defs, instance, NAMES)
        assert not result.success  # b.mp4 failed, and the run says so
        assert instance.get_materialized_partitions(AssetKey("video_embedding")) == {"a.mp4", "c.mp4"}
        assert instance.get_materialized_partitions(AssetKey(SUMMARY_ASSET)) == {"a.mp4", "c.mp4"}
        assert instance.get_materialized_partitions(AssetKey(SEGMENTS_ASSET)) == {"a.mp4", "c.mp4"}
        # What the UI shows for this run's checks: the good videos' rows and vectors checked,
        # the failed video named (a warning: the others are whole).
        assert check_in_ui(instance, "rows_match_run") == "SUCCEEDED"
        assert check_in_ui(instance, "vectors_valid") == "SUCCEEDED"
        assert check_in_ui(instance, "videos_complete") == "FAILED"
        evaluation = next(e.asset_check_evaluation_data for e in result.all_events
                          if e.event_type_value == "ASSET_CHECK_EVALUATION"
                          and e.asset_check_evaluation_data.check_name == "videos_complete")
        problems = evaluation.metadata["problems"].value
        assert list(problems) == ["b.mp4"] and problems["b.mp4"].startswith("failed: ")
    settings = load_settings(project.config)
    store = store_for(settings.db)
    try:
        assert [store.count_rows(summary_collection(settings), n) for n in NAMES] == [1, 0, 1]
        assert [store.count_rows(segments_collection(settings), n) > 0 for n in NAMES] == [True, False, True]
        assert [store.count_rows(settings.db.collections[0], n) for n in NAMES] == [2, 0, 3]
    finally:
        store.close()


def test_the_sensor_asks_again_for_a_failed_video_only_once_it_changed(project):
    import time

    import yaml

    from feature_pipeline_dagster.orchestration.definitions import build_definitions
    from feature_pipeline_dagster_tests.orchestration.test_sensor import sensor_of

    config = yaml.safe_load(project.config.read_text())
    config["video_input"]["settle_seconds"] = 0
    project.config.write_text(yaml.safe_dump(config))
    broken = project.videos / "b.mp4"
    broken.write_bytes(os.urandom(5000))
    defs = build_definitions()
    with DagsterInstance.get() as instance:
        first = sensor_of(defs)(instance)
        assert [r.partition_key for r in first.run_requests] == ["b.mp4"]
        instance.add_dynamic_partitions("videos", ["b.mp4"])
        assert not _run_everything(defs, instance, ["b.mp4"]).success  # recorded as failed for this content
        os.utime(broken, (time.time() + 5, time.time() + 5))  # touched: the same content
        touched = sensor_of(defs)(instance, first.cursor)
        assert not touched.run_requests
        restarted = sensor_of(defs)(instance)  # no cursor (a new sensor): the partition is adopted, not run
        assert not restarted.run_requests
        write_video(broken, seconds=1, seed=4)  # new content
        changed = sensor_of(defs)(instance, touched.cursor)
        assert [r.partition_key for r in changed.run_requests] == ["b.mp4"]
