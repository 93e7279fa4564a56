"""`MilvusStore`: a video's rows written by generation, the ledger's records, reads and search.

Writing replaces a video's rows exactly and crash-safely: every row carries the
`generation` of the write that made it; the new generation is inserted first and the
older ones deleted after, so a crash in between leaves a duplicate that the next write
removes, never a loss.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Iterator

import numpy as np

from feature_pipeline_dagster.core.batches import EmbeddingBatch
from feature_pipeline_dagster.core.errors import StoreError, one_line
from feature_pipeline_dagster.core.settings import MAX_EF, CollectionSpec
from feature_pipeline_dagster.core.store import Committed, RowFilter, new_generation
from feature_pipeline_dagster.core.store.milvus.client import (MAX_QUERY_ROWS, call, connect, flush, is_lite,
                                                               rows_per_request)
from feature_pipeline_dagster.core.store.milvus.filters import expression, filter_groups, quote, videos_in
from feature_pipeline_dagster.core.store.milvus.schema import check_schema, create_collection, index_type
from feature_pipeline_dagster.core.ledger import (ERROR_CHARS, FailureRecord, LedgerRecord, MARK, failures_collection,
                                                  ledger_collection)


MAX_TOPK = MAX_EF  # Milvus' limit on rows per query vector
# HNSW's candidate list (Lite's AUTOINDEX is FAISS HNSW) by query kind: see `search_ef`.
MIN_EF = 64
EF_TEXT = ((1_000_000, 256), (None, 1024))  # (up to this many rows in the collection, ef): see `search_ef`
ROW_COUNT_TTL_S = 60.0  # how long a search trusts the collection's row count it read


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
            self._client = connect(self.uri, self._token, self.lite_idle_minutes)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
            self._ready.clear()

    def _call(self, what: str, fn, *args, **kwargs):
        return call(self.uri, what, fn, *args, **kwargs)

    @property
    def is_lite(self) -> bool:
        return is_lite(self.uri)

    def ensure_collection(self, spec: CollectionSpec) -> None:
        """Create the collection with its configured index, or check that the existing
        one has the fields the config declares; either way load it for queries."""
        if spec in self._ready:
            return
        if self._call("has_collection", self.client.has_collection, spec.name):
            check_schema(self.client, self.uri, spec)
        else:
            create_collection(self.client, self.uri, spec)
        self._call("load_collection", self.client.load_collection, spec.name)
        self._ready.add(spec)

    def index_type(self, spec: CollectionSpec) -> str:
        return index_type(spec, self.uri)

    def insert(self, spec: CollectionSpec, rows: EmbeddingBatch, video_paths: list[str], generation: int) -> None:
        """Rows of one or more videos (`video_paths[i]` owns row i), as `generation`;
        split under the request size limit. The vectors go in as bytes (fast_insert:
        about 7 ms of client CPU per 1000 rows of 1152-d, against 110 ms as lists)."""
        from feature_pipeline_dagster.core.store.fast_insert import insert_columns  # imports pymilvus

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
        acknowledged, see `client.flush`), so the new rows are in before the old go (Milvus Lite
        also filters sealed rows far faster than unflushed ones, measured by
        bench_pipeline), then one delete for all of them."""
        self.ensure_collection(spec)
        self._flush(spec)
        self._keep_only(spec.name, video_paths, generation)
        self._flush(spec)

    def _keep_only(self, collection: str, video_paths: list[str], generation: int) -> None:
        """Delete these videos' rows of every other generation, in as few requests as
        Milvus' expression limit allows."""
        for names in filter_groups(video_paths):
            self._call("delete", self.client.delete, collection,
                       filter=f"{videos_in(names)} and generation != {generation}")

    def discard(self, spec: CollectionSpec, video_path: str, generation: int) -> None:
        """Best effort: take back a failed video's rows of `generation`; if Milvus is what
        failed, the next write of the video removes them."""
        try:
            self.client.delete(spec.name, filter=f"video_path == {quote(video_path)} and generation == {generation}")
        except Exception:
            pass

    def _flush(self, spec: CollectionSpec) -> None:
        flush(self.client, self.uri, spec.name)

    def record_videos(self, spec: CollectionSpec, records: list, generation: int) -> None:
        """The ledger's record of each committed video (core/ledger.py), replacing older ones."""
        ledger = ledger_collection(spec)
        self.ensure_collection(ledger)
        rows = [{**asdict(r), "generation": generation, "mark": MARK.tolist()} for r in records]
        self._call("insert", self.client.insert, ledger.name, rows)
        self._keep_only(ledger.name, [r.video_path for r in records], generation)

    def recorded_videos(self, spec: CollectionSpec, video_paths: list[str]) -> dict:
        """Video path -> its ledger record, for those that have one (creates nothing)."""
        fields = ["video_path", "fingerprint", "content_digest", "code_version", "rows"]
        rows = self._newest_rows(ledger_collection(spec), video_paths, fields)
        return {path: LedgerRecord(**{k: row[k] for k in fields}) for path, row in rows.items()}

    def _newest_rows(self, spec: CollectionSpec, video_paths: list[str], fields: list[str]) -> dict:
        """Video path -> its row of the newest generation (a crash can leave two for a
        moment), for those of `video_paths` that have one; creates nothing."""
        if not video_paths or not self._call("has_collection", self.client.has_collection, spec.name):
            return {}
        self.ensure_collection(spec)
        found: dict = {}
        for names in filter_groups(video_paths):
            for row in self._call("query", self.client.query, spec.name, filter=videos_in(names),
                                  output_fields=[*fields, "generation"]):
                if row["generation"] >= found.get(row["video_path"], {"generation": -1})["generation"]:
                    found[row["video_path"]] = row
        return found

    def record_failures(self, spec: CollectionSpec, records: list, cleared: list[str]) -> None:
        """The videos that failed for their content (core/ledger.py): `records` replace the
        older ones of their videos; `cleared` (videos embedded since) lose theirs. Creates
        nothing while no video has failed."""
        failed = failures_collection(spec)
        if not records and (not cleared or not self._call("has_collection", self.client.has_collection, failed.name)):
            return
        self.ensure_collection(failed)
        generation = new_generation()
        if records:
            rows = [{**asdict(r), "error": r.error[:ERROR_CHARS], "generation": generation, "mark": MARK.tolist()}
                    for r in records]
            self._call("insert", self.client.insert, failed.name, rows)
        self._keep_only(failed.name, [r.video_path for r in records] + list(cleared), generation)

    def recorded_failures(self, spec: CollectionSpec, video_paths: list[str]) -> dict:
        """Video path -> its newest failure record, for those that have one (creates nothing)."""
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
        for names in filter_groups(video_paths):
            result = self._call("count", self.client.query, spec.name,
                                filter=videos_in(names), output_fields=["count(*)"])
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
        ledger = ledger_collection(spec)
        if not self._call("has_collection", self.client.has_collection, ledger.name):
            return {}
        self.ensure_collection(ledger)
        fields = ["video_path", "code_version", "generation"]
        version = f"code_version == {quote(code_version)}" if code_version is not None else ""
        if video_paths is None:
            groups: list[list[str] | None] = [None]
        else:
            groups = list(filter_groups(video_paths))
        found: dict[str, Committed] = {}
        for names in groups:
            parts = [version] if version else []
            if names is not None:
                parts.append(videos_in(names))
            where = " and ".join(parts)
            for row in self._all_rows(ledger.name, where, fields, limit):
                old = found.get(row["video_path"])
                if old is None or row["generation"] > old.generation:
                    found[row["video_path"]] = Committed(row["video_path"], row["code_version"], row["generation"])
        return found


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
