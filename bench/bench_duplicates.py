"""Near-duplicates at a larger scale than the tests: precision, recall and seconds per
video of `find_duplicates`, the threshold grid its constants were chosen from, and the
memory one video's pass holds. Not a test.

    python bench/bench_duplicates.py                   # 10 originals x 4 + 10 distinct (50 videos)
    python bench/bench_duplicates.py --grid            # also: pairs per MIN_SCORE (MIN_FRACTION 0)
    python bench/bench_duplicates.py --long-frames 3600  # also: memory of one hour-long 512-d video
    python bench/bench_duplicates.py --trims-between-samples  # the limit: trims 0.4 s past a sample

The set is feature_pipeline_dagster_tests/duplicate_set.py's (a copy, a 160x120 re-encode at
100 kb/s and a trim per original, distinct videos of the same generator), embedded by the
engine with the tests' tiny random-weights CLIP into a fresh Milvus Lite file. `--grid`
lists, per MIN_SCORE, the fraction of the shorter video's frames matched at one offset: the
lowest among true pairs and the highest among false ones. `--long-frames N`: N rows of a
512-d video (ViT-B-32's width) in a collection of their own, and the peak Python memory
(tracemalloc) of reading them as a pass does, plus one page's search.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from feature_pipeline_dagster.core.batches import EmbeddingBatch  # noqa: E402
from feature_pipeline_dagster.core.engine.run import RunReport, embed_videos  # noqa: E402
from feature_pipeline_dagster.core.models import load_extractor  # noqa: E402
from feature_pipeline_dagster.core.models.clip.weights import make_random  # noqa: E402
from feature_pipeline_dagster.core.search import duplicates  # noqa: E402
from feature_pipeline_dagster.core.settings import CollectionSpec, FieldSpec, ModelSettings, load_settings  # noqa: E402
from feature_pipeline_dagster.core.store import RowFilter, new_generation, store_for  # noqa: E402
from feature_pipeline_dagster.core.store.lite_server import LiteServer  # noqa: E402
from feature_pipeline_dagster_tests.conftest import TINY_CLIP, clip_config, write_config  # noqa: E402
from feature_pipeline_dagster_tests.duplicate_set import (  # noqa: E402
    pairs_of_groups, precision_recall, write_duplicate_set)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--originals", type=int, default=10)
    parser.add_argument("--distinct", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--first-seed", type=int, default=100)
    parser.add_argument("--grid", action="store_true")
    parser.add_argument("--trims-between-samples", action="store_true", help="trims start 0.4 s past a sample")
    parser.add_argument("--long-frames", type=int, default=0)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-duplicates-"))
    model = make_random(ModelSettings(name="CLIP", path="", source="folder"), root / "model", TINY_CLIP)
    truth = write_duplicate_set(root / "videos", args.originals, args.distinct, args.seconds, args.first_seed,
                                trims_on_samples=not args.trims_between_samples)
    settings = load_settings(write_config(root, clip_config(root, model, root / "videos")))
    store = store_for(settings.db)
    try:
        report = embed_videos(settings, settings.db.collections[0], store, load_extractor(settings.model, "cpu"),
                              truth.videos, RunReport())
        assert not report.failed, report.failed
        started = time.perf_counter()
        result = duplicates.find_duplicates(settings, store=store)
        seconds = time.perf_counter() - started
        precision, recall = precision_recall(pairs_of_groups(result.groups), truth.true_pairs())
        print(f"{len(truth.videos)} videos of {args.seconds:g} s: precision {precision:.3f}, recall {recall:.3f}, "
              f"{len(result.groups)} groups, {seconds / len(truth.videos) * 1000:.0f} ms per video")
        if args.grid:
            grid(settings, store, truth.true_pairs())
        if args.long_frames:
            long_video(store, args.long_frames)
    finally:
        store.close()
        LiteServer(settings.db.uri).stop()


def grid(settings, store, truth: set) -> None:
    saved = duplicates.MIN_SCORE, duplicates.MIN_FRACTION, duplicates.MIN_FRAMES
    duplicates.MIN_FRACTION, duplicates.MIN_FRAMES = 0.0, 0
    try:
        for score in (0.95, 0.98, 0.99, 0.993, 0.995, 0.998, 0.999):
            duplicates.MIN_SCORE = score
            pairs = [p for g in duplicates.find_duplicates(settings, store=store).groups for p in g.pairs]
            true = [p.fraction for p in pairs if (p.a.video_path, p.b.video_path) in truth]
            false = [p.fraction for p in pairs if (p.a.video_path, p.b.video_path) not in truth]
            print(f"MIN_SCORE {score}: true pairs {len(true)}/{len(truth)}, lowest fraction "
                  f"{min(true, default=0):.3f}; false pairs {len(false)}, highest fraction {max(false, default=0):.3f}")
    finally:
        duplicates.MIN_SCORE, duplicates.MIN_FRACTION, duplicates.MIN_FRAMES = saved


def long_video(store, frames: int) -> None:
    spec = CollectionSpec("bench_long", (
        FieldSpec("id", "INT64", is_primary=True, auto_id=True), FieldSpec("video_path", "VARCHAR", max_length=1024),
        FieldSpec("frame_id", "INT32"), FieldSpec("timestamp_ms", "INT64"), FieldSpec("generation", "INT64"),
        FieldSpec("embeddings", "FLOAT_VECTOR", dim=512)))
    vectors = np.random.default_rng(0).standard_normal((frames, 512)).astype(np.float32)
    generation = new_generation()
    columns = {"frame_id": np.arange(frames), "timestamp_ms": np.arange(frames) * 1000}
    store.insert(spec, EmbeddingBatch(vectors, columns), ["long.mp4"] * frames, generation)
    store.commit(spec, ["long.mp4"], generation)
    tracemalloc.start()
    rows = store.query_rows(spec, RowFilter(videos=("long.mp4",), current=(("long.mp4", generation),)),
                            ("timestamp_ms", "embeddings"))
    page = np.asarray([r["embeddings"] for r in rows[:duplicates.QUERY_PAGE]], np.float32)
    store.search_rows(spec, page, duplicates.CANDIDATE_VIDEOS, RowFilter(exclude=("long.mp4",)),
                      duplicates.FRAMES_PER_VIDEO, ("video_path", "generation", "timestamp_ms", "frame_id"))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"one video of {len(rows)} 512-d frames: peak {peak / 2**20:.0f} MiB of Python memory for its pass "
          f"({peak / len(rows) / 1024:.1f} KiB a frame)")


if __name__ == "__main__":
    main()
