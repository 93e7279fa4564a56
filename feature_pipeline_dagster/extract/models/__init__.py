"""Model families behind one small protocol, keyed by `model.name`.

This module stays free of torch: the config validates dimensions and the sensor loads
the code location without paying for it. A family's module is imported on first load.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

if TYPE_CHECKING:
    from feature_pipeline_dagster.config import ModelSettings
    from feature_pipeline_dagster.extract.batches import EmbeddingBatch, FrameBatch


class Extractor(Protocol):
    """A model loaded on one device that embeds batches of uint8 RGB frames."""

    device: str
    dim: int
    description: str

    def embed(self, batch: FrameBatch) -> EmbeddingBatch: ...


@dataclass(frozen=True)
class ModelFamily:
    module: str  # imported lazily; provides load(settings, device) -> Extractor
    row_fields: tuple[str, ...]  # scalar columns each row carries beside video_path
    expected_dim: Callable[[ModelSettings], int | None]  # raises LookupError for a bad arch
    weights: str = ""  # module with make_random(model, dest) and download(model, dest)
    settings_keys: tuple[str, ...] = ()  # family-only ModelSettings fields (part of its code version)


def _clip_dim(model: ModelSettings) -> int | None:
    folder_config = Path(model.path) / "open_clip_config.json"
    if model.source == "folder" and folder_config.is_file():
        return json.loads(folder_config.read_text())["model_cfg"]["embed_dim"]
    if model.path.startswith("hf-hub:"):
        return None  # known once the hub's config is fetched; checked at load
    spec = importlib.util.find_spec("open_clip")  # locates the package without importing torch
    arch_file = Path(next(iter(spec.submodule_search_locations))) / "model_configs" / f"{model.arch}.json"
    if not arch_file.is_file():
        raise LookupError(f"unknown open_clip architecture {model.arch!r} (see open_clip.list_models())")
    return json.loads(arch_file.read_text())["embed_dim"]


def _navit_dim(model: ModelSettings) -> int | None:
    folder_config = Path(model.path) / "config.json"
    if model.source == "folder" and folder_config.is_file():
        config = json.loads(folder_config.read_text())
        return config.get("hidden_size") or config.get("vision_config", {}).get("hidden_size")
    return 1152


FAMILIES: dict[str, ModelFamily] = {
    "CLIP": ModelFamily(
        "feature_pipeline_dagster.extract.models.clip",
        ("frame_id", "timestamp_ms"),
        _clip_dim,
        weights="feature_pipeline_dagster.extract.models.clip_weights",
        settings_keys=("arch", "quick_gelu"),
    ),
    "VL3-SigLIP-NaViT": ModelFamily(
        "feature_pipeline_dagster.extract.models.navit",
        ("frame_id", "timestamp_ms", "row_idx", "col_idx"),
        _navit_dim,
        weights="feature_pipeline_dagster.extract.models.navit_weights",
        settings_keys=("max_tokens_per_frame", "merge_size"),
    ),
}


@functools.lru_cache(maxsize=2)
def load_extractor(model: ModelSettings, device: str) -> Extractor:
    """Load once per process and device: in-process runs of many videos share it."""
    module = importlib.import_module(FAMILIES[model.name].module)
    return module.load(model, device)
