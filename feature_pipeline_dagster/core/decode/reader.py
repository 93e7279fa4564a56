"""Open a video, plan which frames to sample, decode them in batches, through the
backend `video_input.decoder` names (`backends/`: decord, torchcodec, PyAV, nvdec).

Everything a backend does not decide lives here, so every backend fails the same way:
bad files fail with one `VideoError` naming the file; damaged ones give what is sound:
- a file cut short whose index is at the front (an interrupted "faststart" download),
  which a backend cannot open or whose index promises frames its data lacks, has its
  readable packets copied into a temporary file first, and the frames that exist are
  embedded, with a `partial` note saying so;
- damage in the middle of the stream (the backend raises, or FFmpeg's decoder logs an
  error while concealing it) stops the video at the last frame decoded before it, placed
  packet by packet (`damage.py`), so no damaged frame is embedded, and the `partial`
  note says where and why.
Decoder log lines are read through `complaints`, a callable the decoder process gives
(FFmpeg writes them to file descriptor 2, which only that process may take over), and
from the backend itself where its library logs through Python (PyAV).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from feature_pipeline_dagster.core.errors import VideoError, one_line
from feature_pipeline_dagster.core.batches import FrameBatch
from feature_pipeline_dagster.core.decode.backends import open_backend, resolve
from feature_pipeline_dagster.core.decode.backends.base import DecodeFailed, DecodeIndex, OpenFailed
from feature_pipeline_dagster.core.decode.damage import damage_in, sound_count
from feature_pipeline_dagster.core.decode.spec import DecodeSpec

MAX_BATCH_BYTES = 128 * 1024 * 1024  # decoded RGB per batch: an 8K frame is 100 MB


@dataclass(frozen=True)
class SamplingPlan:
    """Source frames to embed: one per 1/`sample_fps` seconds of presentation time (so a
    variable-frame-rate video is sampled evenly in time, not in frames), capped at
    `max_frames` spread evenly over the video."""

    frame_ids: np.ndarray
    timestamps_ms: np.ndarray
    key_frames_only: bool = False  # every planned frame is a key frame: decode those only

    @classmethod
    def for_timestamps(cls, starts_s: np.ndarray, sample_fps: float, max_frames: int | None) -> SamplingPlan:
        starts = np.asarray(starts_s, dtype=np.float64)
        if len(starts) == 0:
            return cls(np.zeros(0, np.int64), np.zeros(0, np.int64))
        targets = starts[0] + np.arange(int(np.floor((starts[-1] - starts[0]) * sample_fps + 1e-6)) + 1) / sample_fps
        after = np.clip(np.searchsorted(starts, targets), 1, len(starts) - 1) if len(starts) > 1 else np.zeros(len(targets), int)
        before = np.maximum(after - 1, 0)
        nearest = np.where(np.abs(starts[before] - targets) <= np.abs(starts[after] - targets), before, after)
        ids = np.unique(nearest).astype(np.int64)
        if max_frames is not None and len(ids) > max_frames:
            ids = ids[np.round(np.linspace(0, len(ids) - 1, max_frames)).astype(np.int64)]
        return cls(ids, np.round(starts[ids] * 1000).astype(np.int64))

    @classmethod
    def for_keyframes(cls, starts_s: np.ndarray, keyframes: np.ndarray, sample_fps: float,
                      max_frames: int | None) -> SamplingPlan:
        """`video_input.sampling: keyframes`: one frame per key frame, at most `sample_fps`
        of them per second (a key frame closer than 1/`sample_fps` s to the one taken
        before is skipped), capped at `max_frames` spread evenly. A key frame decodes
        alone, so this decodes only the frames it embeds (see bench/bench_decoders.py)."""
        starts = np.asarray(starts_s, dtype=np.float64)
        keys = np.asarray(keyframes, np.int64)
        keys = keys[(keys >= 0) & (keys < len(starts))] if len(starts) else keys[:0]
        if len(starts) and not len(keys):
            keys = np.zeros(1, np.int64)  # a stream that flags no key frame starts with one
        taken, last = [], -np.inf
        for key in keys.tolist():
            if starts[key] >= last + 1 / sample_fps - 1e-6:
                taken.append(key)
                last = starts[key]
        ids = np.asarray(taken, np.int64)
        if max_frames is not None and len(ids) > max_frames:
            ids = ids[np.round(np.linspace(0, len(ids) - 1, max_frames)).astype(np.int64)]
        return cls(ids, np.round(starts[ids] * 1000).astype(np.int64), key_frames_only=True)

    @classmethod
    def for_nearest(cls, starts_s: np.ndarray, index: DecodeIndex, sample_fps: float, max_frames: int | None,
                    max_shift_s: float) -> SamplingPlan:
        """`video_input.sampling: nearest`: one frame per target time t = k/`sample_fps`
        (from the first frame's, capped at `max_frames` targets spread evenly, as `fps`),
        the cheapest to decode within `max_shift_s` of t: the key frame nearest t if one
        lies in that window (it decodes alone), else the frame that costs the fewest
        frames decoded (`DecodeIndex.cost`: reference frames on the way, from where the
        decoder is after the frame before, or from the key frame before it after a seek),
        the nearest to t among equals. A window that holds no frame takes the frame
        nearest t. Frames are taken in presentation order, each once."""
        starts = np.asarray(starts_s, dtype=np.float64)
        if len(starts) == 0:
            return cls(np.zeros(0, np.int64), np.zeros(0, np.int64))
        targets = starts[0] + np.arange(int(np.floor((starts[-1] - starts[0]) * sample_fps + 1e-6)) + 1) / sample_fps
        if max_frames is not None and len(targets) > max_frames:
            targets = targets[np.round(np.linspace(0, len(targets) - 1, max_frames)).astype(np.int64)]
        shift = max_shift_s + 1e-6  # frame times are rounded to the time base
        taken, last, at = [], -1, -1  # frames taken, the last one, the decoder's decode position after it
        for target in targets.tolist():
            lo = max(int(np.searchsorted(starts, target - shift, side="left")), last + 1)
            hi = int(np.searchsorted(starts, target + shift, side="right"))
            if lo >= hi:  # no frame in the window (or none left): the frame nearest the target
                after = int(np.searchsorted(starts, target))
                near = [i for i in (after - 1, after) if last < i < len(starts)]
                if not near:
                    continue
                lo = min(near, key=lambda i: abs(starts[i] - target))
                hi = lo + 1
            window = np.arange(lo, hi)
            keys = window[index.key[window]]
            if len(keys):
                frame = int(keys[np.argmin(np.abs(starts[keys] - target))])
            else:
                frame = min(window.tolist(), key=lambda i: (index.cost(i, at)[0], abs(starts[i] - target), i))
            taken.append(frame)
            last, at = frame, int(index.decode_order[frame])
        ids = np.asarray(taken, np.int64)
        return cls(ids, np.round(starts[ids] * 1000).astype(np.int64))

    def __len__(self) -> int:
        return len(self.frame_ids)


@dataclass(frozen=True)
class StreamInfo:
    """An opened video's stream as decoded: frames, rate, displayed size, the backend."""

    path: Path
    frame_count: int
    fps: float
    width: int  # as displayed: every backend applies the stream's rotation (display matrix)
    height: int
    decoder: str = ""  # the backend that decoded it (recorded in the video's metadata)


class VideoReader:
    """One open video; `batches` decodes a plan's frames a batch at a time, so memory is
    bounded by the batch (at most `MAX_BATCH_BYTES` of frames), not by the video.
    After `batches` ends, `partial` says why it stopped early, if it did."""

    def __init__(self, path: str | Path, complaints: Callable[[], list[str]] | None = None, decoder: str = "auto",
                 device: str | None = None, threads: int = 0):
        self.path = Path(path)
        self._complaints = complaints or (lambda: [])
        self._salvaged: tempfile.TemporaryDirectory | None = None
        self._decoder, self._device, self._threads = resolve(decoder), device, threads
        self.partial: str | None = None
        try:
            with open(self.path, "rb"):
                pass
        except IsADirectoryError:
            raise VideoError(f"{self.path}: not a readable file (a directory)") from None
        except PermissionError:
            raise VideoError(f"{self.path}: no permission to read it") from None
        except OSError as err:
            raise VideoError(f"{self.path}: not a readable file ({err.strerror})") from None
        if self.path.stat().st_size == 0:
            raise VideoError(f"{self.path}: empty file (0 bytes)")
        self._source = self.path  # or the salvaged copy of a file cut short
        try:
            self._reader = self._open(self.path)
            if self._reader.cut_short:
                self._reader.close()
                raise OpenFailed("its index promises frames that its data lacks")
        except OpenFailed as err:
            if err.no_stream:
                raise VideoError(f"{self.path}: no video stream (an audio-only file?)") from None
            self._reader = self._open_salvaged(err)
        except DecodeFailed as err:
            raise VideoError(f"{self.path}: damaged video stream at 0.0 s, no sound frame in it ({err})") from None
        self._starts = np.asarray(self._reader.starts, np.float64)
        frame_count = len(self._starts)
        if frame_count == 0:
            raise VideoError(f"{self.path}: no video frames (audio-only or empty stream?)")
        try:  # as a plan decodes, which goes on from here
            height, width = self._reader.frames(np.zeros(1, np.int64)).shape[1:3]
        except DecodeFailed as err:
            raise VideoError(f"{self.path}: damaged video stream at 0.0 s, no sound frame in it "
                             f"({self._reason(err)})") from None
        # What decoding the first frame logged is judged with the first batch.
        self.info = StreamInfo(self.path, frame_count, float(self._reader.fps), int(width), int(height), self._decoder)

    def _open(self, path: Path):
        return open_backend(self._decoder, path, self._device, self._threads)

    def _open_salvaged(self, error: BaseException):
        """A backend indexes the packets when it opens a file; one cut short after its
        index fails that (or is found short). Copy the whole packets into a temporary
        file and open that."""
        self._salvaged = tempfile.TemporaryDirectory(prefix="feature-pipeline-salvage-")
        copy = Path(self._salvaged.name) / f"salvaged{self.path.suffix}"
        kept = salvage_packets(self.path, copy)
        if kept is None:
            raise VideoError(f"{self.path}: cannot open video ({one_line(error)})") from None
        declared, readable = kept
        self.partial = (f"file is cut short (truncated?): its index promises {declared:.1f} s but its data "
                        f"ends at {readable:.1f} s; the frames that exist are embedded")
        self._source = copy
        self._complaints()  # about the cut-off end, which `partial` has said
        try:
            reader = self._open(copy)
        except (OpenFailed, DecodeFailed) as err:
            raise VideoError(f"{self.path}: cannot open video ({one_line(err)})") from None
        reader.logged()
        return reader

    def plan(self, spec: DecodeSpec) -> SamplingPlan:
        """The frames `spec` samples from this video."""
        if spec.sampling == "keyframes":
            return SamplingPlan.for_keyframes(self._starts, self._reader.keyframes, spec.sample_fps, spec.max_frames)
        if spec.sampling == "nearest":
            return SamplingPlan.for_nearest(self._starts, self._reader.decode_index(), spec.sample_fps,
                                            spec.max_frames, spec.shift_ms / 1000)
        return SamplingPlan.for_timestamps(self._starts, spec.sample_fps, spec.max_frames)

    def batches(self, plan: SamplingPlan, batch_size: int) -> Iterator[FrameBatch]:
        """At the first sign of damage (the backend fails, or FFmpeg logs it), which frame
        it spoils is judged once, packet by packet (`damage.py` says why the log alone
        cannot tell), and the video stops at the last frame decoded before it."""
        frame_bytes = self.info.width * self.info.height * 3
        size = max(1, min(batch_size, MAX_BATCH_BYTES // frame_bytes))
        key_only = plan.key_frames_only
        end, damage, judged = len(plan), None, False  # the sound frames end at `end`, because of `damage`
        for start in range(0, len(plan), size):
            if start >= end:
                break
            ids = plan.frame_ids[start : min(start + size, end)]
            final = start + size >= end
            frames, why = self._decode(ids, key_only, final)
            if why is not None and not judged:
                judged = True
                count, damage = sound_count(self._source, plan.frame_ids[start:], key_only)
                end = start + count if damage else len(plan)
                ids = ids[: end - start]
                if not len(ids):
                    break
                if frames is None:  # again on a fresh reader: a failed decoder may be left mid-packet
                    self._reader.restart()
                    frames, why = self._decode(ids, key_only, final)
            if frames is None:
                end, damage = start, why
                break
            yield FrameBatch(frames[: len(ids)], ids, plan.timestamps_ms[start : start + len(ids)])
        if end < len(plan):
            self._stop_at(plan, end, damage)

    def _decode(self, ids: np.ndarray, key_only: bool, final: bool) -> tuple[np.ndarray | None, str | None]:
        """The frames (None if the backend failed), and the damage FFmpeg logged meanwhile."""
        try:
            if key_only:
                frames = self._reader.key_frames(ids)
            else:
                frames = self._reader.frames(ids, final)
        except DecodeFailed as err:
            return None, self._reason(err)
        return frames, self._reason()

    def _reason(self, failure: BaseException | None = None) -> str | None:
        """What FFmpeg logged about damage since the last call, else the backend's error."""
        damage = damage_in(self._complaints() + self._reader.logged())
        return damage or (str(failure) if failure else None)

    def _stop_at(self, plan: SamplingPlan, index: int, why: str) -> None:
        at = plan.timestamps_ms[index] / 1000
        if index == 0:
            raise VideoError(f"{self.path}: damaged video stream at {at:.1f} s, no sound frame in it ({why})")
        self.partial = (f"damaged video stream near {at:.1f} s ({why}): embedded the {index} sampled frames "
                        f"before it, of {len(plan)}")

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        self._reader = None
        if self._salvaged is not None:
            self._salvaged.cleanup()


def salvage_packets(path: Path, copy: Path) -> tuple[float, float] | None:
    """Copy the video stream's whole packets (no re-encoding) into `copy`, stopping at
    the first damaged one. Returns (declared, readable) seconds, or None if nothing is."""
    import av

    try:
        with av.open(str(path)) as source:
            stream = source.streams.video[0]
            declared = float(stream.duration * stream.time_base) if stream.duration else 0.0
            kept = 0
            readable = 0.0
            with av.open(str(copy), "w") as target:
                out = target.add_stream_from_template(stream)
                for packet in source.demux(stream):
                    if packet.is_corrupt:
                        break
                    if packet.size == 0:
                        continue
                    if packet.pts is not None:
                        readable = max(readable, float((packet.pts - (stream.start_time or 0)) * stream.time_base))
                    packet.stream = out
                    target.mux(packet)
                    kept += 1
    except (av.FFmpegError, IndexError, ValueError):
        return None
    return (declared, readable) if kept else None
