"""What every family's weights share: the random-weights marker and the hub download.

A random-weight folder is real architecture with meaningless vectors (smoke runs and
tests on machines without a network): it carries a marker file, and every model loaded
from it says so in its description and in a warning.
"""

from __future__ import annotations

import logging
from pathlib import Path

from feature_pipeline_dagster.core.errors import ModelError, one_line

log = logging.getLogger("feature_pipeline.models")
RANDOM_NOTICE = "RANDOM WEIGHTS: this model gives meaningless vectors. For smoke runs and tests only."
RANDOM_MARKER = "RANDOM_WEIGHTS.txt"


def mark_random(folder: Path) -> None:
    (folder / RANDOM_MARKER).write_text(RANDOM_NOTICE + "\n")


def labelled(description: str, folder: Path, model_path: str) -> str:
    """The model's description, loudly labelled (and a warning logged) if its weights are random."""
    if not (folder / RANDOM_MARKER).exists():
        return description
    log.warning("%s: %s", model_path, "RANDOM WEIGHTS: this model gives meaningless vectors")
    return description + " [RANDOM WEIGHTS: meaningless vectors]"


def fetch_from_hub(model_path: str, patterns: list[str], dest: Path | None = None, hint: str = "") -> Path:
    """The hub repository `model_path` names (`hf-hub:` optional), only the files matching
    `patterns` (never remote code), into `dest` or the Hugging Face cache."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model_path.removeprefix("hf-hub:"), local_dir=dest, allow_patterns=patterns))
    except Exception as err:
        raise ModelError(f"model.path {model_path}: download failed ({one_line(err)}); is the hub reachable?{hint}") from None
