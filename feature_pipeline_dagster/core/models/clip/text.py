"""CLIP text queries: the family's own open_clip tokenizer and `encode_text`, on the very
model that embeds the frames (one load: the extractor keeps the whole open_clip model).

The tokenizer comes from the same place as the weights: a `local-dir` folder's
open_clip_config.json (its `hf_tokenizer_name`, if any, read from files in that folder),
the architecture's built-in config for a weights file or a pretrained tag. open_clip's
default tokenizer ships its vocabulary inside the package, so a classic CLIP answers text
queries offline once the weights are local.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pathlib import Path

import numpy as np
import torch

from feature_pipeline_dagster.core.errors import ModelError, one_line
from feature_pipeline_dagster.core.models.clip.model import open_clip_quiet
from feature_pipeline_dagster.core.models.weights import fetch_first_file
from feature_pipeline_dagster.core.models import load_extractor

if TYPE_CHECKING:
    from feature_pipeline_dagster.core.settings import ModelSettings  # annotations only: settings sits above models


def tokenizer_source(model: ModelSettings) -> str:
    """What `open_clip.get_tokenizer` is given for these settings."""
    if model.source == "folder" and Path(model.path).is_dir():
        return f"local-dir:{model.path}"
    if model.path.startswith("hf-hub:"):
        from open_clip.constants import HF_CONFIG_NAME

        repo = model.path.removeprefix("hf-hub:")
        config = fetch_first_file(model.path, repo, [HF_CONFIG_NAME], f"CLIP {model.arch}")
        return f"local-dir:{config.parent}"
    return model.arch


class ClipTextEncoder:
    """Text to L2-normalized vectors in the frames' space."""

    def __init__(self, clip_model, tokenizer, device: torch.device, description: str):
        self.model, self.tokenizer, self.torch_device = clip_model, tokenizer, device
        self.description = description

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> np.ndarray:
        tokens = self.tokenizer(texts).to(self.torch_device)
        features = self.model.encode_text(tokens)
        return torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()


def load_text(model: ModelSettings, device: str) -> ClipTextEncoder:
    import open_clip

    extractor = load_extractor(model, device)  # the same weights, loaded once per process
    if getattr(extractor.model, "encode_text", None) is None:
        raise ModelError(f"{extractor.description}: this CLIP model has no text tower")
    source = tokenizer_source(model)
    try:
        with open_clip_quiet():
            tokenizer = open_clip.get_tokenizer(source)
    except Exception as err:  # an HF tokenizer not in the folder nor the cache, offline
        raise ModelError(f"model.path {model.path}: cannot load the text tokenizer ({one_line(err)}); "
                         "the folder must hold the tokenizer files of its text_cfg.hf_tokenizer_name") from None
    return ClipTextEncoder(extractor.model, tokenizer, extractor.torch_device, extractor.description)
