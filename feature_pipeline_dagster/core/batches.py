"""What flows between the stages: decoded frames in, embedding rows out."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class FrameBatch:
    """Decoded RGB frames (N, H, W, 3) uint8 with their source frame index and time;
    `frames` is a numpy array, or a CUDA tensor where nvdec decoded on the model's device."""

    frames: np.ndarray
    frame_ids: np.ndarray
    timestamps_ms: np.ndarray

    def __len__(self) -> int:
        return len(self.frame_ids)


@dataclass
class EmbeddingBatch:
    """Rows for one collection: a float32 vector per row plus its scalar columns
    (frame_id, timestamp_ms and, for patch models, row_idx and col_idx)."""

    vectors: np.ndarray
    columns: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.vectors)

    def slice(self, start: int, stop: int) -> EmbeddingBatch:
        return EmbeddingBatch(self.vectors[start:stop], {k: v[start:stop] for k, v in self.columns.items()})

    @staticmethod
    def concat(batches: list[EmbeddingBatch]) -> EmbeddingBatch:
        if len(batches) == 1:
            return batches[0]
        return EmbeddingBatch(
            np.concatenate([b.vectors for b in batches]),
            {k: np.concatenate([b.columns[k] for b in batches]) for k in batches[0].columns},
        )
