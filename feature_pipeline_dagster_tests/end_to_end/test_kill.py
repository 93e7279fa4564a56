"""SIGKILL at many points of a materialization, then run it again: every video ends
with exactly its rows (none lost, none doubled) and other videos are untouched.

Most kills are placed by watching the real state, not by a clock: while a decoder
child has a video open and nothing of its new generation is written; while two decoder
children read two videos at once (the next video decoded ahead of the current one);
between two insert requests of a video; after a video's new generation is all in but
before its old one is deleted; after several videos' new generations are in, waiting
for their one amortized commit. The rest are spread in time over the whole run.

Against a Milvus Lite file, and (inside the namespace end_to_end/test_milvus_server.py
makes) a real Milvus 2.3 server, with one kill half way through the run."""

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from feature_pipeline_dagster.core.settings import load_settings
from feature_pipeline_dagster.core.samples import write_video
from feature_pipeline_dagster.core.store import store_for
from feature_pipeline_dagster.core.store.milvus.filters import quote
from feature_pipeline_dagster_tests.conftest import readers_of, subprocess_env
from feature_pipeline_dagster_tests.milvus_server import BACKEND, backends
from feature_pipeline_dagster_tests.store_rows import stored_rows

KILL_POINTS = 20  # as issue #5 asks; 30 cost CI 135 s more and found nothing new
PLACED = 15  # 3 kills at each named stage; the last 5 spread in time
RANGE = ["k0.mp4", "k1.mp4", "k2.mp4"]
EXPECTED = {"k0.mp4": 8, "k1.mp4": 8, "k2.mp4": 8}

RUN = """
import sys
from dagster import AssetKey, DagsterInstance, materialize
from feature_pipeline_dagster.core.settings import load_settings
from feature_pipeline_dagster.orchestration.definitions import build_definitions
from feature_pipeline_dagster.core.models import load_extractor

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

    from feature_pipeline_dagster.orchestration.definitions import build_definitions

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
    found = stored_rows(store, spec, name, ("frame_id",))
    return len(found), len({r["frame_id"] for r in found})


def generations(store, spec, videos: list[Path]) -> list[list[int]]:
    """Per video, its rows per generation, oldest first (one query: the watch is tight)."""
    names = ", ".join(quote(v.name) for v in videos)
    found = store.client.query(spec.name, filter=f"video_path in [{names}]", output_fields=["video_path", "generation"])
    counts = Counter((r["video_path"], r["generation"]) for r in found)
    return [[counts[k] for k in sorted(k for k in counts if k[0] == v.name)] for v in videos]


def kill_when(proc, stage: str, store, spec, videos: list[Path], timeout: float = 60) -> bool:
    """SIGKILL the run as soon as it is at `stage`; False if it never got there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if stage == "decoding":
            hit = bool(readers_of(videos, parent=proc.pid))  # the decoder reads one (decode and inference)
        elif stage == "decoding ahead":
            hit = len(readers_of(videos, parent=proc.pid)) >= 2  # two decoder lanes, two videos
        else:
            states = generations(store, spec, videos)
            between = [s for s in states if len(s) == 2]
            complete = sum(s[1] == 8 for s in between)
            hit = {"between write batches": any(0 < s[1] < 8 for s in between),
                   "new generation in, old not yet deleted": complete >= 1,
                   "several videos in, their commit pending": complete >= 2}[stage]
        if hit:
            os.kill(proc.pid, signal.SIGKILL)
            return True
        time.sleep(0.005)
    if proc.poll() is None:  # the run may also have finished first (a server commits fast)
        os.kill(proc.pid, signal.SIGKILL)
    return False


STAGES = ["decoding", "between write batches", "new generation in, old not yet deleted", "decoding ahead",
          "several videos in, their commit pending"]


@pytest.mark.timeout(1800)  # 20 kills, each followed by a run of the range: minutes on 2 cores
@pytest.mark.parametrize("backend", backends("lite"))
def test_sigkill_at_twenty_points_loses_and_doubles_nothing(project, backend, request):
    # On the server, one kill half way through the run (each kill costs a run of the range,
    # ~35 s: the CI budget). Not placed by watching the rows: a Strong read waits for the
    # server's time tick (~200 ms) and a run's inserts there took ~1 s in all, so watched
    # stages were missed; of 3 kills spread in time, 1 left two generations in.
    kill_points, placed = (KILL_POINTS, PLACED) if backend == "lite" else (1, 0)
    config = yaml.safe_load(project.config.read_text())
    if backend == BACKEND:
        config["db"]["uri"] = request.getfixturevalue("milvus_server").uri
    config["db"]["batch_size"] = 2  # many insert requests: many points between write batches
    config["model"]["batch_size"] = 2
    project.config.write_text(yaml.safe_dump(config))
    # Detailed content, as real footage costs the decoder: flat frames decode so fast that two
    # lanes held two files at once for 30-70 ms of a run (4 runs), and CI missed that stage 2 in 3;
    # detailed, 220-270 ms.
    for i, name in enumerate([*RANGE, "bystander.mp4"]):
        write_video(project.videos / name, seconds=8, seed=i, detail=True)
    subprocess.run([sys.executable, "-m", "feature_pipeline_dagster.cli", "run"], cwd=project.root,
                   env=subprocess_env(project), check=True, capture_output=True)
    proc = spawn(project)
    go(proc)
    started = time.perf_counter()
    assert proc.stdout.readline().strip() == "DONE True"
    duration = time.perf_counter() - started
    settings = load_settings(project.config)
    spec = settings.db.collections[0]
    videos = [project.videos / name for name in RANGE]
    lost = doubled = 0
    hits: Counter = Counter()
    watcher = store_for(settings.db)
    # A run's process takes ~10 s to import and load the model, against ~3 s of work: two
    # start ahead, on the two cores, while the range runs again.
    ready = [spawn(project) for _ in range(min(2, kill_points))]
    try:
        for point in range(1, kill_points + 1):
            proc = ready.pop(0)
            go(proc)
            if point <= placed:  # 3 kills placed at each named stage
                stage = STAGES[point % len(STAGES)]
                hits[stage if kill_when(proc, stage, watcher, spec, videos) else "missed: " + stage] += 1
            else:  # and 5 spread in time
                time.sleep(duration * (point - placed) / (kill_points - placed + 1))
                os.kill(proc.pid, signal.SIGKILL)
                hits["spread in time"] += 1
                if any(len(state) == 2 for state in generations(watcher, spec, videos)):
                    hits["spread in time, two generations in"] += 1
            proc.wait()
            if point + len(ready) < kill_points:
                ready.append(spawn(project))
            run_again()
            store = store_for(settings.db)
            try:
                for name, expected in {**EXPECTED, "bystander.mp4": 8}.items():
                    count, distinct = rows(store, spec, name)
                    lost += max(0, expected - distinct)
                    doubled += count - distinct
            finally:
                store.close()
    finally:
        for proc in ready:  # a run waiting for its "go" would start at EOF: not after a failure
            proc.kill()
            proc.wait()
    watcher.close()
    print(f"{backend}: kill points: {kill_points} ({dict(hits)}) over {duration:.1f}s of work; "
          f"rows lost: {lost}; rows doubled: {doubled}")
    assert (lost, doubled) == (0, 0)
    if backend == "lite":
        assert all(hits[stage] >= 2 for stage in STAGES), hits  # a stage missed once is noise, not a hole

