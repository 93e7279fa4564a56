"""Model families behind one small protocol, keyed by `model.name`.

Each family is one folder (`clip/`, `navit/`) whose `__init__` declares it: its own
settings keys, vector dimension, row fields and capabilities. The settings parser, the
code version and the engine ask this registry and never name a family. Nothing here
imports torch: the config validates dimensions and the sensor loads the code location
without paying for it; a family's model module is imported on first load.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

from feature_pipeline_dagster.core.config_keys import Key
from feature_pipeline_dagster.core.errors import ModelError

if TYPE_CHECKING:
    from feature_pipeline_dagster.core.batches import EmbeddingBatch, FrameBatch
    from feature_pipeline_dagster.core.settings import ModelSettings, Settings

PREPROCESSING_VERSION = "1"  # bump when preprocessing changes what a model sees


class Extractor(Protocol):
    """A model loaded on one device that embeds batches of uint8 RGB frames."""

    device: str
    dim: int
    description: str

    def embed(self, batch: FrameBatch) -> EmbeddingBatch: ...


class PatchExtractor(Extractor, Protocol):
    """A family with `patch_grid`: one row per patch of a per-frame grid."""

    def grid(self, height: int, width: int) -> tuple[int, int]: ...


class TextEncoder(Protocol):
    """A family with `text_tower`: text queries into the frames' vector space."""

    description: str

    def encode(self, texts: list[str]) -> Any: ...  # float32 (N, dim), L2-normalized


@dataclass(frozen=True)
class ModelFamily:
    name: str
    module: str  # imported lazily; provides load(settings, device) -> Extractor (and may provide import_code)
    weights: str  # imported lazily; provides make_random(model, dest) and download(model, dest)
    row_fields: tuple[str, ...]  # scalar columns each row carries beside video_path
    # The vector dimension the settings give, or None when known only at load;
    # raises LookupError(key, message) for a value of that key that names no model.
    dimension: Callable[[ModelSettings], int | None]
    label: Callable[[ModelSettings], str]  # what names the model in messages (arch, path)
    # Its own `model.*` keys (each with its `kind`), in the reference and the code version.
    options: dict[str, Key] = field(default_factory=dict)
    patch_grid: bool = False  # capability: the extractor is a PatchExtractor
    text_tower: bool = False  # capability: the model module's load_text(settings, device) embeds text queries

    def check_columns(self, batch: EmbeddingBatch) -> None:
        """The columns `embed` emitted are the row fields this family declares."""
        if set(batch.columns) != set(self.row_fields):
            raise ModelError(f"model {self.name} emitted columns {sorted(batch.columns)} but declares "
                             f"row fields {sorted(self.row_fields)}")


def _families() -> dict[str, ModelFamily]:
    from feature_pipeline_dagster.core.models.clip import FAMILY as CLIP
    from feature_pipeline_dagster.core.models.navit import FAMILY as NAVIT

    return {family.name: family for family in (CLIP, NAVIT)}


FAMILIES: dict[str, ModelFamily] = _families()


def option_owners(key: str) -> list[str]:
    """The families that take `model.<key>`."""
    return [name for name, family in FAMILIES.items() if key in family.options]


_loaded: dict[tuple, Extractor] = {}
_loading: dict[tuple, threading.Lock] = {}
_preload_failed: dict[tuple, Exception] = {}
_registry_lock = threading.Lock()


def load_extractor(model: ModelSettings, device: str) -> Extractor:
    """Load once per process and device: every run of the process shares it (a CLI `run`
    and its workers keep it loaded across their runs). A call while `preload` is loading
    the same model waits for that load instead of starting another."""
    return _load(model, device, keep_failure=False)


def is_loaded(model: ModelSettings, device: str) -> bool:
    """Whether this process holds the model on `device` already (no wait to use it)."""
    return (model, device) in _loaded


def preload(model: ModelSettings, device: str) -> None:
    """Start loading the model in a background thread, so the imports and weights (3 s
    for ViT-B-32 on a CPU here) overlap what a process does before its first batch: the
    Dagster instance, the Lite server start, the ledger read, the run's set-up. A failure
    is kept for the next `load_extractor` call to raise (the engine's, which says why), so
    a model that cannot load is tried once per run, not twice. A no-op for a model this
    process has loaded, is loading, or failed to load (its failure kept for the engine)."""
    key = (model, device)
    with _registry_lock:
        lock = _loading.get(key)
        if key in _loaded or key in _preload_failed or (lock is not None and lock.locked()):
            return

    def load() -> None:
        try:
            _load(model, device, keep_failure=True)
        except Exception:  # kept: raised by the next load_extractor call
            pass

    threading.Thread(target=load, name="model-preload", daemon=True).start()


def _load(model: ModelSettings, device: str, keep_failure: bool) -> Extractor:
    key = (model, device)
    with _registry_lock:
        lock = _loading.setdefault(key, threading.Lock())
    with lock:
        if (failure := _preload_failed.pop(key, None)) is not None:
            raise failure
        if key not in _loaded:
            module = _torch_module(FAMILIES[model.name].module)
            try:
                extractor = module.load(model, device)
            except Exception as err:
                if keep_failure:
                    _preload_failed[key] = err
                raise
            with _registry_lock:
                for old in [k for k in _loaded if k[1] == device]:  # one model per device, as before
                    del _loaded[old]
                _loaded[key] = extractor
        return _loaded[key]


@functools.lru_cache(maxsize=2)
def load_text_encoder(model: ModelSettings, device: str) -> TextEncoder:
    """The family's text encoder (`text_tower` families only), sharing the extractor's weights."""
    family = FAMILIES[model.name]
    if not family.text_tower:
        raise ModelError(f"model {model.name} has no text tower: search it with an image (--image)")
    return _torch_module(family.module).load_text(model, device)


def _torch_module(name: str):
    """A family's model or weights module, which import torch. Its OpenMP threads are told to sleep
    between parallel regions, not spin (`OMP_WAIT_POLICY=PASSIVE`, read once as torch loads;
    a value the environment sets is kept): spinning took the cores the decoders beside the
    model need. The engine alone, 2 cores: ViT-B-32 at 1 fps, 21-22 -> 24-25 sampled
    frames/s; the GPU stand-in 108-110 -> 128-131 (one torch thread instead: the stand-in
    as much, ViT-B-32 12-15)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return importlib.import_module(name)


def import_model_code(model: ModelSettings) -> None:
    """Import what loading `model` imports (torch, its family's module and that module's
    library, `import_code`), loading no weights and touching no device: what a process that
    forks run processes does once (orchestration/run_launcher.py)."""
    module = _torch_module(FAMILIES[model.name].module)
    if (import_code := getattr(module, "import_code", None)) is not None:
        import_code(model)


def weights_module(model: ModelSettings):
    """The family's weights module: `download` and `make_random`."""
    return _torch_module(FAMILIES[model.name].weights)


def code_version(settings: Settings) -> str:
    """Covers what changes the vectors: model, weights, dtype, the family's own keys,
    preprocessing and sampling (`video_input.sampling` too: key frames are other frames;
    named only when not `fps`, so the code versions of existing configs stay; `nearest`
    with its `max_shift_ms`, resolved). Not the decoder: every backend gives the same
    frames, their vectors within cos 0.999 (test_decoder_parity.py), and each video's
    metadata names the one that ran."""
    model = settings.model
    keep = {key: getattr(model, key) for key in ("name", "path", "source", "dtype", *FAMILIES[model.name].options)}
    sampling = {"sample_fps": settings.video_input.sample_fps, "max_frames": settings.video_input.max_frames}
    if settings.video_input.sampling != "fps":
        sampling["sampling"] = settings.video_input.sampling
    if settings.video_input.sampling == "nearest":  # the window the frames are chosen in (its default resolved)
        sampling["max_shift_ms"] = settings.video_input.shift_ms
    blob = json.dumps([keep, sampling, PREPROCESSING_VERSION], sort_keys=True, default=str)
    return f"{model.name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"
