"""Runs packed by work: the frames each video will give, read from its header."""

import av
import pytest

from feature_pipeline_dagster.core import run_sizing
from feature_pipeline_dagster.core.run_sizing import duration_seconds, expected_frames, pack_runs
from feature_pipeline_dagster.core.samples import write_video


@pytest.mark.parametrize("seconds", [1, 4])
def test_the_header_gives_the_duration_pyav_reads(tmp_path, seconds):
    path = tmp_path / "a.mp4"
    write_video(path, seconds=seconds)
    with av.open(str(path)) as container:
        assert duration_seconds(path) == pytest.approx(container.duration / 1e6, abs=0.05)
    assert expected_frames(path, 1.0, None) == seconds
    assert expected_frames(path, 2.0, 3) == min(3, 2 * seconds)


def test_a_file_without_a_header_counts_as_a_short_clip(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x00\x00\x10free" + bytes(100))
    assert duration_seconds(junk) is None and duration_seconds(tmp_path / "gone.mp4") is None
    assert expected_frames(junk, 1.0, None) == run_sizing.UNKNOWN_FRAMES


def test_small_work_is_one_run_however_many_devices():
    order = [f"{i}.mp4" for i in range(100)]
    assert pack_runs(order, order, {k: 3 for k in order}, parts=4) == [order]


def test_a_warm_runner_takes_a_part_worth_its_smaller_start_up():
    """`run`'s runners are warm processes: WARM_RUN_FRAMES a part, not MIN_RUN_FRAMES."""
    order = [f"{i}.mp4" for i in range(1000)]
    work = {k: 3 for k in order}  # 3000 frames: one run at MIN_RUN_FRAMES, two at WARM_RUN_FRAMES
    assert pack_runs(order, order, work, parts=2) == [order]
    assert pack_runs(order, order, work, parts=2, least=run_sizing.WARM_RUN_FRAMES) == [order[:500], order[500:]]
    assert pack_runs(order, order, work, parts=8, least=run_sizing.WARM_RUN_FRAMES) == [order[:500], order[500:]]


def test_work_splits_over_devices_only_in_parts_worth_a_start_up(monkeypatch):
    monkeypatch.setattr(run_sizing, "MIN_RUN_FRAMES", 100)
    order = [f"{i}.mp4" for i in range(10)]
    work = {k: 50 for k in order}  # 500 frames: 5 parts could each hold 100
    assert pack_runs(order, order, work, parts=2) == [order[:5], order[5:]]
    assert len(pack_runs(order, order, work, parts=8)) == 5


def test_runs_keep_to_consecutive_partitions_and_the_upper_bound(monkeypatch):
    order = [f"{i}.mp4" for i in range(6)]
    todo = ["0.mp4", "1.mp4", "3.mp4", "4.mp4", "5.mp4"]
    assert pack_runs(todo, order, {}, parts=1) == [["0.mp4", "1.mp4"], ["3.mp4", "4.mp4", "5.mp4"]]
    monkeypatch.setattr(run_sizing, "MAX_RUN_FRAMES", 100)
    assert pack_runs(order, order, {k: 60 for k in order}, parts=1) == [[k] for k in order]
    monkeypatch.setattr(run_sizing, "MAX_RUN_VIDEOS", 4)
    assert pack_runs(order, order, {k: 1 for k in order}, parts=1) == [order[:4], order[4:]]
