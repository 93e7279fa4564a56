"""Sensor tick time over 10,000 files (issue: far below Dagster's 60 s tick limit).

    python bench/bench_sensor.py [--files 10000]

Measures, against a real SQLite Dagster instance: the arrival tick (all files new; a
tick hands out at most 1,000), and the steady tick (every file known, nothing to do),
which is what the sensor pays every interval at this folder size: its CPU (the folder's
look, and the watch that follows it, a stat a folder every 0.1 s) and its wall time (the
watch lasts `WATCH_SECONDS`). Then the new files' observations (the `video_file` data
version each tick reports), into the template's event log and into Dagster's own SQLite
one: written one by one, as Dagster's daemon writes a sensor's asset events, and as one
batch, as the sensor writes them (`report_observations`): ms an observation.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def observations_ms(home: Path, template: bool, observations: list, batch: bool) -> float:
    """ms an observation written into a fresh instance at `home` (the template's
    `config/dagster-instance.yaml` or Dagster's default storage): one at a time (the
    daemon's way) or as one batch (the sensor's)."""
    from dagster import DagsterInstance

    from feature_pipeline_dagster.orchestration.event_log import report_observations

    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "config" / "dagster-instance.yaml").read_text() if template else "")
    with DagsterInstance.from_config(str(home)) as instance:
        started = time.perf_counter()
        if batch:
            report_observations(instance, observations)
        else:
            for observation in observations:
                instance.report_runless_asset_event(observation)
        return (time.perf_counter() - started) / len(observations) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-sensor-"))
    videos = root / "videos"
    for i in range(args.files):
        folder = videos / f"batch{i // 1000:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"clip {i:05d}.mp4").write_bytes(os.urandom(2048))
    old = time.time() - 3600
    for path in videos.rglob("*.mp4"):
        os.utime(path, (old, old))
    config = yaml.safe_load((REPO / "config" / "smoke-config.yaml").read_text())
    config["video_input"]["path"] = str(videos)
    config["db"]["uri"] = str(root / "db" / "bench.db")
    config["model"]["path"] = str(root / "unused-model")
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    home = root / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "config" / "dagster-instance.yaml").read_text())
    os.environ.update(FEATURE_PIPELINE_CONFIG=str(root / "config.yaml"), DAGSTER_HOME=str(home))
    Path(config["model"]["path"]).mkdir()

    from dagster import DagsterInstance, build_sensor_context

    from feature_pipeline_dagster.orchestration.definitions import build_definitions

    defs = build_definitions()
    sensor = next(s for s in defs.sensors if s.name == "video_folder_sensor")

    def tick(cursor):
        with build_sensor_context(instance=instance, cursor=cursor, resources=defs.resources) as context:
            return sensor(context)

    def timed(cursor):
        wall, cpu = time.perf_counter(), time.process_time()
        result = tick(cursor)
        return result, time.perf_counter() - wall, time.process_time() - cpu

    added_keys = []
    with DagsterInstance.get() as instance:
        cursor, arrival = None, []
        while True:
            result, wall, _ = timed(cursor)
            arrival.append(wall)
            added = [k for r in result.dynamic_partitions_requests for k in r.partition_keys]
            if not added:
                break
            instance.add_dynamic_partitions("videos", added)  # what the daemon does with the request
            added_keys += added
            cursor = result.cursor
        steady, steady_cpu = [], []
        for _ in range(args.repeats):
            result, wall, cpu = timed(cursor)
            steady.append(wall)
            steady_cpu.append(cpu)
            assert not result.run_requests
    from feature_pipeline_dagster.core.settings import load_settings
    from feature_pipeline_dagster.core.videos import list_videos, partition_key
    from feature_pipeline_dagster.orchestration.sensors import _observe

    files = {partition_key(v.relpath): v for v in list_videos(load_settings().video_input)}
    observations = [_observe(k, files[k]) for k in added_keys[:1000]]
    written = {f"{name}, {'batch' if batch else 'one by one'}": observations_ms(
        root / f"{name}-{batch}", template, observations, batch)
        for name, template in (("template", True), ("dagster", False)) for batch in (False, True)}
    figures = {
        "files": args.files,
        "observation_write_ms": {name: round(ms, 2) for name, ms in written.items()},
        "arrival_ticks": len(arrival) - 1,
        "arrival_tick_s_max": round(max(arrival[:-1]), 3),
        "steady_tick_cpu_s": {"min": round(min(steady_cpu), 3), "median": round(statistics.median(steady_cpu), 3),
                              "max": round(max(steady_cpu), 3)},
        "steady_tick_wall_s": {"median": round(statistics.median(steady), 3)},
        "cursor_bytes": len(cursor),
        "tick_limit_s": 60,
        "steady_tick_share_of_limit": round(statistics.median(steady) / 60, 4),
    }
    print(json.dumps(figures, indent=2))
    one, batch = written["template, one by one"], written["template, batch"]
    print(f"observations on the template's event log: {one:.2f} ms each one by one (the daemon's way), "
          f"{batch:.2f} as one batch (the sensor's), {one / batch:.1f}x")
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "sensor.json").write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    sys.exit(main())
