"""`feature-pipeline run`'s outcomes beyond the happy path: a video that failed for its
content is not tried again until it changes, and devices this machine lacks are refused
once, before anything is touched."""

import os
import time

import yaml

from feature_pipeline_dagster.core.samples import write_video
from feature_pipeline_dagster_tests.end_to_end.test_end_to_end import cli, rows_by_video


def _configure(project, **keys) -> None:
    config = yaml.safe_load(project.config.read_text())
    config.update(keys)
    project.config.write_text(yaml.safe_dump(config))


def test_a_device_this_machine_lacks_is_one_line_and_exit_2_before_any_video(project):
    _configure(project, gpus=["cuda:99"])  # no machine here has a 100th GPU
    for videos in ([], ["plain.mp4"]):  # nothing to do, then a video: the same refusal, before either
        for name in videos:
            write_video(project.videos / name, seconds=1.5)
        result = cli(project, "run", check=False)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
        assert lines[0].startswith(f"error: {project.config}: gpus: cuda:99: this machine has "), lines
        assert "cpu" in lines[0]
    assert not (project.root / "db").exists()  # no database started, no video registered or read
    assert sorted(p.name for p in (project.root / "dagster_home").iterdir()) == ["dagster.yaml"]


def test_a_bad_runners_per_device_is_one_line_before_any_video(project, monkeypatch):
    write_video(project.videos / "plain.mp4", seconds=1.5)
    monkeypatch.setenv("FEATURE_PIPELINE_RUNNERS_PER_DEVICE", "two")
    result = cli(project, "run", check=False)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and lines == [
        "error: FEATURE_PIPELINE_RUNNERS_PER_DEVICE: expected a whole number of at least 1, got 'two'"], lines
    assert not (project.root / "db").exists()


SKIPPED = "1 video skipped: failed before, unchanged; --retry-failed to try again"


def test_a_video_that_failed_for_its_content_waits_for_a_change(project):
    write_video(project.videos / "plain.mp4", seconds=2.5, seed=1)
    broken = project.videos / "broken.mp4"
    broken.write_bytes(b"\x00" * 4096 + b"not a video" * 100)
    first = cli(project, "run", check=False)
    assert first.returncode == 1 and "broken.mp4: cannot open video" in first.stderr

    os.utime(broken, (time.time() + 5, time.time() + 5))  # touched: the same content
    again = cli(project, "run")  # exit 0: nothing else failed
    assert "0 new or changed" in again.stderr and SKIPPED in again.stderr, again.stderr[-3000:]
    assert "FAILED" not in again.stderr and "  failed: " not in again.stderr

    retried = cli(project, "run", "--retry-failed", check=False)
    assert retried.returncode == 1 and "1 new or changed" in retried.stderr
    assert "broken.mp4: cannot open video" in retried.stderr and "skipped" not in retried.stderr

    _configure(project, video_input={**yaml.safe_load(project.config.read_text())["video_input"], "sample_fps": 2.0})
    new_version = cli(project, "run", check=False)  # a new code version (sampling): every video again
    assert new_version.returncode == 1 and "2 new or changed" in new_version.stderr
    assert "broken.mp4: cannot open video" in new_version.stderr and "skipped" not in new_version.stderr

    broken.write_bytes(write_video(project.root / "whole.mp4", seconds=1.5, seed=2).read_bytes())  # fixed
    fixed = cli(project, "run")
    assert "1 new or changed" in fixed.stderr and "skipped" not in fixed.stderr
    assert rows_by_video(project)["broken.mp4"] == 3  # 1.5 s at 2 fps
