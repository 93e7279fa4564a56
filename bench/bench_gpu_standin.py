"""The GPU regime on a CPU: a model as cheap per frame as a GPU's, so that what binds is
everything around it (start-up, runs, per-video cost, decoding). Side by side in one run:

    python bench/bench_gpu_standin.py [--clips 1000] [--short 100] [--sampling fps|nearest] [--decoder auto|pyav|...]
                                      [--skip-sensor] [--drop-every S]

Model: the stand-in, a CLIP of the real family and output width (open_clip's CLIP class,
512-d vectors) with two narrow layers (bench_pipeline.TINY_CLIP: vision width 128),
random weights, saved as an open_clip `local-dir` folder and loaded by `model.source:
folder` like any user's weights; its bare cost per frame is printed (goal ~1 ms).
Clips: `--clips` x 3 s, 320x240, 30 fps, H.264 (libx264 superfast, B-frames, 2 s GOPs),
ffmpeg `testsrc2` with temporal noise (detail that costs the decoder what real footage
costs it), cut from one stream at forced key frames; cached in bench/results/cache/.

Figures:
  1. ceiling: sampled frames/s if decoding were all there is: as many `ffmpeg -f null`
     full decodes at once as cores, over the same clips, each sampled at 1 fps (3 a clip).
  2. `feature-pipeline run` over all clips, start-up included (a fresh Milvus Lite file,
     no Lite server running, a fresh DAGSTER_HOME): sampled frames/s, and / ceiling
     (goal >= 0.8); beside it the core's engine alone over the same clips (`embed_videos`,
     model loaded, no Dagster), so what Dagster adds shows; and the seconds of each of its
     Dagster steps, summed over its runs (the summary's step looks for the run's videos'
     near-duplicates: here every clip's frames sit at cos >= 0.9999 to every other's, the
     stand-in's random weights, a library where every frame matches many others).
  3. start-up: the same command over one clip (goal <= 6 s), and the intercept of the
     two-length fit of one clip and `--short` clips (goal <= 5 s): both one run in the
     command's own process. (A fit of `--short` against `--clips` clips mixes that with
     two runs in flight, whose lower cost per clip leaves a larger intercept: it is printed
     too, as the steady rate it gives.)
  4. the sensor: dagster-daemon running, the clips dropped into the watched folder in 10
     batches `--drop-every` s apart (2: the drops then come about as fast as `run` takes
     them, 1000 clips in 18 s against its 19-21 s, so the figure is what the sensor's way
     adds; at 3 s they span 27 s, past 1.25 x `run` before any run); from the first drop
     to the last video committed (the end of the last run's embedding step, which comes
     after its commit; the database asked once a second until it holds every video),
     / figure 2's wall time (goal <= 1.25); the runs it launched, each with its timeline from
     the first drop: created by the sensor's tick, queued once the daemon has planned it,
     started once its process is up, its embedding step done; and how many processes ran them.
  5. a sensor run's start-up: one clip at a time dropped into an idle watched folder, under
     Dagster's default run launcher and under the template's WarmRunLauncher: the drop to
     its row, and its run's timeline from its creation; the fourth after a quiet spell, once
     the warm processes retired (idle_seconds 10 here), forked from the launcher's zygote.
Results also go to bench/results/gpu_standin.json. No timing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_pipeline import CACHE, RESULTS, TINY_CLIP, Timer, ensure_ffmpeg, ffmpeg, model_folder  # noqa: E402
from bench_throughput import CORES, NOISE, ffmpeg_null  # noqa: E402

CLI = Path(sys.executable).parent / "feature-pipeline"
SECONDS, SIZE, FPS = 3, "320x240", 30
DROPS = 10


def clips(count: int) -> list[Path]:
    folder = CACHE / "videos" / f"standin_{SIZE}_{SECONDS}s_{count}"
    if len(list(folder.glob("c*.mp4"))) != count:
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={SIZE}:rate={FPS}", "-vf", NOISE, "-t", str(count * SECONDS),
               "-c:v", "libx264", "-preset", "superfast", "-pix_fmt", "yuv420p", "-g", str(2 * FPS), "-bf", "2",
               "-force_key_frames", f"expr:gte(t,n_forced*{SECONDS})", "-f", "segment",
               "-segment_time", str(SECONDS), "-reset_timestamps", "1", str(tmp / "c%05d.mp4"))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.replace(folder)
    return sorted(folder.glob("c*.mp4"))


def project(root: Path, videos: Path, model: Path, sampling: str, decoder: str) -> dict:
    """bench_runs' project (its own Lite file, logs and DAGSTER_HOME) with the stand-in's
    batch size and the sampling and decoder asked for."""
    import yaml

    from bench_runs import project as runs_project

    env = runs_project(root, videos, model)
    config = yaml.safe_load((root / "config.yaml").read_text())
    config["model"]["batch_size"] = 32
    config["video_input"].update(sampling=sampling, decoder=decoder)
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return env


def stop_db(env: dict, cwd: Path) -> None:
    subprocess.run([str(CLI), "db", "stop"], env=env, cwd=cwd, capture_output=True)


def linked_project(work: Path, prefix: str, files: list[Path], model: Path, sampling: str,
                   decoder: str) -> tuple[Path, dict]:
    """A fresh project folder whose videos are hard links to `files`, and its environment."""
    root = Path(tempfile.mkdtemp(dir=work, prefix=prefix))
    videos = root / "videos"
    videos.mkdir()
    for path in files:
        os.link(path, videos / path.name)
    return root, project(root, videos, model, sampling, decoder)


STEP_SECONDS = """
import json
from dagster import DagsterInstance
seconds = {}
with DagsterInstance.get() as instance:
    for run in instance.get_runs():
        started = {}
        for entry in instance.all_logs(run.run_id):
            kind = entry.dagster_event.event_type_value if entry.dagster_event else None
            if kind == "STEP_START":
                started[entry.step_key] = entry.timestamp
            elif kind == "STEP_SUCCESS" and entry.step_key in started:
                seconds[entry.step_key] = seconds.get(entry.step_key, 0) + entry.timestamp - started[entry.step_key]
print(json.dumps(seconds))
"""


def cli_run(work: Path, files: list[Path], model: Path, sampling: str, decoder: str) -> dict:
    root, env = linked_project(work, "run-", files, model, sampling, decoder)
    try:
        with Timer() as t:
            done = subprocess.run([str(CLI), "run"], env=env, cwd=root, capture_output=True, text=True)
        match = re.search(r"embedded (\d+) of (\d+) video\(s\), (\d+) rows", done.stderr)
        if done.returncode != 0 or not match or match[1] != match[2]:
            raise SystemExit(f"feature-pipeline run failed ({done.returncode}):\n{done.stderr[-3000:]}")
        steps = subprocess.run([sys.executable, "-c", STEP_SECONDS], env=env, cwd=root, capture_output=True, text=True)
        return {"seconds": t.wall, "videos": int(match[1]), "frames": int(match[3]),
                "steps": json.loads(steps.stdout) if steps.returncode == 0 else {}}
    finally:
        stop_db(env, root)
        shutil.rmtree(root, ignore_errors=True)


CORE_ALONE = """
import json, sys, time
from feature_pipeline_dagster.core.engine.run import RunReport, embed_videos
from feature_pipeline_dagster.core.models import load_extractor
from feature_pipeline_dagster.core.settings import load_settings
from feature_pipeline_dagster.core.store import store_for
settings = load_settings()
spec, store = settings.db.collections[0], store_for(settings.db)
extractor = load_extractor(settings.model, "cpu")
videos = sys.argv[1:]
started = time.perf_counter()
report = embed_videos(settings, spec, store, extractor, videos, RunReport())
print(json.dumps({"seconds": time.perf_counter() - started, "videos": len(report.written)}))
store.close()
"""


def core_run(work: Path, files: list[Path], model: Path, sampling: str, decoder: str) -> dict:
    """The same clips through the core's engine alone (`embed_videos`: decode, embed,
    write, commit), the model loaded and the database started first: no Dagster, no
    start-up. What `run` spends beyond it is Dagster's (its runs' set-up and per-partition
    events) and the start-up's."""
    root, env = linked_project(work, "core-", files, model, sampling, decoder)
    try:
        done = subprocess.run([sys.executable, "-c", CORE_ALONE, *[p.name for p in files]], env=env, cwd=root,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"the core alone failed ({done.returncode}):\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        if result["videos"] != len(files):
            raise SystemExit(f"the core alone embedded {result['videos']} of {len(files)} clips")
        return result
    finally:
        stop_db(env, root)
        shutil.rmtree(root, ignore_errors=True)


def wait_for_videos(store, spec, count: int, started: float, root: Path, every: float = 0.2) -> None:
    """Until the database holds `count` videos (a ledger row each, written at its commit),
    asking every `every` seconds (each count is a query on the Lite server's core)."""
    from feature_pipeline_dagster.core.ledger import ledger_collection

    rows = 0
    while rows < count:
        time.sleep(every)
        if time.perf_counter() - started > 1800:
            raise SystemExit(f"sensor: timed out at {rows} of {count} videos; see {root / 'daemon.log'}")
        try:
            rows = store.count_rows(ledger_collection(spec))
        except Exception:  # not created yet
            rows = 0


def watching(work: Path, prefix: str, model: Path, sampling: str, decoder: str, warm: bool = True,
             idle_seconds: int = 120):
    """A project whose folder starts empty, and dagster-daemon over it, up and ticked once;
    with `warm` False, the instance keeps Dagster's default run launcher."""
    root = Path(tempfile.mkdtemp(dir=work, prefix=prefix))
    watched = root / "videos"
    watched.mkdir()
    env = project(root, watched, model, sampling, decoder)
    instance = Path(env["DAGSTER_HOME"]) / "dagster.yaml"
    if not warm:
        instance.write_text(re.sub(r"run_launcher:\n(  .*\n)+", "", instance.read_text()))
    instance.write_text(instance.read_text().replace("idle_seconds: 120", f"idle_seconds: {idle_seconds}"))
    daemon = subprocess.Popen(["dagster-daemon", "run", "-m", "feature_pipeline_dagster"], env=env, cwd=root,
                              stdout=open(root / "daemon.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    time.sleep(20)  # the daemon is up and its sensor has ticked over the empty folder
    os.environ.update(DAGSTER_HOME=env["DAGSTER_HOME"], FEATURE_PIPELINE_CONFIG=env["FEATURE_PIPELINE_CONFIG"])
    return root, watched, env, daemon


def stop_watching(root: Path, env: dict, daemon: subprocess.Popen) -> None:
    os.killpg(daemon.pid, signal.SIGTERM)
    daemon.wait()
    stop_db(env, root)
    shutil.rmtree(root, ignore_errors=True)


def sensor_run(work: Path, files: list[Path], model: Path, sampling: str, decoder: str, every_s: float) -> dict:
    """The daemon and the sensor over a folder the clips are dropped into in batches, `every_s` apart."""
    root, watched, env, daemon = watching(work, "sensor-", model, sampling, decoder)
    try:
        from dagster import DagsterInstance, RunsFilter

        from feature_pipeline_dagster.core.settings import load_settings
        from feature_pipeline_dagster.core.store import store_for
        from feature_pipeline_dagster.orchestration.names import PARTITION_TAG, PID_TAG, RANGE_END_TAG, RANGE_START_TAG

        settings = load_settings(root / "config.yaml")
        spec = settings.collection_for(settings.model.features[0])
        batches = [sorted(files)[len(files) * i // DROPS: len(files) * (i + 1) // DROPS] for i in range(DROPS)]
        started, first_drop = time.perf_counter(), time.time()
        for i, batch in enumerate(batches):
            for path in batch:
                os.link(path, watched / path.name)
            if i < DROPS - 1:
                time.sleep(every_s)
        last_drop = time.perf_counter() - started
        store = store_for(settings.db)  # shares the Lite server the runs start
        # Asked once a second, not every 0.2 s: 150 counts of 1000 rows cost the Lite server and
        # this process 2-3 core-seconds beside the runs; the figure is the last embedding's end.
        wait_for_videos(store, spec, len(files), started, root, every=1.0)
        store.close()
        seconds = time.perf_counter() - started
        with DagsterInstance.get() as instance:
            runs = instance.get_run_records(RunsFilter(tags={"dagster/sensor_name": "video_folder_sensor"}))[::-1]
            per_run = [(r.dagster_run.tags.get(RANGE_START_TAG) or r.dagster_run.tags.get(PARTITION_TAG),
                        r.dagster_run.tags.get(RANGE_END_TAG)) for r in runs]
            timeline = [run_timeline(instance, r, first_drop, settings.model.features[0]) for r in runs]
            processes = len({r.dagster_run.tags.get(PID_TAG) for r in runs})
        if all(t["embedded"] is not None for t in timeline):  # its last commit came before it
            seconds = min(seconds, max(t["embedded"] for t in timeline))
        return {"seconds": seconds, "last_drop_s": last_drop, "runs": len(runs), "processes": processes,
                "ranges": per_run, "timeline": timeline}
    finally:
        stop_watching(root, env, daemon)


def sensor_start(work: Path, files: list[Path], model: Path, sampling: str, decoder: str, warm: bool) -> list:
    """One clip at a time dropped into the idle watched folder, each once the one before is
    committed: per clip, the drop to its row (a tick's wait, 0-5 s, included) and its run's
    timeline from its creation by the tick. The first run's process starts cold under either
    launcher; the warm launcher's later ones find a spare; the last clip comes after a quiet
    spell, once the warm launcher's processes have retired (`idle_seconds` QUIET_S), and its
    process is forked from the launcher's zygote."""
    root, watched, env, daemon = watching(work, "start-", model, sampling, decoder, warm, idle_seconds=QUIET_S)
    try:
        from dagster import DagsterInstance, RunsFilter

        from feature_pipeline_dagster.core.settings import load_settings
        from feature_pipeline_dagster.core.store import store_for

        settings = load_settings(root / "config.yaml")
        spec = settings.collection_for(settings.model.features[0])
        store, seen = store_for(settings.db), []
        for i, path in enumerate(files):
            time.sleep(2 if i < len(files) - 1 else QUIET_S + 8)  # the last: after the idle ones retired
            started = time.perf_counter()
            os.link(path, watched / path.name)
            wait_for_videos(store, spec, i + 1, started, root)
            seen.append({"drop_to_row": round(time.perf_counter() - started, 1)})
        store.close()
        with DagsterInstance.get() as instance:
            runs = instance.get_run_records(RunsFilter(tags={"dagster/sensor_name": "video_folder_sensor"}))[::-1]
            for one, record in zip(seen, runs):
                one.update(run_timeline(instance, record, record.create_timestamp.timestamp(),
                                        settings.model.features[0]))
        return seen
    finally:
        stop_watching(root, env, daemon)


QUIET_S = 10  # figure 5's idle_seconds: its last clip comes after the warm processes retired


def run_timeline(instance, record, origin: float, embedding: str) -> dict:
    """A sensor's run in seconds from the first drop: created (by the daemon's tick), queued
    (once the daemon has planned it), started (its process up) and its embedding step's end."""
    from dagster import DagsterEventType

    def first(kind, step=None):
        found = [r.timestamp for r in instance.get_records_for_run(record.dagster_run.run_id, of_type=kind).records
                 if step is None or r.event_log_entry.step_key == step]
        return round(min(found) - origin, 1) if found else None

    return {"created": round(record.create_timestamp.timestamp() - origin, 1),
            "queued": first(DagsterEventType.RUN_ENQUEUED), "started": first(DagsterEventType.RUN_START),
            "embedded": first(DagsterEventType.STEP_SUCCESS, embedding)}


def bare_ms_per_frame(model: Path) -> float:
    import numpy as np

    from feature_pipeline_dagster.core.batches import FrameBatch
    from feature_pipeline_dagster.core.models import load_extractor
    from feature_pipeline_dagster.core.settings import ModelSettings

    extractor = load_extractor(ModelSettings(name="CLIP", path=str(model), source="folder"), "cpu")
    frames = np.random.default_rng(0).integers(0, 255, (32, 240, 320, 3), np.uint8)
    batch = FrameBatch(frames, np.arange(32), np.arange(32))
    extractor.embed(batch)
    with Timer() as t:
        for _ in range(10):
            extractor.embed(batch)
    return 1000 * t.wall / 320


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=1000)
    parser.add_argument("--short", type=int, default=100)
    parser.add_argument("--sampling", default="fps", choices=["fps", "nearest"])
    parser.add_argument("--decoder", default="auto", help="video_input.decoder (nearest skips frames with pyav)")
    parser.add_argument("--skip-sensor", action="store_true")
    parser.add_argument("--drop-every", type=float, default=2.0, help="seconds between the sensor's 10 drops")
    args = parser.parse_args()
    ensure_ffmpeg()
    files = clips(args.clips)
    model = model_folder("clip-tiny-random", TINY_CLIP)
    work = Path(tempfile.mkdtemp(prefix="bench-standin-"))
    out: dict = {"clips": args.clips, "sampling": args.sampling, "decoder": args.decoder, "cores": CORES,
                 "load_start": os.getloadavg()}
    out["bare_ms_per_frame"] = bare_ms_per_frame(model)
    frames = args.clips * SECONDS
    wall, _ = ffmpeg_null(files, CORES)
    out["ceiling_fps"] = frames / wall
    one = cli_run(work, files[:1], model, args.sampling, args.decoder)
    short = cli_run(work, files[: args.short], model, args.sampling, args.decoder)
    full = cli_run(work, files, model, args.sampling, args.decoder)
    out.update(one_clip_s=one["seconds"], short_s=short["seconds"], run_s=full["seconds"], run_frames=full["frames"],
               run_steps_s=full["steps"])
    out["core_s"] = core_run(work, files, model, args.sampling, args.decoder)["seconds"]
    out["core_over_ceiling"] = frames / out["core_s"] / out["ceiling_fps"]
    out["run_fps"] = full["frames"] / full["seconds"]
    out["run_over_ceiling"] = out["run_fps"] / out["ceiling_fps"]
    per_frame = (short["seconds"] - one["seconds"]) / (short["frames"] - one["frames"])
    out["startup_intercept_s"] = one["seconds"] - one["frames"] * per_frame
    steady = (full["frames"] - short["frames"]) / (full["seconds"] - short["seconds"])
    out["steady_fps"] = steady
    out["long_fit_intercept_s"] = short["seconds"] - short["frames"] / steady
    if not args.skip_sensor:
        sensor = sensor_run(work, files, model, args.sampling, args.decoder, args.drop_every)
        out.update(sensor_s=sensor["seconds"], sensor_last_drop_s=sensor["last_drop_s"], sensor_runs=sensor["runs"],
                   sensor_processes=sensor["processes"],
                   sensor_ranges=sensor["ranges"], sensor_timeline=sensor["timeline"])
        out["sensor_over_run"] = sensor["seconds"] / full["seconds"]
        for warm in (False, True):
            out[f"sensor_start_{'warm' if warm else 'default'}"] = sensor_start(
                work, files[:4], model, args.sampling, args.decoder, warm)
    shutil.rmtree(work, ignore_errors=True)
    lines = [
        f"stand-in model (CLIP, 512-d, 2 narrow layers): {out['bare_ms_per_frame']:.2f} ms/frame bare (goal ~1)",
        f"1. decode ceiling ({CORES} x ffmpeg -f null): {out['ceiling_fps']:.0f} sampled frames/s",
        f"2. feature-pipeline run, {args.clips} clips, start-up included: {out['run_s']:.1f} s, "
        f"{out['run_fps']:.0f} frames/s = {out['run_over_ceiling']:.2f} x ceiling (goal >= 0.8)",
        f"   the core alone (embed_videos, model loaded, no Dagster): {out['core_s']:.1f} s = "
        f"{out['core_over_ceiling']:.2f} x ceiling; beyond it, run spends {out['run_s'] - out['core_s']:.1f} s "
        f"(start-up, Dagster's runs and per-partition events)",
        "   its steps, seconds summed over its runs (runs overlap): "
        + ", ".join(f"{k} {v:.1f}" for k, v in sorted(full["steps"].items(), key=lambda kv: -kv[1])),
        f"3. one clip: {out['one_clip_s']:.1f} s (goal <= 6); two-length fit (1/{args.short} clips): "
        f"start-up intercept {out['startup_intercept_s']:.1f} s (goal <= 5); {args.short} -> {args.clips} clips: "
        f"steady {steady:.0f} frames/s (intercept {out['long_fit_intercept_s']:.1f} s)",
    ]
    if "sensor_s" in out:
        lines.append(f"4. sensor, {DROPS} drops {args.drop_every:g} s apart: first drop to last row "
                     f"{out['sensor_s']:.1f} s = {out['sensor_over_run']:.2f} x run (goal <= 1.25), "
                     f"{out['sensor_runs']} run(s) in {out['sensor_processes']} process(es); the last drop at "
                     f"{out['sensor_last_drop_s']:.1f} s, its row {out['sensor_s'] - out['sensor_last_drop_s']:.1f} s "
                     "later (settling 1 s, the sensor's tick, its run)")
        for (start, end), when in zip(out["sensor_ranges"], out["sensor_timeline"]):
            lines.append(f"   run {start}..{end}: " + ", ".join(f"{k} {v} s" for k, v in when.items()))
        lines.append("5. a sensor run's start-up: one clip at a time into the idle watched folder; the drop to its "
                     f"row, and its run from creation (s); the last after {QUIET_S + 8} s quiet, the warm processes "
                     f"retired (idle_seconds {QUIET_S}):")
        for name in ("default", "warm"):
            for i, one in enumerate(out[f"sensor_start_{name}"]):
                lines.append(f"   {name} launcher, clip {i + 1}: " + ", ".join(f"{k} {v}" for k, v in one.items()))
    print("\n".join(lines))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out["load_end"] = os.getloadavg()
    print(f"sampling {args.sampling}, decoder {args.decoder}, load average {out['load_start']} -> {out['load_end']}")
    (RESULTS / f"gpu_standin_{args.sampling}_{args.decoder}.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
