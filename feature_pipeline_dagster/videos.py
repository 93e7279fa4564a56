"""The videos under `video_input.path`: listing, and what identifies a file's content.

Only regular files with a configured extension count; hidden files (often partial
copies) and symlinks that point outside the folder are skipped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from feature_pipeline_dagster.config import VideoInput


@dataclass(frozen=True)
class VideoFile:
    relpath: str  # POSIX path relative to video_input.path: what rows store as video_path
    path: Path
    size: int
    mtime_ns: int

    @property
    def fingerprint(self) -> str:
        """Cheap content identity: a changed file gets a new size or modification time."""
        return f"{self.size}-{self.mtime_ns}"


def list_videos(video_input: VideoInput) -> list[VideoFile]:
    root = video_input.path.resolve()
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or Path(name).suffix.lower() not in video_input.extensions:
                continue
            path = Path(folder) / name
            if path.is_symlink() and not path.resolve().is_relative_to(root):
                continue
            try:
                stat = path.stat()
            except OSError:
                continue
            found.append(VideoFile(path.relative_to(root).as_posix(), path, stat.st_size, stat.st_mtime_ns))
    return found
