"""`feature-pipeline clip`: a moment of a video as an MP4 of its own (core/clips.py).

    feature-pipeline clip trips/day1.mp4 --start 12 --end 18.5 -o moment.mp4

One line on stdout says how it was cut (stream copy or re-encode) and the result's
duration; an end past the video's end is moved to it, with a note on stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path

from feature_pipeline_dagster.core.clips import export_clip
from feature_pipeline_dagster.core.settings import load_settings
from feature_pipeline_dagster.core.videos import folder_video


def add_arguments(parser) -> None:
    parser.add_argument("video", metavar="VIDEO", help="the video as search prints it (relative to "
                        "video_input.path), or a path to a file inside that folder")
    parser.add_argument("--start", type=float, required=True, metavar="S", help="seconds into the video")
    parser.add_argument("--end", type=float, required=True, metavar="S",
                        help="seconds into the video (past its end: the clip ends there)")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="FILE", help="the MP4 file to write")
    parser.add_argument("--force", action="store_true", help="overwrite FILE if it exists")


def run_clip(args) -> int:
    from feature_pipeline_dagster.cli.search import clock, printable

    settings = load_settings(check_paths=False)  # no model is loaded
    source = folder_video(settings.video_input, args.video, from_cwd=True)
    clip = export_clip(source, args.start, args.end, args.output, force=args.force)
    if clip.note:
        print(f"note: {clip.note}", file=sys.stderr)
    print(f"{printable(str(clip.path))}: {clip.how}, {clip.duration_s:.2f} s "
          f"({clock(clip.start_s)}-{clock(clip.end_s)} of {printable(args.video)})")
    return 0
