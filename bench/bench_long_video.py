"""Long videos: peak memory of embedding a 60-minute video against a 1-minute one.

    .venv/bin/python bench/bench_long_video.py [--repeats 3] [--long-minutes 60]
    .venv/bin/python bench/bench_long_video.py --navit [--repeats 1] [--long-minutes 10]
    (either with --decoder NAME: video_input.decoder, default auto; --model-batch N: model.batch_size)

`--navit`: NaViT at length. A 10-minute 720p video against a 10-second one (sample_fps 1:
600 vs 10 frames), through a random VL3-SigLIP-NaViT of the real width (hidden_size 1152,
one layer, the default grid: 24x42 = 1008 rows of 1152-d per 720p frame, 4.6 MB of float32
a frame) with the config's default batch sizes (model.batch_size 32, db.batch_size 1000).
Videos: detailed content (testsrc2 with temporal noise, x264 superfast, 30 fps, as
bench_throughput's workload B), a 60-second encode looped by stream copy to the long
length and a 10-second encode of the same source. Requirement: <= 1.2 (issue 21, 5).

Requirement: the peak memory of a 60-minute video (small frame size) stays within 1.2x
that of a 1-minute one.

What runs: per video, a fresh process (`--child`) loads the config, the model and the
store, then calls `embed_videos(settings, spec, store, extractor, [relpath], ...)` once: the
real path (decoding, in the decode worker process where the code has one; preprocess;
model; the store's inserts; flush and delete of older generations). Model:
the tests' tiny CLIP (`feature_pipeline_dagster_tests.conftest.TINY_CLIP`: the real
open_clip architecture, random weights, 32-d), whose small fixed footprint makes the
ratio strict. Config: the tests' `clip_config` with the defaults model.batch_size 32 and
db.batch_size 1000; sample_fps 1, so 60 vs 60*M sampled frames. Videos: 320x240, 30 fps
H.264 (ffmpeg testsrc2, libx264 ultrafast, yuv420p), one encoded minute and that minute
looped by stream copy to M minutes, cached in bench/results/cache/long_video/.

What is measured: every ~50 ms, the sum of VmRSS over the embedding process and all its
descendants (so a decode worker counts too), and each process's largest VmHWM. The
Milvus Lite server (a fresh database per run) is started by this process beforehand, so
it is outside the tree; its RSS is reported on the side. The peak covers the process's
life up to the end of embed_videos, loading included; its shutdown after that is
reported apart (tree_peak_after_done_kb).

Figure: peak tree RSS of the long video / that of the short one, per repeat, the order
alternating; median and min-max over repeats. Also the absolute peaks (MiB), the tree
RSS once loaded ("ready"), the embedding process's own VmHWM, and whether the long run
levels off (largest tree RSS in the first vs the second half of its embedding). And a bound
the samples cannot fool: a tree's true peak lies between its largest sample (or its largest
process's VmHWM) and the sum of its processes' VmHWMs, so long / short is at most the long
tree's sum over the short tree's larger lower bound. The samples (every 50 ms) can miss a
short run's peak: a 10-s NaViT video is one batch, one spike in a 6-s run, and its embedding
process's VmHWM alone (1319 MiB) exceeded the whole tree's largest sample (1247 MiB).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
CACHE = RESULTS / "cache" / "long_video"
SAMPLE_S = 0.05
GOAL = 1.2
OUT = RESULTS / "long_video.json"
OUT_NAVIT = RESULTS / "long_video_navit.json"
MODEL_BATCH, DB_BATCH = 32, 1000  # the config defaults
HD_SIZE, NOISE, SHORT_NAVIT_S = "1280x720", "noise=alls=4:allf=t+u", 10
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


# ---------------------------------------------------------------- setup

def ffmpeg(*args: str) -> None:
    exe = shutil.which("ffmpeg") or "/usr/bin/ffmpeg"
    subprocess.run([exe, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def videos(long_minutes: int) -> tuple[Path, Path]:
    """(short, long): one encoded minute, and that minute looped to `long_minutes`."""
    folder = CACHE / "videos"
    folder.mkdir(parents=True, exist_ok=True)
    short = folder / "short_1min.mp4"
    if not short.exists():
        tmp = folder / "short_1min.tmp.mp4"
        ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30", "-t", "60", "-c:v", "libx264",
               "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(tmp))
        tmp.replace(short)
    long = folder / f"long_{long_minutes}min.mp4"
    if not long.exists():
        tmp = folder / f"long_{long_minutes}min.tmp.mp4"
        ffmpeg("-stream_loop", str(long_minutes - 1), "-i", str(short), "-c", "copy", str(tmp))
        tmp.replace(long)
    return short, long


def navit_videos(long_minutes: float) -> tuple[Path, Path]:
    """(short, long) for --navit: 10 s of detailed 720p, and a detailed 60-second encode
    looped by stream copy to `long_minutes`."""
    folder = CACHE / "videos_hd"
    folder.mkdir(parents=True, exist_ok=True)

    def encode(path: Path, seconds: int) -> Path:
        if not path.exists():
            tmp = path.with_suffix(".tmp.mp4")
            ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={HD_SIZE}:rate=30", "-vf", f"{NOISE}:all_seed=1",
                   "-t", str(seconds), "-c:v", "libx264", "-preset", "superfast", "-pix_fmt", "yuv420p", str(tmp))
            tmp.replace(path)
        return path

    short = encode(folder / f"hd_{SHORT_NAVIT_S}s.mp4", SHORT_NAVIT_S)
    base = encode(folder / "hd_60s.mp4", 60)
    seconds = round(long_minutes * 60)
    long = folder / f"hd_long_{seconds}s.mp4"
    if not long.exists():
        tmp = long.with_suffix(".tmp.mp4")
        ffmpeg("-stream_loop", str(-(-seconds // 60) - 1), "-i", str(base), "-t", str(seconds), "-c", "copy", str(tmp))
        tmp.replace(long)
    return short, long


def navit_model() -> Path:
    from feature_pipeline_dagster.core.models.navit.weights import make_random
    from feature_pipeline_dagster.core.settings import ModelSettings

    folder = CACHE / "navit-1152-1layer"
    if not (folder / "model.safetensors").exists():
        make_random(ModelSettings(name="VL3-SigLIP-NaViT", path=str(folder), source="folder"), folder,
                    {"num_hidden_layers": 1})
    return folder


def tiny_clip() -> Path:
    from feature_pipeline_dagster.core.settings import ModelSettings
    from feature_pipeline_dagster.core.models.clip.weights import make_random
    from feature_pipeline_dagster_tests.conftest import TINY_CLIP

    folder = CACHE / "tiny-clip"
    if not (folder / "open_clip_config.json").exists():
        make_random(ModelSettings(name="CLIP", path=str(folder), source="folder"), folder, TINY_CLIP)
    return folder


def write_config(work: Path, model: Path, folder: Path) -> tuple[Path, Path]:
    import yaml

    from feature_pipeline_dagster_tests.conftest import clip_config

    db = work / "db" / "bench.db"
    config = clip_config(work, model, folder, **{"model.batch_size": MODEL_BATCH, "db.batch_size": DB_BATCH,
                                                  "db.uri": str(db)})
    if NAVIT:  # the family's defaults (max_tokens_per_frame 1024, merge_size 1): the default grid
        config["model"] = {"name": "VL3-SigLIP-NaViT", "path": str(model), "source": "folder",
                           "batch_size": MODEL_BATCH}
        config["db"]["collections"][0]["fields"][-1:] = [
            {"name": "row_idx", "dtype": "INT16"}, {"name": "col_idx", "dtype": "INT16"},
            {"name": "embeddings", "dtype": "FLOAT_VECTOR", "dim": 1152}]
    config["video_input"]["decoder"] = DECODER
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, db


# ---------------------------------------------------------------- the embedding process

def child(config: str, relpath: str) -> None:
    """Embed one video through the real path; 'READY' on stdout once everything is
    loaded, then one JSON line when done."""
    from feature_pipeline_dagster.core.settings import load_settings
    from feature_pipeline_dagster.core.models import load_extractor
    from feature_pipeline_dagster.core.store import store_for
    from feature_pipeline_dagster.core.engine.run import RunReport, embed_videos

    settings = load_settings(config)
    spec = settings.db.collections[0]
    store = store_for(settings.db)
    extractor = load_extractor(settings.model, "cpu")
    store.ensure_collection(spec)
    print("READY", flush=True)
    started = time.perf_counter()
    meta = embed_videos(settings, spec, store, extractor, [relpath], RunReport(), lanes=1).written[relpath]
    seconds = time.perf_counter() - started
    out = {"rows": meta["rows"], "frames": meta["frames"], "seconds": round(seconds, 2),
           "seconds_decode": meta["seconds_decode"], "seconds_model": meta["seconds_model"],
           "vmhwm_kb": status_kb(os.getpid()).get("VmHWM", -1)}
    print("DONE " + json.dumps(out), flush=True)
    store.close()


# ---------------------------------------------------------------- /proc

def status_kb(pid: int) -> dict[str, int]:
    """The kB fields of /proc/PID/status that matter here ({} if the process is gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                    out[key] = int(rest.split()[0])
    except (OSError, ValueError):
        return {}
    return out


def _children_files_work() -> bool:
    return Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists()


CHILDREN_FILES = _children_files_work()
NAVIT = False  # --navit
DECODER = "auto"  # --decoder


def descendants(root: int) -> list[int]:
    """root and every process below it: /proc/PID/task/*/children where the kernel has
    them, else a scan of every /proc/*/stat for its ppid."""
    if CHILDREN_FILES:
        found, todo = [root], [root]
        while todo:
            pid = todo.pop()
            for task in Path(f"/proc/{pid}/task").glob("*/children"):
                try:
                    kids = [int(k) for k in task.read_text().split()]
                except OSError:
                    continue
                found.extend(kids)
                todo.extend(kids)
        return found
    parent_of = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        parent_of[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    kids: dict[int, list[int]] = {}
    for pid, ppid in parent_of.items():
        kids.setdefault(ppid, []).append(pid)
    found, todo = [root], [root]
    while todo:
        for kid in kids.get(todo.pop(), []):
            found.append(kid)
            todo.append(kid)
    return found


def comm(pid: int) -> str:
    """What a process runs, briefly: its command line without the interpreter's path."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return "?"
    args = [a for a in args if a]
    if args and args[0].endswith(("python", "python3")) or "python" in Path(args[0] if args else "").name:
        args = args[1:]
    return " ".join(Path(a).name if i == 0 else a for i, a in enumerate(args[:3]))[:80] or "?"


class TreeSampler(threading.Thread):
    """Every SAMPLE_S: the sum of VmRSS (and RssAnon, RssFile) over a process tree, the
    most processes at once, and each process's largest VmHWM seen; `exclude` pids are
    left out (the Lite server, should it ever be started from inside the tree), and so is
    a fork of the root that has not exec'd yet (it shares the root's pages)."""

    def __init__(self, root: int, side: int | None):
        super().__init__(daemon=True)
        self.root, self.side = root, side
        self.trace: list[tuple[float, int, int, int, int]] = []  # (t, rss, anon, file, processes)
        self.side_trace: list[int] = []
        self.hwm: dict[int, dict] = {}
        self.exclude = {side} if side else set()
        self.stop = threading.Event()
        self.t0 = time.perf_counter()
        self.root_cmdline = self.cmdline(root)

    @staticmethod
    def cmdline(pid: int) -> bytes:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return b""

    def unexeced_fork(self, pid: int) -> bool:
        """A child between fork and exec (the decoder process starting): still the root's
        command line, and its VmRSS counts the root's pages a second time (shared, copy on
        write); measured once as a 880 MiB spike of the tree's sum."""
        return self.cmdline(pid) == self.root_cmdline

    def run(self) -> None:
        while True:
            self.sample()
            if self.stop.wait(SAMPLE_S):
                return

    def sample(self) -> None:
        rss = anon = file = n = 0
        for pid in descendants(self.root):
            if pid in self.exclude or (pid != self.root and self.unexeced_fork(pid)):
                continue
            st = status_kb(pid)
            if "VmRSS" not in st:  # gone, or a zombie
                continue
            rss += st["VmRSS"]
            anon += st.get("RssAnon", 0)
            file += st.get("RssFile", 0) + st.get("RssShmem", 0)
            n += 1
            seen = self.hwm.setdefault(pid, {"comm": comm(pid), "vmhwm_kb": 0})
            seen["vmhwm_kb"] = max(seen["vmhwm_kb"], st.get("VmHWM", 0))
        if n:
            self.trace.append((time.perf_counter() - self.t0, rss, anon, file, n))
        if self.side:
            self.side_trace.append(status_kb(self.side).get("VmRSS", 0))


def run_one(model: Path, video: Path) -> dict:
    from feature_pipeline_dagster.core.store.lite_server import LiteServer

    work = Path(tempfile.mkdtemp(prefix="bench-long-video-"))
    config, db = write_config(work, model, video.parent)
    server = LiteServer(db)
    state = server.ensure_running()  # our child, not the embedding process's
    marks: dict[str, float] = {}
    hwm: dict[int, dict] = {}
    lines: list[str] = []
    try:
        process = subprocess.Popen(
            [sys.executable, __file__, "--child", str(config), video.name],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=work)
        sampler = TreeSampler(process.pid, state.pid)
        sampler.start()
        errors: list[str] = []
        reader = threading.Thread(target=lambda: errors.extend(process.stderr), daemon=True)
        reader.start()
        for line in process.stdout:
            lines.append(line)
            if line.startswith(("READY", "DONE")):
                sampler.sample()  # the tree at this moment, on the mark
                marks[line.split()[0].lower()] = time.perf_counter() - sampler.t0
                if line.startswith("DONE"):
                    hwm = {pid: dict(h) for pid, h in sampler.hwm.items()}  # before shutdown
        code = process.wait()
        sampler.stop.set()
        sampler.join()
        reader.join(timeout=5)
        if code != 0 or "done" not in marks:
            raise SystemExit(f"embedding {video.name} failed (exit {code}):\n{''.join(errors[-30:])}")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    result = json.loads(next(l for l in lines if l.startswith("DONE"))[5:])
    trace = sampler.trace
    ready, done = marks["ready"], marks["done"]
    # The figure covers the process's life up to the end of embed_videos (loading
    # included); its interpreter shutdown after that is reported apart.
    alive = [s for s in trace if s[0] <= done]
    during = [s for s in alive if s[0] >= ready]
    half = ready + (done - ready) / 2
    first = [s[1] for s in during if s[0] < half]
    second = [s[1] for s in during if s[0] >= half]
    peak = max(alive, key=lambda s: s[1])
    at_ready = min(trace, key=lambda s: abs(s[0] - ready))
    return {
        "video": video.name, "rows": result["rows"], "seconds": result["seconds"],
        "seconds_decode": result["seconds_decode"], "seconds_model": result["seconds_model"],
        "samples": len(trace), "processes_max": max(s[4] for s in trace),
        "tree_peak_kb": peak[1], "tree_peak_anon_kb": peak[2], "tree_peak_file_kb": peak[3],
        "tree_peak_at": "embedding" if peak[0] >= ready else "loading",
        "tree_peak_after_done_kb": max((s[1] for s in trace if s[0] > done), default=0),
        "tree_ready_kb": at_ready[1], "tree_ready_anon_kb": at_ready[2],
        "embedding_process_vmhwm_kb": result["vmhwm_kb"],
        "tree_vmhwm_max_kb": max(h["vmhwm_kb"] for h in hwm.values()),
        "tree_vmhwm_sum_kb": sum(h["vmhwm_kb"] for h in hwm.values()),
        "processes": {str(pid): h for pid, h in hwm.items()},
        "trace_first_half_max_kb": max(first, default=0), "trace_second_half_max_kb": max(second, default=0),
        "lite_server_rss_max_kb": max(sampler.side_trace, default=0),
        # (seconds since the embedding process started, tree VmRSS MiB), every sample
        "trace_mib": [[round(s[0], 2), round(s[1] / 1024, 1)] for s in trace],
        "ready_s": round(ready, 2), "done_s": round(done, 2),
    }


# ---------------------------------------------------------------- main

def stats(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 4), "min": round(min(values), 4),
            "max": round(max(values), 4), "n": len(values), "samples": [round(v, 4) for v in values]}


def mib(kb: float) -> float:
    return round(kb / 1024, 1)


def main() -> None:
    global NAVIT, DECODER, MODEL_BATCH
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--long-minutes", type=float, default=None, help="default 60, --navit 10")
    parser.add_argument("--navit", action="store_true", help="NaViT 1152-d on 720p: 10 s against --long-minutes")
    parser.add_argument("--decoder", default="auto", help="video_input.decoder (default: the config's default, auto)")
    parser.add_argument("--model-batch", type=int, default=MODEL_BATCH,
                        help="model.batch_size (default 32, the config's): at 10 or less the 10-s video fills "
                        "a batch too")
    parser.add_argument("--child", nargs=2, metavar=("CONFIG", "RELPATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    NAVIT, DECODER, MODEL_BATCH = args.navit, args.decoder, args.model_batch
    if args.long_minutes is None:
        args.long_minutes = 10 if NAVIT else 60
    out_path = OUT_NAVIT if NAVIT else OUT
    started = time.perf_counter()
    load_start = [round(v, 2) for v in os.getloadavg()]
    print(f"setup: videos and the {'NaViT' if NAVIT else 'tiny CLIP'}, cached in {CACHE.relative_to(REPO)}/", flush=True)
    if NAVIT:
        short, long = navit_videos(args.long_minutes)
        model = navit_model()
    else:
        short, long = videos(int(args.long_minutes))
        model = tiny_clip()
    sides = {"short": short, "long": long}
    runs: dict[str, list[dict]] = {"short": [], "long": []}
    for rep in range(args.repeats):
        for side in ("short", "long") if rep % 2 == 0 else ("long", "short"):
            r = run_one(model, sides[side])
            runs[side].append(r)
            print(f"  repeat {rep + 1}/{args.repeats} {side:5s} ({r['video']}, {r['rows']} rows, {r['seconds']:.0f} s): "
                  f"tree peak {mib(r['tree_peak_kb'])} MiB (anon {mib(r['tree_peak_anon_kb'])}, at {r['tree_peak_at']}), "
                  f"ready {mib(r['tree_ready_kb'])} MiB, embedding process VmHWM {mib(r['embedding_process_vmhwm_kb'])} MiB, "
                  f"{r['processes_max']} process(es) at once; halves {mib(r['trace_first_half_max_kb'])} / "
                  f"{mib(r['trace_second_half_max_kb'])} MiB", flush=True)
            for pid, h in r["processes"].items():
                print(f"      pid {pid} VmHWM {mib(h['vmhwm_kb'])} MiB: {h['comm']}")

    results = {
        "requirement": (f"peak memory of a {args.long_minutes:g}-minute 720p video <= 1.2x that of a {SHORT_NAVIT_S}-second one "
                        "(NaViT 1152-d, default grid)") if NAVIT else
                       "peak memory of a 60-minute video (small frame size) <= 1.2x that of a 1-minute one",
        "figure": "peak of the sum of VmRSS over the embedding process tree, long / short",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": {"repeats": args.repeats, "long_minutes": args.long_minutes,
                     "size": HD_SIZE if NAVIT else "320x240", "fps": 30, "sample_fps": 1.0,
                     "model": "VL3-SigLIP-NaViT (random weights, hidden_size 1152, 1 layer, 1008 rows/720p frame)"
                     if NAVIT else "tiny CLIP (tests' TINY_CLIP, random weights, 32-d)",
                     "decoder": DECODER, "model_batch_size": MODEL_BATCH, "db_batch_size": DB_BATCH,
                     "sample_interval_s": SAMPLE_S,
                     "children_files": CHILDREN_FILES},
        "runs": runs,
    }
    summary = {}
    for side, rs in runs.items():
        summary[side] = {
            "tree_peak_mib": stats([mib(r["tree_peak_kb"]) for r in rs]),
            "tree_ready_mib": stats([mib(r["tree_ready_kb"]) for r in rs]),
            "embedding_process_vmhwm_mib": stats([mib(r["embedding_process_vmhwm_kb"]) for r in rs]),
            "tree_vmhwm_sum_mib": stats([mib(r["tree_vmhwm_sum_kb"]) for r in rs]),
            "growth_during_embedding_mib": stats([mib(r["tree_peak_kb"] - r["tree_ready_kb"]) for r in rs]),
            "trace_halves_mib": [[mib(r["trace_first_half_max_kb"]), mib(r["trace_second_half_max_kb"])] for r in rs],
            "seconds": stats([r["seconds"] for r in rs]),
            "lite_server_rss_max_mib": stats([mib(r["lite_server_rss_max_kb"]) for r in rs]),  # outside the tree
        }
    pairs = list(zip(runs["short"], runs["long"]))
    ratio = [lg["tree_peak_kb"] / sh["tree_peak_kb"] for sh, lg in pairs]
    hwm_ratio = [lg["embedding_process_vmhwm_kb"] / sh["embedding_process_vmhwm_kb"] for sh, lg in pairs]
    # The tree's true peak lies between its largest sample (or its largest process's VmHWM, the
    # tree holding at least that process then) and the sum of its processes' VmHWMs.
    bound = [lg["tree_vmhwm_sum_kb"] / max(sh["tree_peak_kb"], sh["tree_vmhwm_max_kb"]) for sh, lg in pairs]
    summary["long_over_short"] = stats(ratio)
    summary["long_over_short_embedding_process_vmhwm"] = stats(hwm_ratio)
    summary["long_over_short_at_most"] = stats(bound)
    summary["goal"] = f"<= {GOAL}"
    summary["met"] = statistics.median(ratio) <= GOAL
    halves = summary["long"]["trace_halves_mib"]
    first = statistics.median(h[0] for h in halves)
    second = statistics.median(h[1] for h in halves)
    summary["long_trace"] = {"first_half_max_mib": first, "second_half_max_mib": second,
                             "levels_off": second <= first * 1.02 + 5}
    results["summary"] = summary
    results["load_average"] = {"start": load_start, "end": [round(v, 2) for v in os.getloadavg()]}
    results["seconds"] = round(time.perf_counter() - started, 1)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=2))

    print()
    for side in runs:
        s = summary[side]
        print(f"{side:5s}: tree peak {s['tree_peak_mib']['median']} MiB (min {s['tree_peak_mib']['min']}, max "
              f"{s['tree_peak_mib']['max']}); ready {s['tree_ready_mib']['median']} MiB; growth while embedding "
              f"{s['growth_during_embedding_mib']['median']} MiB")
    r = summary["long_over_short"]
    h = summary["long_over_short_embedding_process_vmhwm"]
    lt = summary["long_trace"]
    print(f"long / short (tree RSS peak): {r['median']:.3f} (min {r['min']:.3f}, max {r['max']:.3f}, n={r['n']}); "
          f"goal <= {GOAL}: {'met' if summary['met'] else 'NOT met'}")
    print(f"long / short (embedding process VmHWM): {h['median']:.3f} (min {h['min']:.3f}, max {h['max']:.3f})")
    u = summary["long_over_short_at_most"]
    print(f"long / short (tree peak), at most: the long tree's summed VmHWMs / the short tree's largest sample or "
          f"process VmHWM: {u['median']:.3f} (min {u['min']:.3f}, max {u['max']:.3f}); goal <= {GOAL}: "
          f"{'met' if u['max'] <= GOAL else 'NOT met'} by this bound")
    print(f"long run's tree RSS: max {lt['first_half_max_mib']} MiB in the first half of embedding, "
          f"{lt['second_half_max_mib']} MiB in the second: {'levels off' if lt['levels_off'] else 'still growing'}")
    print(f"load average {load_start} -> {results['load_average']['end']}; {results['seconds']:.0f} s; "
          f"results: {out_path}")


if __name__ == "__main__":
    main()
