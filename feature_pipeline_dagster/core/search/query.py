"""Queries into vectors, through exactly the path stored frames took: an image becomes a
uint8 RGB array (EXIF orientation applied, as the decoder applies a video's rotation) and
goes through the family's own `embed` (the same preprocessing and model as the frames);
text goes through the family's text tower (`load_text_encoder`)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from feature_pipeline_dagster.core.errors import SearchError, one_line
from feature_pipeline_dagster.core.settings import ModelSettings

MAX_QUERY_PIXELS = 64_000_000  # a decompression bomb is refused, not decoded


def load_image(image: str | Path | bytes | np.ndarray, name: str = "query image") -> np.ndarray:
    """An (H, W, 3) uint8 RGB array from a file, its bytes, or an array (used as is)."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise SearchError(f"{name}: expected an (H, W, 3) uint8 RGB array, got {image.dtype} {image.shape}")
        return image
    from PIL import Image, ImageOps

    label = str(image) if isinstance(image, (str, Path)) else name
    try:
        source = io.BytesIO(image) if isinstance(image, bytes) else open(image, "rb")
    except OSError as err:
        raise SearchError(f"{label}: cannot read it ({err.strerror})") from None
    try:
        with source, Image.open(source) as picture:
            if picture.width * picture.height > MAX_QUERY_PIXELS:
                raise SearchError(f"{label}: {picture.width}x{picture.height} is too large for a query image")
            return np.array(ImageOps.exif_transpose(picture).convert("RGB"))  # writable, as decoded frames are
    except SearchError:
        raise
    except Exception as err:  # PIL: UnidentifiedImageError, truncated files, bombs
        raise SearchError(f"{label}: not an image this can read ({one_line(err)})") from None


def encode_image(model: ModelSettings, device: str, image: np.ndarray) -> tuple[np.ndarray, str]:
    """The query's vectors (one for CLIP, one per patch for NaViT) and the model's description."""
    from feature_pipeline_dagster.core.engine.batches import FrameBatch
    from feature_pipeline_dagster.core.models import load_extractor

    extractor = load_extractor(model, device)
    rows = extractor.embed(FrameBatch(image[None], np.zeros(1, np.int64), np.zeros(1, np.int64)))
    return np.asarray(rows.vectors, np.float32), extractor.description


def encode_text(model: ModelSettings, device: str, text: str) -> tuple[np.ndarray, str]:
    from feature_pipeline_dagster.core.models import load_text_encoder

    encoder = load_text_encoder(model, device)
    return np.asarray(encoder.encode([text]), np.float32), encoder.description
