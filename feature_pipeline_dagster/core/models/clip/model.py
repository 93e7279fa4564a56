"""CLIP frame vectors through open_clip.

Preprocessing runs batched on uint8 tensors on the run's device and reproduces
open_clip's own PIL `preprocess` (bicubic resize of the short side, center crop,
normalize): torchvision's antialiased uint8 resize matches PIL where a float
`interpolate` does not.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from feature_pipeline_dagster.core.settings import ModelSettings
from feature_pipeline_dagster.core.errors import ModelError, one_line
from feature_pipeline_dagster.core.engine.batches import EmbeddingBatch, FrameBatch
from feature_pipeline_dagster.core.models.devices import model_dtype, to_device, torch_device
from feature_pipeline_dagster.core.models.weights import fetch_first_file, labelled

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@contextmanager
def open_clip_quiet():
    """open_clip logs on the root logger through `logging.info()`, which installs a root
    handler (logging.basicConfig) as a side effect: every later warning of the process
    then printed as `WARNING:name:message`. Its lines are muted and that handler removed."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    root.setLevel(logging.CRITICAL)  # open_clip logs its errors there too; ours say them in one line
    try:
        yield
    finally:
        root.setLevel(level)
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)


def create_open_clip(model: ModelSettings, device: str = "cpu"):
    """Build the open_clip model the settings name, with its weights.

    OpenAI's weights were trained with QuickGELU; loaded into the plain architecture
    they give wrong vectors without any error, so the tag's own metadata (or the
    folder's open_clip_config.json) decides unless `model.quick_gelu` says otherwise.

    Hub weights (a pretrained tag or `hf-hub:`) are fetched here, not by open_clip, whose
    download retries every candidate file with backoff: see `fetch_from_hub`.
    """
    with open_clip_quiet():
        return _create_open_clip(model, device)


def _create_open_clip(model: ModelSettings, device: str):
    import open_clip
    from open_clip.constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    path = model.path
    label = f"CLIP {model.arch}"
    try:
        if model.source == "folder":
            if Path(path).is_dir():
                return open_clip.create_model(f"local-dir:{path}", device=device)
            if not path.endswith(WEIGHT_SUFFIXES):
                raise ModelError(f"model.path {path}: expected a folder or a {'/'.join(WEIGHT_SUFFIXES)} file")
            return open_clip.create_model(
                model.arch, pretrained=path, device=device, force_quick_gelu=bool(model.quick_gelu)
            )
        if path.startswith("hf-hub:"):
            repo = path.removeprefix("hf-hub:")
            config = fetch_first_file(path, repo, [HF_CONFIG_NAME], label)
            weights = fetch_first_file(path, repo, [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME], label)
            if config.parent != weights.parent:
                raise ModelError(f"model.path {path}: cannot load {label}: the hub repository changed while "
                                 "downloading; run again")
            return open_clip.create_model(f"local-dir:{config.parent}", device=device)
        quick_gelu = quick_gelu_for(model)
        checkpoint = tag_checkpoint(model)
        if checkpoint is None:  # a tag with a plain URL only: open_clip downloads it
            return open_clip.create_model(model.arch, pretrained=path, device=device, force_quick_gelu=quick_gelu)
        return open_clip.create_model(model.arch, pretrained=str(checkpoint), device=device,
                                      force_quick_gelu=quick_gelu, force_preprocess_cfg=tag_preprocess_cfg(model))
    except ModelError:
        raise
    except Exception as err:  # open_clip reports missing files, bad checkpoints and network faults alike
        raise ModelError(f"model.path {path}: cannot load {label}: {one_line(err)}") from None


def tag_checkpoint(model: ModelSettings) -> Path | None:
    """The weights file of a pretrained tag from its hub repository (or the local cache of
    it): its safetensors alternative first, as open_clip prefers; None for a URL-only tag."""
    import os

    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
    from open_clip.pretrained import get_pretrained_cfg

    hub = get_pretrained_cfg(model.arch, model.path).get("hf_hub", "")
    if not hub:
        return None
    repo, filename = os.path.split(hub)  # "org/repo/" names the repository's default file
    filename = filename or HF_WEIGHTS_NAME
    if filename == HF_WEIGHTS_NAME:
        candidates = [HF_SAFE_WEIGHTS_NAME, filename]
    elif filename.endswith((".bin", ".pth")):
        candidates = [filename[:-4] + ".safetensors", filename]
    else:
        candidates = [filename]
    return fetch_first_file(model.path, repo, candidates, f"CLIP {model.arch}")


def tag_preprocess_cfg(model: ModelSettings) -> dict:
    """What loading by tag would set from the tag's metadata (mean, std, interpolation,
    resize mode), for a model built from the tag's weights file: the size stays the model's."""
    from open_clip.pretrained import get_pretrained_cfg
    from open_clip.transform import merge_preprocess_dict

    tag = get_pretrained_cfg(model.arch, model.path)
    return {k: v for k, v in merge_preprocess_dict({}, tag).items() if k != "size"}


class ClipExtractor:
    """One open_clip image tower on one device; `embed` gives L2-normalized vectors."""

    def __init__(self, clip_model, device: torch.device, dtype: torch.dtype, name: str):
        from open_clip.model import get_model_preprocess_cfg

        cfg = get_model_preprocess_cfg(clip_model)
        size = cfg.get("size", 224)
        self.size = size if isinstance(size, int) else size[0]
        if not isinstance(size, int) and size[0] != size[1]:
            raise ModelError(f"{name}: non-square input size {size} is not supported")
        self.resize_mode = cfg.get("resize_mode", "shortest")
        if self.resize_mode not in ("shortest", "squash"):
            raise ModelError(f"{name}: resize_mode {self.resize_mode!r} is not supported")
        self.bicubic = cfg.get("interpolation", "bicubic") != "bilinear"
        self.mean = torch.tensor(cfg["mean"], device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg["std"], device=device).view(1, 3, 1, 1)
        self.model = clip_model.to(device=device, dtype=dtype).eval()
        self.torch_device, self.dtype = device, dtype
        self.device = str(device)
        self.dim = int(clip_model.visual.output_dim)
        self.description = name

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 (N, H, W, 3) frames to the normalized (N, 3, S, S) input of the model."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        mode = InterpolationMode.BICUBIC if self.bicubic else InterpolationMode.BILINEAR
        x = to_device(frames, self.torch_device).permute(0, 3, 1, 2)
        if self.resize_mode == "squash":
            x = F.resize(x, [self.size, self.size], interpolation=mode, antialias=True)
        else:
            x = F.resize(x, self.size, interpolation=mode, antialias=True)
            x = F.center_crop(x, [self.size, self.size])
        x = (x.float() / 255.0 - self.mean) / self.std
        return x.to(self.dtype)

    @torch.inference_mode()
    def embed(self, batch: FrameBatch) -> EmbeddingBatch:
        features = self.model.encode_image(self.preprocess(batch.frames))
        features = torch.nn.functional.normalize(features.float(), dim=-1)
        return EmbeddingBatch(
            features.cpu().numpy(),
            {"frame_id": batch.frame_ids, "timestamp_ms": batch.timestamps_ms},
        )


def load_text(model: ModelSettings, device: str):
    """The text tower of the same model (core/models/clip/text.py)."""
    from feature_pipeline_dagster.core.models.clip.text import load_text as load

    return load(model, device)


def load(model: ModelSettings, device: str) -> ClipExtractor:
    target = torch_device(device)
    dtype = model_dtype(model.dtype, target)
    clip_model = create_open_clip(model, device="cpu")
    name = labelled(f"CLIP {model.arch} ({model.path})", Path(model.path), model.path)
    return ClipExtractor(clip_model, target, dtype, name)


def quick_gelu_for(model: ModelSettings) -> bool:
    """Whether a pretrained tag's weights need QuickGELU: `model.quick_gelu` if set,
    else what open_clip's table of tags records (True for OpenAI's weights)."""
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    tag = get_pretrained_cfg(model.arch, model.path)
    if not tag:
        known = ", ".join(open_clip.list_pretrained_tags_by_model(model.arch)) or "none"
        raise ModelError(f"model.path: {model.path!r} is not a pretrained tag of {model.arch} (known: {known})")
    return bool(tag.get("quick_gelu", False) if model.quick_gelu is None else model.quick_gelu)
