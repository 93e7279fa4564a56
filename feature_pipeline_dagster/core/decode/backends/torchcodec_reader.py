"""torchcodec on the CPU: wheels for macOS arm64 and Linux aarch64, where decord has
none. It loads the system's FFmpeg (4 to 8; its wheel bundles none), seeks exactly
after a scan of the file, and applies the display matrix itself (checked against decord
by the parity tests). It silences FFmpeg's log on every decoder it creates, so the log
level is raised again after each: damage is then logged to fd 2, as with decord."""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import numpy as np

from feature_pipeline_dagster.core.decode.backends.base import Backend, DecodeFailed, OpenFailed, packet_index
from feature_pipeline_dagster.core.errors import VideoError, one_line
from feature_pipeline_dagster.core.decode.backends import torchcodec_loads

AV_LOG_INFO = 32  # FFmpeg's default level, the one decord leaves in place


class TorchcodecBackend(Backend):
    name = "torchcodec"

    def __init__(self, path: Path, device: str = "cpu", threads: int = 0):
        self.path, self.device, self.threads = path, device, threads
        self._index = index = packet_index(path)
        self.starts, self.keyframes, self.fps = index.starts, index.keyframes, index.fps
        self.cut_short = index.cut_short
        self._decoder = None
        if not self.cut_short:
            self._open()

    def _open(self) -> None:
        from torchcodec.decoders import VideoDecoder

        try:
            self._decoder = VideoDecoder(str(self.path), seek_mode="exact", dimension_order="NHWC",
                                         num_ffmpeg_threads=self.threads, device=self.device)
        except (RuntimeError, ValueError) as err:
            raise OpenFailed(one_line(err)) from None
        _ffmpeg_log_level(AV_LOG_INFO)
        if len(self._decoder) != len(self.starts):
            raise OpenFailed(f"torchcodec finds {len(self._decoder)} frames where the demuxer finds {len(self.starts)}")

    def frames(self, ids: np.ndarray, final: bool = False):
        try:
            data = self._decoder.get_frames_at(ids.tolist()).data
        except (RuntimeError, IndexError, ValueError) as err:
            raise DecodeFailed("decoder error: " + one_line(err)) from None
        return data.numpy() if data.device.type == "cpu" else data

    def restart(self) -> None:
        self._open()

    def close(self) -> None:
        self._decoder = None


@functools.lru_cache(maxsize=1)
def _libavutil():
    """torchcodec's libavutil (the system's), found among the loaded libraries: PyAV and
    decord bundle their own copies, whose log level is not the one that matters here."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "libavutil" in line}
    except OSError:
        return None  # not Linux: damage is then seen only where the decoder raises
    paths = sorted(p for p in paths if "/av.libs/" not in p and "decord" not in p)
    return ctypes.CDLL(paths[0]) if paths else None


def _ffmpeg_log_level(level: int) -> None:
    lib = _libavutil()
    if lib is not None:
        lib.av_log_set_level(level)


def open_video(path: Path, device: str | None = None, threads: int = 0) -> TorchcodecBackend:
    if why := torchcodec_loads():
        raise VideoError(f"video_input.decoder torchcodec: {why}")
    return TorchcodecBackend(path, threads=threads)
