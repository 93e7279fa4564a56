"""A video's embedding rows as a lazy iterable: decode, embed, hand to the writer.

Everything that can be known before the first row is written is checked when the
object is built (the file opens, the plan's values fit the collection's dtypes, the
model's dimension matches), so a bad video fails before anything reaches Milvus.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from feature_pipeline_dagster.core.settings import INT_RANGES, CollectionSpec, Settings
from feature_pipeline_dagster.core.errors import ModelError, VideoError
from feature_pipeline_dagster.core.engine.batches import EmbeddingBatch
from feature_pipeline_dagster.core.decode.process import DecoderProcess, shared_decoder
from feature_pipeline_dagster.core.decode.heap import fix_mmap_threshold
from feature_pipeline_dagster.core.models import FAMILIES, Extractor
from feature_pipeline_dagster.core.engine.stream import prefetch
from feature_pipeline_dagster.core.videos import still_being_written

log = logging.getLogger("feature_pipeline.pipeline")
THUMBNAILS, THUMBNAIL_WIDTH = 8, 96


@dataclass
class StageSeconds:
    decode: float = 0.0
    model: float = 0.0


class VideoEmbeddings:
    """Iterating yields `EmbeddingBatch`es of one video, decoding a batch or two ahead in
    its own thread; `seconds` fills in as it goes (stage times overlap).

    Deliberately not a generator: Dagster reads a generator returned by an asset as a
    stream of events, while this object passes through to the IO manager untouched.
    """

    def __init__(self, path: Path, video_path: str, settings: Settings, collection: CollectionSpec,
                 extractor: Extractor, batch_size: int | None = None, decoder: DecoderProcess | None = None):
        fix_mmap_threshold()
        self.path, self.video_path, self.extractor = path, video_path, extractor
        self.batch_size = batch_size or settings.model.batch_size
        if extractor.dim != collection.vector_field.dim:
            raise ModelError(
                f"{extractor.description} gives {extractor.dim}-d vectors but collection {collection.name} "
                f"field {collection.vector_field.name} has dim {collection.vector_field.dim} ({settings.source})"
            )
        try:
            self.stat = path.stat()
        except OSError as err:
            raise VideoError(f"{path}: not a readable file ({err.strerror})") from None
        try:
            self.video = (decoder or shared_decoder()).open(
                path, settings.video_input.sample_fps, settings.video_input.max_frames)
        except VideoError as err:
            # A file still being written fails to open; say that, not what its half-written bytes look like.
            why = still_being_written(path, self.stat, settings.video_input.settle_seconds)
            raise (VideoError(why) if why else err) from None
        self.plan = self.video.plan
        maxima = {"frame_id": int(self.plan.frame_ids[-1]), "timestamp_ms": int(self.plan.timestamps_ms[-1])}
        self.family = FAMILIES[settings.model.name]
        if self.family.patch_grid:  # every frame of a video has one grid
            rows, cols = extractor.grid(self.video.info.height, self.video.info.width)
            maxima.update(row_idx=rows - 1, col_idx=cols - 1)
        check_fits(collection, maxima, path)
        self.frames = len(self.plan)
        self.embedded_frames = 0
        self.seconds = StageSeconds()
        self.thumbnails: list[tuple[int, np.ndarray]] = []  # (timestamp_ms, small RGB) for a contact sheet
        self._thumb_ids = set(self.plan.frame_ids[np.linspace(0, self.frames - 1, min(THUMBNAILS, self.frames)).astype(int)].tolist())

    def __iter__(self) -> Iterator[EmbeddingBatch]:
        info = self.video.info
        log.info(
            "%s: %dx%d, %d frames at %.2f fps; embedding %d sampled frames on %s",
            self.video_path, info.width, info.height, info.frame_count, info.fps, self.frames, self.extractor.device,
        )
        for frames in prefetch(self._decoded(), depth=2, name="decode"):
            started = time.perf_counter()
            self._keep_thumbnails(frames)
            rows = self.extractor.embed(frames)
            if not self.embedded_frames:
                self.family.check_columns(rows)
            self.seconds.model += time.perf_counter() - started
            self.embedded_frames += len(frames)
            yield rows
        if why := still_being_written(self.path, self.stat, 0):
            raise VideoError(why)  # before the store commits rows of a half-copied file
        if self.partial:
            log.warning("%s: partial: %s", self.video_path, self.partial)

    @property
    def partial(self) -> str | None:
        """Why fewer frames than planned were embedded (a file cut short, damage), if so."""
        return self.video.partial

    def _decoded(self) -> Iterator:
        """Decoding, timed; runs in its own thread ahead of the model."""
        batches = self.video.batches(self.batch_size)
        while True:
            started = time.perf_counter()
            frames = next(batches, None)
            self.seconds.decode += time.perf_counter() - started
            if frames is None:
                return
            yield frames

    def _keep_thumbnails(self, batch) -> None:
        for i, frame_id in enumerate(batch.frame_ids.tolist()):
            if frame_id in self._thumb_ids:
                frame = batch.frames[i]
                step = max(1, frame.shape[1] // THUMBNAIL_WIDTH)
                self.thumbnails.append((int(batch.timestamps_ms[i]), np.ascontiguousarray(frame[::step, ::step])))


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
