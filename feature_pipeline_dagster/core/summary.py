"""The per-video summary: one L2-normalized mean vector per video, in a collection of
its own beside the first feature's frames (`<frames collection>_summary`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from feature_pipeline_dagster.core.settings import CollectionSpec, Settings


def summary_collection(settings: Settings) -> CollectionSpec:
    frames = settings.collection_for(settings.model.features[0])
    keep = ("id", "video_path", "timestamp_ms", "generation", frames.vector_field.name)
    return CollectionSpec(f"{frames.name}_summary", tuple(f for f in frames.fields if f.name in keep))


@dataclass
class SummaryRows:
    """The summary asset's output: each video's mean vector, for its collection."""

    spec: CollectionSpec
    means: dict[str, np.ndarray]  # video -> (dim,) float32
    duplicates: dict[str, str] = field(default_factory=dict)  # video -> its near-duplicates, one line


def normalized_mean(total: np.ndarray, count: int) -> np.ndarray:
    mean = total / max(1, count)
    return (mean / max(np.linalg.norm(mean), 1e-12)).astype(np.float32)


def mean_of_pages(pages: Iterable[np.ndarray]) -> np.ndarray | None:
    """The summary vector of vectors that come a page at a time (None if there are none)."""
    total, count = None, 0
    for page in pages:
        if len(page):
            part = page.sum(axis=0, dtype=np.float64)
            total = part if total is None else total + part
            count += len(page)
    return None if total is None else normalized_mean(total, count)
