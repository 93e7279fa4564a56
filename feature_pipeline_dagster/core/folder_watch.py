"""What changed in the video folder since the last look (Dagster-free).

The sensor keeps a cursor: the fingerprint (size, mtime) of every file it has handed
out, and of every file still settling with the time it was first seen so. A file is
ready once its fingerprint has held for `settle_seconds` (or its mtime is that old);
a ready file is new (no partition yet), changed (handed out before with another
fingerprint) or adopted (a partition already embedded by other means). Partitions
without a file are deleted. At most `limit` files are handed out per look, so one
tick stays short however many files arrive at once.

Every `audit_seconds` the look also asks the database (`missing`) which settled files
lack their rows although they were handed out: rows deleted by hand, or a config now
pointing at another database or collection. Those are lost, to embed again; each is
asked for once per fingerprint, so a video that fails every time is not retried at every
audit (its file changing makes it changed, as any file).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

from feature_pipeline_dagster.core.videos import FolderEntry, partition_key


@dataclass
class FolderChanges:
    new: list[tuple[str, FolderEntry]] = field(default_factory=list)  # no partition yet
    changed: list[tuple[str, FolderEntry]] = field(default_factory=list)  # re-embed (or never embedded)
    lost: list[tuple[str, FolderEntry]] = field(default_factory=list)  # handed out, but the database lacks its rows
    deleted: list[str] = field(default_factory=list)
    waiting: int = 0
    audited: bool = False  # this look asked the database (`missing`)
    cursor: str = ""


AUDIT_SECONDS = 600.0  # a look at every file's rows costs 2 queries per 1000 videos per collection


def diff_folder(listing: list[FolderEntry], partitions: set[str], cursor: str | None, now: float,
                settle_seconds: float, embedded=lambda: set(), limit: int = 1000,
                missing=None, busy=lambda: set(), audit_seconds: float = AUDIT_SECONDS) -> FolderChanges:
    """`embedded()` (called only when needed) gives the partitions already materialized;
    `missing(videos)`, when an audit is due, the keys of `videos` the database lacks, and
    `busy()` those a queued or running run is embedding now (not asked for again)."""
    state = json.loads(cursor) if cursor else {"seen": {}, "pending": {}}
    seen, pending = state["seen"], state["pending"]
    changes = FolderChanges()
    present: set[str] = set()
    settled: list[tuple[str, FolderEntry]] = []
    materialized = None
    for video in listing:
        key = partition_key(video.relpath)
        present.add(key)
        fp = video.fingerprint
        if seen.get(key) == fp:
            if key in partitions:
                settled.append((key, video))
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
    asked = state.get("asked", {})
    if missing is not None and now - state.get("audited", 0.0) >= audit_seconds:
        state["audited"], changes.audited = now, True
        room = max(0, limit - len(changes.new) - len(changes.changed))
        lacking = set(missing([video for _, video in settled])) if settled else set()
        asked = {k: fp for k, fp in asked.items() if k in lacking}  # found whole again: may be asked again
        running = busy() if lacking else set()
        changes.lost = [(k, v) for k, v in settled
                        if k in lacking and k not in running and asked.get(k) != v.fingerprint][:room]
        asked.update({k: v.fingerprint for k, v in changes.lost})
    state.update(seen=seen, pending=pending, asked=asked)
    changes.cursor = json.dumps(state, separators=(",", ":"))
    return changes


def held_keys(cursor: str | None) -> dict[str, str]:
    """The videos the cursor holds for a busy device (key -> new, changed or lost)."""
    return json.loads(cursor).get("held", {}) if cursor else {}


def with_held(cursor: str, held: dict[str, str]) -> str:
    """The cursor, now holding `held`."""
    state = json.loads(cursor)
    state["held"] = held
    return json.dumps(state, separators=(",", ":"))


def folder_times(folders) -> dict[str, int]:
    """The modification time of each folder (-1 if gone): a file added to, removed from or
    renamed in a folder changes its folder's time, which one stat a folder sees."""
    times = {}
    for folder in folders:
        try:
            times[str(folder)] = os.stat(folder).st_mtime_ns
        except OSError:
            times[str(folder)] = -1
    return times


POLL_S = 0.1  # a stat per watched folder: 10 folders cost ~0.1 ms a poll
POLL_SHARE = 0.05  # at most this share of a core in polls: 10,000 folders (~30 ms a poll) every 0.6 s
ASK_S = 0.5  # `ready()` is a question to Dagster's run storage (a few ms)


def wait_for_change(folders: dict[str, int], until: float, ready=None, rest: float = 0.0) -> bool:
    """After `rest` seconds, sleep until one of `folders` (their `folder_times`) changes or
    `ready()` is true (True), or until the monotonic time `until` (False)."""
    time.sleep(max(0.0, min(rest, until - time.monotonic())))
    ask = time.monotonic()
    while (now := time.monotonic()) < until:
        if folder_times(folders) != folders:
            return True
        polled = time.monotonic() - now
        if ready is not None and now >= ask:
            if ready():
                return True
            ask = now + ASK_S
        time.sleep(max(0.0, min(max(POLL_S, polled / POLL_SHARE), until - time.monotonic())))
    return False
