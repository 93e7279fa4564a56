"""MaxSim of a NaViT image query against one frame's stored patch rows (numpy only).

Query patches Q (n, d) against the frame's cells P (m, d), cosine: the frame scores the
mean over query patches of their best cell (ColBERT's MaxSim, divided by n so scores stay
in [-1, 1] whatever the query's grid); the score map gives each cell the best cosine any
query patch reaches on it, and the best cells are its top ones.
"""

from __future__ import annotations

import numpy as np

from feature_pipeline_dagster.core.search.moments import PatchMatch

BEST_CELLS = 5


def unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def maxsim(query: np.ndarray, cells: np.ndarray, rows: np.ndarray, cols: np.ndarray,
           best: int = BEST_CELLS) -> PatchMatch:
    """`query` (n, d) unit vectors; `cells` (m, d) the frame's rows with their `rows`/`cols` indices."""
    sims = unit(query) @ unit(cells).T  # (n, m)
    grid = (int(rows.max()) + 1, int(cols.max()) + 1)
    score_map = np.full(grid, np.nan, dtype=np.float32)
    score_map[rows, cols] = sims.max(axis=0)
    order = np.argsort(-np.nan_to_num(score_map, nan=-np.inf), axis=None)[:min(best, len(cells))]
    cells_best = tuple((int(i // grid[1]), int(i % grid[1])) for i in order)
    scores = tuple(tuple(round(float(v), 4) for v in row) for row in np.nan_to_num(score_map, nan=-1.0))
    return PatchMatch(grid=grid, best=cells_best, scores=scores, score=float(sims.max(axis=1).mean()))
