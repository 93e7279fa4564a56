"""Where vectors go: the small `VectorStore` protocol the engine, the Dagster layer and
the CLI use, and `open_store`, the one place that builds one (Milvus: a Milvus Lite file
through a shared loopback server, or a Milvus server)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Protocol

from feature_pipeline_dagster.core.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

    from feature_pipeline_dagster.core.batches import EmbeddingBatch
    from feature_pipeline_dagster.core.settings import CollectionSpec, DbSettings


@dataclass(frozen=True)
class RowFilter:
    """Which rows a search or query may return, as typed values: the store turns them into
    its own expression (file names quoted, numbers formatted), so no request text ever
    becomes filter syntax. `current` maps a video to the generation whose rows alone may
    match; `exclude` names videos whose rows never match."""

    videos: tuple[str, ...] | None = None  # only these videos (None: any)
    exclude: tuple[str, ...] = ()
    current: tuple[tuple[str, int], ...] = ()  # (video, generation): that video's rows of other generations never match
    since_ms: int | None = None
    until_ms: int | None = None
    frame_ids: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Committed:
    """A video's ledger entry as search needs it: its code version and the generation of its current rows."""

    video_path: str
    code_version: str
    generation: int


class VectorStore(Protocol):
    uri: str

    def ensure_collection(self, spec: CollectionSpec) -> None: ...

    def insert(self, spec: CollectionSpec, rows: EmbeddingBatch, video_paths: list[str], generation: int) -> None:
        """Rows of one or more videos as a new `generation` (not yet the videos' only rows)."""

    def commit(self, spec: CollectionSpec, video_paths: list[str], generation: int) -> None:
        """Make `generation` the only rows of these videos (durable first, old rows deleted after)."""

    def discard(self, spec: CollectionSpec, video_path: str, generation: int) -> None:
        """Take back a failed video's rows of `generation` (best effort)."""

    def record_videos(self, spec: CollectionSpec, records: list, generation: int) -> None:
        """Record committed videos in the ledger (core/ledger.py)."""

    def recorded_videos(self, spec: CollectionSpec, video_paths: list[str]) -> dict: ...

    def record_failures(self, spec: CollectionSpec, records: list, cleared: list[str]) -> None:
        """Record videos that failed for their content; forget those of `cleared` (core/ledger.py)."""

    def recorded_failures(self, spec: CollectionSpec, video_paths: list[str]) -> dict: ...

    def delete_video(self, spec: CollectionSpec, video_path: str) -> None: ...

    def count_rows(self, spec: CollectionSpec, video_path: str | None = None) -> int: ...

    def vector_pages(self, spec: CollectionSpec, video_path: str) -> Iterator[np.ndarray]: ...

    def count_videos(self, spec: CollectionSpec, video_paths: list[str]) -> int: ...

    def exists(self, spec: CollectionSpec) -> bool:
        """Whether the collection exists (creates nothing)."""

    def search_rows(self, spec: CollectionSpec, vectors: np.ndarray, limit: int, where: RowFilter | None = None,
                    group_size: int = 0, fields: tuple[str, ...] = (), text: bool = False) -> list[list[dict]]:
        """Per query vector, its nearest rows (scalar fields and `score`, cosine); with
        `group_size`, at most that many rows per video for `limit` videos, where the
        backend supports per-video grouping (else `limit * group_size` rows). `text`: the
        vectors are text embeddings, far from every stored image vector, which an
        approximate index needs a wider search for."""

    def query_rows(self, spec: CollectionSpec, where: RowFilter, fields: tuple[str, ...]) -> list[dict]:
        """Every row `where` admits, with `fields` (the vector field among them if named)."""

    def committed(self, spec: CollectionSpec, video_paths: list[str] | None = None,
                  code_version: str | None = None, limit: int | None = None) -> dict[str, Committed]:
        """Ledger entries (core/ledger.py) of these videos (None: any), of this code version only if given."""

    def close(self) -> None: ...


def new_generation() -> int:
    """A write's generation: every row it inserts carries it (see `VectorStore.commit`)."""
    return time.time_ns()


def open_store(uri: str, token: str | None = None, lite_idle_minutes: float | None = None,
               reads_may_lag: bool = False) -> VectorStore:
    """A store for `uri`, connected on first use (a Lite server it starts stops itself
    after `lite_idle_minutes` without a client; None: 10). `reads_may_lag`: for search,
    reads that do not wait for a server's newest writes (see MilvusStore)."""
    from feature_pipeline_dagster.core.store.milvus.store import MilvusStore

    return MilvusStore(uri, token, lite_idle_minutes, reads_may_lag)


def store_token(token_env: str | None) -> str | None:
    """The server token from the environment variable `db.token_env` names, if any: the one
    place it is read (the CLI's store and Dagster's resource alike), so a missing variable
    is the same one line everywhere and the secret never enters Dagster's run config."""
    if not token_env:
        return None
    token = os.environ.get(token_env)
    if token is None:
        raise ConfigError(f"db.token_env: environment variable {token_env} is not set")
    return token


def store_for(db: DbSettings, reads_may_lag: bool = False) -> VectorStore:
    """The store the config's `db` names (the CLI's way in; Dagster's is its resource)."""
    return open_store(db.uri, store_token(db.token_env), db.lite_idle_minutes, reads_may_lag)
