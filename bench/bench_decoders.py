"""Decoder backends side by side: CPU decode rates, keyframe sampling against fps
sampling, `nearest` sampling against the full-decode ceiling, and (on CUDA) NVDEC
against CPU decoding.

    python bench/bench_decoders.py [--repeats N] [--seconds S] [--clips C] [--clip-seconds T] [--nearest-only]

Content: ffmpeg `testsrc2` with temporal noise (`noise=alls=4:allf=t+u`, as
bench_throughput.py: flat frames decode unrealistically fast), 30 fps, libx264
`superfast` (B-frames), a key frame every 2 s (`-g 60`, as phones and streaming
encoders write them), S seconds (default 30) at 1280x720; cached in bench/results/cache/.

CPU figures, for every backend installed (decord, torchcodec, PyAV), in this process
(`VideoReader` without the decoder child, so the figure is the decoder's), FFmpeg's
threads on all cores, min/median/max over repeats (the order of backends rotates):
  a. every frame decoded: frames/s (`sample_fps` 30 on a 30 fps file);
  b. fps sampling at 1 fps: sampled frames/s, wall time from open to the last frame;
  c. keyframe sampling (`video_input.sampling: keyframes`, `sample_fps` 30, i.e. uncapped):
     sampled frames/s, and c ÷ b;
  d. the share of decode work keyframe sampling saves over fps sampling, two ways:
     frames the decoder must decode (fps: from the key frame before each sample to it,
     going on without a seek while no key frame lies between; keyframes: the key frames)
     and CPU seconds of the whole decode (time.process_time; the decoder threads included).
Sampling against the full-decode ceiling (`--nearest-only` runs this part alone), at 1 fps
on C clips (default 3) of T s (default 20) of 1280x720 30 fps H.264 with B-frames and a key
frame every 2 s, detailed content (core/samples.py `detail`: fixed texture and fresh grain
each frame; libx264 `superfast`, B-pyramid), cached in bench/results/cache/:
  g. the ceiling: as many `ffmpeg -threads 1 -i CLIP -f null -` full decodes at once as
     cores, each through every clip, as sampled frames/s (video seconds decoded per wall
     second × 1 frame a second);
  h. per backend, as many decoder processes at once as cores (as the run's decode lanes),
     each opening, planning and decoding every clip through `VideoReader` (FFmpeg's
     threads as a run's lanes set them: `engine/lanes.py` decode_threads): sampled frames/s with `video_input.sampling:
     nearest` (default window, 250 ms) and `fps`, ÷ the ceiling; and the frames the
     decoder must decode per sampled frame, from the packet index (`nearest` on PyAV:
     reference frames on the way only, `DecodeIndex.cost`; decord and torchcodec decode
     every frame between, as `fps` does). Median of the repeats, backends rotating.
GPU figures (only with CUDA and PyNvVideoCodec; otherwise "no CUDA: GPU figures not taken"):
  e. every frame decoded, frames/s, nvdec vs the fastest CPU backend on all the box's
     cores, at 720p and 1080p, H.264 and HEVC;
  f. end to end, random-weight CLIP ViT-B-32 (real architecture) on the GPU, 1 fps
     sampling: frames/s with CPU decode (frames copied to the device) and with nvdec
     (frames stay on the device).
Results: bench/results/decoders.json and decoders.txt (with --nearest-only:
decoders_nearest.json and .txt). Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_pipeline import CACHE, RESULTS, ensure_ffmpeg, ffmpeg, load_avg, stats  # noqa: E402

NOISE = "noise=alls=4:allf=t+u"
GOP = 60
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def detailed(size: str, seconds: int, codec: str = "libx264") -> Path:
    path = CACHE / "videos" / f"decoders_{codec}_{size}_{seconds}s_gop{GOP}.mp4"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.mp4")
        ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30", "-vf", NOISE, "-t", str(seconds),
               "-c:v", codec, "-preset", "superfast", "-g", str(GOP), "-pix_fmt", "yuv420p", str(tmp))
        tmp.replace(path)
    return path


def installed() -> list[str]:
    import importlib.util

    from feature_pipeline_dagster.core.decode.backends import torchcodec_loads

    found = ["decord"] if importlib.util.find_spec("decord") else []
    found += ["torchcodec"] if torchcodec_loads() is None else []
    return found + ["pyav"]


def decode(path: Path, backend: str, sample_fps: float, sampling: str = "fps", device: str | None = None):
    """Wall and CPU seconds of open + plan + every batch, the plan, the reader."""
    from feature_pipeline_dagster.core.decode.reader import VideoReader
    from feature_pipeline_dagster.core.decode.spec import DecodeSpec

    wall, cpu = time.perf_counter(), time.process_time()
    reader = VideoReader(path, decoder=backend, device=device)
    plan = reader.plan(DecodeSpec(sample_fps=sample_fps, sampling=sampling))
    frames = 0
    for batch in reader.batches(plan, 32):
        frames += len(batch)
    if device and device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    keyframes = np.asarray(reader._reader.keyframes)
    reader.close()
    return wall, cpu, frames, plan, keyframes


def frames_to_decode(plan, keyframes: np.ndarray) -> int:
    """What a decoder that seeks to the key frame before each sample (and runs on
    without a seek while no key frame lies between) decodes for `plan`."""
    if plan.key_frames_only:
        return len(plan)
    total, at = 0, -1
    for frame_id in plan.frame_ids.tolist():
        key = int(keyframes[np.searchsorted(keyframes, frame_id, side="right") - 1]) if len(keyframes) else 0
        start = at + 1 if key <= at else key
        total += frame_id - start + 1
        at = frame_id
    return total


def cpu_figures(path: Path, backends: list[str], repeats: int) -> dict:
    out = {}
    for backend in backends:
        decode(path, backend, 1.0)  # warm: imports, page cache
    runs = {b: {"all": [], "fps": [], "key": [], "cpu_fps": [], "cpu_key": []} for b in backends}
    plans = {}
    for rep in range(repeats):
        for backend in backends[rep % len(backends):] + backends[:rep % len(backends)]:
            r = runs[backend]
            wall, _, n, _, _ = decode(path, backend, 30.0)
            r["all"].append(n / wall)
            wall, cpu, n, plan, keys = decode(path, backend, 1.0)
            r["fps"].append(n / wall)
            r["cpu_fps"].append(cpu)
            plans[(backend, "fps")] = (plan, keys)
            wall, cpu, n, plan, keys = decode(path, backend, 30.0, "keyframes")
            r["key"].append(n / wall)
            r["cpu_key"].append(cpu)
            plans[(backend, "key")] = (plan, keys)
    for backend, r in runs.items():
        fps_plan, keys = plans[(backend, "fps")]
        key_plan, _ = plans[(backend, "key")]
        work_fps, work_key = frames_to_decode(fps_plan, keys), frames_to_decode(key_plan, keys)
        out[backend] = {
            "every_frame_fps": stats(r["all"]),
            "fps_mode_sampled_fps": stats(r["fps"]),
            "keyframe_mode_sampled_fps": stats(r["key"]),
            "keyframe_over_fps_ratio": statistics.median(r["key"]) / statistics.median(r["fps"]),
            "sampled": {"fps": len(fps_plan), "keyframes": len(key_plan)},
            "frames_decoded": {"fps": work_fps, "keyframes": work_key},
            "work_saved_frames": 1 - work_key / work_fps,
            "cpu_s": {"fps": statistics.median(r["cpu_fps"]), "keyframes": statistics.median(r["cpu_key"])},
            "work_saved_cpu": 1 - statistics.median(r["cpu_key"]) / statistics.median(r["cpu_fps"]),
        }
    return out


def gpu_figures(repeats: int, seconds: int, cpu_best: str) -> dict | str:
    try:
        import torch
    except ImportError:
        return "no CUDA: GPU figures not taken (no torch)"
    if not torch.cuda.is_available():
        return "no CUDA: GPU figures not taken"
    from feature_pipeline_dagster.core.decode.backends.nvdec_reader import unusable

    if why := unusable("cuda:0"):
        return f"CUDA present, but {why}: GPU figures not taken"
    out = {}
    for codec in ("libx264", "libx265"):
        for size in ("1280x720", "1920x1080"):
            path = detailed(size, seconds, codec)
            decode(path, "nvdec", 30.0, device="cuda:0")
            gpu = [decode(path, "nvdec", 30.0, device="cuda:0") for _ in range(repeats)]
            cpu = [decode(path, cpu_best, 30.0) for _ in range(repeats)]
            out[f"{codec} {size}"] = {"nvdec_fps": stats([n / w for w, _, n, _, _ in gpu]),
                                      f"{cpu_best}_{CORES}_cores_fps": stats([n / w for w, _, n, _, _ in cpu])}
    out["end_to_end_vit_b_32"] = end_to_end(detailed("1280x720", seconds), repeats, cpu_best)
    return out


def end_to_end(path: Path, repeats: int, cpu_best: str) -> dict:
    """Decode + ViT-B-32 on cuda:0 at 1 fps, frames/s, CPU decode vs nvdec."""
    import torch

    from feature_pipeline_dagster.core.decode.reader import VideoReader
    from feature_pipeline_dagster.core.decode.spec import DecodeSpec
    from feature_pipeline_dagster.core.models import load_extractor
    from feature_pipeline_dagster.core.models.clip.weights import make_random
    from feature_pipeline_dagster.core.settings import ModelSettings

    folder = CACHE / "models" / "clip-vit-b-32-random"
    model = ModelSettings(name="CLIP", path=str(folder), source="folder")
    if not folder.exists():
        make_random(model, folder)
    extractor = load_extractor(model, "cuda:0")

    def run(backend: str, device: str | None) -> float:
        started = time.perf_counter()
        reader = VideoReader(path, decoder=backend, device=device)
        plan = reader.plan(DecodeSpec())
        n = 0
        for batch in reader.batches(plan, 32):
            extractor.embed(batch)
            n += len(batch)
        torch.cuda.synchronize()
        return n / (time.perf_counter() - started)

    run("nvdec", "cuda:0")
    return {f"{cpu_best}_decode_fps": stats([run(cpu_best, None) for _ in range(repeats)]),
            "nvdec_decode_fps": stats([run("nvdec", "cuda:0") for _ in range(repeats)])}


def nearest_clips(count: int, seconds: int) -> list[Path]:
    """Detailed 720p clips from core/samples.py (about a minute each to write here)."""
    from feature_pipeline_dagster.core.samples import write_video

    clips = []
    for seed in range(count):
        path = CACHE / "videos" / f"nearest_1280x720_{seconds}s_gop{GOP}_detail_{seed}.mp4"
        if not path.exists():
            tmp = path.with_suffix(".tmp.mp4")
            write_video(tmp, seconds=seconds, fps=30, size=(1280, 720), seed=seed, detail=True, gop=GOP)
            tmp.replace(path)
        clips.append(path)
    return clips


def ceiling(clips: list[Path]) -> tuple[float, float]:
    """Wall and CPU seconds for CORES single-threaded `ffmpeg -f null` decodes at once, each of every clip."""
    import resource

    script = "; ".join(f"ffmpeg -nostdin -v error -threads 1 -i {c} -f null -" for c in clips)
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    procs = [subprocess.Popen(["bash", "-c", script]) for _ in range(CORES)]
    if any(p.wait() for p in procs):
        raise SystemExit("ffmpeg failed")
    wall, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - used.ru_utime - used.ru_stime


def lane_worker(backend: str, sampling: str, clips: list[str]) -> None:
    """One decoder process of figure h: warm, say ready, wait for go, decode, report."""
    from feature_pipeline_dagster.core.decode.heap import fix_mmap_threshold
    from feature_pipeline_dagster.core.decode.reader import VideoReader
    from feature_pipeline_dagster.core.decode.spec import DecodeSpec
    from feature_pipeline_dagster.core.engine.lanes import decode_threads

    threads = decode_threads(CORES)  # as a run's CORES lanes set FFmpeg's threads
    fix_mmap_threshold()  # as a decoder process does (core/decode/process.py)

    def run(paths):
        frames, spec = 0, DecodeSpec(sampling=sampling)
        for path in paths:
            reader = VideoReader(path, decoder=backend, threads=threads)
            plan = reader.plan(spec)
            frames += sum(len(batch) for batch in reader.batches(plan, 32))
            reader.close()
        return frames

    VideoReader(clips[0], decoder=backend).close()  # imports, page cache
    print("ready", flush=True)
    sys.stdin.readline()
    started, cpu = time.perf_counter(), time.process_time()
    frames = run(clips)
    with open("/proc/self/status") as status:  # VmHWM: ru_maxrss would carry the parent's peak across exec
        peak_kb = next((int(line.split()[1]) for line in status if line.startswith("VmHWM")), 0)
    print(json.dumps({"frames": frames, "seconds": time.perf_counter() - started, "cpu": time.process_time() - cpu,
                      "peak_kb": peak_kb}), flush=True)


def lanes(backend: str, sampling: str, clips: list[Path]) -> tuple[float, int, float, float]:
    """(wall seconds, sampled frames, CPU seconds, the largest peak RSS in MiB) of CORES
    decoder processes at once, each through every clip."""
    procs = []
    for i in range(CORES):
        order = clips[i % len(clips):] + clips[:i % len(clips)]
        procs.append(subprocess.Popen([sys.executable, __file__, "--worker", backend, sampling, *map(str, order)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    for proc in procs:
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"{backend} worker failed to start")
    started = time.perf_counter()
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = [json.loads(proc.stdout.readline()) for proc in procs]
    wall = time.perf_counter() - started
    for proc in procs:
        proc.wait()
    return (wall, sum(r["frames"] for r in results), sum(r["cpu"] for r in results),
            max(r["peak_kb"] for r in results) / 1024)


def frames_per_sample(clips: list[Path], backend: str, sampling: str) -> float:
    """Frames the decoder must decode per sampled frame, from the packet index."""
    from feature_pipeline_dagster.core.decode.reader import VideoReader
    from feature_pipeline_dagster.core.decode.spec import DecodeSpec

    decoded = sampled = 0
    for path in clips:
        reader = VideoReader(path, decoder="pyav")
        plan = reader.plan(DecodeSpec(sampling=sampling))
        if not plan.key_frames_only and backend == "pyav":
            index, at = reader._reader.decode_index(), -1
            for frame_id in plan.frame_ids.tolist():
                decoded += index.cost(frame_id, at)[0]
                at = int(index.decode_order[frame_id])
        else:
            decoded += frames_to_decode(plan, np.asarray(reader._reader.keyframes))
        sampled += len(plan)
        reader.close()
    return decoded / sampled


def nearest_figures(clips: list[Path], backends: list[str], repeats: int) -> dict:
    seconds = sum(float(clip_seconds(c)) for c in clips)
    runs = {"ceiling": []} | {f"{b} {s}": [] for b in backends for s in ("nearest", "fps")}
    cpu = {key: [] for key in runs}  # CPU ms per sampled frame: steadier than wall time on a shared machine
    peak = {key: [] for key in runs if key != "ceiling"}  # a decoder process's peak RSS, MiB
    for rep in range(repeats):
        wall, used = ceiling(clips)
        runs["ceiling"].append(CORES * seconds / wall)  # sampled frames/s at 1 fps
        cpu["ceiling"].append(1000 * used / (CORES * seconds))
        for backend in backends[rep % len(backends):] + backends[:rep % len(backends)]:
            for sampling in ("nearest", "fps"):
                wall, frames, used, peak_mib = lanes(backend, sampling, clips)
                peak[f"{backend} {sampling}"].append(peak_mib)
                runs[f"{backend} {sampling}"].append(frames / wall)
                cpu[f"{backend} {sampling}"].append(1000 * used / frames)
        print(f"  repeat {rep + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in runs.items()), flush=True)
    base, base_cpu = statistics.median(runs["ceiling"]), statistics.median(cpu["ceiling"])
    out = {}
    for key, values in runs.items():
        backend, _, sampling = key.partition(" ")
        out[key] = {"sampled_fps": stats(values), "over_ceiling": statistics.median(values) / base,
                    "cpu_ms_per_sample": stats(cpu[key]), "over_ceiling_cpu": base_cpu / statistics.median(cpu[key]),
                    "frames_per_sample": 30.0 if key == "ceiling" else frames_per_sample(clips, backend, sampling),
                    "peak_mib": stats(peak[key]) if key in peak else None}
    return out


def clip_seconds(path: Path) -> float:
    """The clip's length in video seconds (frames ÷ rate), as the ceiling counts it."""
    from feature_pipeline_dagster.core.decode.backends.base import packet_index

    index = packet_index(path)
    return len(index.starts) / index.fps


def nearest_table(figures: dict) -> list[str]:
    lines = ["| decoding (1 fps sampling) | sampled frames/s | ÷ ceiling | CPU ms per sampled frame | ceiling ÷ this "
             "| frames decoded per sampled frame | a decoder process's peak RSS, MiB |",
             "|---|---|---|---|---|---|---|"]
    for key, f in figures.items():
        name = (f"full-decode ceiling: {CORES} × `ffmpeg -threads 1 -f null`" if key == "ceiling"
                else f"{key.split()[0]}, `sampling: {key.split()[1]}`, {CORES} decoder processes")
        s, c = f["sampled_fps"], f["cpu_ms_per_sample"]
        peak = f"{f['peak_mib']['median']:.0f}" if f["peak_mib"] else ""
        lines.append(f"| {name} | {s['median']:.1f} ({s['min']:.1f}-{s['max']:.1f}) | {f['over_ceiling']:.1f}× | "
                     f"{c['median']:.0f} | {f['over_ceiling_cpu']:.1f}× | {f['frames_per_sample']:.1f} | {peak} |")
    return lines


def table(cpu: dict) -> list[str]:
    lines = ["| backend | every frame decoded, frames/s | 1 fps sampling, sampled frames/s | keyframe sampling, sampled frames/s | keyframe ÷ fps | decode work saved (frames decoded / CPU s) |",
             "|---|---|---|---|---|---|"]
    for backend, f in cpu.items():
        med = {k: f[k]["median"] for k in ("every_frame_fps", "fps_mode_sampled_fps", "keyframe_mode_sampled_fps")}
        lines.append(f"| {backend} | {med['every_frame_fps']:.0f} | {med['fps_mode_sampled_fps']:.1f} | "
                     f"{med['keyframe_mode_sampled_fps']:.1f} | {f['keyframe_over_fps_ratio']:.1f}× | "
                     f"{f['work_saved_frames']:.0%} ({f['frames_decoded']['keyframes']} of {f['frames_decoded']['fps']}) / "
                     f"{f['work_saved_cpu']:.0%} ({f['cpu_s']['keyframes']:.1f} of {f['cpu_s']['fps']:.1f} s) |")
    return lines


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        return lane_worker(sys.argv[2], sys.argv[3], sys.argv[4:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--clips", type=int, default=3, help="clips for the sampling-vs-ceiling figures")
    parser.add_argument("--clip-seconds", type=int, default=20)
    parser.add_argument("--nearest-only", action="store_true", help="only the sampling-vs-ceiling figures")
    args = parser.parse_args()
    ensure_ffmpeg()
    started, load_start = time.time(), load_avg()
    backends = installed()
    clips = nearest_clips(args.clips, args.clip_seconds)
    print(f"{len(clips)} clips of {args.clip_seconds} s of detailed 1280x720 H.264 (B-frames, key frame every "
          f"{GOP // 30} s), 1 fps; backends {backends}; {CORES} cores", flush=True)
    nearest = nearest_figures(clips, backends, args.repeats)
    if args.nearest_only:
        lines = [f"Run: `python bench/bench_decoders.py {' '.join(sys.argv[1:])}`, {CORES}-core CPU "
                 f"({platform.machine()}), load average {{'start': {load_start}, 'end': {load_avg()}}}, "
                 f"{time.time() - started:.0f} s, {datetime.now().isoformat(timespec='seconds')}.", "",
                 *nearest_table(nearest)]
        print("\n".join(lines))
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "decoders_nearest.json").write_text(json.dumps(
            {"nearest": nearest, "args": vars(args), "cores": CORES, "clips": [c.name for c in clips]}, indent=1))
        (RESULTS / "decoders_nearest.txt").write_text("\n".join(lines) + "\n")
        return
    path = detailed("1280x720", args.seconds)
    print(f"{path.name}: {args.seconds} s of detailed 1280x720 H.264, key frame every {GOP // 30} s; backends {backends}; "
          f"{CORES} cores", flush=True)
    cpu = cpu_figures(path, backends, args.repeats)
    best = max(cpu, key=lambda b: cpu[b]["every_frame_fps"]["median"])
    gpu = gpu_figures(args.repeats, args.seconds, best)
    lines = [f"Run: `python bench/bench_decoders.py --repeats {args.repeats} --seconds {args.seconds}`, {CORES}-core CPU "
             f"({platform.machine()}), load average {{'start': {load_start}, 'end': {load_avg()}}}, "
             f"{time.time() - started:.0f} s, {datetime.now().isoformat(timespec='seconds')}.", "", *table(cpu), "",
             *nearest_table(nearest), ""]
    if isinstance(gpu, str):
        lines.append(gpu)
    else:
        lines += ["| GPU figure | value |", "|---|---|"]
        lines += [f"| {k} | {json.dumps(v)} |" for k, v in gpu.items()]
    print("\n".join(lines))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "decoders.json").write_text(json.dumps({"cpu": cpu, "nearest": nearest, "gpu": gpu, "args": vars(args),
                                                        "cores": CORES,
                                                        "file": path.name}, indent=1, default=str))
    (RESULTS / "decoders.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
