"""What a commit costs a Milvus Lite server, whose one Python process serves every run's
writes: the CPU it spends on short clips' rows committed every 64 videos (the writer's
old rule) against every 512 (its rule now: 5 s or 512 videos, core/engine/writer.py), and
how a commit's delete grows with the rows already stored.

    python bench/bench_commits.py [--videos 1000] [--library 20000 200000]

Rows: 3 a video (a 3-s clip at 1 fps), 512-d, written through the project's store (one
insert request of many videos, then `commit`: flush, delete older generations, flush)
into the pipeline's own frame collection on a fresh Lite file; the server's CPU is read
from /proc/<pid>/stat. Then `--library` rows of older videos, and a commit of 64 new
videos timed at each size (nothing new to flush: the time is the delete's). No timing
here is asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
ROWS_PER_VIDEO = 3


def open_store(root: Path):
    from feature_pipeline_dagster.core.settings import load_settings
    from feature_pipeline_dagster.core.store import store_for
    from feature_pipeline_dagster.core.store.lite_server import LiteServer

    config = yaml.safe_load((REPO / "config" / "clip-config.yaml").read_text())
    (root / "videos").mkdir()
    config["video_input"]["path"] = str(root / "videos")
    config["db"]["uri"] = str(root / "db" / "bench.db")
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    settings = load_settings(root / "config.yaml", check_paths=False)
    store = store_for(settings.db)
    spec = settings.db.collections[0]
    store.ensure_collection(spec)
    pid = LiteServer(root / "db" / "bench.db").running().pid
    return store, spec, pid


def close(store, root: Path) -> None:
    from feature_pipeline_dagster.core.store.lite_server import LiteServer

    store.close()
    LiteServer(root / "db" / "bench.db").stop()
    shutil.rmtree(root, ignore_errors=True)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rows(spec, videos: list[str]):
    from feature_pipeline_dagster.core.batches import EmbeddingBatch

    n = len(videos) * ROWS_PER_VIDEO
    vectors = np.random.default_rng(0).standard_normal((n, spec.vector_field.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    columns = {"frame_id": np.tile(np.arange(ROWS_PER_VIDEO) * 30, len(videos)),
               "timestamp_ms": np.tile(np.arange(ROWS_PER_VIDEO) * 1000, len(videos))}
    return EmbeddingBatch(vectors, columns), [v for v in videos for _ in range(ROWS_PER_VIDEO)]


def write(store, spec, videos: list[str], per_commit: int, generation: int) -> None:
    for start in range(0, len(videos), per_commit):
        part = videos[start:start + per_commit]
        batch, paths = rows(spec, part)
        store.insert(spec, batch, paths, generation)
        store.commit(spec, part, generation)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--videos", type=int, default=1000)
    parser.add_argument("--library", type=int, nargs="+", default=[20000, 200000])
    args = parser.parse_args()
    for per_commit in (64, 512):
        root = Path(tempfile.mkdtemp(prefix="bench-commits-"))
        store, spec, pid = open_store(root)
        try:
            before = cpu_seconds(pid)
            write(store, spec, [f"clips/{i:06d}.mp4" for i in range(args.videos)], per_commit, 1)
            spent = cpu_seconds(pid) - before
            print(f"{args.videos} clips, a commit every {per_commit:>3} videos: {spent:.2f} s of the Lite server's CPU "
                  f"({1000 * spent / args.videos:.2f} ms a clip)")
        finally:
            close(store, root)
    root = Path(tempfile.mkdtemp(prefix="bench-commits-"))
    store, spec, pid = open_store(root)
    try:
        stored = 0
        for size in sorted(args.library):
            videos = [f"library/{i:07d}.mp4" for i in range(stored // ROWS_PER_VIDEO, size // ROWS_PER_VIDEO)]
            write(store, spec, videos, 5000, 1)
            stored = size
            new = [f"new/{i:04d}.mp4" for i in range(64)]
            timings = []
            for generation in (2, 3, 4):
                started = time.perf_counter()
                store.commit(spec, new, generation)  # nothing to flush: its time is the delete's
                timings.append(1000 * (time.perf_counter() - started))
            print(f"a commit of 64 videos (its delete of their other generations) among {size:>7} rows: "
                  + ", ".join(f"{t:.0f}" for t in timings) + " ms")
    finally:
        close(store, root)


if __name__ == "__main__":
    main()
