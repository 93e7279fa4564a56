"""The streaming pipeline against its ceilings and against the seed's loop, side by side.

    python bench/bench_pipeline.py [--quick] [--repeats N]

Sets up what it needs: ffmpeg (apt-get, if missing), H.264 test videos (ffmpeg testsrc2,
libx264 `superfast`: CABAC, deblocking, B-frames, GOP 250; the 5- and 60-minute files
repeat the 1-minute stream with `-stream_loop ... -c copy`) and random-weight CLIP models
(the real ViT-B-32 architecture, meaningless vectors), cached in bench/results/cache/.
Every database is a fresh Milvus Lite file behind the project's loopback server.

Prints, each as a ratio of two things measured in the same run (the two sides
interleaved, their order alternating), with min/median/max over repeats; a goal counts
as met when its median meets it:

  1. end to end: embed_videos (the engine: decode lanes, model, RunWriter) frames/s
     / the bare model (extractor.embed) on the same frames already decoded in memory
     (half of them just before our run, half just after);
  2. decode: VideoReader.batches over the 1 fps plan / `ffmpeg -f null` decoding the whole
     file (same sampled-frame count over ffmpeg's time: sparse sampling is GOP-bound);
  3. write: MilvusStore.insert + commit (as RunWriter writes, db.batch_size rows a request) rows/s / MilvusClient.insert of the same 1152-d rows
     prepared in advance as dicts (both include the final flush), and our client CPU
     (time.process_time, every thread of this process) per 1000 rows;
  4. our pipeline / a seed-style loop (decord vr[i], open_clip's PIL preprocess, a batch
     of one, one insert per frame, no final flush) on the same video and weights;
  5. peak RSS (VmHWM of a child process per video) embedding a 60-minute video / a
     1-minute one, both 320x240. A tiny random CLIP stands in for ViT-B-32 there (ViT-B-32
     needs ~10 min for 3600 frames on 2 cores): its smaller fixed footprint makes the
     ratio stricter, not looser.

Results also go to bench/results/pipeline.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
CACHE = RESULTS / "cache"
BATCH_SIZE = 32  # model.batch_size (the config default)
DB_BATCH = 1000  # db.batch_size (the config default)
NAVIT_ROWS_PER_FRAME = 1008  # a 720p frame at the NaViT default: 24x42 patches of 1152-d

TINY_CLIP = {  # the memory test's stand-in: CLIP's code paths, 512-d rows, a small tower
    "embed_dim": 512,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 128, "head_width": 64, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 1},
}


# ---------------------------------------------------------------- setup

def ensure_ffmpeg() -> None:
    if shutil.which("ffmpeg"):
        return
    print("ffmpeg missing: installing Debian's package (apt-get) ...", flush=True)
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "ffmpeg"], check=True, env=env)
    if not shutil.which("ffmpeg"):
        raise SystemExit("ffmpeg is still missing after apt-get install ffmpeg")


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def video(name: str, size: str, minutes: int) -> Path:
    """A cached H.264 30 fps video: one encoded minute of testsrc2, looped by stream copy."""
    folder = CACHE / "videos"
    folder.mkdir(parents=True, exist_ok=True)
    base = folder / f"base_{size}.mp4"
    if not base.exists():
        tmp = base.with_suffix(".tmp.mp4")
        ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30", "-t", "60", "-c:v", "libx264",
               "-preset", "superfast", "-pix_fmt", "yuv420p", str(tmp))
        tmp.replace(base)
    path = folder / f"{name}.mp4"
    if not path.exists():
        tmp = path.with_suffix(".tmp.mp4")
        ffmpeg("-stream_loop", str(minutes - 1), "-i", str(base), "-c", "copy", str(tmp))
        tmp.replace(path)
    return path


def model_folder(name: str, model_cfg: dict | None = None) -> Path:
    from feature_pipeline_dagster.core.settings import ModelSettings
    from feature_pipeline_dagster.core.models.clip.weights import make_random

    dest = CACHE / "models" / name
    if not (dest / "open_clip_config.json").exists():
        make_random(ModelSettings(name="CLIP", path=str(dest), source="folder"), dest, model_cfg=model_cfg)
    return dest


def write_config(path: Path, model: Path, videos: Path, db: Path, dim: int = 512) -> Path:
    import yaml

    config = {
        "model": {"name": "CLIP", "arch": "ViT-B-32", "path": str(model), "source": "folder",
                  "batch_size": BATCH_SIZE},
        "video_input": {"path": str(videos), "sample_fps": 1.0},
        "gpus": ["cpu"],
        "db": {"uri": str(db), "batch_size": DB_BATCH, "collections": [{
            "name": "bench", "fields": [
                {"name": "id", "dtype": "INT64", "is_primary": True, "auto_id": True},
                {"name": "video_path", "dtype": "VARCHAR", "max_length": 1024},
                {"name": "frame_id", "dtype": "INT32"},
                {"name": "timestamp_ms", "dtype": "INT64"},
                {"name": "embeddings", "dtype": "FLOAT_VECTOR", "dim": dim},
            ]}]},
        "logs": {"path": str(path.parent / "logs")},
    }
    path.write_text(yaml.safe_dump(config))
    return path


# ---------------------------------------------------------------- helpers

def stats(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values),
            "samples": [round(v, 4) for v in values]}


def fmt(s: dict, digits: int = 2) -> str:
    return f"{s['median']:.{digits}f} (min {s['min']:.{digits}f}, max {s['max']:.{digits}f}, n={s['n']})"


def order(rep: int, sides: list) -> list:
    """Rotate which side goes first from one repeat to the next."""
    k = rep % len(sides)
    return sides[k:] + sides[:k]


class Timer:
    """Wall seconds and this process's CPU seconds (all threads) of a block."""

    def __enter__(self):
        self.cpu0, self.t0 = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t0
        self.cpu = time.process_time() - self.cpu0


class CallTimes:
    """Wall seconds spent in some methods of one object (wrapped on the instance, restored after)."""

    def __init__(self, obj, names: tuple[str, ...]):
        self.obj, self.names, self.seconds = obj, names, {n: 0.0 for n in names}

    def __enter__(self):
        for name in self.names:
            method = getattr(self.obj, name)

            def timed(*args, _method=method, _name=name, **kwargs):
                t0 = time.perf_counter()
                try:
                    return _method(*args, **kwargs)
                finally:
                    self.seconds[_name] += time.perf_counter() - t0

            setattr(self.obj, name, timed)
        return self

    def __exit__(self, *exc):
        for name in self.names:
            delattr(self.obj, name)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def load_avg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


# ---------------------------------------------------------------- 1 and 4: end to end, bare model, seed loop

def decoded_batches(path: Path, plan=None):
    from feature_pipeline_dagster.core.decode.reader import VideoReader
    from feature_pipeline_dagster.core.decode.spec import DecodeSpec

    reader = VideoReader(path)
    return list(reader.batches(plan or reader.plan(DecodeSpec()), BATCH_SIZE))


def bare_model(extractor, batches) -> tuple[float, float]:
    with Timer() as t:
        for batch in batches:
            extractor.embed(batch)
    return t.wall, t.cpu


def seed_loop(path: Path, relpath: str, model, preprocess, client, collection: str, frame_ids) -> None:
    """The seed's shape: one frame at a time through decode, PIL, model, insert."""
    import decord
    import torch
    from PIL import Image

    vr = decord.VideoReader(str(path), ctx=decord.cpu(0))
    fps = vr.get_avg_fps()
    generation = time.time_ns()
    for i in frame_ids:
        frame = vr[int(i)].asnumpy()
        image = preprocess(Image.fromarray(frame)).unsqueeze(0)
        with torch.no_grad():
            vector = torch.nn.functional.normalize(model.encode_image(image), dim=-1)[0]
        client.insert(collection, [{"video_path": relpath, "frame_id": int(i), "timestamp_ms": int(round(i * 1000 / fps)),
                                    "generation": generation, "embeddings": vector.tolist()}])


def bench_end_to_end(settings, store, extractor, model_dir: Path, path: Path, repeats: int) -> dict:
    import open_clip

    from feature_pipeline_dagster.core.engine.run import RunReport, embed_videos

    spec = settings.db.collections[0]
    relpath = path.name
    batches = decoded_batches(path)
    frames = sum(len(b) for b in batches)
    frame_ids = [int(i) for b in batches for i in b.frame_ids]
    seed_model, _, seed_preprocess = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
    seed_model.eval()
    extractor.embed(batches[0])  # warm-up
    out = {"video": relpath, "frames": frames, "bare": [], "ours": [], "seed": [], "ours_stages": [],
           "bare_cpu_s": [], "ours_cpu_s": []}
    half = len(batches) // 2
    for rep in range(repeats):
        ours_spec = replace(spec, name=f"ours_{rep}")
        seed_spec = replace(spec, name=f"seed_{rep}")
        store.ensure_collection(ours_spec)
        store.ensure_collection(seed_spec)
        # The bare model runs half the frames just before ours and half just after, so that a
        # change in the machine's load during the repeat weighs on both sides alike.
        steps = ["bare_a", "ours", "bare_b", "seed"] if rep % 2 == 0 else ["seed", "bare_a", "ours", "bare_b"]
        bare_wall = bare_cpu = 0.0
        for step in steps:
            if step.startswith("bare"):
                wall, cpu = bare_model(extractor, batches[:half] if step == "bare_a" else batches[half:])
                bare_wall, bare_cpu = bare_wall + wall, bare_cpu + cpu
                if step == "bare_a":
                    continue
                out["bare"].append(frames / bare_wall)
                out["bare_cpu_s"].append(bare_cpu)
                side = "bare"
            elif step == "ours":
                with Timer() as t:
                    report = embed_videos(settings, ours_spec, store, extractor, [relpath], RunReport(), lanes=1)
                    meta = report.written[relpath]
                assert meta["rows"] == frames, meta
                out["ours"].append(frames / t.wall)
                out["ours_cpu_s"].append(t.cpu)
                out["ours_stages"].append({k: meta[k] for k in ("seconds", "seconds_decode", "seconds_model",
                                                                "seconds_write")})
                side = "ours"
            else:
                with Timer() as t:
                    seed_loop(path, relpath, seed_model, seed_preprocess, store.client, seed_spec.name, frame_ids)
                out["seed"].append(frames / t.wall)
                side = "seed"
            print(f"    repeat {rep + 1}/{repeats} {side}: {out[side][-1]:.2f} frames/s", flush=True)
        assert store.count_rows(seed_spec) == frames
    out["e2e_over_bare"] = [o / b for o, b in zip(out["ours"], out["bare"])]
    out["ours_over_seed"] = [o / s for o, s in zip(out["ours"], out["seed"])]
    return out


# ---------------------------------------------------------------- 2: decode

def bench_decode(path: Path, repeats: int) -> dict:
    from feature_pipeline_dagster.core.decode.reader import VideoReader
    from feature_pipeline_dagster.core.decode.spec import DecodeSpec

    out = {"video": path.name, "ours_s": [], "ffmpeg_s": [], "ours_cpu_s": [], "ffmpeg_cpu_s": []}
    for rep in range(repeats):
        for side in order(rep, ["ours", "ffmpeg"]):
            if side == "ours":
                with Timer() as t:
                    reader = VideoReader(path)
                    plan = reader.plan(DecodeSpec())
                    frames = sum(len(b) for b in reader.batches(plan, BATCH_SIZE))
                out["frames"] = frames
                out["ours_s"].append(t.wall)
                out["ours_cpu_s"].append(t.cpu)
            else:
                cpu0 = children_cpu()
                with Timer() as t:
                    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-i", str(path),
                                    "-map", "0:v:0", "-f", "null", "-"], check=True)
                out["ffmpeg_s"].append(t.wall)
                out["ffmpeg_cpu_s"].append(children_cpu() - cpu0)
            print(f"    repeat {rep + 1}/{repeats} {side}: {out[side + '_s'][-1]:.2f} s", flush=True)
    out["ours_over_ffmpeg"] = [f / o for o, f in zip(out["ours_s"], out["ffmpeg_s"])]
    return out


# ---------------------------------------------------------------- 3: write path

def bench_write(store, dim: int, rows: int, repeats: int) -> dict:
    import numpy as np

    from feature_pipeline_dagster.core.settings import CollectionSpec, FieldSpec
    from feature_pipeline_dagster.core.batches import EmbeddingBatch
    from feature_pipeline_dagster.core.store import new_generation

    spec = CollectionSpec("write", (
        FieldSpec("id", "INT64", is_primary=True, auto_id=True),
        FieldSpec("video_path", "VARCHAR", max_length=1024),
        FieldSpec("frame_id", "INT32"), FieldSpec("timestamp_ms", "INT64"),
        FieldSpec("row_idx", "INT16"), FieldSpec("col_idx", "INT16"),
        FieldSpec("embeddings", "FLOAT_VECTOR", dim=dim), FieldSpec("generation", "INT64"),
    ))
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((rows, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = np.arange(rows)
    frame = index // NAVIT_ROWS_PER_FRAME
    columns = {"frame_id": frame.astype(np.int64), "timestamp_ms": frame * 1000,
               "row_idx": (index % NAVIT_ROWS_PER_FRAME) // 42, "col_idx": index % 42}
    batches = [EmbeddingBatch(vectors[s:s + NAVIT_ROWS_PER_FRAME], {k: v[s:s + NAVIT_ROWS_PER_FRAME] for k, v in columns.items()})
               for s in range(0, rows, NAVIT_ROWS_PER_FRAME)]
    generation = time.time_ns()
    as_lists = {k: v.tolist() for k, v in columns.items()}
    with Timer() as build:  # what our writer does per row, timed once for the diagnosis
        vector_lists = vectors.tolist()
        prepared = [{"video_path": "bench.mp4", "generation": generation, "embeddings": vector_lists[i],
                     **{k: v[i] for k, v in as_lists.items()}} for i in range(rows)]
    chunks = [prepared[s:s + DB_BATCH] for s in range(0, rows, DB_BATCH)]
    client = store.client
    out = {"rows": rows, "dim": dim, "ours_s": [], "backend_s": [], "ours_cpu_s": [], "backend_cpu_s": [], "ours_calls_s": [],
           "build_row_dicts_cpu_s": build.cpu}
    for rep in range(repeats):
        ours_spec, backend_spec = replace(spec, name=f"write_ours_{rep}"), replace(spec, name=f"write_backend_{rep}")
        store.ensure_collection(ours_spec)
        store.ensure_collection(backend_spec)
        for side in order(rep, ["ours", "backend"]):
            if side == "ours":
                with Timer() as t, CallTimes(client, ("insert", "delete", "flush")) as calls:
                    merged, generation = EmbeddingBatch.concat(batches), new_generation()
                    for s in range(0, rows, DB_BATCH):
                        chunk = merged.slice(s, s + DB_BATCH)
                        store.insert(ours_spec, chunk, ["bench.mp4"] * len(chunk), generation)
                    store.commit(ours_spec, ["bench.mp4"], generation)
                out["ours_calls_s"].append(calls.seconds)
            else:
                with Timer() as t:
                    for chunk in chunks:
                        client.insert(backend_spec.name, chunk)
                    client.flush(backend_spec.name)
            out[f"{side}_s"].append(t.wall)
            out[f"{side}_cpu_s"].append(t.cpu)
            print(f"    repeat {rep + 1}/{repeats} {side}: {rows / t.wall:.0f} rows/s, "
                  f"client CPU {1000 * t.cpu / rows * 1000:.1f} ms/1000 rows", flush=True)
            # Dropping waits for the server's background work on these rows (index building), so
            # the next measurement starts on a quiet server.
            written = ours_spec if side == "ours" else backend_spec
            assert store.count_rows(written) == rows, written.name
            client.drop_collection(written.name)
    out["ours_over_backend"] = [b / o for o, b in zip(out["ours_s"], out["backend_s"])]
    out["ours_cpu_ms_per_1000"] = [1e6 * c / rows for c in out["ours_cpu_s"]]
    out["backend_cpu_ms_per_1000"] = [1e6 * c / rows for c in out["backend_cpu_s"]]
    out["build_row_dicts_cpu_ms_per_1000"] = 1e6 * build.cpu / rows
    return out


# ---------------------------------------------------------------- 5: peak memory, one child per video

def memory_child(config: str, relpath: str, collection: str) -> None:
    from feature_pipeline_dagster.core.settings import load_settings
    from feature_pipeline_dagster.core.models import load_extractor
    from feature_pipeline_dagster.core.store import store_for
    from feature_pipeline_dagster.core.engine.run import RunReport, embed_videos

    settings = load_settings(config)
    spec = replace(settings.db.collections[0], name=collection)
    store = store_for(settings.db)
    extractor = load_extractor(settings.model, "cpu")
    store.ensure_collection(spec)
    before = proc_status("VmRSS")
    trace: list[int] = []
    done = threading.Event()

    def sample() -> None:  # VmRSS every 0.5 s: does the peak keep growing, or level off?
        while not done.wait(0.5):
            trace.append(proc_status("VmRSS"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    meta = embed_videos(settings, spec, store, extractor, [relpath], RunReport(), lanes=1).written[relpath]
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    half = len(trace) // 2
    print(json.dumps({"vmhwm_kb": proc_status("VmHWM"), "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      "rss_before_kb": before, "rows": meta["rows"], "seconds": seconds,
                      "rss_max_first_half_kb": max(trace[:half], default=before),
                      "rss_max_second_half_kb": max(trace[half:], default=before)}))


def proc_status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return -1


def bench_memory(config: Path, short: Path, long: Path, repeats: int) -> dict:
    out = {"short": short.name, "long": long.name, "short_kb": [], "long_kb": [], "short_before_kb": [],
           "long_before_kb": [], "long_seconds": [],
           "long_rss_max_halves_kb": []}
    for rep in range(repeats):
        for side in order(rep, ["short", "long"]):
            path = short if side == "short" else long
            done = subprocess.run([sys.executable, __file__, "--memory-child", str(config), path.name, f"mem_{side}_{rep}"],
                                  check=True, capture_output=True, text=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            out[f"{side}_kb"].append(result["vmhwm_kb"])
            out[f"{side}_before_kb"].append(result["rss_before_kb"])
            if side == "long":
                out["long_seconds"].append(result["seconds"])
                out["long_rss_max_halves_kb"].append([result["rss_max_first_half_kb"], result["rss_max_second_half_kb"]])
            print(f"    repeat {rep + 1}/{repeats} {side} ({path.name}, {result['rows']} rows): peak RSS "
                  f"{result['vmhwm_kb'] / 1024:.0f} MiB (RSS before the video {result['rss_before_kb'] / 1024:.0f} MiB, "
                  f"{result['seconds']:.0f} s)", flush=True)
    out["long_over_short"] = [lg / sh for sh, lg in zip(out["short_kb"], out["long_kb"])]
    return out


# ---------------------------------------------------------------- report

def report(results: dict) -> list[dict]:
    e2e, dec, wr, mem = results["end_to_end"], results["decode"], results["write"], results["memory"]
    rows = []

    def goal(name, values, target, kind, why=""):
        s = stats(values)
        met = s["median"] >= target if kind == ">=" else s["median"] <= target
        rows.append({"figure": name, **s, "goal": f"{kind} {target}", "met": met, "holds_back": "" if met else why})

    cores = os.cpu_count() or 1
    st = e2e["ours_stages"]
    model_cpu_frame = statistics.median(e2e["bare_cpu_s"]) / e2e["frames"]
    same = next((d for d in dec if d["video"] == e2e["video"]), dec[0])
    decode_cpu_frame = statistics.median(same["ours_cpu_s"]) / same["frames"]
    bound = model_cpu_frame / (model_cpu_frame + decode_cpu_frame)
    goal(f"end-to-end / bare model ({e2e['video']})", e2e["e2e_over_bare"], 0.9, ">=",
         f"CPU: the bare model keeps {statistics.median([c * f / e2e['frames'] for c, f in zip(e2e['bare_cpu_s'], e2e['bare'])]):.1f} "
         f"of {cores} cores busy ({model_cpu_frame:.2f} core-s/frame); decoding a sampled 720p frame (30 source frames) "
         f"costs {decode_cpu_frame:.2f} core-s more on the same cores, so the end-to-end ceiling is about "
         f"{bound:.2f} of the bare model. Our runs: decode {statistics.median([s['seconds_decode'] for s in st]):.1f} s "
         f"and model {statistics.median([s['seconds_model'] for s in st]):.1f} s, overlapped in "
         f"{statistics.median([s['seconds'] for s in st]):.1f} s; the bare model needs "
         f"{e2e['frames'] / statistics.median(e2e['bare']):.1f} s alone")
    for d in dec:
        goal(f"decode / ffmpeg -f null ({d['video']})", d["ours_over_ffmpeg"], 0.9, ">=",
             f"decord CPU {statistics.median(d['ours_cpu_s']):.1f} core-s vs ffmpeg {statistics.median(d['ffmpeg_cpu_s']):.1f} "
             f"core-s for the same file")
    cpu = stats(wr["ours_cpu_ms_per_1000"])["median"]
    calls = {k: statistics.median([c[k] for c in wr["ours_calls_s"]]) for k in ("insert", "delete", "flush")}
    goal(f"insert + commit / backend insert ({wr['rows']} rows, {wr['dim']}-d)", wr["ours_over_backend"], 0.9, ">=",
         f"of our {statistics.median(wr['ours_s']):.1f} s, the delete of older generations takes {calls['delete']:.1f} s "
         f"(Milvus Lite filters the unflushed rows by reading them whole, vectors included, even when nothing matches), "
         f"inserts {calls['insert']:.1f} s, flush {calls['flush']:.1f} s; the backend's inserts + flush take "
         f"{statistics.median(wr['backend_s']):.1f} s. Our client CPU ({cpu:.0f} ms per 1000 rows) shares {cores} cores "
         f"with the Lite server")
    goal("client CPU ms per 1000 rows (1152-d)", wr["ours_cpu_ms_per_1000"], 10, "<=",
         f"pymilvus' row path: every vector component becomes a Python float (ndarray.tolist, "
         f"{wr['build_row_dicts_cpu_ms_per_1000']:.0f} ms/1000 rows to build the row dicts) and is packed one by one "
         f"into protobuf (insert of ready dicts alone: {stats(wr['backend_cpu_ms_per_1000'])['median']:.0f} ms/1000 rows)")
    goal(f"pipeline / seed loop ({e2e['video']})", e2e["ours_over_seed"], 2.0, ">=",
         f"on {cores} CPU cores every stage is CPU-bound: overlap has no idle resource to fill, so the gain is only "
         f"batching (bare model {stats(e2e['bare'])['median']:.1f} frames/s batched vs the seed's "
         f"{stats(e2e['seed'])['median']:.1f} frames/s end to end)")
    halves = [h for h in mem["long_rss_max_halves_kb"]]
    first, second = (statistics.median([h[i] for h in halves]) / 1024 for i in (0, 1))
    goal(f"peak RSS {mem['long']} / {mem['short']}", mem["long_over_short"], 1.2, "<=",
         f"peak RSS {statistics.median(mem['short_kb']) / 1024:.0f} MiB for the short video, "
         f"{statistics.median(mem['long_kb']) / 1024:.0f} MiB for the long one, from "
         f"{statistics.median(mem['long_before_kb']) / 1024:.0f} MiB before it; the long run's RSS peaks at "
         f"{first:.0f} MiB in its first half and {second:.0f} MiB in its second ("
         f"{'levels off: a fixed step, not growth with length' if second <= first * 1.05 else 'still growing'})")
    return rows


def print_table(rows: list[dict]) -> None:
    print("\n| figure | median | min | max | goal | met? |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['figure']} | {r['median']:.2f} | {r['min']:.2f} | {r['max']:.2f} | {r['goal']} | "
              f"{'met' if r['met'] else 'NOT met'} |")
    for r in rows:
        if not r["met"]:
            print(f"\n- NOT met: {r['figure']}: {r['holds_back']}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one 1-minute 720p video, fewer repeats (a few minutes)")
    parser.add_argument("--repeats", type=int, default=None, help="repeats per figure (default 3, --quick 1)")
    parser.add_argument("--memory-child", nargs=3, metavar=("CONFIG", "RELPATH", "COLLECTION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(*args.memory_child)
        return
    repeats = args.repeats or (1 if args.quick else 3)
    started = time.perf_counter()
    load_start = load_avg()

    print("setup: ffmpeg, videos, random-weight models (cached in bench/results/cache/)", flush=True)
    ensure_ffmpeg()
    clip_1 = video("720p_1min", "1280x720", 1)
    decode_videos = [clip_1] if args.quick else [clip_1, video("720p_5min", "1280x720", 5)]
    small_1 = video("240p_1min", "320x240", 1)
    small_long = video("240p_10min", "320x240", 10) if args.quick else video("240p_60min", "320x240", 60)
    vit = model_folder("clip-ViT-B-32-random")
    tiny = model_folder("clip-tiny-random", TINY_CLIP)

    import torch

    from feature_pipeline_dagster.core.settings import load_settings
    from feature_pipeline_dagster.core.models import load_extractor
    from feature_pipeline_dagster.core.store.lite_server import LiteServer
    from feature_pipeline_dagster.core.store import store_for

    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    db = work / "db" / "bench.db"
    settings = load_settings(write_config(work / "vit.yaml", vit, clip_1.parent, db))
    memory_config = write_config(work / "tiny.yaml", tiny, small_1.parent, db)
    store = store_for(settings.db)
    extractor = load_extractor(settings.model, "cpu")
    results = {"machine": {"cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                           "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                           "torch": torch.__version__, "gpu": torch.cuda.is_available()},
               "settings": {"quick": args.quick, "repeats": repeats, "model": "CLIP ViT-B-32 (random weights)",
                            "model_batch_size": BATCH_SIZE, "db_batch_size": DB_BATCH, "sample_fps": 1.0}}
    try:
        print(f"\n[{time.perf_counter() - started:.0f}s] [1, 4] end to end vs bare model vs seed loop: {clip_1.name}, ViT-B-32, {repeats} repeats", flush=True)
        results["end_to_end"] = bench_end_to_end(settings, store, extractor, vit, clip_1, repeats)
        results["decode"] = []
        for path in decode_videos:
            print(f"\n[{time.perf_counter() - started:.0f}s] [2] decode vs ffmpeg -f null: {path.name}, {repeats} repeats", flush=True)
            results["decode"].append(bench_decode(path, repeats))
        rows = 5 * NAVIT_ROWS_PER_FRAME if args.quick else 10 * NAVIT_ROWS_PER_FRAME
        print(f"\n[{time.perf_counter() - started:.0f}s] [3] write path: {rows} rows of 1152-d, {repeats} repeats", flush=True)
        results["write"] = bench_write(store, 1152, rows, repeats)
        print(f"\n[{time.perf_counter() - started:.0f}s] [5] peak memory: {small_long.name} vs {small_1.name} (tiny random CLIP), {repeats} repeats", flush=True)
        results["memory"] = bench_memory(memory_config, small_1, small_long, repeats)
    finally:
        store.close()
        LiteServer(db).stop()
        shutil.rmtree(work, ignore_errors=True)

    table = report(results)
    results["goals"] = table
    results["load_average"] = {"start": load_start, "end": load_avg()}
    results["seconds"] = round(time.perf_counter() - started, 1)
    print_table(table)
    print(f"\nmachine: {results['machine']['cpus']} CPUs, torch {results['machine']['torch_threads']} threads, "
          f"GPU: {results['machine']['gpu']}; load average {load_start} -> {results['load_average']['end']}; "
          f"{results['seconds']:.0f} s in all")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pipeline.json").write_text(json.dumps(results, indent=2, default=float))
    print(f"results: {RESULTS / 'pipeline.json'}")


if __name__ == "__main__":
    main()
