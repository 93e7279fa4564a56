"""A video's rows written and read the way production does: `insert` then `commit` (as the
engine's `RunWriter` and the IO manager's summary write), `query_rows` and `search_rows`
(as core/search reads); the store has no test-only path."""

from __future__ import annotations

import numpy as np

from feature_pipeline_dagster.core.batches import EmbeddingBatch
from feature_pipeline_dagster.core.store import RowFilter, VectorStore, new_generation


def write_rows(store: VectorStore, spec, video: str, *batches: EmbeddingBatch) -> int:
    """Replace the video's rows with `batches` as one new generation; the rows written."""
    generation = new_generation()
    for batch in batches:
        store.insert(spec, batch, [video] * len(batch), generation)
    store.commit(spec, [video], generation)
    return sum(len(b) for b in batches)


def stored_rows(store: VectorStore, spec, video: str, fields: tuple[str, ...] = ()) -> list[dict]:
    """Every row of the video (every generation), its vector and the named fields."""
    return store.query_rows(spec, RowFilter(videos=(video,)), (spec.vector_field.name, *fields))


def nearest(store: VectorStore, spec, vector: np.ndarray, limit: int) -> list[dict]:
    """The rows nearest `vector`, with every scalar field the collection stores."""
    fields = tuple(f.name for f in spec.fields if f is not spec.vector_field and not f.is_primary)
    return store.search_rows(spec, np.asarray(vector, np.float32)[None], limit, fields=fields)[0]
