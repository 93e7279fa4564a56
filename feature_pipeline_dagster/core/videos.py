"""The videos under `video_input.path`: listing, partition keys, and what identifies a
file's content.

Only regular files with a configured extension count; hidden files (often partial
copies) and symlinks that point outside the folder are skipped.

A video's partition key is its relative path, made safe: Dagster forbids control
characters and "..." in keys, and the UI's partition selection reads commas, brackets
and `*` as syntax. Those characters (and `%` itself) are percent-encoded, reversibly,
so any file name still works end to end while ordinary names (unicode and spaces
included) stay readable.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from feature_pipeline_dagster.core.errors import VideoError
from feature_pipeline_dagster.core.settings import VideoInput

DIGEST_CHUNKS, DIGEST_CHUNK_BYTES = 16, 1 << 16
_UNSAFE_IN_KEYS = re.compile(r"[%,\[\]*\x00-\x1f\x7f]|(?<=\.)\.|^\s|\s$")


def partition_key(relpath: str) -> str:
    return _UNSAFE_IN_KEYS.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), relpath)


def relpath_of(key: str) -> str:
    from urllib.parse import unquote

    return unquote(key)


@dataclass(frozen=True)
class FolderEntry:
    """A video file as the folder listing found it: its name, size and modification time."""

    relpath: str  # POSIX path relative to video_input.path: what rows store as video_path
    path: Path
    size: int
    mtime_ns: int

    @property
    def fingerprint(self) -> str:
        """Cheap change detection: new content comes with a new size or modification time."""
        return fingerprint(self.size, self.mtime_ns)


def fingerprint(size: int, mtime_ns: int) -> str:
    return f"{size}-{mtime_ns}"


def content_digest(path: Path) -> str:
    """The file's data version: a hash of its size and of 16 chunks spread over it, so a
    multi-gigabyte video costs 1 MiB of reading, not a full pass."""
    size = path.stat().st_size
    digest = hashlib.blake2b(str(size).encode(), digest_size=16)
    with open(path, "rb") as handle:
        for i in range(DIGEST_CHUNKS):
            handle.seek(max(0, size - DIGEST_CHUNK_BYTES) * i // max(1, DIGEST_CHUNKS - 1))
            digest.update(handle.read(DIGEST_CHUNK_BYTES))
    return digest.hexdigest()


def list_videos(video_input: VideoInput, folders: set[Path] | None = None) -> list[FolderEntry]:
    """The videos under `video_input.path`; `folders`, if given, gets every folder walked (those
    a watch stats: a video put into a folder that held none yet changes that folder only)."""
    root = video_input.path.resolve()
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if folders is not None:
            folders.add(Path(folder))
        for name in sorted(files):
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in video_input.extensions:
                continue
            path = Path(folder) / name
            try:
                if path.is_symlink() and not path.resolve().is_relative_to(root):
                    continue
                stat = path.stat()
            except OSError:
                continue
            found.append(FolderEntry(path.relative_to(root).as_posix(), path, stat.st_size, stat.st_mtime_ns))
    return found


def folder_video(video_input: VideoInput, name: str, from_cwd: bool = False) -> Path:
    """The file `name` names if it is a video under `video_input.path` (symlinks followed),
    else a `VideoError` saying why: only the folder's videos are ever served or read for
    users. `name` is relative to the folder, as rows store it and search prints it (`..`,
    absolute paths and empty parts refused); `from_cwd` also takes a path as a user types
    one (absolute, or from the working folder) that resolves under the folder."""
    root = video_input.path.resolve()
    if not name or "\x00" in name:
        raise VideoError(f"{name!r}: not a file name")
    relative = not name.startswith(("/", "\\")) and not any(part in ("..", "") for part in name.split("/"))
    candidates = [root / name] if relative else []
    if from_cwd:
        candidates.append(Path(name))
    for candidate in candidates:
        try:
            target = candidate.resolve(strict=True)
        except (OSError, RuntimeError, ValueError):
            continue
        if not target.is_relative_to(root):
            raise VideoError(f"{name}: outside the video folder {root}: only its videos are read")
        if not target.is_file() or target.suffix.lower() not in video_input.extensions:
            raise VideoError(f"{name}: not a video (a file ending in {', '.join(video_input.extensions)})")
        return target
    raise VideoError(f"{name}: no such video under {root} (give the path search prints, relative to it)")


def still_being_written(path: Path, before: os.stat_result, settle_seconds: float) -> str | None:
    """Why `path` looks like a file still being copied or recorded, or None.

    Its size or modification time moved since `before`; or it was modified within
    `settle_seconds` and moves during a short look (a failure to open a file that is
    being written says nothing about the file it will become)."""

    def moved(now: os.stat_result) -> str | None:
        if (now.st_size, now.st_mtime_ns) == (before.st_size, before.st_mtime_ns):
            return None
        return (f"{path}: still being written (its size went from {before.st_size} to {now.st_size} bytes "
                "while it was read); it is embedded once it stops changing")

    try:
        now = path.stat()
        if (why := moved(now)) or time.time() - now.st_mtime > settle_seconds:
            return why
        time.sleep(min(1.0, settle_seconds))
        return moved(path.stat())
    except OSError:
        return None
