"""Decoder backends behind one small interface (`base.Backend`), chosen by
`video_input.decoder`: decord, torchcodec (CPU), PyAV, or nvdec (PyNvVideoCodec on the
run's CUDA device). Each lives in its own module and imports its library on first use,
so choosing one never loads the others (nor torch, for decord and PyAV).

`auto` picks PyAV: it is installed everywhere (its wheels bundle FFmpeg), and of the CPU
backends it costs the least CPU and memory together. Per sampled frame of 720p at 1 fps,
two lanes of one thread: 62 CPU ms against decord's 79 (`fps`), 50 against 74 (`nearest`;
it alone skips the frames nothing references), in a decoder process of 133 MiB against
216-273; torchcodec takes 65-75 ms but 800 MiB (its decoder process imports torch) and
needs the system's FFmpeg (bench/bench_decoders.py --nearest-only, 3 repeats). decord
also reads packets as fast as the file gives them while a frame decodes and decodes them
all into memory it keeps, so its process grows with a video's length: 331 MiB on a
3-minute 720p video against PyAV's 137 (bench/bench_long_video.py --navit). It never
picks nvdec: GPU decoding is asked for by name.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from feature_pipeline_dagster.core.errors import one_line

DECODERS = ("auto", "decord", "torchcodec", "pyav", "nvdec")
SAMPLINGS = ("fps", "keyframes", "nearest")
_MODULES = {
    "decord": "feature_pipeline_dagster.core.decode.backends.decord_reader",
    "torchcodec": "feature_pipeline_dagster.core.decode.backends.torchcodec_reader",
    "pyav": "feature_pipeline_dagster.core.decode.backends.pyav_reader",
    "nvdec": "feature_pipeline_dagster.core.decode.backends.nvdec_reader",
}


def torchcodec_loads() -> str | None:
    """None if torchcodec imports with its FFmpeg libraries here, else why not (one line)."""
    if importlib.util.find_spec("torchcodec") is None:
        return "torchcodec is not installed"
    try:
        torchcodec = importlib.import_module("torchcodec")
    except Exception as err:  # RuntimeError: a torch mismatch
        return f"torchcodec cannot load its FFmpeg libraries ({one_line(err)})"
    if torchcodec.ffmpeg_major_version is None:  # 0.17 imports without FFmpeg, then fails each video
        return "torchcodec cannot load its FFmpeg libraries (none of FFmpeg 4-9 found; Debian: apt-get install ffmpeg)"
    return None


def resolve(name: str) -> str:
    """The backend `name` (one of DECODERS, checked where the config is read) stands for."""
    return "pyav" if name == "auto" else name


def open_backend(name: str, path: Path, device: str | None = None, threads: int = 0):
    """An opened `base.Backend` of the resolved name over `path`, decoding with `threads`
    FFmpeg threads (0: FFmpeg's choice); raises `base.OpenFailed` for a file it cannot
    open, `VideoError` when the backend itself is unusable here."""
    module = importlib.import_module(_MODULES[resolve(name)])
    return module.open_video(path, device=device, threads=threads)
