"""Search latency at scale: p50/p95 of one query at 10k, 100k and 1M rows of 512-d CLIP
vectors (ViT-B-32's width), on Milvus Lite by default or on a Milvus server (`--uri`).
Not a test.

    python bench/bench_search.py                      # Milvus Lite, 10k/100k/1M rows (~25 min here)
    python bench/bench_search.py --sizes 10000,100000 # quicker
    python bench/bench_search.py --uri http://127.0.0.1:19530

One collection grows to each size in turn: rows of 1000-frame videos (1 fps, 1000 s each)
go in through the project's fast insert path and are committed and recorded in the ledger
as a run does, so the query takes the API's own path: `search_rows` grouped by video
(`group_by_field=video_path`, `group_size` 8, k=10 videos) plus the ledger lookup that
keeps current rows only, then the merge into moments. Query encoding is not included
(a text query through ViT-B-32 costs the model's own time, reported as `encode_text_ms`
for a random ViT-B-32 on this CPU). Each size reports, over `--queries` queries after a
warm-up: p50/p95 ms of (a) that grouped search, (b) a plain top-10 row search, (c) the
grouped search with a `--video`-like filter (one video) and a time window, and for (b)
the recall of the exact top 10 (brute force here) and how often the query's own target
row is among the 10 (a query near its answer finds it; on Gaussian data the other 9 of
the exact top 10 are near-ties, which any approximate index swaps). Searches read as the
search API does (Bounded consistency); (d) is (b) with the pipeline's Strong reads, which
on a server wait for its newest time tick, side by side.

Index: the collections the pipeline creates use AUTOINDEX, which Milvus Lite 3.2 builds as
FAISS HNSW per segment (FLAT/BRUTE_FORCE without faiss) and a server maps to its own
choice; searches set HNSW's `ef` to max(64, rows asked). `--index FLAT` measures exact
search for comparison. Query vectors are perturbed stored vectors (a query near its
answer, as a real one is); stored vectors are Gaussian, unit length: the hardest case for
HNSW recall, real CLIP vectors cluster far more.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from feature_pipeline_dagster.core.engine.batches import EmbeddingBatch  # noqa: E402
from feature_pipeline_dagster.core.ledger import VideoRecord  # noqa: E402
from feature_pipeline_dagster.core.search.api import GROUP_SIZE, current_rows  # noqa: E402
from feature_pipeline_dagster.core.search.moments import Hit, merge_hits  # noqa: E402
from feature_pipeline_dagster.core.settings import CollectionSpec, FieldSpec  # noqa: E402
from feature_pipeline_dagster.core.store import RowFilter, open_store  # noqa: E402

DIM, FRAMES_PER_VIDEO, CHUNK = 512, 1000, 20_000
VERSION = "CLIP-bench"
K = 10


def spec_for(name: str) -> CollectionSpec:
    return CollectionSpec(name, (
        FieldSpec("id", "INT64", is_primary=True, auto_id=True),
        FieldSpec("video_path", "VARCHAR", max_length=1024),
        FieldSpec("frame_id", "INT32"),
        FieldSpec("timestamp_ms", "INT64"),
        FieldSpec("generation", "INT64"),
        FieldSpec("embeddings", "FLOAT_VECTOR", dim=DIM),
    ))


def chunk_vectors(start: int, n: int) -> np.ndarray:
    """Rows start..start+n, the same whatever the slicing (one seed per aligned block of CHUNK rows)."""
    blocks = []
    for block in range(start // CHUNK, (start + n - 1) // CHUNK + 1):
        v = np.random.default_rng(block).standard_normal((CHUNK, DIM)).astype(np.float32)
        lo, hi = max(start, block * CHUNK) - block * CHUNK, min(start + n, (block + 1) * CHUNK) - block * CHUNK
        blocks.append((v / np.linalg.norm(v, axis=1, keepdims=True))[lo:hi])
    return np.concatenate(blocks)


def grow(store, spec, have: int, want: int, generation: int) -> float:
    """Rows have..want as one write: inserted, then committed and recorded once, as a run
    commits many videos at once (a commit per chunk would scan the growing collection with
    its delete every time)."""
    started = time.perf_counter()
    videos = set()
    for start in range(have, want, CHUNK):
        n = min(CHUNK, want - start)
        ids = np.arange(start, start + n)
        batch = EmbeddingBatch(chunk_vectors(start, n), {"frame_id": (ids % FRAMES_PER_VIDEO).astype(np.int32),
                                                         "timestamp_ms": (ids % FRAMES_PER_VIDEO) * 1000})
        paths = [f"video_{i // FRAMES_PER_VIDEO:05d}.mp4" for i in ids]
        store.insert(spec, batch, paths, generation)
        videos.update(paths)
        print(f"  {start + n} rows, {time.perf_counter() - started:.0f}s", file=sys.stderr, flush=True)
    done = sorted(videos)
    store.commit(spec, done, generation)
    store.record_videos(spec, [VideoRecord(p, "0-0", "bench", VERSION, FRAMES_PER_VIDEO) for p in done], generation)
    return time.perf_counter() - started


def wait_indexed(store, spec, data_dir: Path | None, timeout_s: float = 3600) -> float:
    """Until every segment has its index. Milvus Lite builds a segment's HNSW in the
    background after a flush or a compaction and meanwhile searches that segment by brute
    force, while `describe_index` already counts its rows as indexed: for Lite, wait until
    each data file of the collection has its index file, twice in a row 5 s apart."""
    started = time.perf_counter()
    if data_dir is None:  # a server indexes sealed segments only; the store does not flush there
        store.client.flush(spec.name)
    settled = 0
    while time.perf_counter() - started < timeout_s and settled < 2:
        info = store.client.describe_index(spec.name, spec.vector_field.name)
        done = not info.get("pending_index_rows")
        if data_dir is not None:
            parts = data_dir / "collections" / spec.name / "partitions"
            data = {f.name.split(".")[0] for f in parts.glob("*/data/*.parquet")}
            indexed = {f.name.split(".")[0] for f in parts.glob("*/indexes/*.idx")}
            done = done and bool(data) and data <= indexed
        settled = settled + 1 if done else 0
        time.sleep(5 if settled else 2)
    return time.perf_counter() - started


def exact_tops(queries: np.ndarray, rows: int, k: int = K) -> list[set[int]]:
    """The exact top k rows of each query, in one pass over the data."""
    scores = np.concatenate([chunk_vectors(s, min(CHUNK, rows - s)) @ queries.T for s in range(0, rows, CHUNK)])
    return [set(np.argpartition(-scores[:, i], k)[:k].tolist()) for i in range(len(queries))]


def pct(values: list[float]) -> dict:
    return {"p50_ms": round(float(np.percentile(values, 50)), 2), "p95_ms": round(float(np.percentile(values, 95)), 2)}


def measure(store, strong, spec, rows: int, queries: int) -> dict:
    rng = np.random.default_rng(rows)
    targets = rng.integers(0, rows, queries + 3)
    base = np.concatenate([chunk_vectors(int(t), 1) for t in targets])
    query = base + rng.standard_normal(base.shape).astype(np.float32) * 0.01  # cos ~0.97 to its target
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    grouped, plain, filtered, strong_plain, flats = [], [], [], [], []
    for i, q in enumerate(query):
        t0 = time.perf_counter()
        hits, _, _ = current_rows(store, spec, q[None], RowFilter(), VERSION, K, GROUP_SIZE)
        merge_hits([Hit(r["video_path"], r["timestamp_ms"] / 1000, r["frame_id"], r["score"]) for r in hits[0]], 2.0, K)
        t1 = time.perf_counter()
        flat = store.search_rows(spec, q[None], K, None, 0, ("video_path", "frame_id"))
        t2 = time.perf_counter()
        video = f"video_{int(targets[i]) // FRAMES_PER_VIDEO:05d}.mp4"
        current_rows(store, spec, q[None], RowFilter(videos=(video,), since_ms=0, until_ms=600_000), VERSION, K,
                      GROUP_SIZE)
        t3 = time.perf_counter()
        strong.search_rows(spec, q[None], K, None, 0, ("video_path", "frame_id"))
        t4 = time.perf_counter()
        if i < 3:
            continue  # warm-up
        grouped.append((t1 - t0) * 1000)
        plain.append((t2 - t1) * 1000)
        filtered.append((t3 - t2) * 1000)
        strong_plain.append((t4 - t3) * 1000)
        flats.append({int(r["video_path"][6:11]) * FRAMES_PER_VIDEO + r["frame_id"] for r in flat[0]})
    checked = min(20, len(flats))
    exact = exact_tops(query[3:3 + checked], rows)
    recall = [len(got & want) / K for got, want in zip(flats, exact)]
    found = [int(t) in got for t, got in zip(targets[3:3 + checked], flats)]
    return {"rows": rows, "grouped_search": pct(grouped), "plain_top10": pct(plain),
            "filtered_one_video": pct(filtered), "plain_top10_strong_reads": pct(strong_plain),
            "strong_over_bounded_plain_p50": round(float(np.median(strong_plain) / np.median(plain)), 2),
            "recall_at_10_plain": round(float(np.mean(recall)), 3),
            "target_in_top10": round(float(np.mean(found)), 3)}


def encode_text_ms() -> float | None:
    """A random ViT-B-32's text tower on this CPU: what a text query adds before the search."""
    try:
        from feature_pipeline_dagster.core.models import load_text_encoder
        from feature_pipeline_dagster.core.models.clip.weights import make_random
        from feature_pipeline_dagster.core.settings import ModelSettings
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        model = ModelSettings(name="CLIP", path=tmp + "/clip", source="folder")
        make_random(model, Path(model.path))
        encoder = load_text_encoder(model, "cpu")
        encoder.encode(["warm up"])
        times = []
        for text in ["a red car at night", "a dog on a beach", "two people talking"] * 5:
            t0 = time.perf_counter()
            encoder.encode([text])
            times.append((time.perf_counter() - t0) * 1000)
        return round(float(np.median(times)), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uri", help="a Milvus server (default: a Milvus Lite file in a temporary folder)")
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--index", default="AUTOINDEX", help="AUTOINDEX (the pipeline's) or FLAT")
    parser.add_argument("--data", type=Path, help="Milvus Lite data folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "search.json")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    tmp = None
    if args.uri is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-search-", dir=args.data)
        uri = str(Path(tmp.name) / "search.db")
    else:
        uri = args.uri
    store = open_store(uri, reads_may_lag=True)  # as the search API opens it
    strong = open_store(uri)  # the pipeline's reads, which wait for a server's newest writes: side by side
    spec = spec_for(f"bench_search_{args.index.lower()}")
    if store.exists(spec):
        store.client.drop_collection(spec.name)
    if args.index != "AUTOINDEX":
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=True, enable_dynamic_field=False)
        for f in spec.fields:
            extra = {k: v for k, v in (("max_length", f.max_length), ("dim", f.dim)) if v is not None}
            schema.add_field(f.name, DataType[f.dtype], is_primary=f.is_primary, auto_id=f.auto_id, **extra)
        index = store.client.prepare_index_params()
        index.add_index(field_name="embeddings", index_type=args.index, metric_type="COSINE")
        store.client.create_collection(spec.name, schema=schema, index_params=index)
    from feature_pipeline_dagster.core.ledger import ledger_collection

    if store.exists(ledger_collection(spec)):
        store.client.drop_collection(ledger_collection(spec).name)
    results = {"backend": "Milvus Lite" if args.uri is None else args.uri, "index": args.index, "dim": DIM,
               "k": K, "group_size": GROUP_SIZE, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
               "load_start": os.getloadavg(), "sizes": []}
    have = 0
    try:
        for size in sizes:
            insert_s = grow(store, spec, have, size, generation=len(results["sizes"]) + 1)
            index_wait_s = wait_indexed(store, spec, Path(uri) if args.uri is None else None)
            have = size
            row = measure(store, strong, spec, size, args.queries)
            row.update(insert_s=round(insert_s, 1), index_wait_s=round(index_wait_s, 1))
            results["sizes"].append(row)
            print(json.dumps(row), flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2))
        results["encode_text_ms_vit_b_32_cpu"] = encode_text_ms()
        results["load_end"] = os.getloadavg()
        args.out.write_text(json.dumps(results, indent=2))
        print(json.dumps(results, indent=2))
    finally:
        store.close()
        strong.close()
        if tmp is not None:
            from feature_pipeline_dagster.core.store.lite_server import LiteServer

            LiteServer(uri).stop()
            tmp.cleanup()


if __name__ == "__main__":
    main()
