"""What exporting a moment costs: stream copy against re-encoding at two libx264 presets.

    python bench/bench_clip.py

An 8 s moment of a generated 10 s 720p video with texture, grain, B-frames and a key frame
every second (AAC audio beside it): from 1.0 s (a key frame: stream copy), and from 1.5 s
re-encoded at CRF 18 with `veryfast` (what core/clips.py uses) and with `medium`.
Prints seconds and the file's size for each.
"""

import tempfile
import time
from pathlib import Path

from feature_pipeline_dagster.core import clips
from feature_pipeline_dagster.core.samples import write_video


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        source = write_video(Path(folder) / "source.mp4", seconds=10, size=(1280, 720), detail=True, gop=30,
                             audio="aac")
        for preset in ("copy", "veryfast", "medium"):
            clips.X264_OPTIONS = {**clips.X264_OPTIONS, "preset": preset}
            start = 1.0 if preset == "copy" else 1.5
            began = time.perf_counter()
            clip = clips.export_clip(source, start, start + 8, Path(folder) / f"{preset}.mp4")
            print(f"{preset:9s} {clip.how:40s} {time.perf_counter() - began:6.2f} s "
                  f"{clip.path.stat().st_size >> 10:6d} KiB")


if __name__ == "__main__":
    main()
