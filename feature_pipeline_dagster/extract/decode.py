"""Open a video, plan which frames to sample, decode them in batches (decord).

decord raises RuntimeError when a file cannot be opened and its own DECORDError (not a
RuntimeError) on a damaged stream; both become one `VideoError` naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from feature_pipeline_dagster.errors import VideoError, one_line
from feature_pipeline_dagster.extract.batches import FrameBatch


@dataclass(frozen=True)
class SamplingPlan:
    """Source frame indices to embed, picked at `sample_fps` and capped at `max_frames`."""

    frame_ids: np.ndarray

    @classmethod
    def for_video(cls, frame_count: int, fps: float, sample_fps: float, max_frames: int | None) -> SamplingPlan:
        if frame_count <= 0:
            return cls(np.zeros(0, dtype=np.int64))
        fps = fps if fps > 0 else 1.0
        step = fps / sample_fps  # source frames between samples; < 1 means every frame
        count = max(1, int(np.floor((frame_count - 1) / step)) + 1) if step > 1 else frame_count
        ids = np.unique(np.minimum(np.round(np.arange(count) * max(step, 1.0)), frame_count - 1).astype(np.int64))
        if max_frames is not None and len(ids) > max_frames:
            ids = ids[np.round(np.linspace(0, len(ids) - 1, max_frames)).astype(np.int64)]
        return cls(ids)

    def __len__(self) -> int:
        return len(self.frame_ids)


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    frame_count: int
    fps: float
    width: int
    height: int


def _decord_errors() -> tuple[type[BaseException], ...]:
    from decord._ffi.base import DECORDError

    return (RuntimeError, DECORDError)


class VideoReader:
    """One open video; `batches` decodes a plan's frames `batch_size` at a time so memory
    is bounded by the batch, not by the video."""

    def __init__(self, path: str | Path):
        import decord

        self.path = Path(path)
        if not self.path.is_file():
            raise VideoError(f"{self.path}: not a readable file")
        if self.path.stat().st_size == 0:
            raise VideoError(f"{self.path}: empty file (0 bytes)")
        try:
            self._reader = decord.VideoReader(str(self.path), ctx=decord.cpu(0), num_threads=0)
            frame_count = len(self._reader)
            height, width = self._reader[0].shape[:2] if frame_count else (0, 0)
            self._reader.seek(0)
        except _decord_errors() as err:
            if "cannot find video stream" in str(err):
                raise VideoError(f"{self.path}: no video stream (an audio-only file?)") from None
            raise VideoError(f"{self.path}: cannot open video ({one_line(err)})") from None
        if frame_count == 0:
            raise VideoError(f"{self.path}: no video frames (audio-only or empty stream?)")
        self.info = VideoInfo(self.path, frame_count, float(self._reader.get_avg_fps()), width, height)

    def plan(self, sample_fps: float, max_frames: int | None) -> SamplingPlan:
        return SamplingPlan.for_video(self.info.frame_count, self.info.fps, sample_fps, max_frames)

    def timestamps_ms(self, frame_ids: np.ndarray) -> np.ndarray:
        """Presentation time of each frame, from the stream's own timestamps."""
        try:
            starts = self._reader.get_frame_timestamp(frame_ids)[:, 0]
        except _decord_errors() as err:
            raise VideoError(f"{self.path}: cannot read frame timestamps ({one_line(err)})") from None
        return np.round(np.asarray(starts, dtype=np.float64) * 1000).astype(np.int64)

    def batches(self, plan: SamplingPlan, batch_size: int) -> Iterator[FrameBatch]:
        for start in range(0, len(plan), batch_size):
            ids = plan.frame_ids[start : start + batch_size]
            try:
                frames = self._reader.get_batch(ids).asnumpy()
            except _decord_errors() as err:
                raise VideoError(
                    f"{self.path}: damaged video stream near frame {int(ids[0])} ({one_line(err)})"
                ) from None
            yield FrameBatch(frames, ids, self.timestamps_ms(ids))
