"""Decoder backends side by side: CPU decode rates, keyframe sampling against fps
sampling, and (on CUDA) NVDEC against CPU decoding.

    python bench/bench_decoders.py [--repeats N] [--seconds S]

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
GPU figures (only with CUDA and PyNvVideoCodec; otherwise "no CUDA: GPU figures not taken"):
  e. every frame decoded, frames/s, nvdec vs the fastest CPU backend on all the box's
     cores, at 720p and 1080p, H.264 and HEVC;
  f. end to end, random-weight CLIP ViT-B-32 (real architecture) on the GPU, 1 fps
     sampling: frames/s with CPU decode (frames copied to the device) and with nvdec
     (frames stay on the device).
Results: bench/results/decoders.json and decoders.txt. Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
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

    wall, cpu = time.perf_counter(), time.process_time()
    reader = VideoReader(path, decoder=backend, device=device)
    plan = reader.plan(sample_fps, None, sampling)
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
        plan = reader.plan(1.0, None)
        n = 0
        for batch in reader.batches(plan, 32):
            extractor.embed(batch)
            n += len(batch)
        torch.cuda.synchronize()
        return n / (time.perf_counter() - started)

    run("nvdec", "cuda:0")
    return {f"{cpu_best}_decode_fps": stats([run(cpu_best, None) for _ in range(repeats)]),
            "nvdec_decode_fps": stats([run("nvdec", "cuda:0") for _ in range(repeats)])}


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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=30)
    args = parser.parse_args()
    ensure_ffmpeg()
    started, load_start = time.time(), load_avg()
    path = detailed("1280x720", args.seconds)
    backends = installed()
    print(f"{path.name}: {args.seconds} s of detailed 1280x720 H.264, key frame every {GOP // 30} s; backends {backends}; "
          f"{CORES} cores", flush=True)
    cpu = cpu_figures(path, backends, args.repeats)
    best = max(cpu, key=lambda b: cpu[b]["every_frame_fps"]["median"])
    gpu = gpu_figures(args.repeats, args.seconds, best)
    lines = [f"Run: `python bench/bench_decoders.py --repeats {args.repeats} --seconds {args.seconds}`, {CORES}-core CPU "
             f"({platform.machine()}), load average {{'start': {load_start}, 'end': {load_avg()}}}, "
             f"{time.time() - started:.0f} s, {datetime.now().isoformat(timespec='seconds')}.", "", *table(cpu), ""]
    if isinstance(gpu, str):
        lines.append(gpu)
    else:
        lines += ["| GPU figure | value |", "|---|---|"]
        lines += [f"| {k} | {json.dumps(v)} |" for k, v in gpu.items()]
    print("\n".join(lines))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "decoders.json").write_text(json.dumps({"cpu": cpu, "gpu": gpu, "args": vars(args), "cores": CORES,
                                                        "file": path.name}, indent=1, default=str))
    (RESULTS / "decoders.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
