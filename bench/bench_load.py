"""Load: many small videos dropped at once into the watched folder.

    python bench/bench_load.py [--videos 1000] [--devices 2]

Builds a throwaway project (tiny random-weight CLIP of the real architecture, dim 32,
Milvus Lite, `gpus: [cpu:0, cpu:1, ...]`, `runs_per_device: 1`, the repo's config/dagster-instance.yaml
template), starts `dagster-daemon`, hard-links every video into the watched folder at once,
and waits until every `video_embedding` partition is materialized, then until the run queue
is empty. Meanwhile it samples the queue every 0.5 s. It reports (stdout and
bench/results/load.json):
  wall_s          drop -> every partition materialized; drained_s: -> every summary too and
                  no run queued or running (or the queue idle for 60 s)
  runs            runs the folder sensor launched (and the others, the summary automation's),
                  and step retries (a retried ranged step embeds its videos again)
  rows            rows in Milvus, and the videos whose count differs from their sampled frames
  materialized    partitions with exactly one / more than one video_embedding materialization
  queue           max concurrent runs per device tag and in total, sampled and exact (from the
                  runs' start/end times), against the queue's limit per device (runs_per_device,
                  one waiting for its lease and one past its embedding) and max_concurrent_runs;
                  peak queued runs
and one verdict line per property.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

from feature_pipeline_dagster.orchestration.names import DEVICE_TAG

REPO = Path(__file__).resolve().parents[1]
EMBEDDING, SUMMARY = "video_embedding", "video_summary_embedding"
TIMEOUT_S = 3600


def project(root: Path, watched: Path, model: Path, devices: int) -> tuple[dict, dict]:
    """Config, DAGSTER_HOME and the environment for a fresh project under root."""
    sys.path.insert(0, str(REPO))
    from feature_pipeline_dagster.cli.instance import instance_yaml
    from feature_pipeline_dagster.core.settings import load_settings
    from feature_pipeline_dagster.orchestration.placement import device_queue_limit
    from feature_pipeline_dagster_tests.conftest import clip_config

    config = clip_config(root, model, watched)
    config["video_input"]["settle_seconds"] = 1
    config["gpus"] = [f"cpu:{i}" for i in range(devices)]
    config["runs_per_device"] = 1
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    home = root / "dagster_home"
    home.mkdir(parents=True)
    limit = device_queue_limit(load_settings(root / "config.yaml"))
    (home / "dagster.yaml").write_text(instance_yaml(limit))  # as `feature-pipeline` writes it
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # the venv's dagster-daemon
    env = {**os.environ, "FEATURE_PIPELINE_CONFIG": str(root / "config.yaml"), "DAGSTER_HOME": str(home), "PATH": path}
    return config, env


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """Most intervals open at one instant (an end before a start at the same time)."""
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    peak = now = 0
    for _, step in edges:
        now += step
        peak = max(peak, now)
    return peak


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--videos", type=int, default=1000)
    parser.add_argument("--devices", type=int, default=2)
    args = parser.parse_args()
    from feature_pipeline_dagster.core.settings import ModelSettings
    from feature_pipeline_dagster.core.models.clip.weights import make_random
    from feature_pipeline_dagster.core.samples import write_video

    sys.path.insert(0, str(REPO))
    from feature_pipeline_dagster_tests.conftest import TINY_CLIP

    base = Path(tempfile.mkdtemp(prefix="bench-load-"))
    folder = base / "model"
    model = make_random(ModelSettings(name="CLIP", path=str(folder), source="folder"), folder, TINY_CLIP)
    source, watched = base / "source", base / "videos"
    watched.mkdir()
    for i in range(args.videos):  # 1-3 s at 10 fps, 96x64: 1-3 sampled frames at 1 fps
        write_video(source / f"v{i:04d}.mp4", seconds=1 + i % 3, fps=10, size=(96, 64), seed=i)
    config, env = project(base, watched, model, args.devices)

    from feature_pipeline_dagster.core.settings import load_settings
    from feature_pipeline_dagster.core.decode.reader import VideoReader

    settings = load_settings(base / "config.yaml")
    vi = settings.video_input
    expected = {p.name: len(VideoReader(p).plan(vi.decode)) for p in sorted(source.iterdir())}
    limits = yaml.safe_load((base / "dagster_home" / "dagster.yaml").read_text())["concurrency"]["runs"]
    per_device_limit, total_limit = limits["tag_concurrency_limits"][0]["limit"], limits["max_concurrent_runs"]

    os.environ.update(DAGSTER_HOME=env["DAGSTER_HOME"], FEATURE_PIPELINE_CONFIG=env["FEATURE_PIPELINE_CONFIG"])
    from dagster import AssetKey, DagsterEventType, DagsterInstance, DagsterRunStatus, EventRecordsFilter, RunsFilter

    running_statuses = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]

    daemon = subprocess.Popen(["dagster-daemon", "run", "-m", "feature_pipeline_dagster"], env=env, cwd=base,
                              stdout=open(base / "daemon.log", "w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        time.sleep(20)  # the daemon is up and its sensor has ticked once over the empty folder
        peak_device, peak_total, peak_queued = Counter(), 0, 0
        with DagsterInstance.get() as instance:
            started = time.perf_counter()
            for name in expected:  # all at once
                os.link(source / name, watched / name)
            wall_s = drained_s = None
            last_check, idle_since = 0.0, None
            while drained_s is None:
                if time.perf_counter() - started > TIMEOUT_S:
                    raise SystemExit(f"timed out after {TIMEOUT_S}s; see {base / 'daemon.log'}")
                running = instance.get_runs(RunsFilter(statuses=running_statuses))
                queued = instance.get_runs_count(RunsFilter(statuses=[DagsterRunStatus.QUEUED]))
                for device, n in Counter(r.tags.get(DEVICE_TAG, "(untagged)") for r in running).items():
                    peak_device[device] = max(peak_device[device], n)
                peak_total, peak_queued = max(peak_total, len(running)), max(peak_queued, queued)
                now = time.perf_counter()
                idle_since = idle_since or now if not running and not queued else None
                if now - last_check > 2:
                    last_check = now
                    if wall_s is None and len(instance.get_materialized_partitions(AssetKey(EMBEDDING))) >= len(expected):
                        wall_s = now - started
                    summaries = len(instance.get_materialized_partitions(AssetKey(SUMMARY)))
                    if wall_s is not None and idle_since and (summaries >= len(expected) or now - idle_since > 60):
                        drained_s = idle_since - started
                time.sleep(0.5)

            records = instance.get_run_records()
            sensor_runs = [r for r in records if r.dagster_run.tags.get("dagster/sensor_name") == "video_folder_sensor"]
            failed = [r.dagster_run.run_id for r in records if r.dagster_run.status != DagsterRunStatus.SUCCESS]
            spans: dict[str, list] = {}
            for r in records:
                if r.start_time and r.end_time:
                    spans.setdefault(r.dagster_run.tags.get(DEVICE_TAG, "(untagged)"), []).append((r.start_time, r.end_time))
            exact_device = {d: max_overlap(s) for d, s in spans.items()}
            exact_total = max_overlap([x for s in spans.values() for x in s])

            per_partition, cursor = Counter(), None
            while True:
                page = instance.fetch_materializations(AssetKey(EMBEDDING), limit=1000, cursor=cursor)
                per_partition.update(r.partition_key for r in page.records)
                cursor = page.cursor
                if not page.has_more:
                    break
            partitions = instance.get_dynamic_partitions("videos")
            retries = len(instance.get_event_records(EventRecordsFilter(DagsterEventType.STEP_UP_FOR_RETRY)))

        from feature_pipeline_dagster.core.videos import relpath_of
        from feature_pipeline_dagster.core.store import store_for

        store = store_for(settings.db)
        spec = settings.db.collections[0]
        counts = {name: store.count_rows(spec, name) for name in expected}
        total_rows = store.count_rows(spec)
        store.close()
    finally:
        os.killpg(daemon.pid, 15)
        daemon.wait()
        subprocess.run([sys.executable, "-m", "feature_pipeline_dagster.cli", "db", "stop"], env=env, capture_output=True)

    wrong_rows = {n: [counts[n], expected[n]] for n in expected if counts[n] != expected[n]}
    once = sum(1 for n in per_partition.values() if n == 1)
    device_limits_ok = all(v <= per_device_limit for peaks in (peak_device, exact_device)
                           for d, v in peaks.items() if d != "(untagged)")
    figures = {
        "videos": len(expected), "devices": args.devices, "wall_s": round(wall_s, 1), "drained_s": round(drained_s, 1),
        "summaries_materialized": summaries,
        "runs": {"video_folder_sensor": len(sensor_runs), "other": len(records) - len(sensor_runs), "not_success": failed,
                 "step_retries": retries},
        "partitions": len(partitions),
        "materialized": {"exactly_once": once, "more_than_once": len(per_partition) - once,
                         "never": len(set(partitions) - set(per_partition)),
                         "extra_keys": sorted(set(per_partition) - set(partitions))[:10]},
        "rows": {"total": total_rows, "expected": sum(expected.values()), "videos_wrong": len(wrong_rows),
                 "wrong_examples": dict(list(wrong_rows.items())[:10])},
        "queue": {"limit_per_device": per_device_limit, "max_concurrent_runs": total_limit,
                  "max_per_device_sampled": dict(sorted(peak_device.items())), "max_total_sampled": peak_total,
                  "max_per_device_exact": dict(sorted(exact_device.items())), "max_total_exact": exact_total,
                  "peak_queued": peak_queued},
        "project": str(base),
    }
    verdicts = {
        "partitions == videos": len(partitions) == len(expected) and {relpath_of(k) for k in partitions} == set(expected),
        "each embedded exactly once": once == len(expected) == len(per_partition),
        "rows exact": not wrong_rows and total_rows == sum(expected.values()),
        "max per device <= the queue's limit": device_limits_ok,
        "max total <= max_concurrent_runs": max(peak_total, exact_total) <= total_limit,
    }
    figures["verdicts"] = verdicts
    print(json.dumps(figures, indent=2))
    for name, ok in verdicts.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    (REPO / "bench" / "results").mkdir(exist_ok=True)
    (REPO / "bench" / "results" / "load.json").write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
