"""Queries into vectors, through exactly the path stored frames took: an image becomes a
uint8 RGB array (EXIF orientation applied, as the decoder applies a video's rotation) and
goes through the family's own `embed` (the same preprocessing and model as the frames);
text goes through the family's text tower (`load_text_encoder`)."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Callable

import numpy as np

from feature_pipeline_dagster.core.errors import SearchError, one_line
from feature_pipeline_dagster.core.settings import ModelSettings
from feature_pipeline_dagster.core.models import FAMILIES, is_loaded, load_extractor, load_text_encoder
from feature_pipeline_dagster.core.batches import FrameBatch

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
    extractor = load_extractor(model, device)
    return embed_picture(extractor, image), extractor.description


def embed_picture(extractor, image: np.ndarray) -> np.ndarray:
    """One picture through the extractor, as a decoded frame goes."""
    rows = extractor.embed(FrameBatch(image[None], np.zeros(1, np.int64), np.zeros(1, np.int64)))
    return np.asarray(rows.vectors, np.float32)


# What the first query of a process waits for (2 cores, a fresh process, CLIP ViT-B-32 from
# a local folder: importing torch and open_clip and loading the weights 2.9-3.0 s, the
# tokenizer 0.1 s more). Larger architectures and NaViT take longer; the line after says.
LOAD_ESTIMATE_S = {"CLIP": 3}


def load_query_model(model: ModelSettings, device: str, text: bool, say: Callable[[str], None] | None = None) -> None:
    """Load the query encoder (and the text tower for `text`) unless this process has it;
    `say` hears a line before (what loads, how long it takes) and the time it took after,
    so the first query's wait is not a silent one."""
    fresh = say is not None and not is_loaded(model, device)
    if fresh:
        estimate = LOAD_ESTIMATE_S.get(model.name)
        say(f"loading the model ({FAMILIES[model.name].label(model)} on {device}; "
            + (f"~{estimate} s the first time)..." if estimate else "the first time takes a while)..."))
    started = time.perf_counter()
    load_extractor(model, device)
    if text:
        load_text_encoder(model, device)
    if fresh:
        say(f"model loaded in {time.perf_counter() - started:.1f} s")


def encode_text(model: ModelSettings, device: str, text: str) -> tuple[np.ndarray, str]:
    encoder = load_text_encoder(model, device)
    return np.asarray(encoder.encode([text]), np.float32), encoder.description
