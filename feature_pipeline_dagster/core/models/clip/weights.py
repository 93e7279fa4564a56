"""Put CLIP weights in a local folder that `model.source: folder` loads: downloaded
from a hub, or random (for smoke runs and tests on machines without a network).

The folder is open_clip's own `local-dir` layout: open_clip_config.json (model_cfg,
with quick_gelu recorded, and preprocess_cfg) beside open_clip_model.safetensors,
so loading it never unpickles anything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import json
from dataclasses import asdict
from pathlib import Path

from feature_pipeline_dagster.core.errors import ModelError
from feature_pipeline_dagster.core.models.weights import RANDOM_NOTICE, fetch_from_hub, mark_random

if TYPE_CHECKING:
    from feature_pipeline_dagster.core.settings import ModelSettings  # annotations only: settings sits above models


def save_folder(clip_model, model_cfg: dict, dest: Path, random: bool = False) -> Path:
    from open_clip.model import get_model_preprocess_cfg
    from safetensors.torch import save_file

    dest.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": model_cfg, "preprocess_cfg": _jsonable(get_model_preprocess_cfg(clip_model))}
    if random:
        config["random_weights"] = RANDOM_NOTICE
        mark_random(dest)
    state = {k: v.contiguous() for k, v in clip_model.state_dict().items()}
    save_file(state, str(dest / "open_clip_model.safetensors"))
    (dest / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    return dest


def make_random(model: ModelSettings, dest: Path, model_cfg: dict | None = None) -> Path:
    """A random-weight model of `model.arch` (or of the given open_clip model_cfg)."""
    import open_clip
    import torch
    from open_clip.model import CLIP, CustomTextCLIP, set_model_preprocess_cfg
    from open_clip.transform import PreprocessCfg

    cfg = model_cfg or open_clip.get_model_config(model.arch)
    if cfg is None:
        raise ModelError(f"model.arch: unknown open_clip architecture {model.arch!r}")
    torch.manual_seed(0)
    kwargs = {k: v for k, v in cfg.items() if k != "custom_text"}
    clip_model = (CustomTextCLIP if cfg.get("custom_text") else CLIP)(**kwargs)
    set_model_preprocess_cfg(clip_model, asdict(PreprocessCfg(size=clip_model.visual.image_size)))
    return save_folder(clip_model, cfg, dest, random=True)


def download(model: ModelSettings, dest: Path) -> Path:
    """Fetch the configured hub weights once, into a folder loaded offline afterwards."""
    import open_clip

    from feature_pipeline_dagster.core.models.clip.model import create_open_clip, quick_gelu_for

    if model.source == "folder":
        raise ModelError("model.source is 'folder': the weights are already local, nothing to download")
    if model.path.startswith("hf-hub:"):
        # *.model: a SentencePiece tokenizer (text queries, core/models/clip/text.py)
        return fetch_from_hub(model.path, ["open_clip_config.json", "*.safetensors", "*.json", "*.txt", "*.model"],
                              dest, label=f"CLIP {model.arch}")
    clip_model = create_open_clip(model)
    cfg = open_clip.get_model_config(model.arch)
    cfg["quick_gelu"] = quick_gelu_for(model)
    save_folder(clip_model, cfg, dest)
    if cfg.get("text_cfg", {}).get("hf_tokenizer_name"):  # an HF tokenizer: its files beside the weights,
        open_clip.get_tokenizer(model.arch).tokenizer.save_pretrained(str(dest))  # so text queries run offline
    return dest


def _jsonable(cfg: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}
