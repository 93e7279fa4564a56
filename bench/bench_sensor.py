"""Sensor tick time over 10,000 files (issue: far below Dagster's 60 s tick limit).

    python bench/bench_sensor.py [--files 10000]

Measures, against a real SQLite Dagster instance: the arrival tick (all files new; a
tick hands out at most 1,000), and the steady tick (every file known, nothing to do),
which is what the sensor pays every interval at this folder size.
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

    with DagsterInstance.get() as instance:
        cursor, arrival = None, []
        while True:
            started = time.perf_counter()
            result = tick(cursor)
            arrival.append(time.perf_counter() - started)
            added = [k for r in result.dynamic_partitions_requests for k in r.partition_keys]
            if not added:
                break
            instance.add_dynamic_partitions("videos", added)  # what the daemon does with the request
            cursor = result.cursor
        steady = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            result = tick(cursor)
            steady.append(time.perf_counter() - started)
            assert not result.run_requests
    figures = {
        "files": args.files,
        "arrival_ticks": len(arrival) - 1,
        "arrival_tick_s_max": round(max(arrival), 3),
        "steady_tick_s": {"min": round(min(steady), 3), "median": round(statistics.median(steady), 3),
                          "max": round(max(steady), 3)},
        "cursor_bytes": len(cursor),
        "tick_limit_s": 60,
        "steady_tick_share_of_limit": round(statistics.median(steady) / 60, 4),
    }
    print(json.dumps(figures, indent=2))
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "sensor.json").write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    sys.exit(main())
