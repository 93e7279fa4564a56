"""Which videos are done, as the database says (Dagster-free).

A video counts as done only when the configured collection of the configured database
holds its current rows: from the same file content and the same code version, as
recorded with those rows. Each commit records, per video, its content digest, its file
fingerprint, the code version and its row count in `<collection>_videos`, a small
collection beside the rows (one row per video; Milvus needs a vector in every
collection, so it carries a constant 2-d one). A new database or collection has no
record; rows deleted by hand no longer match their record's count: either way the video
is to do. A copy or a `touch` changes the fingerprint but not the digest: not changed.

Checking many videos costs one query per thousand videos for their records, one count
query per thousand for their rows, and a digest (1 MiB read) only of files whose
fingerprint moved.

Beside it, `<collection>_failed` keeps the videos that failed for their content (a
`VideoError` that trying again cannot help: unreadable, damaged, values that do not
fit), with the content digest and code version they failed with: `run` and the sensor
skip such a video until its file or the code version changes (a broken file cost a model
load and a failed run at every `run`). Faults of the model, the device or the database,
and a file still being copied, are never recorded. A video's record goes when it is
embedded, or when its file is deleted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from feature_pipeline_dagster.core.settings import CollectionSpec, FieldSpec, Settings
from feature_pipeline_dagster.core.videos import FolderEntry, content_digest
from feature_pipeline_dagster.core.models import code_version


@dataclass(frozen=True)
class LedgerRecord:
    """A committed video's entry in the ledger (`<collection>_videos`)."""

    video_path: str
    fingerprint: str  # size-mtime: when it still matches, the digest is not read again
    content_digest: str
    code_version: str
    rows: int


def ledger_collection(rows: CollectionSpec) -> CollectionSpec:
    return _per_video_collection(rows, "videos", FieldSpec("rows", "INT64"))


def _per_video_collection(rows: CollectionSpec, suffix: str, field: FieldSpec) -> CollectionSpec:
    """A small collection of one record per video beside `rows`: its file and code version,
    `field`, the generation, and a 2-d mark (Milvus wants a vector field)."""
    path = rows.field("video_path")
    return CollectionSpec(f"{rows.name}_{suffix}", (
        FieldSpec("id", "INT64", is_primary=True, auto_id=True),
        FieldSpec("video_path", "VARCHAR", max_length=path.max_length if path else 1024),
        FieldSpec("fingerprint", "VARCHAR", max_length=64),
        FieldSpec("content_digest", "VARCHAR", max_length=64),
        FieldSpec("code_version", "VARCHAR", max_length=128),
        field,
        FieldSpec("generation", "INT64"),
        FieldSpec("mark", "FLOAT_VECTOR", dim=2),
    ))


MARK = np.array([1.0, 0.0], np.float32)
ERROR_CHARS = 1024


@dataclass(frozen=True)
class FailureRecord:
    video_path: str
    fingerprint: str
    content_digest: str
    code_version: str
    error: str


def failures_collection(rows: CollectionSpec) -> CollectionSpec:
    # Milvus counts bytes: 4 per character at most
    return _per_video_collection(rows, "failed", FieldSpec("error", "VARCHAR", max_length=ERROR_CHARS * 4))


def failed_before(store, settings: Settings, videos: list[FolderEntry]) -> dict[str, str]:
    """The relative paths of `videos` that failed for their content as they are now, with
    this code version, in any feature's collection: path -> the error they failed with."""
    version, failed = code_version(settings), {}
    for feature in settings.model.features:
        records = store.recorded_failures(settings.collection_for(feature), [v.relpath for v in videos])
        for video in videos:
            record = records.get(video.relpath)
            if video.relpath in failed or record is None or record.code_version != version:
                continue
            if record.fingerprint == video.fingerprint or _digest(video) == record.content_digest:
                failed[video.relpath] = record.error
    return failed


def done_in_every_collection(store, settings: Settings, videos: list[FolderEntry]) -> set[str]:
    """The relative paths of `videos` done in every feature's collection."""
    version, done = code_version(settings), None
    for feature in settings.model.features:
        found = done_videos(store, settings.collection_for(feature), videos, version)
        done = found if done is None else done & found
    return done or set()


def done_videos(store, spec: CollectionSpec, videos: list[FolderEntry], code_version: str) -> set[str]:
    """The relative paths of `videos` whose current rows the store holds."""
    records = store.recorded_videos(spec, [v.relpath for v in videos])
    current = {}
    for video in videos:
        record = records.get(video.relpath)
        if record is None or record.code_version != code_version:
            continue
        if record.fingerprint == video.fingerprint or _digest(video) == record.content_digest:
            current[video.relpath] = record.rows
    if not current:
        return set()
    if store.count_videos(spec, list(current)) == sum(current.values()):
        return set(current)
    return {path for path, rows in current.items() if store.count_rows(spec, path) == rows}


def _digest(video: FolderEntry) -> str | None:
    try:
        return content_digest(video.path)
    except OSError:
        return None
