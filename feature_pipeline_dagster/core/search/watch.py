"""Saved searches (`search.watch`): each video a run commits is scored against every saved
query, so a team hears about new footage of what it cares about.

The queries are embedded once per run, on the run's model (text through its text tower,
a picture as a decoded frame goes); a video's score is its best frame's cosine, taken from
the vectors the run has in hand as they stream to the writer (a (rows x queries) product
per model batch: no read-back and no Milvus search). A run without saved searches loads
nothing more (no text tower) and scores nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from feature_pipeline_dagster.core.errors import ConfigError, SearchError
from feature_pipeline_dagster.core.settings import SavedSearch, Settings
from feature_pipeline_dagster.core.search.query import embed_picture, load_image
from feature_pipeline_dagster.core.models import load_text_encoder


@dataclass
class BestFrames:
    """One video's best frame per saved search so far."""

    scores: np.ndarray  # (queries,) cosine
    at_ms: np.ndarray  # (queries,) the best frame's timestamp


class Watch:
    def __init__(self, searches: tuple[SavedSearch, ...], queries: np.ndarray):
        self.searches, self.queries = searches, queries  # queries: (n, dim), L2-normalized

    @classmethod
    def for_run(cls, settings: Settings, extractor) -> Watch | None:
        """The saved searches embedded on the run's model; None without any. A query that
        cannot be embedded (an unreadable picture, no tokenizer) fails the run here, once."""
        if not settings.watch:
            return None

        images = pictures(settings)
        texts = [s.text for s in settings.watch if s.text is not None]
        by_text = dict(zip(texts, load_text_encoder(settings.model, extractor.device).encode(texts))) if texts else {}
        queries = [by_text[s.text] if s.text is not None else embed_picture(extractor, images[i])[0]
                   for i, s in enumerate(settings.watch)]
        return cls(settings.watch, normalized(np.asarray(queries, np.float32)))

    def update(self, best: BestFrames | None, vectors: np.ndarray, timestamps_ms: np.ndarray) -> BestFrames | None:
        """`best` after a video's next rows."""
        if not len(vectors):
            return best
        scores = normalized(np.asarray(vectors, np.float32)) @ self.queries.T  # (rows, queries)
        top = scores.argmax(axis=0)
        found = BestFrames(scores[top, np.arange(len(top))], np.asarray(timestamps_ms)[top])
        if best is None:
            return found
        better = found.scores > best.scores
        return BestFrames(np.where(better, found.scores, best.scores), np.where(better, found.at_ms, best.at_ms))

    def matches(self, best: BestFrames | None) -> dict[str, dict]:
        """The saved searches this video matches: name -> best frame's score and time
        (what its metadata carries and `run` prints)."""
        if best is None:
            return {}
        return {s.name: {"score": round(float(best.scores[i]), 4), "at_s": round(float(best.at_ms[i]) / 1000, 3)}
                for i, s in enumerate(self.searches) if best.scores[i] >= s.threshold}


def pictures(settings: Settings) -> dict[int, np.ndarray]:
    """The saved searches' pictures by index, read (PIL, no model): `run` reads them before
    anything starts, and a picture that cannot be read is one line naming its key."""
    images = {}
    for i, saved in enumerate(settings.watch):
        if saved.image is not None:
            try:
                images[i] = load_image(saved.image)
            except SearchError as err:
                raise ConfigError(f"{settings.source}: search.watch[{i}].image: {err}") from None
    return images


def normalized(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def report_lines(matches: dict[str, list[tuple[str, dict]]], searches: tuple[SavedSearch, ...]) -> list[str]:
    """`run`'s lines: per saved search, the new videos that match it, best first."""
    lines = []
    for saved in searches:
        found = sorted(matches.get(saved.name, []), key=lambda m: -m[1]["score"])
        videos = ", ".join(f"{video} at {m['at_s']:.1f} s ({m['score']:.2f})" for video, m in found)
        lines.append(f'saved search "{saved.name}": ' + (f"{len(found)} new video(s): {videos}" if found
                                                         else "no new video"))
    return lines
