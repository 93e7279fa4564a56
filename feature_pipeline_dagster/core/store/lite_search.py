"""Milvus Lite's reads without its walks over every stored row in Python.

Milvus Lite 3.2 answers each search by walking every row twice in Python: a newest-sequence
map over all segments, then a validity mask per segment (`milvus_lite/search/
executor_indexed.py`). At 1M rows that walk is most of a query: p50 466-699 ms here, where its
FAISS HNSW searches take a small part (py-spy at 200k rows: 62 % in the walk, 8 % in FAISS).
Its queries, deletes by filter (a query, then a delete by key: each commit makes one) and row
counts walk the same way (`search/bitmap.py`), a query after a tuple a row and a copy of every
vector (`search/assembler.py`).

The Lite server this project starts (`lite_server._serve`) puts `search`, `valid_mask` and
`candidates` in their place: the same answers (the same rows in the same order;
`test_lite_search.py` checks them against Lite's own), the masks built by numpy. Segments are
immutable, so which of their rows is the newest version of its primary key is kept per set of
segments (a flush or a compaction makes a new set); tombstones and the memtable, which change
with every write, are applied per call. At 1M rows a search takes 11-21 ms
(`bench/bench_search.py`). Integer primary keys only (the pipeline's collections); anything
else goes to Lite's own code, as does everything where Lite's functions are not the ones this
was written against.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Sequence
from functools import partial

import numpy as np

# The parameters of Lite's functions, in order: `install` replaces them only where they match.
SEARCH_PARAMETERS = ("query_vectors", "segments", "memtable", "delta_index", "top_k", "metric_type", "pk_field",
                     "vector_field", "partition_names", "compiled_filter", "output_fields", "indexed_filter_plan",
                     "project_record_fn", "search_params")
MASK_PARAMETERS = ("all_pks", "all_seqs", "delta_index", "filter_mask", "memtable")
CANDIDATE_PARAMETERS = ("segments", "memtable", "vector_field", "partition_names", "filter_compiled",
                        "indexed_filter_plan")
INSTALLED_LINE = "search: numpy masks in place of Milvus Lite's walk over every row (lite_search.py)"
SEARCH_ENV = "FEATURE_PIPELINE_LITE_SEARCH"  # read by the server as it starts (`lite_server._serve`)
CHOICES = ("project", "milvus-lite")
KEPT_SETS = 2  # segment sets kept (~50 MB each at 1M rows): the newest, and one a concurrent search may hold


def install(choice: str = "project") -> str:
    """Replace Lite's search executor, valid-row mask and query candidates in this process, unless
    `choice` is "milvus-lite" or Lite's functions differ from those this module mirrors (their
    parameters, and the candidates' one caller); says which searches."""
    from milvus_lite.engine import collection
    from milvus_lite.search import bitmap

    if choice not in CHOICES:
        raise ValueError(f"{SEARCH_ENV}={choice!r}: expected one of {', '.join(CHOICES)}")
    if choice == "milvus-lite":
        return f"search: Milvus Lite's own executor ({SEARCH_ENV}=milvus-lite)"
    stock = collection.execute_search_with_index, bitmap.build_valid_mask, collection.assemble_candidates
    users = [name for name, f in vars(collection.Collection).items()
             if "assemble_candidates" in getattr(getattr(f, "__code__", None), "co_names", ())]
    if ([tuple(inspect.signature(f).parameters) for f in stock] != [SEARCH_PARAMETERS, MASK_PARAMETERS,
                                                                      CANDIDATE_PARAMETERS] or users != ["query"]):
        return "search: Milvus Lite's own executor (its functions are not the ones lite_search.py mirrors)"
    collection.execute_search_with_index = partial(search, stock[0])
    bitmap.build_valid_mask = partial(valid_mask, stock[1])
    collection.assemble_candidates = partial(candidates, stock[2])
    return INSTALLED_LINE


def newest(keys: np.ndarray, seqs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows holding the newest version of their key (the largest sequence among its rows), and
    the order that sorts the rows by key, then sequence."""
    order = np.lexsort((seqs, keys))
    sorted_keys, sorted_seqs = keys[order], seqs[order]
    last = np.ones(len(keys), bool)
    last[:-1] = sorted_keys[1:] != sorted_keys[:-1]
    group = np.cumsum(np.r_[False, last[:-1]]) if len(keys) else np.zeros(0, np.int64)  # the key's group
    winners = np.zeros(len(keys), bool)
    winners[order] = sorted_seqs == sorted_seqs[last][group]
    return winners, order


def valid_mask(stock, all_pks, all_seqs, delta_index, filter_mask=None, memtable=None) -> np.ndarray:
    """Lite's `build_valid_mask`: the rows that are the newest version of their key, not deleted
    since, and pass `filter_mask`."""
    keys = np.asarray(all_pks)
    if keys.dtype.kind not in "iu" or not len(keys):
        return stock(all_pks, all_seqs, delta_index, filter_mask, memtable)
    tombstones = _tombstones(delta_index, memtable.delete_index_snapshot() if memtable is not None else {})
    if isinstance(all_pks, _Keys):  # a query's candidates: the segments' part is kept (SegmentSet)
        mask = np.concatenate(_valid_rows(all_pks.segments, all_pks.memtable_keys, all_pks.memtable_seqs, tombstones))
    else:
        keys, seqs = keys.astype(np.int64), np.asarray(all_seqs, np.int64)
        mask = newest(keys, seqs)[0]
        if tombstones is not None:
            mask &= ~_deleted(keys, seqs, tombstones)
    return mask & np.asarray(filter_mask, bool) if filter_mask is not None else mask


class SegmentSet:
    """Of one set of segments, which rows hold the newest version of their primary key."""

    def __init__(self, segments: tuple):
        self.held = tuple(s.seqs for s in segments)  # see segment_set
        keys = [np.asarray(s.pks) for s in segments]
        self.integer = all(k.dtype.kind in "iu" for k in keys)
        if not self.integer:
            return
        self.keys = [k.astype(np.int64) for k in keys]
        self.seqs = [np.asarray(s.seqs, np.int64) for s in segments]
        pks = np.concatenate(self.keys) if keys else np.zeros(0, np.int64)
        seqs = np.concatenate(self.seqs) if keys else pks
        self.starts = np.cumsum([0] + [len(k) for k in keys])
        winners, self.order = newest(pks, seqs)
        self.sorted_pks, self.sorted_seqs = pks[self.order], seqs[self.order]
        self.winners = [winners[a:b] for a, b in zip(self.starts[:-1], self.starts[1:])]

    def place(self, position: int) -> tuple[int, int]:
        """(segment, row) of a row's position in the concatenation."""
        segment = int(np.searchsorted(self.starts, position, side="right")) - 1
        return segment, position - int(self.starts[segment])


_sets: dict[tuple, SegmentSet] = {}
_sets_lock = threading.Lock()


def segment_set(segments: tuple) -> SegmentSet:
    """Kept by the identity of each segment's sequence array, which the set holds (a few bytes a
    row), so that no other array can take its id while it is kept; the segments themselves, and
    their vectors, are not held: a compaction's old segments are freed as in Lite."""
    key = tuple(id(s.seqs) for s in segments)
    with _sets_lock:
        found = _sets.get(key)
    if found is None:
        found = SegmentSet(segments)
        with _sets_lock:
            _sets[key] = found
            while len(_sets) > KEPT_SETS:
                del _sets[next(iter(_sets))]
    return found


class _Sources(Sequence):
    """Where each candidate row is, as Lite's (segment, row) or (memtable, reference), made
    only for the rows asked for."""

    def __init__(self, sset: SegmentSet, segments: tuple, memtable, references: list):
        self.set, self.segments, self.memtable, self.references = sset, segments, memtable, references
        self.in_segments = int(sset.starts[-1])

    def __len__(self) -> int:
        return self.in_segments + len(self.references)

    def __getitem__(self, position: int):
        if position >= self.in_segments:
            return self.memtable, self.references[position - self.in_segments]
        segment, row = self.set.place(position)
        return self.segments[segment], row


def candidates(stock, segments, memtable, vector_field, partition_names=None, filter_compiled=None,
               indexed_filter_plan=None):
    """Lite's `assemble_candidates` for its one caller, `Collection.query` (which `install`
    checks), which reads neither the vectors nor the sources of rows that do not match: the
    same keys, sequences and filter, without a copy of every vector (2 GB at 1M rows of 512-d,
    at each commit's delete, which is a query) and a tuple a row."""
    in_scope = _in_scope(segments, partition_names)
    sset = segment_set(in_scope)
    if not sset.integer:
        return stock(segments, memtable, vector_field, partition_names, filter_compiled, indexed_filter_plan)
    mt_pks, mt_seqs, _, mt_refs, mt_table = memtable.to_search_snapshot(
        vector_field=vector_field, partition_names=partition_names, include_table=filter_compiled is not None)
    filters = _filter_masks(in_scope, mt_table if mt_pks else None, filter_compiled, indexed_filter_plan)
    if not in_scope and not mt_pks:
        return ([], np.zeros(0, np.uint64), np.zeros((0, 0), np.float32), [],
                np.zeros(0, bool) if filter_compiled is not None else None)
    keys = _Keys(sset, np.asarray(mt_pks, np.int64), np.asarray(mt_seqs, np.int64))
    seqs = np.concatenate([*(s.seqs for s in in_scope), *([mt_seqs] if mt_pks else [])])
    vectors = np.zeros((len(keys), 0), np.float32)  # not read by the query
    sources = _Sources(sset, in_scope, memtable, mt_refs if mt_pks else [])
    if filter_compiled is None:
        return keys, seqs, vectors, sources, None
    return keys, seqs, vectors, sources, np.concatenate(filters) if filters else np.zeros(0, bool)


def _in_scope(segments, partition_names) -> tuple:
    """The segments Lite searches and queries: those with rows, in the partitions asked for."""
    scope = set(partition_names) if partition_names else None
    return tuple(s for s in segments if s.num_rows > 0 and (scope is None or s.partition in scope))


def _filter_masks(segments: tuple, memtable_table, compiled_filter, indexed_filter_plan) -> list:
    """Lite's scalar filter over each segment, then over the memtable's rows (`memtable_table`,
    None where it has none); no masks without a filter."""
    if compiled_filter is None:
        return []
    from milvus_lite.search.filter import evaluate_mask
    from milvus_lite.search.indexed_filter import evaluate_segment_filter

    masks = [np.asarray(evaluate_segment_filter(s, compiled_filter, indexed_filter_plan), bool) for s in segments]
    if memtable_table is not None:
        masks.append(np.asarray(evaluate_mask(compiled_filter, memtable_table), bool))
    return masks


class _Keys(Sequence):
    """The candidates' primary keys as Lite reads them (a length, an item), numpy underneath,
    with the segment set they come from for `valid_mask`."""

    def __init__(self, segments: SegmentSet, memtable_keys: np.ndarray, memtable_seqs: np.ndarray):
        self.segments, self.memtable_keys, self.memtable_seqs = segments, memtable_keys, memtable_seqs
        self.keys = np.concatenate([*segments.keys, memtable_keys])

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, position: int):
        return int(self.keys[position])

    def __array__(self, dtype=None, copy=None):
        return self.keys if dtype is None else self.keys.astype(dtype)


def _deleted(keys: np.ndarray, seqs: np.ndarray, tombstones: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Rows with a delete of their key later than themselves."""
    if not len(keys):
        return np.zeros(0, bool)
    dead_keys, dead_seqs = tombstones
    at = np.minimum(np.searchsorted(dead_keys, keys), len(dead_keys) - 1)
    return (dead_keys[at] == keys) & (dead_seqs[at] > seqs)


def _tombstones(delta_index, memtable_deletes: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """Every key's latest delete, flushed or in the memtable, as sorted arrays."""
    latest = delta_index.snapshot if len(delta_index) else {}
    for key, entry in memtable_deletes.items():
        if entry[0] > latest.get(key, -1):
            latest[key] = entry[0]
    if not latest:
        return None
    keys = np.fromiter(latest.keys(), np.int64, len(latest))
    order = np.argsort(keys)
    return keys[order], np.fromiter(latest.values(), np.int64, len(latest))[order]


def _valid_rows(sset: SegmentSet, memtable_pks: np.ndarray, memtable_seqs: np.ndarray, tombstones) -> list:
    """Per source (each segment, then the memtable): the rows a search or query may return, as
    Lite's walk finds them: the newest version of their key among all sources, deleted by nothing
    later."""
    masks = [w.copy() for w in sset.winners]
    memtable_mask = np.ones(len(memtable_pks), bool)
    if len(memtable_pks) and len(sset.sorted_pks):  # keys in the memtable and a segment: rare
        low = np.searchsorted(sset.sorted_pks, memtable_pks, side="left")
        high = np.searchsorted(sset.sorted_pks, memtable_pks, side="right")
        for i in np.flatnonzero(high > low):
            last = int(high[i]) - 1
            if sset.sorted_seqs[last] > memtable_seqs[i]:
                memtable_mask[i] = False
            elif sset.sorted_seqs[last] < memtable_seqs[i]:
                segment, row = sset.place(int(sset.order[last]))
                masks[segment][row] = False
    if tombstones is not None:
        for mask, keys, seqs in zip(masks, sset.keys, sset.seqs):
            mask &= ~_deleted(keys, seqs, tombstones)
        memtable_mask &= ~_deleted(memtable_pks, memtable_seqs, tombstones)
    return masks + [memtable_mask]


def search(stock, query_vectors, segments, memtable, delta_index, top_k, metric_type, pk_field, vector_field,
           partition_names=None, compiled_filter=None, output_fields=None, indexed_filter_plan=None,
           project_record_fn=None, search_params=None):
    """Lite's `execute_search_with_index` (the same arguments and answer), its masks from numpy."""
    arguments = {name: value for name, value in locals().items() if name != "stock"}
    query = np.asarray(query_vectors, np.float32)
    query = query.reshape(1, -1) if query.ndim == 1 else query
    nq = int(query.shape[0])
    if nq == 0 or top_k <= 0:
        return [[] for _ in range(nq)]
    in_scope = _in_scope(segments, partition_names)
    sset = segment_set(in_scope)
    if not sset.integer:
        return stock(**{**arguments, "segments": in_scope})
    mt_pks, mt_seqs, mt_vectors, mt_refs, mt_table = memtable.to_search_snapshot(
        vector_field=vector_field, partition_names=partition_names, include_table=compiled_filter is not None)
    if not in_scope and not mt_pks:
        return [[] for _ in range(nq)]
    masks = _valid_rows(sset, np.asarray(mt_pks, np.int64), np.asarray(mt_seqs, np.int64),
                        _tombstones(delta_index, memtable.delete_index_snapshot()))
    for mask, matches in zip(masks, _filter_masks(in_scope, mt_table if mt_pks else None, compiled_filter,
                                                  indexed_filter_plan)):
        mask &= matches

    found = []  # per source: (nq, k) distances and rows
    sources = [(s, *s.vector_data(vector_field), s.indexes.get(vector_field)) for s in in_scope]
    sources.append((None, mt_vectors, None, None))
    for (segment, vectors, vector_present, index), mask in zip(sources, masks):
        if vector_present is not None:
            mask &= vector_present
        if not len(mask) or not mask.any():
            found.append(None)
            continue
        if index is None:
            from milvus_lite.index.brute_force import BruteForceIndex

            index = BruteForceIndex.build(vectors, metric_type)
        rows, distances = index.search(query, top_k, valid_mask=None if mask.all() else mask, params=search_params)
        found.append((np.asarray(distances), np.asarray(rows)))

    project = project_record_fn or _projection(pk_field, vector_field, output_fields)
    results = []
    for q in range(nq):
        distances, source_of, rows = [], [], []
        for source, hits in enumerate(found):
            if hits is None:
                continue
            valid = hits[1][q] >= 0
            valid &= np.cumsum(~valid) == 0  # Lite stops at a source's first padding
            distances.append(hits[0][q][valid].astype(np.float64))
            rows.append(hits[1][q][valid])
            source_of.append(np.full(int(valid.sum()), source))
        if not distances:
            results.append([])
            continue
        distance, source, row = np.concatenate(distances), np.concatenate(source_of), np.concatenate(rows)
        best = np.lexsort((row, source, distance))[:top_k]
        answer = []
        for d, s, r in zip(distance[best].tolist(), source[best].tolist(), row[best].tolist()):
            if s < len(in_scope):
                record, key = in_scope[s].row_to_dict(r), in_scope[s].pks[r]
            else:
                record, key = memtable.materialize_row(*mt_refs[r]), mt_pks[r]
            answer.append({"id": record.get(pk_field, key), "distance": d, "entity": project(record)})
        results.append(answer)
    return results


def _projection(pk_field: str, vector_field: str, output_fields):
    """Lite's entity projection where its caller gives none."""
    if output_fields is None:
        return lambda record: {k: v for k, v in record.items() if k not in (pk_field, vector_field)}
    keep = set(output_fields) - {pk_field}
    return lambda record: {k: record[k] for k in keep if k in record}
