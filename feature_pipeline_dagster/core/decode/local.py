"""Decoding in the run's own process, for nvdec: its frames are CUDA tensors the model
takes as they are, which a child process could hand over only through host memory.
Same interface as `process.DecoderProcess`; a native crash of the GPU decoder is not
contained (NVDEC runs in the driver, not in FFmpeg's software decoders), and FFmpeg's
log (fd 2) is not read: damage is seen where the decoder raises."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from feature_pipeline_dagster.core.decode.reader import VideoReader
from feature_pipeline_dagster.core.batches import FrameBatch
from feature_pipeline_dagster.core.decode.spec import DecodeSpec


class LocalVideo:
    def __init__(self, reader: VideoReader, spec: DecodeSpec):
        self.reader, self.path, self.info = reader, reader.path, reader.info
        self.plan = reader.plan(spec)

    @property
    def partial(self) -> str | None:
        return self.reader.partial

    def batches(self, batch_size: int) -> Iterator[FrameBatch]:
        try:
            yield from self.reader.batches(self.plan, batch_size)
        finally:
            self.reader.close()


class LocalDecoder:
    """A decoder lane's handle that decodes in this process on `device`."""

    def __init__(self, device: str):
        self.device = device

    def open(self, path: Path, spec: DecodeSpec) -> LocalVideo:
        reader = VideoReader(path, decoder=spec.decoder, device=self.device, threads=spec.threads)
        return LocalVideo(reader, spec)

    def stop(self) -> None:
        pass
