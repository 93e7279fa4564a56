"""One video within a run: opened and checked before its first row, then followed
through decode, model and write (Dagster-free).

Everything that can be known before the first row is written is checked when the video
opens (the file opens, the plan's values fit the collection's dtypes), so a bad video
fails before anything reaches the store. As its rows stream past, the video keeps what
its metadata reports: counts, stage seconds, a few thumbnails, and the sum of its
vectors, so the summary's mean needs no read-back.
"""

from __future__ import annotations

import base64
import io
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from feature_pipeline_dagster.core.decode.spec import DecodeSpec
from feature_pipeline_dagster.core.errors import FileInFluxError, VideoError
from feature_pipeline_dagster.core.settings import INT_RANGES, CollectionSpec, Settings
from feature_pipeline_dagster.core.summary import normalized_mean
from feature_pipeline_dagster.core.videos import content_digest, fingerprint, still_being_written
from feature_pipeline_dagster.core.ledger import LedgerRecord
from feature_pipeline_dagster.core.shots import frame_means, shot_rows, signatures, split_shots

THUMBNAILS, THUMBNAIL_WIDTH = 8, 96


@dataclass(eq=False)
class EmbeddingJob:
    """One video's part of a run, from its opening to its commit."""

    relpath: str
    path: Path
    started: float = field(default_factory=time.perf_counter)
    stat: os.stat_result | None = None
    video: object | None = None  # the decoder's OpenVideo
    frames: int = 0  # planned
    frames_embedded: int = 0
    frames_in_flight: int = 0  # decoded, not yet turned into rows
    decoded: bool = False  # every batch of the plan has been decoded
    failed: bool = False  # its later frames are dropped, its decoding stopped
    digest: str = ""  # of the content read (core/ledger.py)
    rows: int = 0
    vector_sum: np.ndarray | None = None
    best_frames: object | None = None  # per saved search (core/search/watch.py)
    saved_searches: dict | None = None  # the saved searches its best frames match, once whole
    model: str = ""  # the extractor's description and device, for its metadata
    device: str = ""
    seconds_decode: float = 0.0
    seconds_model: float = 0.0
    seconds_write: float = 0.0
    batch_size: int = 0
    decode_batch: int = 0  # frames per decoded batch (the model stage's batch for its frame size); 0: the run's
    thumbnails: list[tuple[int, np.ndarray]] = field(default_factory=list)
    _thumb_ids: set = field(default_factory=set)
    shots: ShotTrack | None = None  # the first feature's run: its shots found as it goes (core/shots.py)

    def open(self, settings: Settings, spec: CollectionSpec, decoder, decode: DecodeSpec, grid=None) -> None:
        """Open in `decoder` as `decode` says and check; raises VideoError naming what is wrong."""
        try:
            self.stat = self.path.stat()
        except OSError as err:
            raise VideoError(f"{self.path}: not a readable file ({err.strerror})") from None
        try:
            self.video = decoder.open(self.path, decode)
        except VideoError as err:
            # A file still being written fails to open; say that, not what its half-written bytes look like.
            why = still_being_written(self.path, self.stat, settings.video_input.settle_seconds)
            raise (FileInFluxError(why) if why else err) from None
        self.digest = content_digest(self.path)
        plan = self.video.plan
        maxima = {"frame_id": int(plan.frame_ids[-1]), "timestamp_ms": int(plan.timestamps_ms[-1])}
        if grid is not None:  # patch models: every frame of a video has one grid
            rows, cols = grid(self.video.info.height, self.video.info.width)
            maxima.update(row_idx=rows - 1, col_idx=cols - 1)
        check_fits(spec, maxima, self.path)
        self.frames = len(plan)
        picks = np.linspace(0, self.frames - 1, min(THUMBNAILS, self.frames)).astype(int)
        self._thumb_ids = set(plan.frame_ids[picks].tolist())

    def duration_ms(self) -> int:
        info = self.video.info
        return round(info.frame_count / info.fps * 1000) if info.fps else 0

    def check_complete(self) -> None:
        """After the last batch, before the store commits rows of a half-copied file."""
        if why := still_being_written(self.path, self.stat, 0):
            raise FileInFluxError(why)

    @property
    def partial(self) -> str | None:
        """Why fewer frames than planned were embedded (a file cut short, damage), if so."""
        return self.video.partial if self.video is not None else None

    def keep_thumbnails(self, frame_ids: np.ndarray, timestamps_ms: np.ndarray, frames: np.ndarray) -> None:
        for i, frame_id in enumerate(frame_ids.tolist()):
            if frame_id in self._thumb_ids:
                step = max(1, frames[i].shape[1] // THUMBNAIL_WIDTH)
                small = frames[i][::step, ::step]
                small = small.cpu().numpy() if hasattr(small, "cpu") else small  # a CUDA frame from nvdec
                self.thumbnails.append((int(timestamps_ms[i]), np.ascontiguousarray(small)))

    def add_vectors(self, vectors: np.ndarray, columns: dict[str, np.ndarray]) -> None:
        total = vectors.sum(axis=0, dtype=np.float64)
        self.vector_sum = total if self.vector_sum is None else self.vector_sum + total
        self.rows += len(vectors)
        if self.shots is not None:
            self.shots.add_vectors(vectors, columns["frame_id"], columns["timestamp_ms"])

    def mean_vector(self) -> np.ndarray:
        """The L2-normalized mean of the video's vectors, as the summary stores it."""
        return normalized_mean(self.vector_sum, self.rows)

    def record(self, code_version: str):
        """What the ledger keeps of this video once committed."""
        return LedgerRecord(self.relpath, fingerprint(self.stat.st_size, self.stat.st_mtime_ns), self.digest,
                           code_version, self.rows)

    def metadata(self, spec: CollectionSpec) -> dict:
        """What the UI shows per partition (and what the summary and checks read)."""
        meta = {
            "video_path": self.relpath,
            "rows": self.rows,
            "frames": self.frames_embedded,
            "model": self.model,
            "device": self.device,
            "decoder": self.video.info.decoder if self.video is not None else "",
            "batch_size": self.batch_size,
            "collection": spec.name,
            "seconds": round(time.perf_counter() - self.started, 3),
            "seconds_decode": round(self.seconds_decode, 3),
            "seconds_model": round(self.seconds_model, 3),
            "seconds_write": round(self.seconds_write, 3),
            "file_fingerprint": fingerprint(self.stat.st_size, self.stat.st_mtime_ns),
            "vectors_checked": "finite, dim " + str(spec.vector_field.dim),
            "mean_vector": encode_vector(self.mean_vector()),
        }
        if self.partial:
            meta["partial"] = self.partial
        if self.shots is not None and self.shots.rows is not None:
            meta.update(shots=len(self.shots.rows.vectors), seconds_shots=round(self.shots.seconds, 4))
        if self.thumbnails:
            meta["contact_sheet"] = contact_sheet(self.thumbnails)
        if self.saved_searches is not None:
            meta["saved_searches"] = self.saved_searches
        return meta


class ShotTrack:
    """What a video keeps for its shots while it streams: each sampled frame's signature
    (taken in the model stage) and vector (a patch model's: the mean of the frame's patch
    rows); at its close, its shots as rows (core/shots.py)."""

    def __init__(self):
        self.signature_parts: list[tuple[np.ndarray, np.ndarray]] = []  # (frame ids, signatures)
        self.vector_parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (frame ids, times, vectors)
        self.seconds = 0.0  # signatures and segmentation, against the video's seconds_decode
        self.rows = None  # ShotRows, once the video is whole

    def add_frames(self, frame_ids: np.ndarray, frames) -> None:
        started = time.perf_counter()
        self.signature_parts.append((np.asarray(frame_ids), signatures(frames)))
        self.seconds += time.perf_counter() - started

    def add_vectors(self, vectors: np.ndarray, frame_ids: np.ndarray, timestamps_ms: np.ndarray) -> None:
        started = time.perf_counter()
        firsts, means = frame_means(vectors, frame_ids)  # a patch model: its rows of a frame as one
        self.vector_parts.append((frame_ids[firsts], timestamps_ms[firsts], means))
        self.seconds += time.perf_counter() - started

    def finish(self, end_ms: int) -> None:
        """The video's shots, from the frames it embedded (in time order)."""
        if not self.vector_parts:
            return
        started = time.perf_counter()
        ids, times, vectors = (np.concatenate(part) for part in zip(*self.vector_parts))
        order = np.argsort(times, kind="stable")
        ids, times, vectors = ids[order], times[order], vectors[order]
        signed_ids, signed = (np.concatenate(part) for part in zip(*self.signature_parts))
        by_id = np.argsort(signed_ids, kind="stable")
        signals = signed[by_id[np.searchsorted(signed_ids[by_id], ids)]]
        self.rows = shot_rows(split_shots(signals, times, end_ms), vectors, ids, times)
        self.signature_parts, self.vector_parts = [], []
        self.seconds += time.perf_counter() - started


def encode_vector(vector: np.ndarray) -> str:
    """A float32 vector as base64 text (2.7 KB for 512-d), small enough for run metadata."""
    return base64.b64encode(np.asarray(vector, "<f4").tobytes()).decode()


def decode_vector(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), "<f4").copy()


def check_fits(collection: CollectionSpec, maxima: dict[str, int], path: Path) -> None:
    """Refuse a video whose largest values overflow the collection's integer dtypes,
    before anything is written: Milvus would store them wrapped, without complaint."""
    for name, value in maxima.items():
        spec = collection.field(name)
        if spec is not None and spec.dtype in INT_RANGES and value > INT_RANGES[spec.dtype]:
            raise VideoError(
                f"{path}: {name} reaches {value}, which does not fit {spec.dtype} "
                f"(max {INT_RANGES[spec.dtype]}) in collection {collection.name}: declare it INT32 or INT64"
            )


def contact_sheet(thumbnails: list[tuple[int, np.ndarray]]) -> str:
    """Markdown with the sampled frames as small inline JPEGs, labelled by time."""
    from PIL import Image

    cells = []
    for timestamp_ms, frame in sorted(thumbnails, key=lambda t: t[0]):
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=70)
        data = base64.b64encode(buffer.getvalue()).decode()
        cells.append(f"![{timestamp_ms / 1000:.1f}s](data:image/jpeg;base64,{data})")
    return " ".join(cells)
