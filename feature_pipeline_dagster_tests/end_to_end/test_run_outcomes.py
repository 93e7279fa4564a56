"""`feature-pipeline run`'s outcomes beyond the happy path: a video that failed for its
content is not tried again until it changes, and devices this machine lacks are refused
once, before anything is touched."""

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
