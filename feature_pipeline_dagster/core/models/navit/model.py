"""VL3-SigLIP-NaViT patch vectors through transformers' native `VideoLlama3VisionModel`.

The hub checkpoint (DAMO-NLP-SG/VL3-SigLIP-NaViT) ships remote code and a config of its
own `model_type` (videollama3_vision_encoder). Its weights carry the native class's
parameter names, so we map its config.json into a `VideoLlama3VisionConfig`, load the
safetensors strictly (no missing, no unexpected keys) and never run remote code.

Preprocessing equals transformers' `VideoLlama3ImageProcessorPil` called on one frame
with explicit bounds: min/max pixels = min_tokens/max_tokens x (patch_size x merge_size)^2
(as the checkpoint's own processor computes them), PIL bicubic resize to multiples of
patch_size x merge_size, rescale, normalize. Unlike the checkpoint's processor, which shares
one token budget among all images of a call, every frame has its own budget
(`model.max_tokens_per_frame`), so a frame's grid never depends on its batch.

Rows are the model's raw output (post-layernorm hidden states after the merge), not
L2-normalized: that is what the seed stored and what the model emits; the collection's
COSINE index normalizes at search time, and the norm stays available to whoever wants it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from feature_pipeline_dagster.core.errors import ModelError, VideoError, one_line
from feature_pipeline_dagster.core.batches import EmbeddingBatch, FrameBatch
from feature_pipeline_dagster.core.models.tensors import model_dtype, to_device, torch_device
from feature_pipeline_dagster.core.models.navit.weights import HUB_FILES, LABEL
from feature_pipeline_dagster.core.models.weights import fetch_from_hub, labelled

if TYPE_CHECKING:
    from feature_pipeline_dagster.core.settings import ModelSettings  # annotations only: settings sits above models


# model_type of the hub checkpoint's (remote) config, and of the native config.
MODEL_TYPES = ("videollama3_vision_encoder", "video_llama_3_vision")
# The remote config's architecture fields, which the native config takes as they are.
CONFIG_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_channels", "patch_size", "hidden_act", "layer_norm_eps", "attention_dropout")
MAX_ASPECT_RATIO = 200  # beyond this the reference processor refuses an image


@dataclass(frozen=True)
class Preprocessing:
    """What the checkpoint's preprocessor_config.json says, plus our per-frame bounds."""

    patch_size: int
    merge_size: int
    min_tokens: int
    max_tokens: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    rescale_factor: float
    resample: int  # a PIL resampling filter (3 = bicubic)

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """The reference processor's `smart_resize` with this frame's own bounds: sides are
        multiples of `factor`, area within [min_tokens, max_tokens] x factor^2."""
        factor = self.factor
        min_pixels, max_pixels = self.min_tokens * factor**2, self.max_tokens * factor**2
        if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
            raise VideoError(f"frame of {width}x{height}: aspect ratio over {MAX_ASPECT_RATIO} is not supported")
        h_bar = round(height / factor) * factor
        w_bar = round(width / factor) * factor
        if h_bar * w_bar > max_pixels:
            beta = math.sqrt((height * width) / max_pixels)
            h_bar = max(factor, math.floor(height / beta / factor) * factor)
            w_bar = max(factor, math.floor(width / beta / factor) * factor)
        elif h_bar * w_bar < min_pixels:
            beta = math.sqrt(min_pixels / (height * width))
            h_bar = math.ceil(height * beta / factor) * factor
            w_bar = math.ceil(width * beta / factor) * factor
        return h_bar, w_bar

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """(rows, cols) of the rows a frame of this size gives: row_idx < rows, col_idx < cols."""
        h, w = self.resized_size(height, width)
        return h // self.factor, w // self.factor


def max_grid_side(max_tokens_per_frame: int, min_tokens: int = 16) -> int:
    """An upper bound on rows or cols of any frame's grid (so row_idx, col_idx < this),
    whatever its size: a side is longest at the extreme aspect ratio the processor accepts
    (200:1), where it stays under sqrt(300 x tokens) + 2. A video's own grid is `grid()`."""
    return math.isqrt(3 * MAX_ASPECT_RATIO // 2 * max(max_tokens_per_frame, min_tokens)) + 2


class NavitExtractor:
    """One VideoLlama3VisionModel on one device; `embed` gives one row per (merged) patch."""

    def __init__(self, model, prep: Preprocessing, device: torch.device, name: str):
        self.model = model.eval()
        self.prep = prep
        self.torch_device = device
        self.device = str(device)
        self.dim = int(model.config.hidden_size)
        self.description = name
        self.mean = torch.tensor(prep.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(prep.std, device=device).view(1, 3, 1, 1)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """(rows, cols) for frames of this size: every frame of a video has the same grid,
        so the largest row_idx/col_idx (rows-1, cols-1) is known before the first frame."""
        return self.prep.grid(height, width)

    def preprocess(self, frames: np.ndarray) -> tuple[torch.Tensor, int, int]:
        """uint8 (N, H, W, 3) frames to the model's flat patches (N*gh*gw, 3*p*p), with the
        patch grid (gh, gw) before merging. Patches of a merge block are adjacent, as the
        reference's patchify lays them out."""
        from PIL import Image

        p, m = self.prep.patch_size, self.prep.merge_size
        if not isinstance(frames, np.ndarray):  # nvdec's CUDA frames: the PIL resize (the reference's) needs them on the host
            frames = frames.cpu().numpy()
        height, width = frames.shape[1:3]
        h, w = self.prep.resized_size(height, width)
        if (h, w) != (height, width):
            frames = np.stack([
                np.asarray(Image.fromarray(f).resize((w, h), resample=self.prep.resample)) for f in frames
            ])
        x = to_device(np.ascontiguousarray(frames), self.torch_device)
        x = x.permute(0, 3, 1, 2).float() * self.prep.rescale_factor
        x = (x - self.mean) / self.std
        n, c = x.shape[:2]
        gh, gw = h // p, w // p
        x = x.reshape(n, c, gh // m, m, p, gw // m, m, p).permute(0, 2, 5, 3, 6, 1, 4, 7)
        return x.reshape(n * gh * gw, c * p * p), gh, gw

    @torch.inference_mode()
    def embed(self, batch: FrameBatch) -> EmbeddingBatch:
        """One variable-length forward for the whole batch: grid_thw has t=1 per frame, so a
        frame attends only to its own patches and gives the same rows alone or in a batch."""
        n, m = len(batch), self.prep.merge_size
        pixels, gh, gw = self.preprocess(batch.frames)
        grid_thw = torch.tensor([[1, gh, gw]] * n, device=self.torch_device)
        merge_sizes = torch.full((n,), m, dtype=torch.long, device=self.torch_device)
        out = self.model(pixel_values=pixels, grid_thw=grid_thw, merge_sizes=merge_sizes).last_hidden_state
        rows, cols = gh // m, gw // m  # the model emits each frame's merged grid in raster order
        per_frame = rows * cols
        cells = np.arange(per_frame)
        return EmbeddingBatch(
            out.float().cpu().numpy(),
            {
                "frame_id": np.repeat(batch.frame_ids, per_frame),
                "timestamp_ms": np.repeat(batch.timestamps_ms, per_frame),
                "row_idx": np.tile(cells // cols, n).astype(np.int32),
                "col_idx": np.tile(cells % cols, n).astype(np.int32),
            },
        )


def native_config(folder: Path, attn_implementation: str = "sdpa"):
    """The folder's config.json (the hub's remote format or the native one) as a
    `VideoLlama3VisionConfig`."""
    from transformers import VideoLlama3VisionConfig

    raw = _read_json(folder / "config.json")
    if raw.get("model_type") not in MODEL_TYPES:
        raise ModelError(f"{folder / 'config.json'}: model_type {raw.get('model_type')!r} is not a VL3-SigLIP-NaViT "
                         f"vision encoder (expected {' or '.join(MODEL_TYPES)})")
    missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "patch_size") if k not in raw]
    if missing:
        raise ModelError(f"{folder / 'config.json'}: missing {', '.join(missing)}")
    fields = {k: raw[k] for k in CONFIG_FIELDS if k in raw}
    if "rope_parameters" in raw:
        fields["rope_parameters"] = raw["rope_parameters"]
    try:
        return VideoLlama3VisionConfig(**fields, attn_implementation=attn_implementation)
    except Exception as err:  # the native config validates types and values itself
        raise ModelError(f"{folder / 'config.json'}: not a valid vision encoder config ({one_line(err)})") from None


def read_preprocessing(folder: Path, model: ModelSettings, patch_size: int) -> Preprocessing:
    """preprocessor_config.json of the checkpoint, with our per-frame token cap and merge."""
    raw = _read_json(folder / "preprocessor_config.json")
    if raw.get("patch_size", patch_size) != patch_size:
        raise ModelError(f"{folder / 'preprocessor_config.json'}: patch_size {raw['patch_size']} "
                         f"differs from config.json's {patch_size}")
    mean, std = raw.get("image_mean", [0.5] * 3), raw.get("image_std", [0.5] * 3)
    return Preprocessing(
        patch_size=patch_size,
        merge_size=model.merge_size,
        min_tokens=int(raw.get("min_tokens", 16)),
        max_tokens=model.max_tokens_per_frame,
        mean=tuple(float(v) for v in (mean if isinstance(mean, list) else [mean] * 3)),
        std=tuple(float(v) for v in (std if isinstance(std, list) else [std] * 3)),
        rescale_factor=float(raw.get("rescale_factor", 1 / 255)) if raw.get("do_rescale", True) else 1.0,
        resample=int(raw.get("resample", 3)),
    )


def load_native_model(folder: Path, dtype: torch.dtype, attn_implementation: str = "sdpa"):
    """`VideoLlama3VisionModel.from_pretrained` on the folder, refusing any missing,
    unexpected or mismatched key: a checkpoint that does not fit is an error, not noise."""
    from transformers import VideoLlama3VisionModel
    from transformers.utils import logging as transformers_logging

    config = native_config(folder, attn_implementation)
    transformers_logging.disable_progress_bar()  # a bar per load clutters run logs
    try:
        model, info = VideoLlama3VisionModel.from_pretrained(
            str(folder), config=config, dtype=dtype, output_loading_info=True, local_files_only=True,
            use_safetensors=True,  # never unpickle a checkpoint
        )
    except Exception as err:
        raise ModelError(f"{folder}: cannot load VL3-SigLIP-NaViT weights: {one_line(err)}") from None
    problems = {k: sorted(info.get(k) or []) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    problems = {k: v for k, v in problems.items() if v}
    if problems:
        listed = "; ".join(f"{k.replace('_', ' ')}: {', '.join(map(str, v[:5]))}{' ...' if len(v) > 5 else ''}"
                           for k, v in problems.items())
        raise ModelError(f"{folder}: weights do not fit VideoLlama3VisionModel ({listed})")
    return model


def resolve_folder(model: ModelSettings) -> Path:
    """The local folder of the checkpoint: `source: folder` as it is; `source: huggingface`
    fetched once into the Hugging Face cache (config, preprocessor config, safetensors),
    or the cache's copy when the hub cannot be reached (see `fetch_from_hub`)."""
    if model.source == "folder":
        folder = Path(model.path)
        if not folder.is_dir():
            raise ModelError(f"model.path {model.path}: expected a folder holding config.json, "
                             "preprocessor_config.json and model.safetensors")
        return folder
    return fetch_from_hub(model.path, HUB_FILES, label=LABEL)


def import_code(model: ModelSettings) -> None:
    """What `load` imports from transformers, ahead (core/models' import_model_code)."""
    import transformers

    transformers.VideoLlama3VisionModel  # noqa: B018 - transformers imports a model's module on first access


def load(model: ModelSettings, device: str) -> NavitExtractor:
    target = torch_device(device)
    dtype = model_dtype(model.dtype, target)
    folder = resolve_folder(model)
    navit = load_native_model(folder, dtype, _attn_implementation(target, dtype)).to(target)
    prep = read_preprocessing(folder, model, int(navit.config.patch_size))
    name = (f"VL3-SigLIP-NaViT ({model.path}, merge_size {prep.merge_size}, "
            f"<= {prep.max_tokens} rows/frame, {str(dtype).removeprefix('torch.')})")
    return NavitExtractor(navit, prep, target, labelled(name, folder, model.path))


def _attn_implementation(device: torch.device, dtype: torch.dtype) -> str:
    """flash-attention 2 (true variable-length kernels) on CUDA in half precision when it
    is installed; else SDPA, which the native model runs frame by frame."""
    if device.type == "cuda" and dtype in (torch.bfloat16, torch.float16):
        import importlib.util

        if importlib.util.find_spec("flash_attn") is not None:
            return "flash_attention_2"
    return "sdpa"


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{path}: missing (a VL3-SigLIP-NaViT folder holds config.json, "
                         "preprocessor_config.json and model.safetensors)") from None
    except (OSError, ValueError) as err:
        raise ModelError(f"{path}: unreadable ({one_line(err)})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return data
