"""CLIP frame vectors through open_clip.

Preprocessing runs batched on uint8 tensors on the run's device and reproduces
open_clip's own PIL `preprocess` (bicubic resize of the short side, center crop,
normalize): torch's antialiased uint8 resize, as torchvision's v2 transforms use it,
matches PIL where a float `interpolate` does not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import functools
import importlib
import logging
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from feature_pipeline_dagster.core.errors import ModelError, one_line
from feature_pipeline_dagster.core.batches import EmbeddingBatch, FrameBatch
from feature_pipeline_dagster.core.models.tensors import model_dtype, to_device, torch_device
from feature_pipeline_dagster.core.models.weights import fetch_first_file, labelled

if TYPE_CHECKING:
    from feature_pipeline_dagster.core.settings import ModelSettings  # annotations only: settings sits above models

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
    """Build the open_clip model the settings name, with its weights, on `device`.

    OpenAI's weights were trained with QuickGELU; loaded into the plain architecture
    they give wrong vectors without any error, so the tag's own metadata (or the
    folder's open_clip_config.json) decides unless `model.quick_gelu` says otherwise.

    Hub weights (a pretrained tag or `hf-hub:`) are fetched here, not by open_clip, whose
    download retries every candidate file with backoff: see `fetch_from_hub`.
    """
    with open_clip_quiet():
        return _create_open_clip(model, device)


def _create_open_clip(model: ModelSettings, device: str):
    import_open_clip(model)
    from open_clip.constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    path = model.path
    label = f"CLIP {model.arch}"
    try:
        if model.source == "folder":
            if Path(path).is_dir():
                folder = Path(path)
                weights = next((folder / n for n in (HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME) if (folder / n).exists()),
                               None)
                return build_with_weights(f"local-dir:{path}", weights, device)
            if not path.endswith(WEIGHT_SUFFIXES):
                raise ModelError(f"model.path {path}: expected a folder or a {'/'.join(WEIGHT_SUFFIXES)} file")
            return build_with_weights(model.arch, Path(path), device, pretrained=path,
                                      force_quick_gelu=bool(model.quick_gelu))
        if path.startswith("hf-hub:"):
            repo = path.removeprefix("hf-hub:")
            config = fetch_first_file(path, repo, [HF_CONFIG_NAME], label)
            weights = fetch_first_file(path, repo, [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME], label)
            if config.parent != weights.parent:
                raise ModelError(f"model.path {path}: cannot load {label}: the hub repository changed while "
                                 "downloading; run again")
            return build_with_weights(f"local-dir:{config.parent}", weights, device)
        quick_gelu = quick_gelu_for(model)
        checkpoint = tag_checkpoint(model)
        if checkpoint is None:  # a tag with a plain URL only: open_clip downloads it
            return import_open_clip(model).create_model(model.arch, pretrained=path, device=device,
                                                   force_quick_gelu=quick_gelu)
        return build_with_weights(model.arch, checkpoint, device, pretrained=str(checkpoint),
                                  force_quick_gelu=quick_gelu, force_preprocess_cfg=tag_preprocess_cfg(model))
    except ModelError:
        raise
    except Exception as err:  # open_clip reports missing files, bad checkpoints and network faults alike
        raise ModelError(f"model.path {path}: cannot load {label}: {one_line(err)}") from None


def build_with_weights(name: str, weights: Path | None, device: str, **kwargs):
    """open_clip's model for `name` with the `weights` file loaded, without paying for a
    random initialisation that the weights overwrite: building ViT-B-32 with its init
    took 0.9-4.7 s here (kaiming_uniform_ over 150M parameters, a loaded machine), without
    it 0.3 s. A safetensors file goes straight onto `device` and its tensors become the
    parameters (`assign`, no copy); anything else, or a file whose names or shapes need
    open_clip's conversions, goes through open_clip's own `load_checkpoint`."""
    import open_clip

    if weights is None:  # open_clip deals with a folder without weights as it always did
        return open_clip.create_model(name, device=device, **kwargs)
    with skipped_init():
        clip_model = open_clip.create_model(name, load_weights=False, device="cpu", **kwargs)
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            clip_model.load_state_dict(load_file(weights, device=str(torch_device(device))), assign=True)
            return clip_model.to(torch_device(device))  # the non-persistent buffers (attention masks)
        except RuntimeError:  # names or shapes open_clip converts (an older layout, another grid)
            pass
    open_clip.load_checkpoint(clip_model, str(weights))
    return clip_model.to(torch_device(device))


_INIT_LOCK = threading.Lock()


@contextmanager
def skipped_init():
    """torch.nn.init's in-place initialisers as no-ops while a model is built (the way
    transformers' `no_init_weights` does it, without importing transformers): the
    parameters are allocated but not filled. Module-global, so one build at a time."""
    names = [n for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")]
    with _INIT_LOCK:
        saved = {n: getattr(torch.nn.init, n) for n in names}
        for n in names:
            setattr(torch.nn.init, n, lambda tensor, *args, **kwargs: tensor)
        try:
            yield
        finally:
            for n, fn in saved.items():
                setattr(torch.nn.init, n, fn)


def import_open_clip(model: ModelSettings):
    """open_clip, without the transformers and timm imports its package init makes
    (through `coca_model` and `timm_model`: 0.8 s of CPU of its 4.4 s here) when the
    model's config names neither an HF text tower nor a timm vision tower
    (`hf_model_name`, `timm_model_name`): both are guarded, optional imports there.
    Unknown configs (an hf-hub repository not fetched yet) import them as usual.
    torch._dynamo waits for its first use (`_dynamo_on_first_use`)."""
    import sys

    if "open_clip" not in sys.modules and not _config_names_optional_towers(model):
        blocked = [m for m in ("transformers", "timm") if m not in sys.modules]
        for name in blocked:
            sys.modules[name] = None  # an ImportError for open_clip's guarded imports
        try:
            with _dynamo_on_first_use():
                importlib.import_module("open_clip")
        finally:
            for name in blocked:
                if name in sys.modules and sys.modules[name] is None:
                    del sys.modules[name]
    import open_clip

    return open_clip


@contextmanager
def _dynamo_on_first_use():
    """While open_clip imports: torchvision.ops, which its package init pulls in for one
    layer class, imports torch._dynamo (and sympy with it) for one function,
    `is_compile_supported`, that only its detection ops call. That import is 0.9 s of CPU of
    open_clip's 1.3 s here, on the critical path of every run's start-up (py-spy --gil: a
    quarter of a one-clip `run`). The name comes meanwhile from a stand-in module that
    imports the real function on its first call; the stand-in is gone when open_clip is
    imported, so torch._dynamo imports as usual for whoever needs it."""
    import sys
    import types

    name = "torch._dynamo.utils"
    if "torch._dynamo" in sys.modules or name in sys.modules:
        yield
        return

    def is_compile_supported(device_type):
        from torch._dynamo.utils import is_compile_supported as real

        return real(device_type)

    stand_in = types.ModuleType(name)
    stand_in.is_compile_supported = is_compile_supported
    sys.modules[name] = stand_in
    try:
        yield
    finally:
        if sys.modules.get(name) is stand_in:
            del sys.modules[name]


def _config_names_optional_towers(model: ModelSettings) -> bool:
    import importlib.util

    if model.source == "folder" and Path(model.path).is_dir():
        config = Path(model.path) / "open_clip_config.json"
    elif model.path.startswith("hf-hub:") or not (spec := importlib.util.find_spec("open_clip")):
        return True
    else:
        config = Path(spec.origin).parent / "model_configs" / f"{model.arch}.json"
    try:
        text = config.read_text()
    except OSError:
        return True
    return '"hf_model_name"' in text or '"timm_model_name"' in text


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
        mean = torch.tensor(cfg["mean"], device=device).view(1, 3, 1, 1)
        std = torch.tensor(cfg["std"], device=device).view(1, 3, 1, 1)
        self.scale, self.shift = 1.0 / (255.0 * std), -mean / std  # (x / 255 - mean) / std as x * scale + shift
        self.model = clip_model.to(device=device, dtype=dtype).eval()
        self.torch_device, self.dtype = device, dtype
        self.device = str(device)
        self.dim = int(clip_model.visual.output_dim)
        self.description = name

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 (N, H, W, 3) frames to the normalized (N, 3, S, S) input of the model. The
        normalization is one contiguous float copy scaled and shifted in place: 5.1 against
        11.7 ms for 16 frames of 320x240 as four out-of-place passes over the strided crop
        (values within 5e-7): 0.4 ms a frame, a third of the GPU stand-in model's own cost."""
        x = to_device(frames, self.torch_device).permute(0, 3, 1, 2)
        if self.resize_mode == "squash":
            x = resize_uint8(x, (self.size, self.size), self.bicubic)
        else:
            height, width = x.shape[-2:]
            short = min(height, width)  # to `size`, the long side in proportion, truncated (as torchvision)
            x = resize_uint8(x, (self.size if height == short else int(self.size * height / short),
                                 self.size if width == short else int(self.size * width / short)), self.bicubic)
            top, left = (int(round((n - self.size) / 2.0)) for n in x.shape[-2:])
            x = x[..., top:top + self.size, left:left + self.size]
        x = x.to(torch.float32, memory_format=torch.contiguous_format).mul_(self.scale).add_(self.shift)
        return x.to(self.dtype)

    @torch.inference_mode()
    def embed(self, batch: FrameBatch) -> EmbeddingBatch:
        features = self.model.encode_image(self.preprocess(batch.frames))
        features = torch.nn.functional.normalize(features.float(), dim=-1)
        return EmbeddingBatch(
            features.cpu().numpy(),
            {"frame_id": batch.frame_ids, "timestamp_ms": batch.timestamps_ms},
        )


@functools.cache
def _uint8_bilinear_kernels() -> bool:
    """Whether torch resizes uint8 bilinear natively here, where torchvision lets it: the
    machine's, asked once per process rather than at every batch."""
    import platform

    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") or platform.machine() in ("aarch64", "arm64")


def resize_uint8(x: torch.Tensor, size: tuple[int, int], bicubic: bool) -> torch.Tensor:
    """torchvision's v2 antialiased resize of uint8 (N, 3, H, W), on the torch op it wraps:
    uint8 natively on the CPU (PIL's result, where float interpolation is not), else through
    float32, clamped and rounded. torchvision's v2 module itself imports torch._dynamo (its
    `tv_tensors` decorate with `torch.compiler.disable`): 0.9 s of CPU at every run's first
    batch, on its start-up's critical path."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    native = x.device.type == "cpu" and (bicubic or _uint8_bilinear_kernels())
    y = torch.nn.functional.interpolate(x if native else x.float(), size=list(size),
                                        mode="bicubic" if bicubic else "bilinear", align_corners=False, antialias=True)
    return y if native else y.clamp_(0, 255).round_().to(torch.uint8)


def load_text(model: ModelSettings, device: str):
    """The text tower of the same model (core/models/clip/text.py)."""
    from feature_pipeline_dagster.core.models.clip.text import load_text as load

    return load(model, device)


import_code = import_open_clip  # what core/models' import_model_code imports ahead


def load(model: ModelSettings, device: str) -> ClipExtractor:
    target = torch_device(device)
    dtype = model_dtype(model.dtype, target)
    clip_model = create_open_clip(model, device=device)
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
