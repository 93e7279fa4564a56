"""nvdec: NVIDIA's hardware decoder through PyNvVideoCodec (`pip install
'feature-pipeline-dagster[gpu]'`), on the run's CUDA device. Frames are decoded into
device memory as interleaved RGB and handed to torch through DLPack, so they reach the
model without a copy through host memory; the display matrix is applied on the GPU.
Only the run's own process can hold them, so nvdec decodes there, not in a child.

Written against PyNvVideoCodec 2.x's documented `SimpleDecoder` (random access by frame
index, `get_batch_frames_by_index`, frames exporting `__dlpack__`); no machine here
had a GPU, so only its selection and its failures are tested."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from feature_pipeline_dagster.core.decode.backends.base import (
    Backend, DecodeFailed, OpenFailed, display_rotation, packet_index,
)
from feature_pipeline_dagster.core.errors import VideoError, one_line


def unusable(device: str | None) -> str | None:
    """Why nvdec cannot decode for a run on `device`, in one line; None if it can."""
    if not device or not device.startswith("cuda"):
        return f"nvdec decodes on the run's CUDA device, and this run's device is {device or 'cpu'}"
    if importlib.util.find_spec("PyNvVideoCodec") is None:
        return "nvdec needs PyNvVideoCodec: pip install 'feature-pipeline-dagster[gpu]'"
    import torch

    if not torch.cuda.is_available():
        return "nvdec needs CUDA, and torch sees no CUDA device on this machine"
    return None


class NvdecBackend(Backend):
    name = "nvdec"

    def __init__(self, path: Path, device: str):
        self.path, self.device = path, device
        self.gpu = int(device.partition(":")[2] or 0)
        index = packet_index(path)
        self.starts, self.keyframes, self.fps = index.starts, index.keyframes, index.fps
        self.cut_short = index.cut_short
        self._rotation = display_rotation(path) // 90 % 4
        self._decoder = None
        if not self.cut_short:
            self._open()

    def _open(self) -> None:
        import PyNvVideoCodec as nvc

        try:
            self._decoder = nvc.SimpleDecoder(str(self.path), gpu_id=self.gpu, use_device_memory=True,
                                              output_color_type=nvc.OutputColorType.RGB)
        except Exception as err:  # the bindings raise plain RuntimeError/ValueError for bad input
            raise OpenFailed(one_line(err)) from None
        try:
            count = len(self._decoder)
        except TypeError:  # a version without __len__: the demuxer's count stands
            count = len(self.starts)
        if count != len(self.starts):
            raise OpenFailed(f"PyNvVideoCodec finds {count} frames where the demuxer finds {len(self.starts)}")

    def frames(self, ids: np.ndarray, final: bool = False):
        """(N, H, W, 3) uint8 on the run's CUDA device: no host copy."""
        import torch

        try:
            decoded = self._decoder.get_batch_frames_by_index(ids.tolist())
            frames = torch.stack([torch.from_dlpack(frame) for frame in decoded])
        except Exception as err:
            raise DecodeFailed("decoder error: " + one_line(err)) from None
        if len(frames) != len(ids):
            raise DecodeFailed(f"decoder error: {len(frames)} frames decoded of {len(ids)}")
        return torch.rot90(frames, k=self._rotation, dims=(1, 2)).contiguous() if self._rotation else frames

    def restart(self) -> None:
        self._open()

    def close(self) -> None:
        self._decoder = None


def open_video(path: Path, device: str | None = None, threads: int = 0) -> NvdecBackend:
    """`threads` does not apply: NVDEC decodes on the GPU."""
    if why := unusable(device):
        raise VideoError(f"video_input.decoder: {why}")
    return NvdecBackend(path, device)
