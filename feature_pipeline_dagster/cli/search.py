"""`feature-pipeline search`: the core's search (core/search) from the command line.

    feature-pipeline search "a red car at night" -k 5
    feature-pipeline search --image query.jpg --video 'trips/*' --since 60 --until 120 --json
    feature-pipeline search "a goal" --by gap --gap 3   # hits merged by time, not by shot

Moments print one a line, best first; warnings (random weights, videos left out) go to
stderr, so `--json` on stdout stays parseable.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

from feature_pipeline_dagster.core.search.moments import BY, DEFAULT_GAP_S
from feature_pipeline_dagster.core.errors import SearchError
from feature_pipeline_dagster.core.search import search
from feature_pipeline_dagster.core.settings import load_settings
from feature_pipeline_dagster.core.store.lite_server import start_lite_server
from feature_pipeline_dagster.core.models.weights import warned_elsewhere


def add_arguments(parser) -> None:
    parser.add_argument("text", nargs="?", help="what to find, in words (CLIP); or --image")
    parser.add_argument("--image", type=Path, metavar="FILE", help="a picture to find (any model family)")
    parser.add_argument("-k", type=int, default=10, help="moments to return (default 10)")
    parser.add_argument("--video", metavar="PATTERN", help="only videos whose path (relative to video_input.path) "
                        "matches this glob, e.g. 'trips/*.mp4'")
    parser.add_argument("--since", type=float, metavar="SECONDS", help="only frames at least this far into the video")
    parser.add_argument("--until", type=float, metavar="SECONDS", help="only frames at most this far into the video")
    parser.add_argument("--gap", type=float, default=DEFAULT_GAP_S, metavar="SECONDS",
                        help=f"hits of one video this close join into one moment (default {DEFAULT_GAP_S:g})")
    parser.add_argument("--by", choices=BY, default=BY[0],
                        help="a moment is a shot holding hits (default; videos without shots: by gap), or hits "
                        "within --gap seconds of each other")
    parser.add_argument("--feature", help="which of model.features to search (default: the first)")
    parser.add_argument("--json", action="store_true", help="the result as JSON on stdout")


def run_search(args) -> int:
    if (args.text is None) == (args.image is None):
        raise SearchError('give a text query ("a red car") or --image FILE, not both or neither')

    settings = load_settings()
    start_lite_server(settings.db)
    warned_elsewhere(settings.model.path)  # the result's warning below says it, once
    result = search(settings, text=args.text, image=args.image, k=args.k, videos=args.video,
                    since=args.since, until=args.until, gap=args.gap, feature=args.feature, say=say,
                    by=args.by)
    for warning in result.warnings:
        print(("WARNING: " if not warning.startswith("RANDOM") else "") + warning, file=sys.stderr)
    if args.json:
        print(json.dumps(result_json(result), ensure_ascii=False, indent=1))
        return 0
    if not result.moments:
        print(f"no moments found in {result.collection}", file=sys.stderr)
    for rank, m in enumerate(result.moments, 1):
        where = f"{clock(m.start_s)}-{clock(m.end_s)}" if m.end_s > m.start_s else clock(m.start_s)
        patches = m.best.patches
        cells = f"  cells {' '.join(f'({r},{c})' for r, c in patches.best)}" if patches else ""
        kind = "shot " if m.shot is not None else ""
        print(f"{rank:2d}. {m.score:.4f}  {printable(m.video_path)}  {kind}{where}  best {clock(m.best_s)}{cells}")
    return 0


def say(line: str) -> None:
    """A progress line on stderr, at once (stdout may be --json)."""
    print(line, file=sys.stderr, flush=True)


def result_json(result) -> dict:
    """The result as plain JSON: every moment with its hits (and NaViT patches)."""
    return {"query": result.query, "model": result.model, "collection": result.collection,
            "random_weights": result.random_weights, "warnings": result.warnings,
            "moments": [asdict(m) for m in result.moments]}


def clock(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    return (f"{hours}:{minutes:02d}:" if hours else f"{minutes}:") + f"{rest:04.1f}"


def printable(name: str) -> str:
    """A file name for a terminal: control characters (a newline, an escape sequence) shown escaped."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in name)
