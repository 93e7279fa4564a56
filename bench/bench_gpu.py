"""Issue 21's GPU figures in one prepared script: is the GPU kept busy, and if not, which
stage binds? For a machine with an NVIDIA GPU (no internet needed: random weights of the
real architectures, generated videos); on a CPU it runs too, without the busy share.

    python bench/bench_gpu.py [--device cuda:0] [--models ViT-B-32,ViT-L-14,navit]
                              [--clips 8] [--seconds 60] [--smoke]

Videos: `--clips` x `--seconds` of 1280x720 30 fps H.264 (libx264 superfast, 2 B-frames,
a key frame every 2 s), ffmpeg `testsrc2` with temporal noise (detail that costs the decoder
what real footage costs it), cut from one stream; cached in bench/results/cache/.
Models: random weights saved as `source: folder` checkpoints and loaded by the run's own
code (ViT-B-32 and ViT-L-14 through open_clip; VL3-SigLIP-NaViT at the hub's size, 27
layers, 1152-d, bf16 on CUDA). Decoding, each at 1 fps: the CPU backend PyAV with
`sampling: fps` and with `sampling: nearest`, and `nvdec` (`fps`) where it runs.

Per model and decoding, side by side:
  - bare: the model alone on frames decoded beforehand, sampled frames/s;
  - decode alone: the decoding alone (the CPU backend in one process per core, each
    through every clip; nvdec in this process), sampled frames/s;
  - end to end: the core's engine (`embed_videos`: decode lanes, model batches across
    videos, inserts and commits into a fresh Milvus Lite file), sampled frames/s;
  - GPU busy: the mean of NVML's utilization.gpu (the share of each 100 ms in which a
    kernel ran) over the end-to-end run, through `nvidia-smi`;
  - bound by: the stage whose ceiling (bare or decode alone) is lower, or "the engine"
    when end to end falls under 0.8 of both. Goal: ViT-L-14 keeps the GPU >= 80 % busy
    with nvdec or nearest sampling.
`--smoke`: the tests' tiny CLIP and one short clip, to check the script itself on a CPU.
Results also go to bench/results/gpu.json. No timing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_decoders import CORES, GOP, NOISE, decode, lanes  # noqa: E402
from bench_pipeline import (  # noqa: E402
    CACHE, REPO, RESULTS, TINY_CLIP, Timer, decoded_batches, ensure_ffmpeg, ffmpeg, model_folder,
)

MODELS = {  # name -> (family, open_clip architecture or None, vector width)
    "ViT-B-32": ("CLIP", "ViT-B-32", 512),
    "ViT-L-14": ("CLIP", "ViT-L-14", 768),
    "navit": ("VL3-SigLIP-NaViT", None, 1152),
    "tiny-clip": ("CLIP", "ViT-B-32", 512),  # --smoke: the tests' narrow CLIP (bench_pipeline.TINY_CLIP)
}


class GpuBusy:
    """NVML's utilization.gpu every 100 ms through `nvidia-smi -lms`, averaged over the
    `with` block; None where there is no nvidia-smi or the device is not CUDA."""

    def __init__(self, device: str):
        self.index = device.split(":")[1] if device.startswith("cuda:") else "0" if device == "cuda" else None
        self.samples: list[float] = []

    def __enter__(self):
        self.proc = None
        if self.index is not None and shutil.which("nvidia-smi"):
            self.proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", self.index,
                 "-lms", "100"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.samples.append(float(line.strip()))
            except ValueError:
                pass

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()

    @property
    def share(self) -> float | None:
        return sum(self.samples) / len(self.samples) / 100 if self.samples else None


def clips_720p(count: int, seconds: int) -> list[Path]:
    folder = CACHE / "videos" / f"gpu_1280x720_{seconds}s_{count}"
    if len(list(folder.glob("c*.mp4"))) != count:
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        ffmpeg("-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30", "-vf", NOISE, "-t", str(count * seconds),
               "-c:v", "libx264", "-preset", "superfast", "-pix_fmt", "yuv420p", "-g", str(GOP), "-bf", "2",
               "-force_key_frames", f"expr:gte(t,n_forced*{seconds})", "-f", "segment",
               "-segment_time", str(seconds), "-reset_timestamps", "1", str(tmp / "c%03d.mp4"))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.replace(folder)
    return sorted(folder.glob("c*.mp4"))


def model_dir(name: str) -> Path:
    """The random-weight checkpoint of `name`, made once into the bench cache."""
    if name == "tiny-clip":
        return model_folder("clip-tiny-random", TINY_CLIP)
    family, arch, _ = MODELS[name]
    if family == "CLIP":
        import open_clip

        return model_folder(f"clip-{arch.lower()}-random", open_clip.get_model_config(arch))
    from feature_pipeline_dagster.core.models.navit.weights import make_random
    from feature_pipeline_dagster.core.settings import ModelSettings

    dest = CACHE / "models" / "navit-full-random"
    if not (dest / "config.json").exists():
        make_random(ModelSettings(name=family, path=str(dest), source="folder"), dest)
    return dest


def write_config(root: Path, name: str, model: Path, videos: Path, device: str, decoding: tuple[str, str]) -> Path:
    """The shipped config of the model's family, pointed at the bench's model, clips,
    device, decoding and a fresh Lite file."""
    import yaml

    family, arch, dim = MODELS[name]
    shipped = "navit-config.yaml" if family != "CLIP" else "clip-config.yaml"
    config = yaml.safe_load((REPO / "config" / shipped).read_text())
    config["model"].update(path=str(model), source="folder")
    if family == "CLIP":
        config["model"]["arch"] = arch
    decoder, sampling = decoding
    config["video_input"] = {"path": str(videos), "sample_fps": 1.0, "decoder": decoder, "sampling": sampling}
    config["gpus"] = [device]
    config["db"]["uri"] = str(root / "db" / "bench.db")
    config["db"].pop("name", None)
    config["logs"] = {"path": str(root / "logs")}
    for field in config["db"]["collections"][0]["fields"]:
        if field["dtype"] == "FLOAT_VECTOR":
            field["dim"] = dim
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def bare_fps(extractor, clip: Path, device: str) -> float:
    """The model alone on one clip's sampled frames, decoded beforehand; warmed up once."""
    batches = decoded_batches(clip)
    extractor.embed(batches[0])
    with Timer() as t:
        for batch in batches:
            extractor.embed(batch)
        synchronize(device)
    return sum(len(b) for b in batches) / t.wall


def decode_fps(clips: list[Path], decoding: tuple[str, str], device: str) -> float:
    decoder, sampling = decoding
    if decoder != "nvdec":
        wall, frames, _ = lanes(decoder, sampling, clips)
        return frames / wall
    decode(clips[0], "nvdec", 1.0, sampling, device)  # warm-up: the decoder's session
    with Timer() as t:
        frames = sum(decode(clip, "nvdec", 1.0, sampling, device)[2] for clip in clips)
    return frames / t.wall


def end_to_end(name: str, model: Path, clips: list[Path], device: str, decoding: tuple[str, str]) -> tuple[float, float | None]:
    """(sampled frames/s, GPU busy share) of the engine over the clips; the model loaded,
    the decoder processes started and the collections made first (one clip's run)."""
    from feature_pipeline_dagster.core.engine.run import RunReport, embed_videos
    from feature_pipeline_dagster.core.models import load_extractor
    from feature_pipeline_dagster.core.settings import load_settings
    from feature_pipeline_dagster.core.store import store_for
    from feature_pipeline_dagster.core.store.lite_server import LiteServer

    root = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    videos = root / "videos"
    videos.mkdir()
    for clip in clips:
        os.link(clip, videos / clip.name)
    settings = load_settings(write_config(root, name, model, videos, device, decoding))
    store = store_for(settings.db)
    try:
        extractor = load_extractor(settings.model, device)
        spec = settings.db.collections[0]
        embed_videos(settings, spec, store, extractor, [clips[0].name], RunReport())  # warm: decoders, collections
        report = RunReport()
        with GpuBusy(device) as busy, Timer() as t:
            embed_videos(settings, spec, store, extractor, [c.name for c in clips], report)
        if report.failed:
            raise SystemExit(f"{name} {decoding}: {report.failed}")
        return sum(m["frames"] for m in report.written.values()) / t.wall, busy.share
    finally:
        store.close()
        LiteServer(settings.db.uri).stop()
        shutil.rmtree(root, ignore_errors=True)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def bound_by(e2e: float, bare: float, decoded: float) -> str:
    if e2e < 0.8 * min(bare, decoded):
        return "the engine (neither ceiling)"
    return "the model" if bare <= decoded else "decoding"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--models", default="ViT-B-32,ViT-L-14,navit")
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--smoke", action="store_true", help="tiny CLIP, one 4 s clip: checks the script on a CPU")
    args = parser.parse_args()
    from feature_pipeline_dagster.core.decode.backends.nvdec_reader import unusable
    from feature_pipeline_dagster.core.models import load_extractor
    from feature_pipeline_dagster.core.settings import load_settings

    ensure_ffmpeg()
    clips = clips_720p(1, 4) if args.smoke else clips_720p(args.clips, args.seconds)
    decodings = [("pyav", "fps"), ("pyav", "nearest")]
    why_not = unusable(args.device) if args.device.startswith("cuda") else "not a CUDA device"
    if why_not is None:
        decodings.append(("nvdec", "fps"))
    models = ["tiny-clip"] if args.smoke else args.models.split(",")
    out = {"device": args.device, "cores": CORES, "clips": [c.name for c in clips], "nvdec": why_not or "used",
           "load_start": os.getloadavg(), "figures": []}
    lines = []
    for name in models:
        model = model_dir(name)
        scratch = Path(tempfile.mkdtemp(prefix="bench-gpu-config-"))
        settings = load_settings(write_config(scratch, name, model, scratch, args.device, decodings[0]))
        shutil.rmtree(scratch, ignore_errors=True)
        extractor = load_extractor(settings.model, args.device)
        bare = bare_fps(extractor, clips[0], args.device)
        for decoding in decodings:
            decoded = decode_fps(clips, decoding, args.device)
            e2e, busy = end_to_end(name, model, clips, args.device, decoding)
            figure = {"model": name, "decoder": decoding[0], "sampling": decoding[1], "bare_fps": bare,
                      "decode_fps": decoded, "e2e_fps": e2e, "gpu_busy": busy, "bound_by": bound_by(e2e, bare, decoded)}
            out["figures"].append(figure)
            busy_text = "n/a (no CUDA)" if busy is None else f"{busy:.0%}"
            lines.append(f"{name:9s} {decoding[0]:6s} {decoding[1]:8s} bare {bare:8.1f}  decode {decoded:8.1f}  "
                         f"end to end {e2e:8.1f} sampled frames/s  GPU busy {busy_text:>13s}  bound by "
                         f"{figure['bound_by']}")
            print(lines[-1], flush=True)
    print(f"\n{args.device}, {CORES} cores, {len(clips)} clip(s) of 1280x720; nvdec: {out['nvdec']}")
    print("\n".join(lines))
    print("Goal: ViT-L-14 keeps the GPU >= 80 % busy with nvdec or nearest sampling.")
    out["load_end"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / ("gpu_smoke.json" if args.smoke else "gpu.json")).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
