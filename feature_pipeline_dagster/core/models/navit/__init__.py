"""The VL3-SigLIP-NaViT family: VideoLLaMA3's vision encoder through transformers'
native `VideoLlama3VisionModel`, one 1152-d row per patch of a per-frame grid.

`model.py` loads and embeds (torch); `weights.py` writes local folders (downloaded or
random). This declaration stays torch-free.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from feature_pipeline_dagster.core.config_keys import Key
from feature_pipeline_dagster.core.models import ModelFamily

if TYPE_CHECKING:
    from feature_pipeline_dagster.core.settings import ModelSettings

# 720p and 1080p frames give 24x42 = 1008 rows at merge_size 1; the checkpoint's own
# 16384 would give 4641 and 10549.
MAX_TOKENS_PER_FRAME = 1024


def _dimension(model: ModelSettings) -> int | None:
    folder_config = Path(model.path) / "config.json"
    if model.source == "folder" and folder_config.is_file():
        config = json.loads(folder_config.read_text())
        return config.get("hidden_size") or config.get("vision_config", {}).get("hidden_size")
    return 1152


FAMILY = ModelFamily(
    name="VL3-SigLIP-NaViT",
    module="feature_pipeline_dagster.core.models.navit.model",
    weights="feature_pipeline_dagster.core.models.navit.weights",
    row_fields=("frame_id", "timestamp_ms", "row_idx", "col_idx"),
    dimension=_dimension,
    label=lambda model: model.path,
    options={
        # A larger frame is scaled down to fit, so rows per frame stay bounded whatever the video.
        "max_tokens_per_frame": Key("the most rows (merged patches) one frame gives", MAX_TOKENS_PER_FRAME,
                                    kind=int, positive=True),
        "merge_size": Key("1: one row per 14x14 patch; 2: each 2x2 block of patches averaged into one row", 1,
                          kind=int, choices=(1, 2)),
    },
    patch_grid=True,
)
