"""How much work a video holds, and runs packed by work rather than by count (Dagster-free).

A run pays a start-up (a Dagster run's set-up; in a new process also imports and the
model load) that on a GPU dwarfs the model time of a short clip: 50 clips of 3 s are
~0.02 s of ViT-B/32 on a GPU against seconds of start-up. So runs are sized by the frames
they will embed, read from each file's header (the ISO-BMFF `mvhd` box: a few KB read,
no decoder library, so the sensor can afford it), not by a count of files:

- `MIN_RUN_FRAMES`: the sensor splits work over several devices only in parts of at
  least this much, each run a new process (20 x a 6 s start-up at the ~200 sampled
  frames/s the GPU stand-in sustains on this 2-core machine, bench/bench_gpu_standin.py);
  below it, one run does it all.
- `WARM_RUN_FRAMES`: the same rule for `run`, whose runs go to processes already warm,
  two per device (orchestration/local_runs.py): 20 x the 0.7 s a Dagster run's set-up
  costs there, at the 107 sampled frames/s the stand-in's engine sustains here (the core
  alone over 1000 clips, bench_gpu_standin.py).
- `MAX_RUN_FRAMES` / `MAX_RUN_VIDEOS`: the upper bound on one run, which keeps one
  failure's reach small: a run-level fault (the database gone, the device lost) fails at
  most this many videos at once (rows already committed stay; the writer commits every
  few seconds), and a run's range and events stay a size the UI lists quickly.

A file whose header says nothing (another container, a damaged file) counts as
`UNKNOWN_FRAMES`, a short clip's worth.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

MIN_RUN_FRAMES = 24_000
WARM_RUN_FRAMES = 1_500
MAX_RUN_FRAMES = 200_000
MAX_RUN_VIDEOS = 5_000
UNKNOWN_FRAMES = 10

_CONTAINERS = {b"moov", b"trak", b"mdia"}  # boxes walked into to reach mvhd


def duration_seconds(path: Path) -> float | None:
    """The movie's duration from its `moov/mvhd` box (MP4, MOV, M4V, 3GP), or None."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            return _mvhd_duration(f, 0, size)
    except (OSError, struct.error, ValueError):
        return None


def _mvhd_duration(f, start: int, end: int) -> float | None:
    offset = start
    while offset + 8 <= end:
        f.seek(offset)
        head = f.read(16)
        if len(head) < 8:
            return None
        box_size, kind = struct.unpack(">I4s", head[:8])
        header = 8
        if box_size == 1:  # a 64-bit size follows
            box_size, header = struct.unpack(">Q", head[8:16])[0], 16
        elif box_size == 0:  # to the end of the file
            box_size = end - offset
        if box_size < header:
            return None
        if kind == b"mvhd":
            f.seek(offset + header)
            body = f.read(32)
            if body[0] == 1:  # version 1: 64-bit times
                timescale, duration = struct.unpack(">IQ", body[20:32])
            else:
                timescale, duration = struct.unpack(">II", body[12:20])
            return duration / timescale if timescale else None
        if kind == b"moov":
            return _mvhd_duration(f, offset + header, offset + box_size)
        offset += box_size
    return None


def expected_frames(path: Path, sample_fps: float, max_frames: int | None) -> int:
    """The frames a video will give at `sample_fps` (capped at `max_frames`), from its header."""
    seconds = duration_seconds(path)
    frames = UNKNOWN_FRAMES if seconds is None else max(1, math.ceil(seconds * sample_fps))
    return min(frames, max_frames) if max_frames else frames


def pack_runs(todo: list[str], order: list[str], work: dict[str, int], parts: int,
              least: int | None = None) -> list[list[str]]:
    """Ranged runs for the keys `todo`: each consecutive in `order` (a range covers every
    partition between its ends), as few as the upper bound allows, split in up to `parts`
    (the runners free to take them) while each part keeps `least` frames of work
    (default `MIN_RUN_FRAMES`)."""
    wanted = set(todo)
    spans, span = [], []
    for key in order:
        if key in wanted:
            span.append(key)
        elif span:
            spans.append(span)
            span = []
    if span:
        spans.append(span)
    total = sum(work.get(k, UNKNOWN_FRAMES) for k in wanted)
    least = MIN_RUN_FRAMES if least is None else least
    runs = max(1, min(parts, total // least), math.ceil(total / MAX_RUN_FRAMES))
    target = total / runs
    chunks = []
    for span in spans:
        chunk, frames = [], 0
        for key in span:
            cost = work.get(key, UNKNOWN_FRAMES)
            if chunk and (frames + cost > MAX_RUN_FRAMES or len(chunk) >= MAX_RUN_VIDEOS or frames >= target):
                chunks.append(chunk)
                chunk, frames = [], 0
            chunk.append(key)
            frames += cost
        chunks.append(chunk)
    return chunks
