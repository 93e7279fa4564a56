"""Shots as users meet them: `feature-pipeline run` writes `<collection>_segments` and
materializes `video_segments` per partition (downstream of the embedding in the asset
graph); `search --by shot` answers with a shot's range, the page one card per shot whose
player starts at the shot; a partition whose shots are gone
gets them back from its stored vectors when `video_segments` alone is materialized."""

import json
import subprocess

import numpy as np
from dagster import AssetKey, DagsterInstance

from feature_pipeline_dagster.core.decode.spec import DecodeSpec
from feature_pipeline_dagster.core.samples import write_edited_video
from feature_pipeline_dagster.core.settings import load_settings
from feature_pipeline_dagster.core.shots import segments_collection
from feature_pipeline_dagster.core.store import RowFilter, store_for
from feature_pipeline_dagster.orchestration.materializations import latest_materializations, metadata_values
from feature_pipeline_dagster_tests.conftest import subprocess_env
from feature_pipeline_dagster_tests.end_to_end.test_end_to_end import cli

NAMES = ["cuts.mp4", "fades.mp4"]


def shots_of(settings, video: str) -> list[dict]:
    store = store_for(settings.db)
    try:
        rows = store.query_rows(segments_collection(settings), RowFilter(videos=(video,)),
                                ("start_ms", "end_ms", "first_frame_id", "last_frame_id", "frame_id", "timestamp_ms"))
    finally:
        store.close()
    return sorted(rows, key=lambda r: r["start_ms"])


def sampled_frame(path, at_ms: int) -> np.ndarray:
    from feature_pipeline_dagster.core.decode.reader import VideoReader

    reader = VideoReader(path)
    try:
        plan = reader.plan(DecodeSpec())
        index = int(np.flatnonzero(plan.timestamps_ms == at_ms)[0])
        one = type(plan)(plan.frame_ids[index:index + 1], plan.timestamps_ms[index:index + 1])
        batch = next(reader.batches(one, 1))
    finally:
        reader.close()
    return batch.frames[0]


def test_run_writes_shots_materializes_video_segments_and_search_answers_by_shot(project):
    from PIL import Image

    from feature_pipeline_dagster.page.render import results
    from feature_pipeline_dagster.core.search import search
    from feature_pipeline_dagster.orchestration.definitions import build_definitions

    write_edited_video(project.videos / NAMES[0], [4.3, 5.2, 4.6], [0.0, 0.0], seed=11)
    write_edited_video(project.videos / NAMES[1], [5.4, 4.8, 4.2], [1.0, 1.0], seed=13)
    cli(project, "run")
    settings = load_settings(project.config)
    shots = {name: shots_of(settings, name) for name in NAMES}
    assert [len(s) for s in shots.values()] == [3, 3], shots

    graph = build_definitions().resolve_asset_graph()
    assert AssetKey("video_embedding") in graph.get(AssetKey("video_segments")).parent_keys  # lineage
    with DagsterInstance.get() as instance:
        assert instance.get_materialized_partitions(AssetKey("video_segments")) == set(NAMES)
        latest = latest_materializations(instance, AssetKey("video_segments"), NAMES)
        assert {name: metadata_values(latest[name])["shots"] for name in NAMES} == {name: 3 for name in NAMES}

    middle = shots[NAMES[0]][1]  # the second shot of cuts.mp4: a query with one of its frames
    Image.fromarray(sampled_frame(project.videos / NAMES[0], middle["timestamp_ms"])).save(project.root / "q.png")
    by_shot = json.loads(cli(project, "search", "--image", "q.png", "--json").stdout)["moments"][0]
    assert by_shot["video_path"] == NAMES[0]
    assert (by_shot["start_s"], by_shot["end_s"]) == (middle["start_ms"] / 1000, middle["end_ms"] / 1000)
    assert by_shot["shot"]["frame_id"] == middle["frame_id"]
    assert by_shot["start_s"] <= by_shot["best_s"] <= by_shot["end_s"]
    page = results(search(settings, image=project.root / "q.png", k=5))  # the page's cards, one per shot
    assert page.count('<li class="moment">') == page.count("<img ") == page.count(">shot ") >= 1
    assert f"s={middle['start_ms'] / 1000:.3f}&amp;e={middle['end_ms'] / 1000:.3f}" in page  # the player's start
    by_gap = json.loads(cli(project, "search", "--image", "q.png", "--json", "--by", "gap").stdout)["moments"]
    assert all(m["shot"] is None for m in by_gap)  # today's moments, merged by time

    store = store_for(settings.db)
    try:
        store.delete_video(segments_collection(settings), NAMES[1])
    finally:
        store.close()
    materialize = subprocess.run(
        ["dagster", "asset", "materialize", "-m", "feature_pipeline_dagster", "--select", "video_segments",
         "--partition", NAMES[1]], cwd=project.root, env=subprocess_env(project), capture_output=True, text=True,
        timeout=600)
    assert materialize.returncode == 0, materialize.stderr[-3000:]
    again = shots_of(settings, NAMES[1])  # split from its stored vectors alone
    assert again and again[0]["start_ms"] == 0 and all(a["end_ms"] == b["start_ms"] for a, b in zip(again, again[1:]))
