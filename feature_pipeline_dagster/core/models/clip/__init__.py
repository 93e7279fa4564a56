"""The CLIP family: open_clip image towers, one vector per sampled frame.

`model.py` loads and embeds (torch); `weights.py` writes local folders (downloaded or
random). This declaration stays torch-free.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING

from feature_pipeline_dagster.core.config_keys import Key
from feature_pipeline_dagster.core.models import ModelFamily

if TYPE_CHECKING:
    from feature_pipeline_dagster.core.settings import ModelSettings


def _dimension(model: ModelSettings) -> int | None:
    folder_config = Path(model.path) / "open_clip_config.json"
    if model.source == "folder" and folder_config.is_file():
        return json.loads(folder_config.read_text())["model_cfg"]["embed_dim"]
    if model.path.startswith("hf-hub:"):
        return None  # known once the hub's config is fetched; checked at load
    spec = importlib.util.find_spec("open_clip")  # locates the package without importing torch
    arch_file = Path(next(iter(spec.submodule_search_locations))) / "model_configs" / f"{model.arch}.json"
    if not arch_file.is_file():
        raise LookupError("arch", f"unknown open_clip architecture {model.arch!r} (see open_clip.list_models())")
    return json.loads(arch_file.read_text())["embed_dim"]


FAMILY = ModelFamily(
    name="CLIP",
    module="feature_pipeline_dagster.core.models.clip.model",
    weights="feature_pipeline_dagster.core.models.clip.weights",
    row_fields=("frame_id", "timestamp_ms"),
    dimension=_dimension,
    label=lambda model: model.arch,
    options={
        "arch": Key("an open_clip architecture (open_clip.list_models())", "ViT-B-32", kind=str),
        # OpenAI's weights were trained with QuickGELU; loaded into the plain architecture
        # they silently give wrong vectors.
        "quick_gelu": Key("force QuickGELU on or off; none: the weights' own metadata decides", None, kind=bool),
    },
    text_tower=True,
)
