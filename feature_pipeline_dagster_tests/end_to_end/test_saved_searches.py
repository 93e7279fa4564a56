"""Saved searches (`search.watch`): the new videos a run commits that match a saved query
are reported in `run`'s summary and in each video's materialization metadata (the UI)."""

import re

import numpy as np
import yaml
from dagster import AssetKey, DagsterInstance
from PIL import Image

from feature_pipeline_dagster.core.samples import write_video
from feature_pipeline_dagster_tests.end_to_end.test_end_to_end import cli


def frame_at(path, seconds: float) -> np.ndarray:
    """The video's frame shown at `seconds`, as RGB (what 1 fps sampling embeds there)."""
    import av

    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            if frame.time >= seconds - 1e-3:
                return frame.to_ndarray(format="rgb24")
    raise AssertionError(f"{path} ends before {seconds} s")


def test_a_saved_search_reports_the_new_video_it_matches(project):
    write_video(project.videos / "match.mp4", seconds=3.0, seed=0)
    write_video(project.videos / "other.mp4", seconds=3.0, seed=2)  # best frame cos 0.91 to the query
    query = project.root / "query.png"
    Image.fromarray(frame_at(project.videos / "match.mp4", 1.0)).save(query)
    config = yaml.safe_load(project.config.read_text())
    config["search"] = {"watch": [{"name": "red circle", "image": str(query), "threshold": 0.95},
                                  {"name": "never", "text": "a red circle", "threshold": 1.0}]}
    project.config.write_text(yaml.safe_dump(config))

    result = cli(project, "run")
    lines = result.stderr.splitlines()
    assert any(re.fullmatch(r'saved search "red circle": 1 new video\(s\): match\.mp4 at 1\.0 s \((0\.9[5-9]|1\.00)\)',
                            line) for line in lines), result.stderr[-3000:]
    assert 'saved search "never": no new video' in lines, result.stderr[-3000:]

    with DagsterInstance.get() as instance:
        records = instance.fetch_materializations(AssetKey("video_embedding"), limit=10).records
    meta = {r.partition_key: r.asset_materialization.metadata["saved_searches"].value for r in records}
    assert meta["other.mp4"] == {}, meta
    assert list(meta["match.mp4"]) == ["red circle"] and meta["match.mp4"]["red circle"]["at_s"] == 1.0, meta
    assert meta["match.mp4"]["red circle"]["score"] >= 0.95

    again = cli(project, "run")  # nothing new: nothing to report
    assert "0 new or changed" in again.stderr and "saved search" not in again.stderr, again.stderr[-3000:]


def test_a_saved_picture_that_cannot_be_read_is_one_line_before_anything_starts(project):
    write_video(project.videos / "plain.mp4", seconds=1.5)
    query = project.root / "logo.png"
    query.write_bytes(b"<svg>not a png</svg>")
    config = yaml.safe_load(project.config.read_text())
    config["search"] = {"watch": [{"name": "logo", "image": str(query), "threshold": 0.9}]}
    project.config.write_text(yaml.safe_dump(config))
    result = cli(project, "run", check=False)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith(f"error: {project.config}: search.watch[0].image: {query}: not an image this can read")
    assert not (project.root / "db").exists()  # no database started, no video read


def test_the_quick_start_ends_with_the_commands_that_search_what_it_embedded(project):
    """A newcomer's report: after `--config X quickstart`, the README's `search` read the
    default config and found nothing. The quick start now prints the config's export line."""
    import os
    import shlex
    import subprocess
    import sys

    from feature_pipeline_dagster_tests.conftest import subprocess_env

    env = {k: v for k, v in subprocess_env(project).items() if k != "FEATURE_PIPELINE_CONFIG"}
    started = subprocess.run([sys.executable, "-m", "feature_pipeline_dagster.cli", "--config", str(project.config),
                              "quickstart"], cwd=project.root, env=env, capture_output=True, text=True, timeout=600)
    assert started.returncode == 0, started.stderr[-3000:]
    assert started.stderr.splitlines()[-4:] == [
        "search what it embedded (this shell's commands need the config):",
        f"  export FEATURE_PIPELINE_CONFIG={shlex.quote(str(project.config))}",
        '  feature-pipeline search "a red circle"', "  feature-pipeline serve"], started.stderr[-3000:]
    name, value = started.stderr.splitlines()[-3].split("export ")[1].split("=", 1)
    found = subprocess.run([sys.executable, "-m", "feature_pipeline_dagster.cli", "search", "a red circle", "-k", "1"],
                           cwd=project.root, env={**env, name: os.path.expanduser(value)}, capture_output=True,
                           text=True, timeout=300)
    assert found.returncode == 0 and re.match(r" 1\. \S+  sample_0\d\.mp4 ", found.stdout), found.stderr[-3000:]
