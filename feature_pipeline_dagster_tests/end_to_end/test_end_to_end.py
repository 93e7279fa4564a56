"""The user's paths, as subprocesses: `feature-pipeline scan` + `dagster asset materialize`,
and `feature-pipeline run`, into a real Milvus Lite file through a real Dagster instance."""

import subprocess
import sys

from feature_pipeline_dagster.core.settings import load_settings
from feature_pipeline_dagster.core.videos import partition_key
from feature_pipeline_dagster.core.samples import write_video
from feature_pipeline_dagster.core.store import store_for
from feature_pipeline_dagster_tests.conftest import REPO, subprocess_env

NAMES = ["plain.mp4", "ünï cøde ✓.mp4", "it's a \"quote\", [ok].mp4", "sub/dir/a...b.mp4"]


def cli(project, *args, check=True, prefix=()):
    result = subprocess.run([*prefix, sys.executable, "-m", "feature_pipeline_dagster.cli", *args], cwd=project.root,
                            env=subprocess_env(project), capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def rows_by_video(project) -> dict[str, int]:
    settings = load_settings(project.config)
    store = store_for(settings.db)
    try:
        spec = settings.db.collections[0]
        return {v: store.count_rows(spec, v) for v in NAMES + ["broken.mp4"]}
    finally:
        store.close()


def runs_count() -> int:
    from dagster import DagsterInstance

    with DagsterInstance.get() as instance:
        return instance.get_runs_count()


def test_scan_then_dagster_cli_materialize(project):
    write_video(project.videos / NAMES[1], seconds=3.2, seed=1)
    scan = cli(project, "scan")
    assert scan.stdout.split("\n")[0] == partition_key(NAMES[1])
    for _ in range(2):  # materializing again replaces the rows, never doubles them
        result = subprocess.run(
            ["dagster", "asset", "materialize", "-m", "feature_pipeline_dagster", "--select", "video_embedding",
             "--partition", partition_key(NAMES[1])],
            cwd=project.root, env=subprocess_env(project), capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        readme = " ".join((REPO / "README.md").read_text().split())
        for line in result.stderr.splitlines():  # Dagster 1.13's own warning: the README names it
            if "SupersessionWarning" in line:
                assert "`dagster asset materialize` its own" in readme, line
                assert line.split("Use '", 1)[1].split("'")[0] in readme, line
    assert rows_by_video(project)[NAMES[1]] == 4
    assert list((project.root / "logs").glob("*.log"))


def test_run_embeds_every_video_and_reports_the_broken_one(project):
    for i, name in enumerate(NAMES):
        write_video(project.videos / name, seconds=2.5 + i, seed=i)
    (project.videos / "broken.mp4").write_bytes(b"\x00" * 4096 + b"not a video" * 100)
    first = cli(project, "run", check=False)
    assert first.returncode == 1
    assert "broken.mp4: cannot open video" in first.stderr
    assert "embedded 4 of 5 video(s), 18 rows" in first.stderr
    assert first.stderr.count("started Milvus Lite server for") == 1  # the run that started it says so, once
    assert runs_count() == 1  # one ranged run for the five videos, not one run each
    expected = {"plain.mp4": 3, NAMES[1]: 4, NAMES[2]: 5, NAMES[3]: 6, "broken.mp4": 0}
    assert rows_by_video(project) == expected

    (project.videos / "broken.mp4").unlink()
    again = cli(project, "run")
    assert "0 new or changed" in again.stderr and "started Milvus Lite server" not in again.stderr
    write_video(project.videos / "plain.mp4", seconds=4.5, seed=9)  # new content
    changed = cli(project, "run")
    assert "1 new or changed" in changed.stderr
    assert rows_by_video(project) == {**expected, "plain.mp4": 5}


def test_frame_ids_that_overflow_the_dtype_fail_before_writing(project):
    import yaml

    config = yaml.safe_load(project.config.read_text())
    config["db"]["collections"][0]["fields"][2]["dtype"] = "INT8"  # frame_id up to 127
    project.config.write_text(yaml.safe_dump(config))
    write_video(project.videos / "plain.mp4", seconds=6, fps=30)
    result = cli(project, "run", check=False)
    assert result.returncode == 1
    assert "frame_id reaches 150, which does not fit INT8" in result.stderr
    assert rows_by_video(project)["plain.mp4"] == 0


def test_run_on_two_devices_then_db_status_and_stop(project):
    import yaml

    config = yaml.safe_load(project.config.read_text())
    config["gpus"] = ["cpu:0", "cpu:1"]
    project.config.write_text(yaml.safe_dump(config))
    for i in range(4):
        write_video(project.videos / f"v{i}.mp4", seconds=2.5 + i, seed=i)
    result = cli(project, "run")
    assert "device(s): cpu:0, cpu:1" in result.stderr and "embedded 4 of 4 video(s), 18 rows" in result.stderr
    assert runs_count() == 1  # 18 frames of work: one run, not one per device (core/run_sizing.py)
    for i in (0, 2):  # changed: two runs (a range covers every partition between its ends), a worker per device
        write_video(project.videos / f"v{i}.mp4", seconds=2.5 + i, seed=10 + i)
    result = cli(project, "run")
    assert "4 video(s) under" in result.stderr and "embedded 2 of 2 video(s), 8 rows" in result.stderr
    assert runs_count() == 3
    assert {p.name.split("-")[1] for p in (project.root / "logs").glob("worker-*.log")} == {"cpu0", "cpu1"}
    status = cli(project, "db", "status").stdout
    assert "address:  http://127.0.0.1:" in status and "collection frames: 18 rows" in status
    assert "stopped Milvus Lite server" in cli(project, "db", "stop").stdout
    assert "no Milvus Lite server running" in cli(project, "db", "stop").stdout


def test_two_runs_on_one_device_take_it_in_turn(project, monkeypatch):
    """Two chunks on one device. On the CPU (one runner): both runs in this process, one
    after the other. With two runners (an accelerator's default, set here by
    FEATURE_PIPELINE_RUNNERS_PER_DEVICE): one run in this process, the other in a worker
    process, each video once, and the device lease held by one run at a time."""
    from dagster import AssetKey, DagsterInstance

    from feature_pipeline_dagster.orchestration.materializations import latest_materializations, metadata_values

    for i in range(4):
        write_video(project.videos / f"v{i}.mp4", seconds=2.5 + i, seed=i)
    cli(project, "run")
    for seed in (10, 20):
        for i in (0, 2):  # changed: two ranges (a range covers every partition between its ends)
            write_video(project.videos / f"v{i}.mp4", seconds=2.5 + i, seed=seed + i)
        result = cli(project, "run")
        assert "embedded 2 of 2 video(s), 8 rows" in result.stderr, result.stderr
        workers = [p.name.split("-")[1] for p in (project.root / "logs").glob("worker-*.log")]
        assert workers == ([] if seed == 10 else ["cpu"]), workers
        monkeypatch.setenv("FEATURE_PIPELINE_RUNNERS_PER_DEVICE", "2")
    assert runs_count() == 5
    settings = load_settings(project.config)
    store = store_for(settings.db)
    try:
        assert [store.count_rows(settings.db.collections[0], f"v{i}.mp4") for i in range(4)] == [3, 4, 5, 6]
    finally:
        store.close()
    with DagsterInstance.get() as instance:
        keys = [partition_key("v0.mp4"), partition_key("v2.mp4")]
        latest = latest_materializations(instance, AssetKey("video_embedding"), keys)
        leases = sorted((m["lease_acquired_at"], m["lease_released_at"]) for m in map(metadata_values, latest.values()))
    assert len(leases) == 2 and leases[0][1] <= leases[1][0], leases


def test_models_download_without_a_network_is_one_line(project):
    import os

    env = {**subprocess_env(project), "HF_HUB_OFFLINE": "1"}
    config = project.root / "hub.yaml"
    config.write_text((REPO / "config" / "clip-config.yaml").read_text())
    result = subprocess.run([sys.executable, "-m", "feature_pipeline_dagster.cli", "--config", str(config), "models",
                             "download", "--dest", str(project.root / "dl")], cwd=project.root, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: model.path laion2b_s34b_b79k: cannot load CLIP ViT-B-32"), lines
    assert not os.path.exists(project.root / "dl")


def test_dagster_dev_from_the_checkout_warns_of_no_ignored_instance_file(project):
    """As the README has it: `dagster dev` from the checkout folder, with DAGSTER_HOME set.
    The instance template lives in config/, so Dagster finds no dagster.yaml here to warn
    that it ignores; the supersession warning is the one the README explains."""
    import os
    import signal
    import socket
    import time

    cli(project, "scan")  # makes $DAGSTER_HOME from the template, as the README's first step
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = project.root / "dagster-dev.log"
    with open(log, "w") as out:
        dev = subprocess.Popen(["dagster", "dev", "-p", str(port)], cwd=REPO, env=subprocess_env(project),
                               stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and "Serving dagster-webserver" not in log.read_text():
            time.sleep(0.5)
    finally:
        os.killpg(dev.pid, signal.SIGTERM)
        dev.wait(timeout=60)
    output = log.read_text()
    assert "Serving dagster-webserver" in output, output[-3000:]
    assert "dagster.yaml" not in output, output[-3000:]


def test_config_is_taken_before_or_after_the_command(project):
    write_video(project.videos / "plain.mp4", seconds=1.5, seed=1)
    for command in (["scan"], ["run"], ["db", "status"], ["models", "download"]):
        assert "--config PATH" in cli(project, *command, "--help").stdout
    after = cli(project, "scan", "--config", str(project.config))
    before = cli(project, "--config", str(project.config), "scan")
    assert after.stdout == before.stdout == "plain.mp4\n"
