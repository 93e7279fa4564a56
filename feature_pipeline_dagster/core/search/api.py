"""The search: a query (text or image) into moments of the videos' current rows.

Only rows of a video's committed generation with this config's code version answer: the
ledger (`<collection>_videos`) names both per video. Hits of a video without a record (rows
of a write not committed yet), of an older generation (a crash left them for a while) or
of another code version are taken out by the filter of a repeated search, so `k` moments
still come back when there are that many. A collection none of whose videos has this
config's code version is refused: its vectors do not compare with the query's.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from feature_pipeline_dagster.core.errors import SearchError
from feature_pipeline_dagster.core.search.moments import (BY, DEFAULT_GAP_S, Hit, Moment, Shot, group_by_shot,
                                                          merge_hits)
from feature_pipeline_dagster.core.settings import CONFIG_ENV, DEFAULT_CONFIG, Settings
from feature_pipeline_dagster.core.store import RowFilter, VectorStore, store_for
from feature_pipeline_dagster.core.models import FAMILIES, code_version
from feature_pipeline_dagster.core.shots import segments_of
from feature_pipeline_dagster.core.devices import run_devices

GROUP_SIZE = 8  # hits per video a grouped search returns: a video's moments come from its best 8 frames
REFINE_ROUNDS = 4  # searches at most, each excluding what the previous one found stale
NAVIT_QUERY_PATCHES = 64  # query patches that look for candidate frames (all of them score the candidates)
NAVIT_ROWS_PER_PATCH = 256


@dataclass
class SearchResult:
    moments: list[Moment]
    query: str  # what was asked: the text as typed, or `image NAME`
    model: str  # the query encoder's description (labelled if its weights are random)
    collection: str
    warnings: list[str] = field(default_factory=list)
    random_weights: bool = False


def search(settings: Settings, text: str | None = None, image=None, k: int = 10, videos: str | None = None,
           since: float | None = None, until: float | None = None, gap: float = DEFAULT_GAP_S,
           feature: str | None = None, store: VectorStore | None = None, device: str | None = None,
           say: Callable[[str], None] | None = None, by: str = "shot") -> SearchResult:
    """The `k` best moments for `text` or `image` (a path, bytes or an RGB uint8 array).
    `videos`: a glob over video paths (relative to video_input.path); `since`/`until`:
    seconds into the video; `by`: "shot", each shot holding hits is a moment (videos
    without shots: as "gap"), or "gap", hits within `gap` seconds join into one moment;
    `say`: told when the model loads (the first query of a process) and how long it took."""
    from feature_pipeline_dagster.core.search.query import encode_image, encode_text, load_image, load_query_model

    if (text is None) == (image is None):
        raise SearchError("give a text or an image query, not both or neither")
    if text is not None and not text.strip():
        raise SearchError("the text query is empty")
    if k < 1:
        raise SearchError(f"-k must be at least 1, got {k}")
    if gap < 0:
        raise SearchError(f"--gap must be >= 0 seconds, got {gap}")
    if by not in BY:
        raise SearchError(f"--by must be {' or '.join(BY)}, got {by!r}")
    if since is not None and until is not None and until < since:
        raise SearchError(f"--until {until} is before --since {since}")
    model = settings.model
    family = FAMILIES[model.name]
    if feature is not None and feature not in model.features:
        raise SearchError(f"no feature {feature!r} in model.features ({', '.join(model.features)})")
    spec = settings.collection_for(feature or model.features[0])
    if text is not None and not family.text_tower:
        raise SearchError(f"model {model.name} has no text tower: search its collection {spec.name} with an image "
                          "(--image)")
    picture = load_image(image) if image is not None else None  # a bad file fails before any model loads
    own_store = store is None
    if own_store:
        store = store_for(settings.db, reads_may_lag=True)  # a search writes nothing: no wait for the newest writes
    try:
        result = SearchResult([], text if text is not None else _image_label(image), "", spec.name)
        version = searchable_version(settings, spec, store)
        if version is None:
            result.warnings.append(f"collection {spec.name} holds no committed video yet")
            return result
        where = RowFilter(since_ms=None if since is None else round(since * 1000),
                          until_ms=None if until is None else round(until * 1000))
        if videos is not None:
            names = sorted(n for n in store.committed(spec, code_version=version) if fnmatch.fnmatchcase(n, videos))
            if not names:
                result.warnings.append(f"no embedded video matches {videos!r}")
                return result
            where = replace(where, videos=tuple(names))
        device = device or query_device(settings)
        load_query_model(model, device, text is not None, say)
        if text is not None:
            vectors, result.model = encode_text(model, device, text)
        else:
            vectors, result.model = encode_image(model, device, picture)
        if "RANDOM WEIGHTS" in result.model:
            result.random_weights = True
            result.warnings.append(f"RANDOM WEIGHTS: {model.path} gives meaningless vectors; these results mean "
                                   "nothing beyond identical pictures (for smoke runs and tests only)")
        if family.patch_grid:
            hits, current, left_out = _patch_hits(store, spec, vectors, where, version, k)
        else:
            rows, current, left_out = current_rows(store, spec, vectors[:1], where, version, k, GROUP_SIZE,
                                                   text=text is not None)
            hits = [Hit(r["video_path"], r["timestamp_ms"] / 1000, int(r["frame_id"]), float(r["score"]))
                    for r in rows[0]]
        if left_out:
            result.warnings.append(f"{len(left_out)} video(s) written by another code version were left out "
                                   f"(e.g. {sorted(left_out)[0]!r}); embed them again: feature-pipeline run")
        if by == "shot":
            result.moments = group_by_shot(hits, _shots(store, spec, hits, current), gap, k)
        else:
            result.moments = merge_hits(hits, gap, k)
        return result
    finally:
        if own_store:
            store.close()


def searchable_version(settings: Settings, spec, store: VectorStore) -> str | None:
    """This config's code version if the collection holds videos of it; None if it holds
    no committed video yet. A missing collection, or one written only by another code
    version (vectors that do not compare with this config's), is a `SearchError`."""
    model, version = settings.model, code_version(settings)
    if not store.exists(spec):
        raise SearchError(f"collection {spec.name} does not exist in {database(settings)}, the database of "
                          f"config {config_named(settings)}: embed videos first "
                          f"(feature-pipeline --config {settings.source} run)")
    if store.committed(spec, code_version=version, limit=1):
        return version
    other = store.committed(spec, limit=1)
    if not other:
        return None
    found = next(iter(other.values())).code_version
    raise SearchError(
        f"collection {spec.name} in {settings.db.uri} was written by code version {found}, but this config's "
        f"query encoder ({model.name} {FAMILIES[model.name].label(model)}) is {version}: their vectors do not "
        "compare; search with the config that wrote it, or embed again (feature-pipeline run --all)")


def current_rows(store: VectorStore, spec, vectors: np.ndarray, where: RowFilter, version: str, limit: int,
                  group_size: int, text: bool = False) -> tuple[list[list[dict]], dict[str, int], set[str]]:
    """Search until every hit is a current row: each round excludes the videos without a
    record or of another code version, and the stale generations it met. Returns the
    rows, each hit video's current generation, and the videos left out for their code version."""
    fields = ("video_path", "generation", "timestamp_ms", "frame_id")
    left_out: set[str] = set()
    for _ in range(REFINE_ROUNDS):
        rows = store.search_rows(spec, vectors, limit, where, group_size, fields, text)
        seen = sorted({r["video_path"] for per in rows for r in per})
        records = store.committed(spec, seen)
        exclude, current = set(where.exclude), dict(where.current)
        for video in seen:
            record = records.get(video)
            if record is None or record.code_version != version:
                exclude.add(video)
                if record is not None:
                    left_out.add(video)
            else:
                current[video] = record.generation
        stale = any(r["video_path"] in exclude or r["generation"] != current.get(r["video_path"])
                    for per in rows for r in per)
        if not stale:
            return rows, current, left_out
        where = replace(where, exclude=tuple(sorted(exclude)), current=tuple(sorted(current.items())))
    kept = [[r for r in per if r["video_path"] not in exclude and r["generation"] == current.get(r["video_path"])]
            for per in rows]
    return kept, current, left_out


def _shots(store: VectorStore, spec, hits: list[Hit], current: dict[str, int]) -> dict[str, list[Shot]]:
    """The shots of the hit videos, of their current generation only (the engine writes a
    video's shots with its frames, as one generation): one query."""
    segments = segments_of(spec)
    videos = tuple(sorted({h.video_path for h in hits} & set(current)))
    if not videos or not store.exists(segments):
        return {}
    rows = store.query_rows(segments, RowFilter(videos=videos, current=tuple((v, current[v]) for v in videos)),
                            ("video_path", "start_ms", "end_ms", "frame_id", "timestamp_ms"))
    shots: dict[str, list[Shot]] = {}
    for r in rows:
        shots.setdefault(r["video_path"], []).append(
            Shot(r["start_ms"] / 1000, r["end_ms"] / 1000, int(r["frame_id"]), r["timestamp_ms"] / 1000))
    return shots


def _patch_hits(store: VectorStore, spec, query: np.ndarray, where: RowFilter, version: str,
                k: int) -> tuple[list[Hit], dict[str, int], set[str]]:
    """NaViT: candidate frames from the nearest patch rows of (up to 64 evenly spread)
    query patches; each candidate scored by MaxSim of every query patch against all of
    the frame's stored patch rows, with its score map."""
    from feature_pipeline_dagster.core.search.patches import maxsim

    pick = np.unique(np.linspace(0, len(query) - 1, min(len(query), NAVIT_QUERY_PATCHES)).round().astype(int))
    rows, current, left_out = current_rows(store, spec, query[pick], where, version, NAVIT_ROWS_PER_PATCH, 0)
    approx: dict[tuple[str, int], np.ndarray] = {}
    times: dict[tuple[str, int], int] = {}
    for q, per in enumerate(rows):
        for r in per:
            key = (r["video_path"], int(r["frame_id"]))
            best = approx.setdefault(key, np.zeros(len(pick), np.float32))
            best[q] = max(best[q], r["score"])
            times[key] = r["timestamp_ms"]
    ranked = sorted(approx, key=lambda key: -approx[key].mean())[:max(2 * k, 8)]
    by_video: dict[str, list[int]] = {}
    for video, frame in ranked:
        by_video.setdefault(video, []).append(frame)
    hits = []
    vector = spec.vector_field.name
    for video, frames in by_video.items():
        cells = store.query_rows(spec, RowFilter(videos=(video,), current=((video, current[video]),),
                                                 frame_ids=tuple(frames)),
                                 ("frame_id", "row_idx", "col_idx", vector))
        for frame in frames:
            mine = [c for c in cells if c["frame_id"] == frame]
            if not mine:
                continue
            match = maxsim(query, np.asarray([c[vector] for c in mine], np.float32),
                           np.asarray([c["row_idx"] for c in mine]), np.asarray([c["col_idx"] for c in mine]))
            hits.append(Hit(video, times[(video, frame)] / 1000, frame, match.score, match))
    return hits, current, left_out


def database(settings: Settings) -> str:
    """The database a config names, as a user finds it: the Lite file or the server."""
    return f"the Milvus Lite file {settings.db.uri}" if settings.db.is_lite else f"the Milvus server {settings.db.uri}"


def config_named(settings: Settings) -> str:
    """The config file, and that it is the default when nothing named it: the quick start's
    config is lost in a new shell, and a search then read the default."""
    import os

    unnamed = settings.source == Path(DEFAULT_CONFIG) and not os.environ.get(CONFIG_ENV)
    return f"{settings.source}" + (f" (the default: neither --config nor {CONFIG_ENV} named one)" if unnamed else "")


def query_device(settings: Settings) -> str:
    return run_devices(settings.gpus)[0]


def _image_label(image) -> str:
    if isinstance(image, (str, Path)):
        return f"image {Path(image).name}"
    return "image"
