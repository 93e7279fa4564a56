"""Near-duplicate videos: the same footage under other names, re-encoded at other bitrates
and sizes, or trimmed, found from the stored frame vectors with no all-pairs matrix.

Each video's current frame vectors are searched (a page of frames per request) against
the collection, grouped by video: per frame, its `FRAMES_PER_VIDEO` nearest frames in each
of the `CANDIDATE_VIDEOS` nearest other videos. Hits of at least `MIN_SCORE` count; a pair
is the same footage when `MIN_FRACTION` of the shorter video's frames match at one time
offset (a copy or a re-encode keeps time, a trim shifts it by a constant): the offset
window of one sample period holding the most distinct frames. The matched frames give the
time range in each video; pairs join into groups by union-find.

Cost per video is O(frames x CANDIDATE_VIDEOS x FRAMES_PER_VIDEO) hits, never all pairs
(asked ungrouped first: `_NearestFrames`);
memory holds one batch of videos' rows and hits (14 MiB for 3600 512-d frames, bench_duplicates.py
--long-frames), the ledger's names and generations (330 bytes a video of 30-character names,
tracemalloc: 330 MB for a million videos, read in one listing) and the confirmed pairs.

Thresholds, measured (bench/bench_duplicates.py --grid, the tests' tiny random-weights
CLIP, two sets of 6 originals with a copy, a 160x120 re-encode at 100 kb/s and a trim each,
plus 6 distinct videos of the same generator): distinct videos of one generator evolve
alike, so their frames match time-aligned at cos up to 0.992, and temporal consistency
alone cannot tell them from copies; frames of true duplicates scored >= 0.998. At
MIN_SCORE 0.995 every true pair matched all of the shorter video's frames (fraction 1.0)
and no false pair more than 0.5 of them (at 0.99: up to 0.75), so MIN_FRACTION sits
between, at 0.75. A trim that starts between two samples matches frames half a sample
apart: with that model they scored 0.96, as low as another video, so it misses such trims
at 1 fps (the tests trim on a sample; `--trims-between-samples`: recall 0.5, every trim lost).
One nearest frame per candidate video: two found the same pairs on both sets, at 6 against 4 ms
a video (Milvus Lite builds every hit it returns, vector included).
The offset window is one sample period of `sampling: fps`; videos thinned by `max_frames`,
or sampled by key frame, have other spacings (not measured). Not measured with real weights (none here): their
re-encodes may score under 0.995.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from feature_pipeline_dagster.core.errors import SearchError
from feature_pipeline_dagster.core.settings import Settings
from feature_pipeline_dagster.core.store import Committed, RowFilter, VectorStore, store_for
from feature_pipeline_dagster.core.search.api import searchable_version
from feature_pipeline_dagster.core.models import FAMILIES
from feature_pipeline_dagster.core.models.weights import is_random

MIN_SCORE = 0.995  # cosine a frame hit needs to count (measured: see above)
MIN_FRACTION = 0.75  # of the shorter video's frames matched at one offset
MIN_FRAMES = 2  # matched frames at least (a one-frame video: its one frame)
CANDIDATE_VIDEOS = 10  # other videos per frame
FRAMES_PER_VIDEO = 1  # nearest frames per candidate video (see above)
QUERY_PAGE = 256  # frames per search request (256 x 512-d: 0.5 MB)


@dataclass(frozen=True)
class Span:
    """Where a video matches the other: its first and last matched frame, in seconds."""

    video_path: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class DuplicatePair:
    a: Span  # a.video_path < b.video_path
    b: Span
    frames: int  # frames matched at one offset
    fraction: float  # of the shorter video's frames
    score: float  # mean cosine of the matched frames


@dataclass(frozen=True)
class DuplicateGroup:
    videos: tuple[str, ...]  # sorted
    pairs: tuple[DuplicatePair, ...]  # the confirmed pairs that join them


@dataclass
class DuplicatesResult:
    groups: list[DuplicateGroup]
    collection: str
    warnings: list[str] = field(default_factory=list)

    def line_of(self, video: str) -> str:
        """`video`'s near-duplicates in one line, e.g. `b.mp4 (0-10 s ↔ 2-12 s)`, or `none`."""
        return self.lines([video])[video]

    def lines(self, videos: list[str]) -> dict[str, str]:
        """`line_of` each of `videos`, the pairs walked once (not once a video: 0.12 s for a
        run's 1000 clips and 790 pairs)."""
        spans: dict[str, list[tuple[Span, Span]]] = {video: [] for video in videos}
        for pair in (p for g in self.groups for p in g.pairs):
            for mine, theirs in ((pair.a, pair.b), (pair.b, pair.a)):
                if mine.video_path in spans:
                    spans[mine.video_path].append((mine, theirs))
        return {video: "; ".join(f"{theirs.video_path} ({mine.start_s:g}-{mine.end_s:g} s ↔ {theirs.start_s:g}-"
                                 f"{theirs.end_s:g} s)" for mine, theirs in found) or "none"
                for video, found in spans.items()}


def find_duplicates(settings: Settings, videos: list[str] | None = None, store: VectorStore | None = None,
                    min_score: float = MIN_SCORE, known: dict[str, Committed | None] | None = None) -> DuplicatesResult:
    """Groups of near-duplicate videos among the first feature's current rows. `videos`:
    look for the duplicates of these only (a run's videos), against the whole library;
    `min_score`: the cosine a frame hit needs (`--min-score`: for other weights than the
    ones MIN_SCORE was measured on); `known`: the ledger records read so far, kept by a
    caller that searches again (`_NearestFrames`)."""
    model, spec = settings.model, frame_collection(settings)
    own_store = store is None
    if own_store:
        store = store_for(settings.db, reads_may_lag=True)
    try:
        result = DuplicatesResult([], spec.name)
        version = searchable_version(settings, spec, store)
        if version is None:
            result.warnings.append(f"collection {spec.name} holds no committed video yet")
            return result
        if _random_weights(settings):
            result.warnings.append(f"RANDOM WEIGHTS: {model.path} gives meaningless vectors; duplicates found with "
                                   "them mean little beyond identical pictures (for smoke runs and tests only)")
        committed = store.committed(spec, videos, code_version=version)
        known = {} if known is None else known
        known.update(committed)
        period_s = 1 / settings.video_input.sample_fps
        pairs: dict[tuple[str, str], DuplicatePair] = {}
        for pair in _pairs_among(_NearestFrames(store, spec, version, min_score, known), committed, period_s):
            _keep_best(pairs, pair)
        result.groups = _groups(pairs.values())
        return result
    finally:
        if own_store:
            store.close()


# How long the summary waits for the run's search to end. Once (1 run in ~13 sensor benches,
# 2026-12-07) that thread hung for good: the garbage collector, run in it, finalized a gRPC
# channel whose lock no live thread held (grpcio 1.85, `_ChannelCallState.__del__`), and the
# run, its rows committed, waited in its summary until killed.
LINES_WAIT_S = 120.0


class RunDuplicates:
    """The near-duplicates of a run's videos, looked for in a thread of its own as the run
    commits them, so that the search overlaps the embedding of the videos that follow
    instead of coming after the last (the summary's step did it then: 5.0 s of the GPU
    stand-in's 23 s `run` over 1000 clips, bench_gpu_standin.py). Each commit's videos are
    searched against the library as it stands then; a pair of two videos of the run is found
    by the later one's search, and `lines` names it on both. The search opens a store of its
    own, read with the pipeline's Strong consistency (a server's Bounded reads could miss the
    commit just made). A failure of the search leaves `lines` empty and is logged once: the
    summary looks for those videos' duplicates itself."""

    def __init__(self, settings: Settings):
        self.settings, self.videos, self.failed = settings, [], False
        self.pairs: dict[tuple[str, str], DuplicatePair] = {}
        self._known: dict[str, Committed | None] = {}  # the ledger records its searches read
        self._todo: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="duplicates", daemon=True)
        self._thread.start()

    def committed(self, videos: list[str]) -> None:
        self._todo.put(videos)

    def lines(self) -> dict[str, str]:
        """Each searched video's near-duplicates in one line (`DuplicatesResult.lines`),
        once the videos committed so far are searched."""
        self._todo.put(None)
        self._thread.join(LINES_WAIT_S)
        if self._thread.is_alive():
            logging.getLogger("feature_pipeline.duplicates").warning(
                "the duplicates search of the run did not end in %.0f s; the summary looks for them itself",
                LINES_WAIT_S)
            self.failed = True
        if self.failed:
            return {}
        found = DuplicatesResult(_groups(self.pairs.values()), frame_collection(self.settings).name)
        return found.lines(self.videos)

    def stop(self) -> None:
        """No more searches (the run failed or was interrupted, or nobody took it); does not wait."""
        self.failed = True
        self._todo.put(None)

    def _work(self) -> None:
        store = None
        try:
            store = store_for(self.settings.db)
            while (videos := self._todo.get()) is not None and not self.failed:
                for group in find_duplicates(self.settings, videos, store, known=self._known).groups:
                    for pair in group.pairs:
                        _keep_best(self.pairs, pair)
                self.videos += videos
        except Exception as err:  # the store, mostly: the summary's step searches itself
            logging.getLogger("feature_pipeline.duplicates").warning(
                "duplicates not looked for during the run (the summary will): %s", err)
            self.failed = True
        finally:
            if store is not None:
                store.close()


def has_frame_vectors(settings: Settings) -> bool:
    """Whether duplicates can be looked for: the first feature stores one vector per frame."""
    return not FAMILIES[settings.model.name].patch_grid


def frame_collection(settings: Settings):
    """The collection duplicates are looked for in: the first feature's, one row per frame."""
    model = settings.model
    spec = settings.collection_for(model.features[0])
    if not has_frame_vectors(settings):
        raise SearchError(f"duplicates need one vector per frame: model {model.name} stores a row per patch in "
                          f"{spec.name}; use a CLIP config")
    return spec


def _pairs_among(nearest: _NearestFrames, committed: dict, period_s: float) -> Iterator[DuplicatePair]:
    """The confirmed pairs of `committed`'s videos. Their frames are read and searched
    together, `QUERY_PAGE` frames a request, each frame asking for one more video than
    `CANDIDATE_VIDEOS` so that its own video's group can be dropped: one request per page
    instead of four per video (a run's 300 clips of 3 frames: 8 s of its summary step at
    27 ms a video, bench_gpu_standin.py under py-spy). Memory holds one batch of videos
    of at most `QUERY_PAGE` x 16 frames (a longer video alone), their hits and the ledger's rows."""
    store, spec, min_score = nearest.store, nearest.spec, nearest.min_score
    name = spec.vector_field.name
    lengths = {path: record.rows for path, record in store.recorded_videos(spec, sorted(committed)).items()}
    for batch in _video_batches(sorted(committed), lengths, QUERY_PAGE * 16):
        where = RowFilter(videos=tuple(batch), current=tuple((v, committed[v].generation) for v in batch))
        rows = sorted(store.query_rows(spec, where, ("video_path", "timestamp_ms", name)),
                      key=lambda r: (r["video_path"], r["timestamp_ms"]))
        frames = Counter(r["video_path"] for r in rows)
        hits: dict[str, dict[str, list[tuple[int, int, float]]]] = {}  # video -> other -> (own ms, its ms, score)
        for start in range(0, len(rows), QUERY_PAGE):
            page = rows[start:start + QUERY_PAGE]
            found = nearest(np.asarray([r[name] for r in page], np.float32))
            for own, per in zip(page, found):
                video, others = own["video_path"], []
                for hit in per:
                    if hit["video_path"] != video and hit["video_path"] not in others:
                        others.append(hit["video_path"])
                kept = set(others[:CANDIDATE_VIDEOS])
                for hit in per:
                    if hit["score"] >= min_score and hit["video_path"] in kept:
                        hits.setdefault(video, {}).setdefault(hit["video_path"], []).append(
                            (own["timestamp_ms"], hit["timestamp_ms"], hit["score"]))
        unknown = sorted({other for per in hits.values() for other in per} - lengths.keys())
        if unknown:
            lengths.update((path, record.rows) for path, record in store.recorded_videos(spec, unknown).items())
        for video, per in hits.items():
            for other, matches in per.items():
                pair = aligned_pair(video, other, matches, frames[video], lengths.get(other, 0), period_s)
                if pair is not None:
                    yield pair


class _NearestFrames:
    """Per frame, the hits of the search grouped by video (`FRAMES_PER_VIDEO` rows in each of
    `CANDIDATE_VIDEOS` + 1 videos), asked first ungrouped for as many rows: Milvus Lite
    over-fetches a grouped search tenfold and builds every fetched row, vector included, in
    Python (1.1 s a page of 256 frames against 0.28 s ungrouped, 3000 rows). Rows name their
    videos best first, so when they name `CANDIDATE_VIDEOS` + 1 videos, these are the grouped
    search's, each with its best row (a second beyond the last row scores no more than it).
    Only a frame whose rows name fewer videos while the last still scores `min_score` may
    miss a video that counts (one long still video can fill them): that frame is asked
    again grouped; past half a page of those, the following pages go grouped at once. On
    the GPU stand-in (1000 clips whose frames all match, cos >= 0.9999) a run's 500 clips
    took 3.4 s instead of 9.9 s this way (every frame had been re-asked), the same 821 pairs.

    Hits that are not current rows (a video not committed yet, an older generation, another
    code version) are dropped, not searched past as the search of moments does (`current_rows`,
    up to four searches a page): a pair with a video not committed yet is found by that
    video's own search once committed. The ledger records read are kept in `known`
    (None: no record), read again only for a video hit with another generation than kept:
    the run's searches name the same videos page after page. Over the stand-in's 1000 clips
    (`feature-pipeline run`, its Milvus calls timed) the run's search went from 22 requests
    (6.4 s) and 22 ledger reads of ~1000 names (0.76 s) to 13 requests (3.1 s) and 5 reads (0.03 s)."""

    FIELDS = ("video_path", "generation", "timestamp_ms")

    def __init__(self, store: VectorStore, spec, version: str, min_score: float, known: dict[str, Committed | None]):
        self.store, self.spec, self.version, self.min_score, self.known = store, spec, version, min_score, known
        self.grouped_first = False

    def __call__(self, vectors: np.ndarray) -> list[list[dict]]:
        if self.grouped_first:
            return self._grouped(vectors)
        found = self._search(vectors, (CANDIDATE_VIDEOS + 1) * FRAMES_PER_VIDEO, 0)
        full = [i for i, per in enumerate(found) if per and per[-1]["score"] >= self.min_score
                and len({hit["video_path"] for hit in per}) <= CANDIDATE_VIDEOS]
        found = [_per_video(per, FRAMES_PER_VIDEO) for per in self._current(found)]
        if full:
            self.grouped_first = 2 * len(full) > len(found)
            for i, per in zip(full, self._grouped(vectors[full])):
                found[i] = per
        return found

    def _grouped(self, vectors: np.ndarray) -> list[list[dict]]:
        return self._current(self._search(vectors, CANDIDATE_VIDEOS + 1, FRAMES_PER_VIDEO))

    def _search(self, vectors: np.ndarray, limit: int, group_size: int) -> list[list[dict]]:
        return self.store.search_rows(self.spec, vectors, limit, RowFilter(), group_size, self.FIELDS)

    def _current(self, found: list[list[dict]]) -> list[list[dict]]:
        known = self.known
        unknown = {hit["video_path"] for per in found for hit in per
                   if getattr(known.get(hit["video_path"]), "generation", None) != hit["generation"]}
        if unknown:
            records = self.store.committed(self.spec, sorted(unknown))
            known.update((video, records.get(video)) for video in unknown)
        return [[hit for hit in per if (record := known[hit["video_path"]]) is not None
                 and record.code_version == self.version and record.generation == hit["generation"]]
                for per in found]


def _per_video(hits: list[dict], most: int) -> list[dict]:
    """`hits` (best first) less each video's rows beyond its `most` best, as a grouped search keeps them."""
    kept, seen = [], Counter()
    for hit in hits:
        seen[hit["video_path"]] += 1
        if seen[hit["video_path"]] <= most:
            kept.append(hit)
    return kept


def _video_batches(videos: list[str], lengths: dict[str, int], most_frames: int) -> Iterator[list[str]]:
    """`videos` in consecutive batches of at most `most_frames` recorded frames, a longer video alone."""
    batch, held = [], 0
    for video in videos:
        frames = lengths.get(video, 0)
        if batch and held + frames > most_frames:
            yield batch
            batch, held = [], 0
        batch.append(video)
        held += frames
    if batch:
        yield batch


def aligned_pair(video: str, other: str, matches: list[tuple[int, int, float]], frames: int, other_frames: int,
                 period_s: float) -> DuplicatePair | None:
    """The pair if enough of the shorter video's frames match at one time offset.
    `matches`: (ms in `video`, ms in `other`, cosine). The offsets are swept by a window of
    one sample period (a trim that starts between two samples matches both neighbours);
    the window holding the most distinct frames of `video` wins, ties by total score."""
    shorter = min(frames, other_frames) if other_frames else frames
    if shorter < 1:
        return None
    width = round(period_s * 1000) + 1
    ordered = sorted(matches, key=lambda m: m[1] - m[0])
    offsets = [m[1] - m[0] for m in ordered]
    inside: Counter[int] = Counter()
    best, best_key, lo, total = (0, 0), (0, 0.0), 0, 0.0
    for hi, (own, _, score) in enumerate(ordered):
        inside[own] += 1
        total += score
        while offsets[hi] - offsets[lo] > width:
            inside[ordered[lo][0]] -= 1
            if not inside[ordered[lo][0]]:
                del inside[ordered[lo][0]]
            total -= ordered[lo][2]
            lo += 1
        key = (len(inside), total)
        if key > best_key:
            best, best_key = (lo, hi + 1), key
    matched = best_key[0]
    if matched < min(MIN_FRAMES, shorter) or matched / shorter < MIN_FRACTION:
        return None
    kept: dict[int, tuple[int, int, float]] = {}
    for m in ordered[best[0]:best[1]]:  # per frame of `video`, its best hit in the window
        if m[0] not in kept or m[2] > kept[m[0]][2]:
            kept[m[0]] = m
    own_ms = [m[0] for m in kept.values()]
    other_ms = [m[1] for m in kept.values()]
    mine = Span(video, min(own_ms) / 1000, max(own_ms) / 1000)
    theirs = Span(other, min(other_ms) / 1000, max(other_ms) / 1000)
    a, b = (mine, theirs) if video < other else (theirs, mine)
    return DuplicatePair(a, b, matched, round(min(1.0, matched / shorter), 4),
                         round(float(np.mean([m[2] for m in kept.values()])), 4))


def _keep_best(pairs: dict[tuple[str, str], DuplicatePair], pair: DuplicatePair) -> None:
    """`pair` into `pairs`, unless its two videos already matched better (more frames, then score)."""
    key = (pair.a.video_path, pair.b.video_path)
    if key not in pairs or (pair.frames, pair.score) > (pairs[key].frames, pairs[key].score):
        pairs[key] = pair


def _groups(pairs) -> list[DuplicateGroup]:
    """Confirmed pairs into groups (union-find), sorted by their first video."""
    parent: dict[str, str] = {}

    def root(v: str) -> str:
        parent.setdefault(v, v)
        while parent[v] != v:
            parent[v] = parent[parent[v]]
            v = parent[v]
        return v

    pairs = sorted(pairs, key=lambda p: (p.a.video_path, p.b.video_path))
    for p in pairs:
        parent[root(p.a.video_path)] = root(p.b.video_path)
    members: dict[str, list[str]] = {}
    joined: dict[str, list[DuplicatePair]] = {}
    for v in parent:
        members.setdefault(root(v), []).append(v)
    for p in pairs:
        joined.setdefault(root(p.a.video_path), []).append(p)
    return sorted((DuplicateGroup(tuple(sorted(vs)), tuple(joined[r])) for r, vs in members.items()),
                  key=lambda g: g.videos)


def _random_weights(settings: Settings) -> bool:
    from pathlib import Path

    return settings.model.source == "folder" and is_random(Path(settings.model.path))
