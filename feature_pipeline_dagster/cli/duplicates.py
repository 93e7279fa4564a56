"""`feature-pipeline duplicates`: groups of near-duplicate videos (core/search/duplicates.py).

    feature-pipeline duplicates
    feature-pipeline duplicates --json

One block per group: its videos, then each confirmed pair with the matching time range in
both videos. Warnings go to stderr, so `--json` on stdout stays parseable.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

from feature_pipeline_dagster.cli.search import printable
from feature_pipeline_dagster.core.search.duplicates import MIN_SCORE, find_duplicates, frame_collection
from feature_pipeline_dagster.core.store.lite_server import start_lite_server
from feature_pipeline_dagster.core.settings import load_settings


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="the groups as a JSON list on stdout")
    parser.add_argument("--min-score", type=float, default=MIN_SCORE, metavar="COS",
                        help=f"the cosine two frames need to match (default {MIN_SCORE}, measured on the tests' "
                        "random-weights CLIP; real weights may need lower: bench/bench_duplicates.py --grid)")


def run_duplicates(args) -> int:
    if not 0 < args.min_score <= 1:
        print(f"error: --min-score is a cosine in (0, 1], got {args.min_score}", file=sys.stderr)
        return 2
    settings = load_settings()
    frame_collection(settings)  # a NaViT config is refused before a database server starts
    start_lite_server(settings.db)
    result = find_duplicates(settings, min_score=args.min_score)
    for warning in result.warnings:
        print(("WARNING: " if not warning.startswith("RANDOM") else "") + warning, file=sys.stderr)
    if args.json:
        print(json.dumps([asdict(g) for g in result.groups], ensure_ascii=False, indent=1))
        return 0
    if not result.groups:
        print(f"no near-duplicate videos in {result.collection}", file=sys.stderr)
    for number, group in enumerate(result.groups, 1):
        if number > 1:
            print()
        print(f"group {number}: {len(group.videos)} videos")
        for pair in group.pairs:
            print(f"  {span(pair.a)} ↔ {span(pair.b)}  ({pair.frames} frames, cos {pair.score:.3f})")
    return 0


def span(s) -> str:
    return f"{printable(s.video_path)} {s.start_s:.1f}-{s.end_s:.1f} s"
