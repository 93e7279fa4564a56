"""What changed in the video folder since the last look (Dagster-free).

The sensor keeps a cursor: the fingerprint (size, mtime) of every file it has handed
out, and of every file still settling with the time it was first seen so. A file is
ready once its fingerprint has held for `settle_seconds` (or its mtime is that old);
a ready file is new (no partition yet), changed (handed out before with another
fingerprint) or adopted (a partition already embedded by other means). Partitions
without a file are deleted. At most `limit` files are handed out per look, so one
tick stays short however many files arrive at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from feature_pipeline_dagster.core.videos import VideoFile, partition_key


@dataclass
class FolderChanges:
    new: list[tuple[str, VideoFile]] = field(default_factory=list)  # no partition yet
    changed: list[tuple[str, VideoFile]] = field(default_factory=list)  # re-embed (or never embedded)
    deleted: list[str] = field(default_factory=list)
    waiting: int = 0
    cursor: str = ""


def diff_folder(listing: list[VideoFile], partitions: set[str], cursor: str | None, now: float,
                settle_seconds: float, embedded=lambda: set(), limit: int = 1000) -> FolderChanges:
    """`embedded()` (called only when needed) gives the partitions already materialized."""
    state = json.loads(cursor) if cursor else {"seen": {}, "pending": {}}
    seen, pending = state["seen"], state["pending"]
    changes = FolderChanges()
    present: set[str] = set()
    materialized = None
    for video in listing:
        key = partition_key(video.relpath)
        present.add(key)
        fp = video.fingerprint
        if seen.get(key) == fp:
            continue
        since = pending[key][1] if key in pending and pending[key][0] == fp else now
        if now - since < settle_seconds and now - video.mtime_ns / 1e9 < settle_seconds:
            pending[key] = [fp, since]
            changes.waiting += 1
            continue
        if len(changes.new) + len(changes.changed) >= limit:
            changes.waiting += 1
            continue
        pending.pop(key, None)
        if key not in partitions:
            changes.new.append((key, video))
        elif key in seen:
            changes.changed.append((key, video))
        else:
            if materialized is None:
                materialized = embedded()
            if key not in materialized:
                changes.changed.append((key, video))
        seen[key] = fp
    changes.deleted = sorted(partitions - present)
    for key in [k for k in seen if k not in present]:
        del seen[key]
    for key in [k for k in pending if k not in present]:
        del pending[key]
    changes.cursor = json.dumps({"seen": seen, "pending": pending}, separators=(",", ":"))
    return changes


def split_contiguous(keys: list, parts: int, max_size: int) -> list[list]:
    """Consecutive items in about `parts` chunks (more if a chunk would exceed max_size)."""
    if not keys:
        return []
    size = min(max_size, -(-len(keys) // max(1, parts)))
    return [keys[i : i + size] for i in range(0, len(keys), size)]
