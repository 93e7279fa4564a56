"""Per-video overhead of sensor-launched ranged runs against one in-process loop.

    python bench/bench_runs.py [--videos 100]

Both sides embed the same short videos with the same model (random-weight CLIP
ViT-B-32, real architecture) into fresh Milvus Lite databases on this machine:
  loop:   one process, one model load, `embed_videos` for each video in turn;
  sensor: dagster-daemon + the file-arrival sensor + the run queue, files dropped at
          once, timed from the drop until every partition is materialized.
Prints both wall times, the runs the sensor launched, and (sensor - loop) / videos.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def project(root: Path, videos: Path, model: Path) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((REPO / "config" / "smoke-config.yaml").read_text())
    config["video_input"].update(path=str(videos), settle_seconds=1)
    config["model"]["path"] = str(model)
    config["db"]["uri"] = str(root / "db" / "bench.db")
    config["logs"] = {"path": str(root / "logs")}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    home = root / "dagster_home"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text((REPO / "config" / "dagster-instance.yaml").read_text())
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # the venv's dagster-daemon
    return {**os.environ, "FEATURE_PIPELINE_CONFIG": str(root / "config.yaml"), "DAGSTER_HOME": str(home), "PATH": path}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--videos", type=int, default=100)
    args = parser.parse_args()
    from feature_pipeline_dagster.core.settings import ModelSettings
    from feature_pipeline_dagster.core.models.clip.weights import make_random
    from feature_pipeline_dagster.core.samples import write_video

    base = Path(tempfile.mkdtemp(prefix="bench-runs-"))
    model = make_random(ModelSettings(name="CLIP", path="", source="folder"), base / "model")
    source = base / "source"
    for i in range(args.videos):
        write_video(source / f"v{i:03d}.mp4", seconds=2, fps=30, seed=i)

    # The loop: one process, one model load.
    loop_root = base / "loop"
    env = project(loop_root, source, model)
    code = (
        "import time; t=time.perf_counter()\n"
        "from feature_pipeline_dagster.core.settings import load_settings\n"
        "from feature_pipeline_dagster.core.models import load_extractor\n"
        "from feature_pipeline_dagster.core.store import store_for\n"
        "from feature_pipeline_dagster.core.engine.run import RunReport, embed_videos\n"
        "from feature_pipeline_dagster.core.videos import list_videos\n"
        "s=load_settings(); spec=s.db.collections[0]; store=store_for(s.db)\n"
        "x=load_extractor(s.model, 'cpu')\n"
        "rows=sum(embed_videos(s, spec, store, x, [v.relpath], RunReport(), lanes=1).written[v.relpath]['rows']\n"
        "         for v in list_videos(s.video_input))\n"
        "print(rows, time.perf_counter()-t)\n"
    )
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    loop_s = time.perf_counter() - started
    loop_rows = int(out.stdout.split()[0])
    subprocess.run([sys.executable, "-m", "feature_pipeline_dagster.cli", "db", "stop"], env=env, capture_output=True)

    # The sensor: daemon, queue, ranged runs.
    sensor_root = base / "sensor"
    watched = sensor_root / "videos"
    watched.mkdir(parents=True)
    env = project(sensor_root, watched, model)
    daemon = subprocess.Popen(["dagster-daemon", "run", "-m", "feature_pipeline_dagster"], env=env, cwd=sensor_root,
                              stdout=open(sensor_root / "daemon.log", "w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    time.sleep(15)  # the daemon is up and has ticked once over the empty folder
    started = time.perf_counter()
    for path in sorted(source.iterdir()):
        os.link(path, watched / path.name)
    os.environ.update(DAGSTER_HOME=env["DAGSTER_HOME"])
    from dagster import AssetKey, DagsterInstance, RunsFilter

    with DagsterInstance.get() as instance:
        while len(instance.get_materialized_partitions(AssetKey("video_embedding"))) < args.videos:
            time.sleep(1)
            if time.perf_counter() - started > 1800:
                raise SystemExit("timed out")
        sensor_s = time.perf_counter() - started
        runs = instance.get_runs(RunsFilter(tags={"dagster/sensor_name": "video_folder_sensor"}))
    os.killpg(daemon.pid, 15)
    daemon.wait()
    subprocess.run([sys.executable, "-m", "feature_pipeline_dagster.cli", "db", "stop"], env=env, capture_output=True)
    figures = {
        "videos": args.videos, "rows": loop_rows, "loop_s": round(loop_s, 1), "sensor_s": round(sensor_s, 1),
        "sensor_runs": len(runs), "overhead_per_video_s": round((sensor_s - loop_s) / args.videos, 3),
        "sensor_over_loop": round(sensor_s / loop_s, 2),
    }
    print(json.dumps(figures, indent=2))
    (REPO / "bench" / "results").mkdir(exist_ok=True)
    (REPO / "bench" / "results" / "runs.json").write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
