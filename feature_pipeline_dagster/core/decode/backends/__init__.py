"""Decoder backends behind one small interface (`base.Backend`), chosen by
`video_input.decoder`: decord, torchcodec (CPU), PyAV, or nvdec (PyNvVideoCodec on the
run's CUDA device). Each lives in its own module and imports its library on first use,
so choosing one never loads the others (nor torch, for decord and PyAV).

`auto` picks decord where it is installed (x86_64 wheels only), else torchcodec where
its FFmpeg libraries actually load (its wheel bundles none), else PyAV (always installed:
its wheels bundle FFmpeg). It never picks nvdec: GPU decoding is asked for by name.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from feature_pipeline_dagster.core.errors import one_line

DECODERS = ("auto", "decord", "torchcodec", "pyav", "nvdec")
SAMPLINGS = ("fps", "keyframes", "nearest")
_MODULES = {
    "decord": "feature_pipeline_dagster.core.decode.backends.decord_reader",
    "torchcodec": "feature_pipeline_dagster.core.decode.backends.torchcodec_reader",
    "pyav": "feature_pipeline_dagster.core.decode.backends.pyav_reader",
    "nvdec": "feature_pipeline_dagster.core.decode.backends.nvdec_reader",
}
_resolved: dict[str, str] = {}


def torchcodec_loads() -> str | None:
    """None if torchcodec imports with its FFmpeg libraries here, else why not (one line)."""
    if importlib.util.find_spec("torchcodec") is None:
        return "torchcodec is not installed"
    try:
        importlib.import_module("torchcodec.decoders")
    except Exception as err:  # RuntimeError: no libavutil.so.N it was built for, or a torch mismatch

        return f"torchcodec cannot load its FFmpeg libraries ({one_line(err)})"
    return None


def resolve(name: str) -> str:
    """The backend `name` (one of DECODERS, checked where the config is read) stands for
    in this process (`auto` resolved once)."""
    if name != "auto":
        return name
    if "auto" not in _resolved:
        if importlib.util.find_spec("decord") is not None:
            _resolved["auto"] = "decord"
        elif torchcodec_loads() is None:
            _resolved["auto"] = "torchcodec"
        else:
            _resolved["auto"] = "pyav"
    return _resolved["auto"]


def open_backend(name: str, path: Path, device: str | None = None):
    """An opened `base.Backend` of the resolved name over `path`; raises `base.OpenFailed`
    for a file it cannot open, `VideoError` when the backend itself is unusable here."""
    module = importlib.import_module(_MODULES[resolve(name)])
    return module.open_video(path, device=device)
