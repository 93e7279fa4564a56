"""Hits into moments, ranked by their best score: by shot (`group_by_shot`: a video's hits
inside one of its shots are one moment spanning that shot), or by gap (`merge_hits`: a
video's hits that lie within `gap` seconds of each other are one segment). Pure Python, no
store or model: what a notebook, the CLI and the page all return."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_GAP_S = 2.0  # at the default 1 fps sampling: neighbours, or one miss between them
BY = ("shot", "gap")  # what makes a moment: a shot holding hits (the default), or hits within the gap


@dataclass(frozen=True)
class PatchMatch:
    """Where in a frame a NaViT image query matched (MaxSim over the stored patch rows):
    `scores[r][c]` is the best cosine of any query patch against the frame's cell (r, c);
    `best` the highest cells, best first; `score` the frame's MaxSim (mean over query
    patches of their best cell)."""

    grid: tuple[int, int]  # (rows, cols) of the frame's grid
    best: tuple[tuple[int, int], ...]
    scores: tuple[tuple[float, ...], ...]
    score: float


@dataclass(frozen=True)
class Hit:
    """One matching frame of a video's current rows."""

    video_path: str  # relative to video_input.path, as stored
    timestamp_s: float
    frame_id: int
    score: float  # cosine similarity (CLIP) or MaxSim (NaViT): higher is closer
    patches: PatchMatch | None = None


@dataclass(frozen=True)
class Shot:
    """One shot of a video as `<collection>_segments` stores it (core/shots.py)."""

    start_s: float
    end_s: float
    frame_id: int  # its representative frame (the closest to the shot's mean vector)
    timestamp_s: float


@dataclass(frozen=True)
class Moment:
    """Hits of one video: those inside one shot (`shot` set; start and end are the
    shot's), or consecutive hits none more than the gap from the next."""

    video_path: str
    start_s: float
    end_s: float
    best_s: float
    score: float  # the best hit's
    hits: tuple[Hit, ...] = field(default=())  # in time order
    shot: Shot | None = None

    @property
    def best(self) -> Hit:
        return max(self.hits, key=lambda h: (h.score, -h.timestamp_s))


def merge_hits(hits: list[Hit], gap_s: float = DEFAULT_GAP_S, k: int | None = None) -> list[Moment]:
    """Moments ranked by best score (ties: video, then start), the first `k` if given.
    A frame hit twice keeps its best score."""
    if gap_s < 0:
        raise ValueError("gap must be >= 0 seconds")
    moments = []
    for video, ordered in _by_video(hits).items():
        segment = [ordered[0]]
        for hit in ordered[1:]:
            if hit.timestamp_s - segment[-1].timestamp_s <= gap_s + 1e-9:
                segment.append(hit)
            else:
                moments.append(_moment(video, segment))
                segment = [hit]
        moments.append(_moment(video, segment))
    moments.sort(key=lambda m: (-m.score, m.video_path, m.start_s))
    return moments[:k] if k is not None else moments


def group_by_shot(hits: list[Hit], shots: dict[str, list[Shot]], gap_s: float = DEFAULT_GAP_S,
                  k: int | None = None) -> list[Moment]:
    """One moment per shot holding hits (start and end the shot's, best the best hit in
    it); the hits of a video without shots merged by `gap_s` (`merge_hits`). Ranked as
    `merge_hits` ranks."""
    moments, unshot = [], []
    for video, ordered in _by_video(hits).items():
        if not shots.get(video):
            unshot += ordered
            continue
        spans = sorted(shots[video], key=lambda s: s.start_s)
        inside: dict[int, list[Hit]] = {}
        for hit in ordered:  # the shot it lies in (the last shot's end included; past it, the last shot)
            index = next((i for i, s in enumerate(spans) if hit.timestamp_s < s.end_s), len(spans) - 1)
            inside.setdefault(index, []).append(hit)
        for index, own in inside.items():
            moments.append(_moment(video, own, spans[index]))
    moments += merge_hits(unshot, gap_s)
    moments.sort(key=lambda m: (-m.score, m.video_path, m.start_s))
    return moments[:k] if k is not None else moments


def _by_video(hits: list[Hit]) -> dict[str, list[Hit]]:
    """Each video's hits in time order; a frame hit twice keeps its best score."""
    by_video: dict[str, dict[int, Hit]] = {}
    for hit in hits:
        frames = by_video.setdefault(hit.video_path, {})
        key = round(hit.timestamp_s * 1000)
        if key not in frames or hit.score > frames[key].score:
            frames[key] = hit
    return {video: [frames[t] for t in sorted(frames)] for video, frames in by_video.items()}


def _moment(video: str, hits: list[Hit], shot: Shot | None = None) -> Moment:
    best = max(hits, key=lambda h: (h.score, -h.timestamp_s))
    if shot is not None:
        return Moment(video, shot.start_s, shot.end_s, best.timestamp_s, best.score, tuple(hits), shot)
    return Moment(video, hits[0].timestamp_s, hits[-1].timestamp_s, best.timestamp_s, best.score, tuple(hits))
