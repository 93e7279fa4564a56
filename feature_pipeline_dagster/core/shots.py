"""Shots: where a video's content changes, found from its sampled frames (Dagster-free).

The signal is each sampled frame's colour layout, an 8x8 grid of block means per channel
(`signatures`), taken in the model stage from frames already decoded: a few hundred pixels
read per frame, so it costs almost nothing beside decoding (measured in the metadata's
`seconds_shots` against `seconds_decode`). At 1 fps a hard cut is one large step between two
neighbouring samples; a dissolve spreads the same change over the samples inside it, so it is
a large change across a span of 2-3 samples whose inner steps each carry a share. Either
counts only well above the video's own step-to-step change nearby (motion, pans), and the
boundary goes mid-way through the change. Each shot's vector is the normalized mean of its
frames' vectors; its representative frame the one closest to that mean. Measured with
bench/bench_shots.py: ~0.6 ms a sampled frame, 0.6 % of decoding at 720p (4.1 % at 320x240,
whose flat frames decode fast); F1 within 1 s 1.0 (3 videos, 720p) and 0.99 (16, 320x240).

    <frames collection>_segments: video_path, start_ms, end_ms, first_frame_id, last_frame_id,
                                  frame_id + timestamp_ms (the representative), vector
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from feature_pipeline_dagster.core.settings import CollectionSpec, FieldSpec, Settings
from feature_pipeline_dagster.core.summary import normalized_mean

GRID = 8  # blocks per side of a signature
POINTS = 8  # pixels read per block side: 64x64 of a frame, whatever its size
# The levels 8x8, 4x4, 2x2, 1x1 in a change: the coarse ones most, as motion barely moves
# them. On 16 generated videos of 4 boundaries each (cuts, 1-s dissolves), F1 within 1 s
# was 0.915 with equal weights, 0.877 favouring the fine levels (0.4-0.1), 0.968 with these.
LEVEL_WEIGHTS = (0.1, 0.2, 0.3, 0.4)
MIN_CHANGE = 0.06  # mean absolute change of block colours (0-1) below which nothing is a boundary
RATIO = 2.5  # a boundary changes this many times more than the video's typical step nearby
WINDOW = 5  # steps each side that make "nearby"
SPANS = (1, 2, 3)  # samples a change may spread over: a cut, dissolves up to ~3 s at 1 fps
DOMINANT = 0.75  # in a dissolve no inner step carries more than this share of the change (else: a cut)
MONOTONE = 1.6  # ... and the steps add up to at most this times the change (no flash and back)


def signatures(frames) -> np.ndarray:
    """(N, 255) float32: block colour means (0-1) of (N, H, W, 3) uint8 frames on 8x8, 4x4,
    2x2 and 1x1 grids, weighted (numpy, or CUDA tensors from nvdec: indexed on the device,
    only the small result copied)."""
    n, height, width = frames.shape[:3]
    ys = (np.arange(GRID * POINTS) + 0.5) * height / (GRID * POINTS)
    xs = (np.arange(GRID * POINTS) + 0.5) * width / (GRID * POINTS)
    ys, xs = ys.astype(np.int64)[:, None], xs.astype(np.int64)[None, :]
    points = frames[:, ys, xs]  # a CUDA tensor takes numpy indices too
    points = (points if isinstance(points, np.ndarray) else points.cpu().numpy()).astype(np.float32)
    blocks = points.reshape(n, GRID, POINTS, GRID, POINTS, 3).mean(axis=(2, 4)) / 255.0
    levels = [blocks]
    while levels[-1].shape[1] > 1:  # 4x4, 2x2, 1x1: layouts coarse enough that motion barely moves them
        level = levels[-1]
        levels.append(level.reshape(n, level.shape[1] // 2, 2, level.shape[2] // 2, 2, 3).mean(axis=(2, 4)))
    # weighted: `_change`'s mean absolute difference is the LEVEL_WEIGHTS mean of the levels' own
    flat = [level.reshape(n, -1) for level in levels]
    total = sum(f.shape[1] for f in flat)
    weighted = [f * (total * w / f.shape[1]) for f, w in zip(flat, LEVEL_WEIGHTS)]
    return np.concatenate(weighted, axis=1).astype(np.float32)


def frame_means(vectors: np.ndarray, frame_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows grouped by frame (consecutive rows of one `frame_id`: a patch model's rows of a
    frame) into one mean vector each; returns each frame's first row index and the means.
    One row a frame (CLIP) comes back as it is."""
    firsts = np.flatnonzero(np.r_[True, frame_ids[1:] != frame_ids[:-1]])
    if len(firsts) == len(vectors):
        return firsts, np.asarray(vectors, np.float32)
    counts = np.diff(np.r_[firsts, len(vectors)])[:, None]
    return firsts, (np.add.reduceat(vectors, firsts, axis=0, dtype=np.float64) / counts).astype(np.float32)


@dataclass(frozen=True)
class Shot:
    start_ms: int
    end_ms: int
    first: int  # index of its first sample
    last: int  # ... and its last


def boundaries(signals: np.ndarray, timestamps_ms: np.ndarray, min_change: float = MIN_CHANGE) -> list[tuple[int, int]]:
    """(time_ms, first sample after it) of each boundary found in per-sample `signals`."""
    n = len(signals)
    if n < 2:
        return []
    found: list[tuple[bool, float, int, int]] = []  # gradual, strength, time_ms, split
    steps = _change(signals, 1)
    for span in SPANS:
        if span >= n:
            break
        change = _change(signals, span)
        typical = _typical(change, span)
        for i, value in enumerate(change):
            if value < min_change or value < RATIO * typical[i]:
                continue
            if span > 1:
                inner = steps[i:i + span]
                if inner.max() > DOMINANT * value or inner.sum() > MONOTONE * value:
                    continue
            time_ms = (int(timestamps_ms[i]) + int(timestamps_ms[i + span])) // 2
            split = i + 1 + int(np.searchsorted(timestamps_ms[i + 1:i + span], time_ms))
            found.append((span > 1, value / max(typical[i], 1e-6), time_ms, split))
    kept: list[tuple[int, int]] = []
    # A span that passed is a gradual change, and its own steps may pass as cuts: gradual
    # changes first, then cuts, the strongest first; one boundary per change.
    for _, _, time_ms, split in sorted(found, reverse=True):
        if all(abs(split - s) > 1 for _, s in kept):
            kept.append((time_ms, split))
    return sorted(kept)


def _change(signals: np.ndarray, span: int) -> np.ndarray:
    return np.abs(signals[span:] - signals[:-span]).mean(axis=1)


def _typical(change: np.ndarray, span: int) -> np.ndarray:
    """Per position, the median change within WINDOW positions, itself and the `span`
    positions each side that overlap it left out (a boundary's own change must not raise
    its bar); where that leaves too few (a short video), the median of every other position."""
    n = len(change)
    offsets = np.r_[np.arange(-span - WINDOW, -span), np.arange(span + 1, span + 1 + WINDOW)]
    at = np.arange(n)[:, None] + offsets
    inside = (at >= 0) & (at < n)
    enough = inside.sum(axis=1) >= 2
    typical = np.zeros(n)
    if enough.any():
        near = np.where(inside, change[np.clip(at, 0, n - 1)], np.nan)[enough]
        typical[enough] = np.nanmedian(near, axis=1)
    for i in np.flatnonzero(~enough):
        others = np.delete(change, i)
        typical[i] = np.median(others) if len(others) else 0.0
    return typical


def split_shots(signals: np.ndarray, timestamps_ms: np.ndarray, end_ms: int) -> list[Shot]:
    """The video's shots from 0 to `end_ms`, tiling it: each ends where the next starts."""
    return _tile(boundaries(signals, timestamps_ms), len(signals), max(int(end_ms), int(timestamps_ms[-1]) + 1))


def _tile(cuts: list[tuple[int, int]], samples: int, end_ms: int) -> list[Shot]:
    starts = [0, *(t for t, _ in cuts)]
    ends = [*(t for t, _ in cuts), end_ms]
    splits = [0, *(s for _, s in cuts), samples]
    return [Shot(starts[k], ends[k], splits[k], splits[k + 1] - 1) for k in range(len(starts))]


@dataclass
class ShotRows:
    """One video's shots as rows of `<collection>_segments` (columns by field name)."""

    vectors: np.ndarray  # (shots, dim) float32, each the normalized mean of its frames
    columns: dict[str, np.ndarray]


def shot_rows(shots: list[Shot], vectors: np.ndarray, frame_ids: np.ndarray, timestamps_ms: np.ndarray) -> ShotRows:
    """Per shot: its frames' normalized mean vector, and the frame closest to it."""
    means, picks = [], []
    for shot in shots:
        own = vectors[shot.first:shot.last + 1]
        mean = normalized_mean(own.sum(axis=0, dtype=np.float64), len(own))
        means.append(mean)
        picks.append(shot.first + int(np.argmax(own @ mean)))
    picks = np.asarray(picks)
    return ShotRows(np.stack(means).astype(np.float32), {
        "start_ms": np.array([s.start_ms for s in shots], np.int64),
        "end_ms": np.array([s.end_ms for s in shots], np.int64),
        "first_frame_id": frame_ids[[s.first for s in shots]].astype(np.int64),
        "last_frame_id": frame_ids[[s.last for s in shots]].astype(np.int64),
        "frame_id": frame_ids[picks].astype(np.int64),
        "timestamp_ms": timestamps_ms[picks].astype(np.int64),
    })


@dataclass
class SegmentRows:
    """The `video_segments` asset's output: shots per video (already written by the run that
    embedded it), and the rows still to write, each with its frames' generation."""

    spec: CollectionSpec
    shots: dict[str, int]
    to_write: dict[str, tuple[int, ShotRows]]


def segments_collection(settings: Settings) -> CollectionSpec:
    """`<frames collection>_segments`, beside the summary, for the first feature's frames."""
    return segments_of(settings.collection_for(settings.model.features[0]))


def segments_of(frames: CollectionSpec) -> CollectionSpec:
    frame = frames.field("frame_id") or FieldSpec("frame_id", "INT64")
    time = frames.field("timestamp_ms") or FieldSpec("timestamp_ms", "INT64")
    fields = (
        frames.field("id"), frames.field("video_path"),
        dataclasses.replace(time, name="start_ms"), dataclasses.replace(time, name="end_ms"),
        dataclasses.replace(frame, name="first_frame_id"), dataclasses.replace(frame, name="last_frame_id"),
        frame, time, frames.field("generation"), frames.vector_field,
    )
    return CollectionSpec(f"{frames.name}_segments", tuple(f for f in fields if f is not None))


# The signal when only the stored vectors are left (a video embedded before shots were
# kept): unit vectors scaled by sqrt(dim), whose mean absolute change is ~0.8 x the distance
# of two unit vectors; 0.4 asks for a cosine under ~0.87 between neighbouring samples.
VECTOR_MIN_CHANGE = 0.4


def shots_from_rows(rows: list[dict], vector_field: str) -> ShotRows | None:
    """A video's shots from its stored frame rows (vector, frame_id, timestamp_ms; a patch
    model's rows averaged per frame), the vectors their only signal; None without rows."""
    if not rows:
        return None
    rows = sorted(rows, key=lambda r: (r["timestamp_ms"], r["frame_id"]))
    frame_ids = np.array([r["frame_id"] for r in rows], np.int64)
    firsts, vectors = frame_means(np.array([r[vector_field] for r in rows], np.float32), frame_ids)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    times = np.array([rows[i]["timestamp_ms"] for i in firsts], np.int64)
    step = int(np.median(np.diff(times))) if len(times) > 1 else 1000
    signals = vectors * np.sqrt(vectors.shape[1])
    cuts = boundaries(signals, times, VECTOR_MIN_CHANGE)
    shots = _tile(cuts, len(times), int(times[-1]) + step)
    return shot_rows(shots, vectors, frame_ids[firsts], times)
