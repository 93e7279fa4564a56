"""Real processes: dagster-daemon runs the sensor, the run queue and the automation
sensor while the CLI materializes a partition of its own at the same time; on the local
instance template (SQLite) and on the production one (deploy/dagster.yaml: a real
PostgreSQL server, credentials from the environment)."""

import os
import signal
import subprocess
import time

import pytest
import yaml
from dagster import AssetKey, DagsterInstance, RunsFilter

from feature_pipeline_dagster.orchestration.names import DEVICE_TAG
from feature_pipeline_dagster.core.settings import load_settings
from feature_pipeline_dagster.core.samples import write_video
from feature_pipeline_dagster.core.store import store_for
from feature_pipeline_dagster_tests.conftest import subprocess_env

DEADLINE_S = 300  # generous: under load (other jobs on 2 cores) a summary run waits for every ranged run's checks


def drop(folder, name, seconds, seed):
    """Write elsewhere, then move into place, as a copy tool would."""
    tmp = write_video(folder.parent / f".incoming-{name}", seconds=seconds, seed=seed)
    tmp.rename(folder / name)


def max_overlap(intervals):
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
                    key=lambda e: (e[0], e[1]))
    held = peak = 0
    for _, step in events:
        held += step
        peak = max(peak, held)
    return peak


@pytest.fixture(params=["sqlite", "postgres"])
def instance_of(request, project):
    """The project on the local template, or on the production template's Postgres."""
    if request.param == "postgres":
        request.getfixturevalue("postgres_instance")
    return project


def test_daemon_embeds_arrivals_and_no_device_is_oversubscribed(instance_of):
    project = instance_of
    config = yaml.safe_load(project.config.read_text())
    config["gpus"] = ["cpu:0", "cpu:1"]
    config["video_input"]["settle_seconds"] = 1
    project.config.write_text(yaml.safe_dump(config))
    env = subprocess_env(project)
    write_video(project.videos / "cli.mp4", seconds=3, seed=9)
    subprocess.run(["feature-pipeline", "scan"], env=env, cwd=project.root, check=True, capture_output=True)
    log = open(project.root / "daemon.log", "w")
    daemon = subprocess.Popen(["dagster-daemon", "run", "-m", "feature_pipeline_dagster"], env=env, cwd=project.root,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        for i in range(4):
            drop(project.videos, f"drop{i}.mp4", seconds=2 + i, seed=i)
        cli = subprocess.run(["dagster", "asset", "materialize", "-m", "feature_pipeline_dagster",
                              "--select", "video_embedding", "--partition", "cli.mp4"],
                             env=env, cwd=project.root, capture_output=True, text=True, timeout=DEADLINE_S)
        assert cli.returncode == 0, cli.stderr[-2000:]
        expected = {"cli.mp4": 3, **{f"drop{i}.mp4": 2 + i for i in range(4)}}
        with DagsterInstance.get() as instance:
            assert type(instance.run_storage).__name__ == {"sqlite": "SqliteRunStorage",
                                                           "postgres": "PostgresRunStorage"}[storage_kind(project)]
            deadline = time.monotonic() + DEADLINE_S
            while time.monotonic() < deadline:
                done = instance.get_materialized_partitions(AssetKey("video_embedding"))
                summarized = instance.get_materialized_partitions(AssetKey("video_summary_embedding"))
                if set(expected) <= done and set(expected) <= summarized:
                    break
                time.sleep(2)
            assert set(expected) <= done, f"embedded {sorted(done)}; see {project.root / 'daemon.log'}"
            assert set(expected) <= summarized, f"summarized {sorted(summarized)}"

            sensor_runs = instance.get_runs(RunsFilter(tags={"dagster/sensor_name": "video_folder_sensor"}))
            assert sensor_runs and all(r.tags.get(DEVICE_TAG) in ("cpu:0", "cpu:1") for r in sensor_runs)
            assert any("dagster/asset_partition_range_start" in r.tags for r in sensor_runs)
            leases = {}
            for record in instance.fetch_materializations(AssetKey("video_embedding"), limit=100).records:
                meta = record.asset_materialization.metadata
                leases.setdefault(meta["device_lease"].value, set()).add(
                    (meta["lease_acquired_at"].value, meta["lease_released_at"].value))
            assert set(leases) <= {"cpu:0", "cpu:1"}
            assert all(max_overlap(spans) == 1 for spans in leases.values()), leases
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(timeout=60)
        log.close()
    settings = load_settings(project.config)
    store = store_for(settings.db)
    try:
        frames = settings.db.collections[0]
        assert {name: store.count_rows(frames, name) for name in expected} == expected
        from feature_pipeline_dagster.core.summary import summary_collection

        summary = summary_collection(settings)
        assert {name: store.count_rows(summary, name) for name in expected} == dict.fromkeys(expected, 1)
    finally:
        store.close()


def storage_kind(project) -> str:
    return "postgres" if "postgres:" in (project.root / "dagster_home" / "dagster.yaml").read_text() else "sqlite"
