"""Search recall and latency at scale: recall@10 and p50/p95 of one query at 100k and 1M
rows of CLIP-like 512-d vectors (ViT-B-32's width), for image-like and text-like queries,
on Milvus Lite by default, on a Milvus server (`--uri`), or on a Milvus 2.3 standalone
server this bench starts in a network namespace of its own (`--server`). Not a test.

    python bench/bench_search.py --sizes 100000           # Milvus Lite (~8 min here)
    python bench/bench_search.py --sizes 100000,1000000   # ~40 min (1M: 5 min insert, 5-11 min index)
    python bench/bench_search.py --server --sizes 100000  # needs unshare (root or CAP_SYS_ADMIN)
    python bench/bench_search.py --ef 64,128,256,512      # recall and latency of each ef as well

Vectors (`clip_like`): not Gaussian noise, which no index finds neighbours in (recall fell
to 0.20-0.29 at 1M), but CLIP's shape: every image vector shares one "image" direction
(cos ~0.45 between unrelated images), a video sits near one of TOPICS topic centres (cos
~0.7 within a topic) and its frames are a slow walk around the video (cos ~0.9 within a
video, 0.995 between neighbouring frames). Image-like queries are a stored frame plus noise
(cos ~0.9 to it); text-like queries sit across CLIP's modality gap: a shared "text"
direction plus a little of the target's topic, video and frame, so cos ~0.3 to their
targets and ~0.84 among text queries, as with real CLIP. Ground truth: exact brute force
(numpy, chunked).

One collection grows to each size in turn: rows of FRAMES_PER_VIDEO-frame videos (1 fps)
go in through the project's insert path and are committed and recorded in the ledger as a
run does, so a query takes the API's own path: `search_rows` with the query's kind, which
picks HNSW's `ef` by the store's rule (core/store/milvus/store.py `search_ef`), grouped by video
(group_size 8, k=10 videos) plus the ledger lookup that keeps current rows only, then the
merge into moments. Each size reports per query kind, over `--queries` queries after a
warm-up: p50/p95 ms of (a) that grouped search, (b) a plain top-10 row search with the
recall of the exact top 10, and with `--ef` (b) again at each fixed ef; for image queries
(c) the grouped search with a `--video`-like filter and a time window and (d) (b) with the
pipeline's Strong reads, which on a server wait for its newest time tick; and per size what
a commit and the `ef` rule read (`writer_reads`: a commit's delete scan, the row count). Query encoding
is not included (`encode_text_ms`: a random ViT-B-32's text tower on this CPU). On Lite each
size is measured twice, side by side: the Lite server with the project's search executor
(core/store/lite_search.py), then restarted with Milvus Lite's own
(`FEATURE_PIPELINE_LITE_SEARCH=milvus-lite`); `own_over_project_p50` gives the ratios.
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

from feature_pipeline_dagster.core.batches import EmbeddingBatch  # noqa: E402
from feature_pipeline_dagster.core.ledger import LedgerRecord  # noqa: E402
from feature_pipeline_dagster.core.search.api import GROUP_SIZE, current_rows  # noqa: E402
from feature_pipeline_dagster.core.search.moments import Hit, merge_hits  # noqa: E402
from feature_pipeline_dagster.core.settings import CollectionSpec, FieldSpec, IndexSpec  # noqa: E402
from feature_pipeline_dagster.core.store import RowFilter, open_store  # noqa: E402
from feature_pipeline_dagster.core.store.lite_search import SEARCH_ENV  # noqa: E402
from feature_pipeline_dagster.core.store.lite_server import LiteServer  # noqa: E402
from feature_pipeline_dagster.core.store.milvus.filters import videos_in  # noqa: E402

DIM, FRAMES_PER_VIDEO, CHUNK = 512, 200, 20_000  # CHUNK: a whole number of videos
TOPICS = 100
VERSION = "CLIP-bench"
K = 10
KINDS = ("image", "text")


def spec_for(name: str, index: IndexSpec, partition_key: bool = True) -> CollectionSpec:
    return CollectionSpec(name, (
        FieldSpec("id", "INT64", is_primary=True, auto_id=True),
        FieldSpec("video_path", "VARCHAR", max_length=1024),
        FieldSpec("frame_id", "INT32"),
        FieldSpec("timestamp_ms", "INT64"),
        FieldSpec("generation", "INT64"),
        FieldSpec("embeddings", "FLOAT_VECTOR", dim=DIM),
    ), index, partition_key)


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


_shared = np.random.default_rng(10**9)
IMAGE_DIR, TEXT_DIR = _unit(_shared.standard_normal(DIM)), _unit(_shared.standard_normal(DIM))
TOPIC_CENTRES = _unit(_shared.standard_normal((TOPICS, DIM)))
IMAGE_MIX = (0.67, 0.5, 0.39, 0.39)  # image direction, topic, video, walk: the cosines in the docstring
WALK_STEP = 0.97  # AR(1) coefficient of a frame's walk: neighbouring frames cos ~0.995


def _videos(first: int, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames (count*FRAMES_PER_VIDEO, DIM) of videos first.., their topics and video centres
    (one seed per video: the same rows whatever the slicing)."""
    rngs = [np.random.default_rng(v) for v in range(first, first + count)]
    topics = np.array([r.integers(TOPICS) for r in rngs])
    centres = _unit(np.stack([r.standard_normal(DIM) for r in rngs]))
    walk = _unit(np.stack([r.standard_normal(DIM) for r in rngs]))
    steps = np.stack([r.standard_normal((FRAMES_PER_VIDEO, DIM)) for r in rngs], 1) / np.sqrt(DIM)
    a, b, c, d = IMAGE_MIX
    frames = np.empty((count, FRAMES_PER_VIDEO, DIM), np.float32)
    for i in range(FRAMES_PER_VIDEO):
        walk = WALK_STEP * walk + np.sqrt(1 - WALK_STEP ** 2) * steps[i]
        frames[:, i] = a * IMAGE_DIR + b * TOPIC_CENTRES[topics] + c * centres + d * walk
    return _unit(frames).reshape(-1, DIM), topics, centres


def clip_like(start: int, n: int) -> np.ndarray:
    """Rows start..start+n (whole videos at a time, so any slicing gives the same rows)."""
    first, last = start // FRAMES_PER_VIDEO, (start + n - 1) // FRAMES_PER_VIDEO
    frames = _videos(first, last - first + 1)[0]
    return frames[start - first * FRAMES_PER_VIDEO:][:n]


def make_queries(kind: str, rows: int, count: int) -> np.ndarray:
    """`count` queries aimed at random stored frames. image: the frame plus noise (cos ~0.9);
    text: mostly the shared text direction, a little of the target's topic, video and frame
    (cos ~0.3 to the target, ~0.84 among text queries)."""
    rng = np.random.default_rng(rows + (kind == "text"))
    out = []
    for target in rng.integers(0, rows, count):
        frames, topics, centres = _videos(int(target) // FRAMES_PER_VIDEO, 1)
        frame = frames[int(target) % FRAMES_PER_VIDEO]
        noise = _unit(rng.standard_normal(DIM))
        if kind == "image":
            out.append(frame + 0.45 * noise)
        else:
            own = _unit(frame - (frame @ IMAGE_DIR) * IMAGE_DIR)  # the frame's content, not its "image-ness"
            out.append(TEXT_DIR + 0.2 * TOPIC_CENTRES[topics[0]] + 0.15 * centres[0] + 0.2 * own + 0.1 * noise)
    return _unit(np.stack(out))


def grow(store, spec, have: int, want: int, generation: int) -> float:
    """Rows have..want as one write: inserted, then committed and recorded once, as a run
    commits many videos at once (a commit per chunk would scan the growing collection with
    its delete every time)."""
    started = time.perf_counter()
    videos = set()
    for start in range(have, want, CHUNK):
        n = min(CHUNK, want - start)
        ids = np.arange(start, start + n)
        batch = EmbeddingBatch(clip_like(start, n), {"frame_id": (ids % FRAMES_PER_VIDEO).astype(np.int32),
                                                         "timestamp_ms": (ids % FRAMES_PER_VIDEO) * 1000})
        paths = [f"video_{i // FRAMES_PER_VIDEO:06d}.mp4" for i in ids]
        store.insert(spec, batch, paths, generation)
        videos.update(paths)
        print(f"  {start + n} rows, {time.perf_counter() - started:.0f}s", file=sys.stderr, flush=True)
    done = sorted(videos)
    store.commit(spec, done, generation)
    store.record_videos(spec, [LedgerRecord(p, "0-0", "bench", VERSION, FRAMES_PER_VIDEO) for p in done], generation)
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
    """The exact top k rows of each query: one pass over the data, a running top k per chunk."""
    best_ids = np.zeros((len(queries), 0), np.int64)
    best = np.zeros((len(queries), 0), np.float32)
    for start in range(0, rows, CHUNK):
        scores = queries @ clip_like(start, min(CHUNK, rows - start)).T
        best = np.concatenate([best, scores], 1)
        ids = np.broadcast_to(np.arange(start, start + scores.shape[1]), scores.shape)
        best_ids = np.concatenate([best_ids, ids], 1)
        keep = np.argpartition(-best, k, axis=1)[:, :k]
        best, best_ids = np.take_along_axis(best, keep, 1), np.take_along_axis(best_ids, keep, 1)
    return [set(r.tolist()) for r in best_ids]


def pct(values: list[float]) -> dict:
    return {"p50_ms": round(float(np.percentile(values, 50)), 2), "p95_ms": round(float(np.percentile(values, 95)), 2)}


def row_ids(hits: list[dict]) -> set[int]:
    return {int(r["video_path"][6:12]) * FRAMES_PER_VIDEO + r["frame_id"] for r in hits}


def timed(call, queries: np.ndarray) -> tuple[list[float], list]:
    """ms per query (the first 3 a warm-up, not counted) and each query's answer."""
    times, answers = [], []
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        answers.append(call(q[None]))
        if i >= 3:
            times.append((time.perf_counter() - t0) * 1000)
    return times, answers[3:]


def recall(answers: list, exact: list[set[int]]) -> float:
    return round(float(np.mean([len(row_ids(got[0]) & want) / K for got, want in zip(answers, exact)])), 3)


def writer_reads(store, spec, rows: int, repeats: int = 5) -> dict:
    """What a commit and the search's `ef` rule ask of the store besides searches: the scan of
    a commit's delete for 64 new videos (the writer's filter; no older rows to find) and the
    row count."""
    names = [f"new_{i:06d}.mp4" for i in range(64)]
    scan = f"{videos_in(names)} and generation != 1"
    out = {}
    for name, call in (("commit_delete_scan_64_videos", lambda: store.client.query(spec.name, filter=scan,
                                                                                 output_fields=["id"])),
                       ("row_count", lambda: store.client.get_collection_stats(spec.name))):
        times = []
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            call()
            times.append((time.perf_counter() - t0) * 1000)
        out[name] = pct(times[1:])
    return out


def measure(store, strong, spec, rows: int, queries: int, efs: list[int]) -> dict:
    out = {"rows": rows}
    fields = ("video_path", "frame_id")
    for kind in KINDS:
        text = kind == "text"
        query = make_queries(kind, rows, queries + 3)
        exact = exact_tops(query[3:], rows)
        grouped, _ = timed(lambda q: merge_hits([
            Hit(r["video_path"], r["timestamp_ms"] / 1000, r["frame_id"], r["score"])
            for r in current_rows(store, spec, q, RowFilter(), VERSION, K, GROUP_SIZE, text)[0][0]], 2.0, K), query)
        plain, answers = timed(lambda q: store.search_rows(spec, q, K, None, 0, fields, text), query)
        sent = {name: store._search_params(spec, rows, text)["params"].get("ef")
                for name, rows in (("plain_top10", K), ("grouped", K * GROUP_SIZE))}
        row = {"ef_sent": sent,  # None: a server's AUTOINDEX, which picks its own
               "grouped_search": pct(grouped), "plain_top10": pct(plain), "recall_at_10_plain": recall(answers, exact)}
        if not text:
            def filtered(q, target=iter(range(10**9))):
                video = f"video_{(next(target) * 7919) % (rows // FRAMES_PER_VIDEO):06d}.mp4"
                return current_rows(store, spec, q, RowFilter(videos=(video,), since_ms=0, until_ms=600_000), VERSION,
                                     K, GROUP_SIZE)
            row["filtered_one_video"] = pct(timed(filtered, query)[0])
            strong_times, _ = timed(lambda q: strong.search_rows(spec, q, K, None, 0, fields), query)
            row["plain_top10_strong_reads"] = pct(strong_times)
        for ef in efs:
            params = {"metric_type": spec.index.metric, "params": {"ef": ef}}
            times, got = timed(lambda q: store.client.search(
                spec.name, data=list(q), limit=K, search_params=params, anns_field=spec.vector_field.name,
                output_fields=list(fields), **store._reads), query)
            got = [[[h["entity"] for h in per] for per in g] for g in got]
            row[f"ef_{ef}"] = {**pct(times), "recall_at_10": recall(got, exact)}
        out[kind] = row
        print(json.dumps({"rows": rows, kind: row}), file=sys.stderr, flush=True)
    out.update(writer_reads(store, spec, rows))  # after the searches, which load the collection
    return out


def open_stores(uri: str, token: str | None) -> tuple:
    """As the search API opens the database (reads that may lag), and as the pipeline does
    (reads that wait for a server's newest writes)."""
    return open_store(uri, token, reads_may_lag=True), open_store(uri, token)


def restart_lite(uri: str, store, strong, search: str) -> tuple:
    """The Lite server again, searching with `search` (FEATURE_PIPELINE_LITE_SEARCH), its
    segments and their indexes loaded from disk before the stores come back."""
    store.close()
    strong.close()
    LiteServer(uri).stop()
    os.environ[SEARCH_ENV] = search
    store, strong = open_stores(uri, None)
    store.client.list_collections()
    return store, strong


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


NAMESPACE = 'ip link set lo up && mount -t tmpfs tmpfs /run && exec "$0" "$@"'


def in_server_namespace(argv: list[str]) -> int:
    """`--server`: this bench again, inside network, mount and PID namespaces of its own,
    where it starts a Milvus 2.3 standalone server as the tests do (it binds every
    interface; the namespace takes the server with it when the bench ends)."""
    import subprocess

    from feature_pipeline_dagster_tests.milvus_server import NAMESPACE_ENV

    command = ["unshare", "-m", "-n", "-p", "--fork", "--kill-child", "--mount-proc", "sh", "-c", NAMESPACE,
               sys.executable, __file__, *argv]
    return subprocess.run(command, env={**os.environ, NAMESPACE_ENV: "1"}).returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--uri", help="a Milvus server (default: a Milvus Lite file in a temporary folder)")
    where.add_argument("--server", action="store_true",
                       help="start a Milvus 2.3 standalone server (PyPI milvus) in namespaces of its own")
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--index", default="AUTOINDEX", help="AUTOINDEX (the pipeline's), HNSW or FLAT")
    parser.add_argument("--index-params", type=json.loads, default={}, help='build parameters, e.g. \'{"M": 32}\'')
    parser.add_argument("--search-params", type=json.loads, default={},
                        help='the collection\'s search_params, e.g. \'{"ef": 64, "ef_text": 256}\'')
    parser.add_argument("--ef", default="", help="also measure plain top-10 searches at each of these ef, e.g. 64,256")
    parser.add_argument("--no-partition-key", action="store_true",
                        help="the collection without video_path as partition key (`partition_key: false`)")
    parser.add_argument("--data", type=Path, help="data folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "search.json")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    efs = [int(e) for e in args.ef.split(",") if e]
    server = None
    from feature_pipeline_dagster_tests.milvus_server import MilvusStandalone, inside_namespace

    if args.server and not inside_namespace():
        sys.exit(in_server_namespace(sys.argv[1:]))
    tmp = tempfile.TemporaryDirectory(prefix="bench-search-", dir=args.data)
    if args.server:
        server = MilvusStandalone(Path(tmp.name) / "milvus")
        started = time.perf_counter()
        server.start(timeout=600)
        print(f"milvus-server start-up: {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)
        uri = server.uri
    else:
        uri = args.uri or str(Path(tmp.name) / "search.db")
    token = "root:Milvus" if server else None
    lite = uri.endswith(".db")
    store, strong = open_stores(uri, token)
    index = IndexSpec(args.index.upper(), "COSINE", tuple(sorted(args.index_params.items())),
                      tuple(sorted(args.search_params.items())))
    spec = spec_for(f"bench_search_{args.index.lower()}", index, not args.no_partition_key)
    from feature_pipeline_dagster.core.ledger import ledger_collection

    for stale in (spec, ledger_collection(spec)):
        if store.exists(stale):
            store.client.drop_collection(stale.name)
    store.ensure_collection(spec)  # the product's create, with this index
    backend = "Milvus 2.3.5 standalone (--server)" if server else uri
    results = {"backend": "Milvus Lite" if lite else backend,
               "index": args.index, "partition_key": not args.no_partition_key, "index_params": args.index_params,
               "search_params": args.search_params,
               "dim": DIM, "k": K, "group_size": GROUP_SIZE, "frames_per_video": FRAMES_PER_VIDEO, "topics": TOPICS,
               "machine": f"{platform.machine()}, {os.cpu_count()} cores", "load_start": os.getloadavg(), "sizes": []}
    have = 0
    try:
        for size in sizes:
            insert_s = grow(store, spec, have, size, generation=len(results["sizes"]) + 1)
            index_wait_s = wait_indexed(store, spec, Path(uri) if lite else None)
            have = size
            row = measure(store, strong, spec, size, args.queries, efs)
            if lite:  # side by side: Milvus Lite's own search executor over the same rows
                store, strong = restart_lite(uri, store, strong, "milvus-lite")
                row["milvus_lite_own_search"] = own = measure(store, strong, spec, size, args.queries, [])
                store, strong = restart_lite(uri, store, strong, "project")
                row["own_over_project_p50"] = {
                    **{kind: {what: round(own[kind][what]["p50_ms"] / row[kind][what]["p50_ms"], 2)
                              for what in ("plain_top10", "grouped_search")} for kind in KINDS},
                    **{what: round(own[what]["p50_ms"] / row[what]["p50_ms"], 2)
                       for what in ("commit_delete_scan_64_videos", "row_count")}}
            row.update(insert_s=round(insert_s, 1), index_wait_s=round(index_wait_s, 1), load=os.getloadavg())
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
        if lite:
            LiteServer(uri).stop()
        if server is not None:
            server.kill()
        tmp.cleanup()


if __name__ == "__main__":
    main()
