"""Sensor tick time over 10,000 files (issue: far below Dagster's 60 s tick limit).

    python bench/bench_sensor.py [--files 10000]

Measures, against a real SQLite Dagster instance: the arrival tick (all files new; a
tick hands out at most 1,000), and the steady tick (every file known, nothing to do),
which is what the sensor pays every interval at this folder size. Then the new files'
observations (the `video_file` data version each tick reports), written one by one as the
daemon writes them before it creates the tick's runs, into the template's event log and
into Dagster's own SQLite one, side by side: ms an observation.
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


def observations_ms(home: Path, template: bool, observations: list) -> float:
    """ms an observation, reported one at a time (the daemon's way) into a fresh instance at
    `home`: the template's (`config/dagster-instance.yaml`) or Dagster's default storage."""
    from dagster import DagsterInstance

    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "config" / "dagster-instance.yaml").read_text() if template else "")
    with DagsterInstance.from_config(str(home)) as instance:
        started = time.perf_counter()
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

    observations = []
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
            observations += result.asset_events
            cursor = result.cursor
        steady = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            result = tick(cursor)
            steady.append(time.perf_counter() - started)
            assert not result.run_requests
    written = {name: observations_ms(root / name, template, observations[:1000])
               for name, template in (("template", True), ("dagster", False))}
    figures = {
        "files": args.files,
        "observation_write_ms": {name: round(ms, 2) for name, ms in written.items()},
        "arrival_ticks": len(arrival) - 1,
        "arrival_tick_s_max": round(max(arrival), 3),
        "steady_tick_s": {"min": round(min(steady), 3), "median": round(statistics.median(steady), 3),
                          "max": round(max(steady), 3)},
        "cursor_bytes": len(cursor),
        "tick_limit_s": 60,
        "steady_tick_share_of_limit": round(statistics.median(steady) / 60, 4),
    }
    print(json.dumps(figures, indent=2))
    print(f"observations as the daemon writes them: {written['template']:.2f} ms each on the template's event log, "
          f"{written['dagster']:.2f} on Dagster's own ({written['dagster'] / written['template']:.1f}x)")
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "sensor.json").write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    sys.exit(main())
