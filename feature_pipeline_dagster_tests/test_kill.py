"""SIGKILL at many points of a materialization, then run it again: every video ends
with exactly its rows (none lost, none doubled) and other videos are untouched."""

import os
import signal
import subprocess
import sys
import time

import yaml

from feature_pipeline_dagster.config import load_settings
from feature_pipeline_dagster.samples import write_video
from feature_pipeline_dagster.store.milvus import MilvusStore
from feature_pipeline_dagster_tests.conftest import subprocess_env

KILL_POINTS = 20
RANGE = ["k0.mp4", "k1.mp4", "k2.mp4"]
EXPECTED = {"k0.mp4": 8, "k1.mp4": 8, "k2.mp4": 8}

RUN = """
import sys
from dagster import AssetKey, DagsterInstance, materialize
from feature_pipeline_dagster.config import load_settings
from feature_pipeline_dagster.definitions import build_definitions
from feature_pipeline_dagster.extract.models import load_extractor

settings = load_settings()
load_extractor(settings.model, "cpu")  # imports and model load happen before the clock starts
defs = build_definitions()
with DagsterInstance.get() as instance:
    sys.stdin.readline()  # the test says when (the process is started ahead of time)
    print("START", flush=True)
    result = materialize([*defs.assets, *defs.asset_checks], selection=[AssetKey("video_embedding")],
                         instance=instance, resources=defs.resources, raise_on_error=False,
                         tags={"dagster/asset_partition_range_start": sys.argv[1],
                               "dagster/asset_partition_range_end": sys.argv[2]})
print("DONE", result.success, flush=True)
"""


def spawn(project):
    return subprocess.Popen([sys.executable, "-c", RUN, RANGE[0], RANGE[-1]], cwd=project.root,
                            env=subprocess_env(project), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)


def go(proc) -> None:
    proc.stdin.write("go\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "START"


def run_again():
    """Dagster runs the range again, here in the test's own process."""
    from dagster import AssetKey, DagsterInstance, materialize

    from feature_pipeline_dagster.definitions import build_definitions

    defs = build_definitions()
    with DagsterInstance.get() as instance:
        started = time.perf_counter()
        result = materialize([*defs.assets, *defs.asset_checks], selection=[AssetKey("video_embedding")],
                             instance=instance, resources=defs.resources,
                             tags={"dagster/asset_partition_range_start": RANGE[0],
                                   "dagster/asset_partition_range_end": RANGE[-1]})
    assert result.success
    return time.perf_counter() - started


def rows(store, spec, name):
    found = store.fetch_video(spec, name, ("frame_id",))
    return len(found), len({r["frame_id"] for r in found})


def test_sigkill_at_twenty_points_loses_and_doubles_nothing(project):
    config = yaml.safe_load(project.config.read_text())
    config["db"]["batch_size"] = 2  # many insert requests: many points between write batches
    config["model"]["batch_size"] = 2
    project.config.write_text(yaml.safe_dump(config))
    for i, name in enumerate([*RANGE, "bystander.mp4"]):
        write_video(project.videos / name, seconds=8, seed=i)
    subprocess.run([sys.executable, "-m", "feature_pipeline_dagster.cli", "run"], cwd=project.root,
                   env=subprocess_env(project), check=True, capture_output=True)
    proc = spawn(project)
    go(proc)
    started = time.perf_counter()
    assert proc.stdout.readline().strip() == "DONE True"
    duration = time.perf_counter() - started
    settings = load_settings(project.config)
    spec = settings.db.collections[0]
    lost = doubled = 0
    proc = spawn(project)
    for point in range(1, KILL_POINTS + 1):
        go(proc)
        time.sleep(duration * point / (KILL_POINTS + 1))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc = spawn(project) if point < KILL_POINTS else None  # starts while the range runs again
        run_again()
        store = MilvusStore.from_settings(settings.db)
        try:
            for name, expected in {**EXPECTED, "bystander.mp4": 8}.items():
                count, distinct = rows(store, spec, name)
                lost += max(0, expected - distinct)
                doubled += count - distinct
        finally:
            store.close()
    print(f"kill points: {KILL_POINTS} over {duration:.1f}s of work; rows lost: {lost}; rows doubled: {doubled}")
    assert (lost, doubled) == (0, 0)
