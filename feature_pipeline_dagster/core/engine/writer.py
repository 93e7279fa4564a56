"""Embed one video into its collection and say what happened (Dagster-free).

Out of device memory, the video is tried again with half the batch, down to one frame;
rows are replaced exactly whichever attempt succeeds.
"""

from __future__ import annotations

import base64
import io
import logging
import time

import numpy as np

from feature_pipeline_dagster.core.settings import CollectionSpec, Settings
from feature_pipeline_dagster.core.errors import DeviceMemoryError
from feature_pipeline_dagster.core.videos import fingerprint

log = logging.getLogger("feature_pipeline.writer")


def write_one_video(settings: Settings, spec: CollectionSpec, store, extractor, relpath: str) -> dict:
    """Returns the video's materialization metadata: rows, frames, seconds per stage..."""
    from feature_pipeline_dagster.core.engine.video import VideoEmbeddings

    batch_size = settings.model.batch_size
    while True:
        started = time.perf_counter()
        video = VideoEmbeddings(settings.video_input.path / relpath, relpath, settings, spec, extractor, batch_size)
        stat = video.stat
        try:
            rows = store.write_video(spec, relpath, video, settings.db.batch_size)
            break
        except Exception as err:
            if type(err).__name__ != "OutOfMemoryError":
                raise
            _free_device_memory()
            if batch_size == 1:
                raise DeviceMemoryError(f"{relpath}: out of memory on {extractor.device} even one frame at a time") from None
            batch_size = max(1, batch_size // 2)
            log.warning("%s: out of memory on %s, trying again with batch size %d", relpath, extractor.device, batch_size)
    total = time.perf_counter() - started
    meta = {
        "video_path": relpath,
        "rows": rows,
        "frames": video.embedded_frames,
        "model": extractor.description,
        "device": extractor.device,
        "batch_size": batch_size,
        "collection": spec.name,
        "seconds": round(total, 3),
        "seconds_decode": round(video.seconds.decode, 3),
        "seconds_model": round(video.seconds.model, 3),
        "seconds_write": round(max(0.0, total - video.seconds.decode - video.seconds.model), 3),
        "file_fingerprint": fingerprint(stat.st_size, stat.st_mtime_ns),
    }
    if video.partial:
        meta["partial"] = video.partial
    if video.thumbnails:
        meta["contact_sheet"] = contact_sheet(video.thumbnails)
    return meta


def contact_sheet(thumbnails: list[tuple[int, np.ndarray]]) -> str:
    """Markdown with the sampled frames as small inline JPEGs, labelled by time."""
    from PIL import Image

    cells = []
    for timestamp_ms, frame in thumbnails:
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=70)
        data = base64.b64encode(buffer.getvalue()).decode()
        cells.append(f"![{timestamp_ms / 1000:.1f}s](data:image/jpeg;base64,{data})")
    return " ".join(cells)


def _free_device_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
