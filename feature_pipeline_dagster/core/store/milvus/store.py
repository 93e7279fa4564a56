"""Milvus collections from the config: create, write a video's rows, delete, count, search.

Writing replaces a video's rows exactly and crash-safely: every row carries the
`generation` of the write that made it; the new generation is inserted first and the
older ones deleted after, so a crash in between leaves a duplicate that the next write
removes, never a loss. Filters quote file names (Milvus Lite and older servers reject
`filter_params`): quotes, backslashes, newlines and tabs are escaped, other control
characters refused.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import Iterator

import numpy as np

from feature_pipeline_dagster.core.settings import LITE_INDEX_TYPES, MAX_EF, CollectionSpec, ConfigError
from feature_pipeline_dagster.core.errors import StoreError, VideoError, one_line
from feature_pipeline_dagster.core.batches import EmbeddingBatch
from feature_pipeline_dagster.core.store import Committed, RowFilter, new_generation


MAX_REQUEST_BYTES = 48 * 1024 * 1024  # Milvus refuses requests over 64 MB; leave room for framing
MAX_TOPK = MAX_EF  # Milvus' limit on rows per query vector
MAX_QUERY_ROWS = 16384  # Milvus' limit on a plain query's offset + limit
# HNSW's candidate list (Lite's AUTOINDEX is FAISS HNSW) by query kind: see `search_ef`.
MIN_EF = 64
EF_TEXT = ((1_000_000, 256), (None, 1024))  # (up to this many rows in the collection, ef): see `search_ef`
ROW_COUNT_TTL_S = 60.0  # how long a search trusts the collection's row count it read
log = logging.getLogger("feature_pipeline.store")


_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def quote(value: str) -> str:
    """A Milvus string literal for `value`, safe against injection: backslash, quote,
    newline, carriage return and tab escaped; other control characters, which Milvus'
    expression grammar cannot spell, refused."""
    if any((ord(ch) < 32 and ch not in _ESCAPES) or ord(ch) == 127 for ch in value):
        raise VideoError(f"{value!r}: names with control characters other than newline and tab cannot be matched in Milvus")
    return '"' + "".join(_ESCAPES.get(ch, ch) for ch in value) + '"'


class _DropNoise(logging.Filter):
    """pymilvus warns on every query iterator against Milvus Lite, which has no MVCC
    timestamp to give; the iterator works without it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "mvccTs" not in record.getMessage()


class MilvusStore:
    """The `VectorStore` of Milvus: one connection to a Milvus Lite file or a Milvus server, opened on first use.

    `reads_may_lag` (the search path, which writes nothing): searches and ledger reads use
    Milvus' Bounded consistency, seeing every write older than the server's graceful time
    (5 s by default) without waiting for its newest time tick, as the collections' Strong
    level does: 200-400 ms a read on Milvus 2.3 here, 3 ms Bounded. Lite is always current.
    """

    def __init__(self, uri: str, token: str | None = None, lite_idle_minutes: float | None = None,
                 reads_may_lag: bool = False):
        self.uri, self._token, self._client = uri, token, None
        self._reads = {"consistency_level": "Bounded"} if reads_may_lag else {}
        self.lite_idle_minutes = lite_idle_minutes  # for a Lite server this store starts (None: its default)
        self._ready: set[CollectionSpec] = set()  # checked and loaded on this connection
        self._row_counts: dict[str, tuple[int, float]] = {}  # collection -> (rows, when read)

    @property
    def client(self):
        if self._client is None:
            from pymilvus import MilvusClient

            _quiet_pymilvus()
            # `dedicated`: this store's own gRPC channel, closed by `close`. pymilvus otherwise
            # shares one channel per address for the whole process and never closes it; after
            # the server went away that channel stays in gRPC's reconnect backoff, so retries
            # kept failing (8 s and more) after the server was back (test_db_faults).
            # A Lite file is served by the shared loopback server; one that died a moment
            # ago may still look alive, so a failed connect checks (and restarts) it again.
            attempts = 3 if self.uri.endswith(".db") else 1
            for attempt in range(attempts):
                try:
                    self._client = MilvusClient(uri=self._server_uri(), token=self._token or "", timeout=30,
                                                dedicated=True)
                    break
                except StoreError:
                    raise
                except Exception as err:
                    if attempt == attempts - 1:
                        raise StoreError(f"Milvus at {self.uri}: cannot connect ({one_line(err)})") from None
                    time.sleep(0.5)
        return self._client

    def _server_uri(self) -> str:
        if self.uri.endswith(".db"):
            from feature_pipeline_dagster.core.store.lite_server import LiteServer

            return LiteServer(self.uri, self.lite_idle_minutes).ensure_running().uri  # a start is logged there
        return self.uri

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
            self._ready.clear()

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (VideoError, ConfigError):
            raise
        except Exception as err:
            raise StoreError(f"Milvus at {self.uri}: {what} failed ({one_line(err)})") from None

    @property
    def is_lite(self) -> bool:
        return self.uri.endswith(".db")

    def ensure_collection(self, spec: CollectionSpec) -> None:
        """Create the collection with its configured index, or check that the existing
        one has the fields the config declares; either way load it for queries."""
        if spec in self._ready:
            return
        if self._call("has_collection", self.client.has_collection, spec.name):
            self._check_schema(spec)
        else:
            self._create(spec)
        self._call("load_collection", self.client.load_collection, spec.name)
        self._ready.add(spec)

    def index_type(self, spec: CollectionSpec) -> str:
        """The configured index, or AUTOINDEX where Milvus Lite cannot build it (DISKANN):
        one config serves the laptop and the cluster."""
        if self.is_lite and spec.index.type not in LITE_INDEX_TYPES:
            return "AUTOINDEX"
        return spec.index.type

    def _create(self, spec: CollectionSpec) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=True, enable_dynamic_field=False)
        for f in spec.fields:
            extra = {k: v for k, v in (("max_length", f.max_length), ("dim", f.dim)) if v is not None}
            if f.name == "video_path" and spec.partition_key:
                # A server hashes videos over its partitions (16 by default in 2.3): a
                # video's delete, count and fetch touch one partition, not all of them.
                extra["is_partition_key"] = True
            schema.add_field(f.name, DataType[f.dtype], is_primary=f.is_primary, auto_id=f.auto_id, **extra)
        index = self.client.prepare_index_params()
        kind = self.index_type(spec)
        if kind != spec.index.type:
            log.warning("collection %s: Milvus Lite has no %s index: AUTOINDEX instead (a server builds %s)",
                        spec.name, spec.index.type, spec.index.type)
        params = dict(spec.index.params) if kind == spec.index.type else {}
        index.add_index(field_name=spec.vector_field.name, index_type=kind, metric_type=spec.index.metric,
                        params=params)
        try:
            # Strong: a server otherwise answers queries at "Bounded" staleness (pymilvus'
            # default), and a count right after a commit could miss the rows or see the
            # deleted ones; the ledger and the checks count exactly. Lite is always current.
            self.client.create_collection(spec.name, schema=schema, index_params=index, consistency_level="Strong")
        except Exception as err:
            # Another process may be creating it right now: its collection shows up in a moment.
            for _ in range(20):
                if self._call("has_collection", self.client.has_collection, spec.name):
                    return self._check_schema(spec)
                time.sleep(0.25)
            raise StoreError(f"Milvus at {self.uri}: create collection {spec.name} failed ({one_line(err)})") from None

    def _check_schema(self, spec: CollectionSpec) -> None:
        described = self._call("describe_collection", self.client.describe_collection, spec.name)
        have = {f["name"]: (f["type"].name, f.get("params", {}).get("dim")) for f in described["fields"]}
        want = {f.name: (f.dtype, f.dim) for f in spec.fields}
        if have != want:
            raise ConfigError(
                f"db.collections: collection {spec.name} in {self.uri} has fields "
                f"{_describe(have)} but the config declares {_describe(want)}: "
                "use another collection name or drop the old collection"
            )

    def insert(self, spec: CollectionSpec, rows: EmbeddingBatch, video_paths: list[str], generation: int) -> None:
        """Rows of one or more videos (`video_paths[i]` owns row i), as `generation`;
        split under the request size limit. The vectors go in as bytes (fast_insert:
        about 7 ms of client CPU per 1000 rows of 1152-d, against 110 ms as lists)."""
        from feature_pipeline_dagster.core.store.fast_insert import insert_columns

        self.ensure_collection(spec)
        step = rows_per_request(spec)
        vectors = np.ascontiguousarray(rows.vectors, dtype=np.float32)
        columns = {k: v for k, v in rows.columns.items() if spec.field(k) is not None}
        for start in range(0, len(rows), step):
            stop = start + step
            chunk = {k: v[start:stop] for k, v in columns.items()}
            chunk.update(video_path=list(video_paths[start:stop]), generation=np.full(len(vectors[start:stop]), generation))
            self._call("insert", insert_columns, self.client, spec.name, spec.vector_field.name, vectors[start:stop], chunk)

    def commit(self, spec: CollectionSpec, video_paths: list[str], generation: int) -> None:
        """Make `generation` the videos' only rows: durable first (Lite: flushed; a server:
        acknowledged, see `_flush`), so the new rows are in before the old go (Milvus Lite
        also filters sealed rows far faster than unflushed ones, measured by
        bench_pipeline), then one delete for all of them."""
        self.ensure_collection(spec)
        self._flush(spec)
        for names in _filter_groups(video_paths):
            self._call("delete", self.client.delete, spec.name,
                       filter=f"video_path in [{', '.join(map(quote, names))}] and generation != {generation}")
        self._flush(spec)

    def discard(self, spec: CollectionSpec, video_path: str, generation: int) -> None:
        """Best effort: take back a failed video's rows of `generation`; if Milvus is what
        failed, the next write of the video removes them."""
        try:
            self.client.delete(spec.name, filter=f"video_path == {quote(video_path)} and generation == {generation}")
        except Exception:
            pass

    def _flush(self, spec: CollectionSpec) -> None:
        """Flush, again at once if it fails: Milvus Lite 3.2 can refuse one of two flushes
        that race ("current_seq is monotonic"; seen with two runs writing, bench_load.py).
        A flush only persists what is in memory, so a repeat is safe, and cheaper than
        Dagster's retry, which embeds the run's videos again.

        A server needs none: an insert or delete it acknowledged is already in its log
        (rocksmq in a standalone, Pulsar or Kafka in a cluster) and survives a crash, and
        Strong consistency makes it visible to the next query. Milvus 2.3 also rate-limits
        flush and seals a segment per call: a flush there took ~2 s, so a commit ~4 s
        (core/test_store.py, `milvus_server` backend)."""
        if not self.is_lite:
            return
        for pause in (0.1, 0.3):
            try:
                return self.client.flush(spec.name)
            except Exception:
                time.sleep(pause)
        self._call("flush", self.client.flush, spec.name)

    def record_videos(self, spec: CollectionSpec, records: list, generation: int) -> None:
        """The ledger's record of each committed video (core/ledger.py), replacing older ones."""
        from feature_pipeline_dagster.core.ledger import MARK, ledger_collection

        ledger = ledger_collection(spec)
        self.ensure_collection(ledger)
        rows = [{**asdict(r), "generation": generation, "mark": MARK.tolist()} for r in records]
        self._call("insert", self.client.insert, ledger.name, rows)
        for names in _filter_groups([r.video_path for r in records]):
            self._call("delete", self.client.delete, ledger.name,
                       filter=f"video_path in [{', '.join(map(quote, names))}] and generation != {generation}")

    def recorded_videos(self, spec: CollectionSpec, video_paths: list[str]) -> dict:
        """Video path -> its ledger record, for those that have one (creates nothing)."""
        from feature_pipeline_dagster.core.ledger import VideoRecord, ledger_collection

        fields = ["video_path", "fingerprint", "content_digest", "code_version", "rows"]
        rows = self._newest_rows(ledger_collection(spec), video_paths, fields)
        return {path: VideoRecord(**{k: row[k] for k in fields}) for path, row in rows.items()}

    def _newest_rows(self, spec: CollectionSpec, video_paths: list[str], fields: list[str]) -> dict:
        """Video path -> its row of the newest generation (a crash can leave two for a
        moment), for those of `video_paths` that have one; creates nothing."""
        if not video_paths or not self._call("has_collection", self.client.has_collection, spec.name):
            return {}
        self.ensure_collection(spec)
        found: dict = {}
        for names in _filter_groups(video_paths):
            for row in self._call("query", self.client.query, spec.name,
                                  filter=f"video_path in [{', '.join(map(quote, names))}]",
                                  output_fields=[*fields, "generation"]):
                if row["generation"] >= found.get(row["video_path"], {"generation": -1})["generation"]:
                    found[row["video_path"]] = row
        return found

    def record_failures(self, spec: CollectionSpec, records: list, cleared: list[str]) -> None:
        """The videos that failed for their content (core/ledger.py): `records` replace the
        older ones of their videos; `cleared` (videos embedded since) lose theirs. Creates
        nothing while no video has failed."""
        from feature_pipeline_dagster.core.ledger import ERROR_CHARS, MARK, failures_collection

        failed = failures_collection(spec)
        if not records and (not cleared or not self._call("has_collection", self.client.has_collection, failed.name)):
            return
        self.ensure_collection(failed)
        generation = new_generation()
        if records:
            rows = [{**asdict(r), "error": r.error[:ERROR_CHARS], "generation": generation, "mark": MARK.tolist()}
                    for r in records]
            self._call("insert", self.client.insert, failed.name, rows)
        for names in _filter_groups([r.video_path for r in records] + list(cleared)):
            self._call("delete", self.client.delete, failed.name,
                       filter=f"video_path in [{', '.join(map(quote, names))}] and generation != {generation}")

    def recorded_failures(self, spec: CollectionSpec, video_paths: list[str]) -> dict:
        """Video path -> its newest failure record, for those that have one (creates nothing)."""
        from feature_pipeline_dagster.core.ledger import FailureRecord, failures_collection

        fields = ["video_path", "fingerprint", "content_digest", "code_version", "error"]
        rows = self._newest_rows(failures_collection(spec), video_paths, fields)
        return {path: FailureRecord(**{k: row[k] for k in fields}) for path, row in rows.items()}

    def delete_video(self, spec: CollectionSpec, video_path: str) -> None:
        self.ensure_collection(spec)
        self._call("delete", self.client.delete, spec.name, filter=f"video_path == {quote(video_path)}")

    def count_rows(self, spec: CollectionSpec, video_path: str | None = None) -> int:
        self.ensure_collection(spec)
        where = f"video_path == {quote(video_path)}" if video_path is not None else ""
        result = self._call("count", self.client.query, spec.name, filter=where, output_fields=["count(*)"])
        return int(result[0]["count(*)"])

    def vector_pages(self, spec: CollectionSpec, video_path: str) -> Iterator[np.ndarray]:
        """One video's vectors, a float32 (rows, dim) page at a time: memory stays bounded
        by the page whatever the video's length."""
        name = spec.vector_field.name
        for page in self._pages(spec, video_path, (name,)):
            yield np.asarray([r[name] for r in page], dtype=np.float32)

    def count_videos(self, spec: CollectionSpec, video_paths: list[str]) -> int:
        """Rows of all these videos together: one query for many videos."""
        self.ensure_collection(spec)
        total = 0
        for names in _filter_groups(video_paths):
            result = self._call("count", self.client.query, spec.name,
                                filter=f"video_path in [{', '.join(map(quote, names))}]", output_fields=["count(*)"])
            total += int(result[0]["count(*)"])
        return total

    def _pages(self, spec: CollectionSpec, video_path: str, fields: tuple[str, ...]) -> Iterator[list[dict]]:
        self.ensure_collection(spec)
        it = self._call("query", self.client.query_iterator, spec.name, filter=f"video_path == {quote(video_path)}",
                        output_fields=list(fields), batch_size=1000)
        try:
            while page := self._call("query", it.next):
                yield page
        finally:
            it.close()

    def exists(self, spec: CollectionSpec) -> bool:
        return bool(self._call("has_collection", self.client.has_collection, spec.name))

    def search_rows(self, spec: CollectionSpec, vectors: np.ndarray, limit: int, where: RowFilter | None = None,
                    group_size: int = 0, fields: tuple[str, ...] = (), text: bool = False) -> list[list[dict]]:
        """Nearest rows per query vector. `group_size`: Milvus' `group_by_field` on
        `video_path` (Lite 3.2 and servers from 2.4 have it), so one long video cannot
        fill the answer with its own frames; a backend without it (Milvus 2.3) answers the
        same search ungrouped with `limit * group_size` rows, once noticed."""
        self.ensure_collection(spec)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        kwargs = dict(data=list(vectors), output_fields=list(fields) or ["video_path"],
                      anns_field=spec.vector_field.name, filter=expression(where), **self._reads)
        if group_size and self._grouping:
            limit = min(limit, MAX_TOPK // group_size)
            try:
                hits = self.client.search(spec.name, limit=limit, group_by_field="video_path", group_size=group_size,
                                          search_params=self._search_params(spec, limit * group_size, text), **kwargs)
                return [[dict(h["entity"], score=h["distance"]) for h in per] for per in hits]
            except Exception as err:
                if "group" not in str(err).lower():
                    raise StoreError(f"Milvus at {self.uri}: search failed ({one_line(err)})") from None
                self._grouping = False  # this server cannot group: ungrouped from now on
        limit = min(MAX_TOPK, limit * max(1, group_size))
        hits = self._call("search", self.client.search, spec.name, limit=limit,
                          search_params=self._search_params(spec, limit, text), **kwargs)
        return [[dict(h["entity"], score=h["distance"]) for h in per] for per in hits]

    _grouping = True

    def _search_params(self, spec: CollectionSpec, rows: int, text: bool = False) -> dict:
        """The collection's configured search parameters (`db.collections[].index.search`),
        with HNSW's `ef` from `search_ef`. AUTOINDEX is HNSW too: FAISS HNSW on Lite, HNSW
        on an open-source server, whose own default `ef` gave text queries recall@10 0.85 at
        100k rows on Milvus 2.3.5, against 1.00 with ef 1024 (bench_search.py --server)."""
        params = dict(spec.index.search)
        ef_text = params.pop("ef_text", None)  # ours, not Milvus'
        if self.index_type(spec) in ("HNSW", "AUTOINDEX"):  # a DISKANN config is AUTOINDEX on Lite
            size = self.row_count(spec) if text and ef_text is None else 0
            params["ef"] = search_ef(spec, rows, text, size)
        return {"metric_type": spec.index.metric, "params": params}

    def row_count(self, spec: CollectionSpec) -> int:
        """The collection's rows, read at most once a ROW_COUNT_TTL_S (a text search's ef
        depends on it; the count is one more request)."""
        rows, when = self._row_counts.get(spec.name, (0, -ROW_COUNT_TTL_S))
        if time.monotonic() - when >= ROW_COUNT_TTL_S:
            stats = self._call("get_collection_stats", self.client.get_collection_stats, spec.name)
            rows = int(stats.get("row_count", 0))
            self._row_counts[spec.name] = (rows, time.monotonic())
        return rows

    def query_rows(self, spec: CollectionSpec, where: RowFilter, fields: tuple[str, ...]) -> list[dict]:
        self.ensure_collection(spec)
        return self._all_rows(spec.name, expression(where), fields)

    def _all_rows(self, name: str, where: str, fields, limit: int | None = None) -> list[dict]:
        """Every row `where` admits (or any `limit` of them): one plain query when they fit
        in one (a few videos' ledger entries, a frame's patch rows), else a page at a time
        (a plain query stops at 16384). An iterator's pages wait for a server's newest time
        tick whatever the consistency asked: ~200 ms each on Milvus 2.3 here, against ~3 ms
        for a query."""
        rows = self._call("query", self.client.query, name, filter=where, output_fields=list(fields),
                          limit=MAX_QUERY_ROWS if limit is None else limit, **self._reads)
        if limit is not None or len(rows) < MAX_QUERY_ROWS:
            return rows
        it = self._call("query", self.client.query_iterator, name, filter=where, output_fields=list(fields),
                        batch_size=1000, **self._reads)
        rows = []
        try:
            while page := self._call("query", it.next):
                rows.extend(page)
        finally:
            it.close()
        return rows

    def committed(self, spec: CollectionSpec, video_paths: list[str] | None = None,
                  code_version: str | None = None, limit: int | None = None) -> dict[str, Committed]:
        """Ledger entries, the newest per video (a crash can leave two for a moment);
        nothing when the ledger does not exist (creates nothing)."""
        from feature_pipeline_dagster.core.ledger import ledger_collection

        ledger = ledger_collection(spec)
        if not self._call("has_collection", self.client.has_collection, ledger.name):
            return {}
        self.ensure_collection(ledger)
        fields = ["video_path", "code_version", "generation"]
        version = f"code_version == {quote(code_version)}" if code_version is not None else ""
        if video_paths is None:
            groups: list[list[str] | None] = [None]
        else:
            groups = list(_filter_groups(video_paths))
        found: dict[str, Committed] = {}
        for names in groups:
            parts = [version] if version else []
            if names is not None:
                parts.append(f"video_path in [{', '.join(map(quote, names))}]")
            where = " and ".join(parts)
            for row in self._all_rows(ledger.name, where, fields, limit):
                old = found.get(row["video_path"])
                if old is None or row["generation"] > old.generation:
                    found[row["video_path"]] = Committed(row["video_path"], row["code_version"], row["generation"])
        return found


def expression(where: RowFilter | None) -> str:
    """The Milvus filter for `where`: names quoted by `quote`, numbers formatted as
    integers; nothing of a request is pasted in as syntax."""
    if where is None:
        return ""
    parts = []
    if where.videos is not None:
        parts.append(f"video_path in [{', '.join(map(quote, where.videos))}]")
    if where.exclude:
        parts.append(f"video_path not in [{', '.join(map(quote, where.exclude))}]")
    if where.current:
        by_generation: dict[int, list[str]] = {}
        for video, generation in where.current:
            by_generation.setdefault(int(generation), []).append(video)
        either = [f"video_path not in [{', '.join(quote(v) for v, _ in where.current)}]"]
        either += [f"(generation == {g} and video_path in [{', '.join(map(quote, names))}])"
                   for g, names in by_generation.items()]
        parts.append("(" + " or ".join(either) + ")")
    if where.since_ms is not None:
        parts.append(f"timestamp_ms >= {int(where.since_ms)}")
    if where.until_ms is not None:
        parts.append(f"timestamp_ms <= {int(where.until_ms)}")
    if where.frame_ids is not None:
        parts.append(f"frame_id in [{', '.join(str(int(i)) for i in where.frame_ids)}]")
    return " and ".join(parts)


def _quiet_pymilvus() -> None:
    """Failed calls are reported as one StoreError line; pymilvus would also log each
    with a 70-line traceback (and retry chatter) on the user's console."""
    logger = logging.getLogger("pymilvus.client.iterator.query_iterator")
    if not any(isinstance(f, _DropNoise) for f in logger.filters):
        logger.addFilter(_DropNoise())
    for name in ("pymilvus.decorators", "pymilvus.client.connection_manager"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def rows_per_request(spec: CollectionSpec, limit_bytes: int = MAX_REQUEST_BYTES) -> int:
    """The most rows one insert may carry under Milvus' request size limit, whatever
    `db.batch_size` says: a row costs its vector plus, at most, its scalar fields."""
    row_bytes = spec.vector_field.dim * 4 + sum((f.max_length or 0) * 4 + 8 for f in spec.fields) + 64
    return max(1, limit_bytes // row_bytes)


def search_ef(spec: CollectionSpec, rows: int, text: bool, collection_rows: int = 0) -> int:
    """HNSW's `ef` for a search asking `rows` rows: the configured `ef` (image queries) or
    `ef_text` (text queries), by default MIN_EF and, for text, EF_TEXT by the collection's
    rows; never under the rows asked (HNSW returns no more than ef). A text vector sits
    across CLIP's modality gap, cos ~0.3 to every frame, so the graph's greedy walk has no
    near neighbour to home in on: on one FAISS HNSW graph as Lite builds it (M 16,
    efConstruction 200; bench_search.py's vectors) text recall@10 at ef 64 fell from 0.98
    at 25k rows to 0.79 at 50k and 0.61 at 100k, where ef 1024 gave 1.00; image queries got
    0.99-1.00 at ef 64. A collection's graphs are its segments in each of 16 partitions (the
    partition key): up to 1M rows ef 256 gave text 1.00 on Lite and on Milvus 2.3.5 (at 1M:
    26 ms on the server against 89-112 ms at ef 1024); past it graphs near Lite's 100k-row
    segments, so 1024 (README "Recall")."""
    search = dict(spec.index.search)
    if not text:
        ef = int(search.get("ef", MIN_EF))
    elif "ef_text" in search:
        ef = int(search["ef_text"])
    else:
        ef = next(value for most, value in EF_TEXT if most is None or collection_rows <= most)
    return min(MAX_TOPK, max(rows, ef))


def _filter_groups(names: list[str], max_chars: int = 60_000) -> Iterator[list[str]]:
    """Names in groups whose `in [...]` filter stays well under Milvus' expression limit."""
    group, size = [], 0
    for name in names:
        if group and size + len(name) > max_chars:
            yield group
            group, size = [], 0
        group.append(name)
        size += len(name) + 4
    if group:
        yield group


def _describe(fields: dict) -> str:
    return ", ".join(f"{n}:{t}" + (f"[{d}]" if d else "") for n, (t, d) in sorted(fields.items()))
