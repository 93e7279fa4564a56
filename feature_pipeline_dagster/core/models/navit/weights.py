"""Put VL3-SigLIP-NaViT weights in a local folder that `model.source: folder` loads:
downloaded from the hub, or random (for smoke runs and tests without a network).

The folder is laid out as the hub checkpoint DAMO-NLP-SG/VL3-SigLIP-NaViT is: its
remote-code config.json (model_type videollama3_vision_encoder), its
preprocessor_config.json and model.safetensors (bf16) under the remote model's own
parameter names. A random folder is written from that remote layout, not from the native
class, so loading it strictly into `VideoLlama3VisionModel` proves the names agree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import json
from pathlib import Path

from feature_pipeline_dagster.core.errors import ModelError
from feature_pipeline_dagster.core.models.weights import fetch_from_hub, mark_random

if TYPE_CHECKING:
    from feature_pipeline_dagster.core.settings import ModelSettings  # annotations only: settings sits above models

HUB_REPO = "DAMO-NLP-SG/VL3-SigLIP-NaViT"
LABEL = "VL3-SigLIP-NaViT"  # what names the model in messages
# What a download fetches: never the repository's remote code.
HUB_FILES = ["config.json", "preprocessor_config.json", "*.safetensors", "model.safetensors.index.json"]

# The hub checkpoint's config.json (remote code; we read it, never run it).
HUB_CONFIG = {
    "architectures": ["Videollama3VisionEncoderModel"],
    "attention_dropout": 0.0,
    "auto_map": {
        "AutoConfig": "configuration_videollama3_encoder.Videollama3VisionEncoderConfig",
        "AutoModel": "modeling_videollama3_encoder.Videollama3VisionEncoderModel",
    },
    "hidden_act": "gelu_pytorch_tanh",
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "layer_norm_eps": 1e-06,
    "model_type": "videollama3_vision_encoder",
    "num_attention_heads": 16,
    "num_channels": 3,
    "num_hidden_layers": 27,
    "patch_size": 14,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.46.3",
}

# The hub checkpoint's preprocessor_config.json.
HUB_PREPROCESSOR = {
    "auto_map": {
        "AutoImageProcessor": "image_processing_videollama3.Videollama3ImageProcessor",
        "AutoProcessor": "processing_videollama3.Videollama3Processor",
    },
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_processor_type": "Videollama3ImageProcessor",
    "image_std": [0.5, 0.5, 0.5],
    "max_tokens": 16384,
    "min_tokens": 16,
    "patch_size": 14,
    "processor_class": "Videollama3Processor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
}


def remote_parameter_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """The remote Videollama3VisionEncoderModel's state dict: names and shapes (its rotary
    inverse frequencies are a non-persistent buffer, so not in the checkpoint)."""
    d, ff, c, p = config["hidden_size"], config["intermediate_size"], config["num_channels"], config["patch_size"]
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.patch_embedding.weight": (d, c, p, p),
        "embeddings.patch_embedding.bias": (d,),
    }
    for i in range(config["num_hidden_layers"]):
        layer = f"encoder.layers.{i}"
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            shapes[f"{layer}.self_attn.{proj}.weight"] = (d, d)
            shapes[f"{layer}.self_attn.{proj}.bias"] = (d,)
        for norm in ("layer_norm1", "layer_norm2"):
            shapes[f"{layer}.{norm}.weight"] = (d,)
            shapes[f"{layer}.{norm}.bias"] = (d,)
        shapes[f"{layer}.mlp.fc1.weight"] = (ff, d)
        shapes[f"{layer}.mlp.fc1.bias"] = (ff,)
        shapes[f"{layer}.mlp.fc2.weight"] = (d, ff)
        shapes[f"{layer}.mlp.fc2.bias"] = (d,)
    shapes["post_layernorm.weight"] = (d,)
    shapes["post_layernorm.bias"] = (d,)
    return shapes


def make_random(model: ModelSettings, dest: Path, overrides: dict | None = None) -> Path:
    """A random-weight checkpoint of the hub's architecture (or of config.json `overrides`,
    such as a tiny hidden_size for tests; a "preprocessor" entry updates
    preprocessor_config.json)."""
    import torch
    from safetensors.torch import save_file

    overrides = dict(overrides or {})
    config = {**HUB_CONFIG, **{k: v for k, v in overrides.items() if k != "preprocessor"}}
    preprocessor = {**HUB_PREPROCESSOR, "patch_size": config["patch_size"], **overrides.get("preprocessor", {})}
    if config["hidden_size"] % config["num_attention_heads"]:
        raise ModelError(f"hidden_size {config['hidden_size']} is not a multiple of num_attention_heads "
                         f"{config['num_attention_heads']}")
    dtype = getattr(torch, config.get("torch_dtype", "bfloat16"))
    generator = torch.Generator().manual_seed(0)
    state = {}
    for name, shape in remote_parameter_shapes(config).items():
        if "norm" in name:
            tensor = torch.ones(shape) if name.endswith("weight") else torch.zeros(shape)
        elif name.endswith("bias"):
            tensor = torch.randn(shape, generator=generator) * 0.02
        else:
            fan_in = shape[1] * (shape[2] * shape[3] if len(shape) == 4 else 1)
            tensor = torch.randn(shape, generator=generator) / fan_in**0.5
        state[name] = tensor.to(dtype).contiguous()
    dest.mkdir(parents=True, exist_ok=True)
    save_file(state, str(dest / "model.safetensors"), metadata={"format": "pt"})
    (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (dest / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n")
    mark_random(dest)
    return dest


def download(model: ModelSettings, dest: Path) -> Path:
    """Fetch the configured hub checkpoint's config, preprocessor config and safetensors
    once, into a folder loaded offline afterwards (remote code is not fetched)."""
    if model.source == "folder":
        raise ModelError("model.source is 'folder': the weights are already local, nothing to download")
    return fetch_from_hub(model.path, HUB_FILES, dest, label=LABEL)
