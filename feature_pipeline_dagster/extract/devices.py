"""Device names from the config (`cuda:N`, `mps`, `cpu`, `cpu:N`, `auto`) mapped to torch.

Named CPU slots (`cpu:0`, `cpu:1`) are distinct devices to the run queue but the same
torch device, so the queue can be exercised on a machine without a GPU.
"""

from __future__ import annotations

import os
import platform
import sys

from feature_pipeline_dagster.errors import ModelError


def visible_devices() -> list[str]:
    """What `gpus: auto` means: every visible CUDA device, else MPS, else the CPU.

    Found without importing torch (the sensor places runs and must stay light): the
    NVIDIA driver lists its GPUs under /proc, narrowed by CUDA_VISIBLE_DEVICES."""
    gpus = sorted(os.listdir("/proc/driver/nvidia/gpus")) if os.path.isdir("/proc/driver/nvidia/gpus") else []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    count = len(gpus) if visible is None else min(len(gpus), len([v for v in visible.split(",") if v.strip()]))
    if count:
        return [f"cuda:{i}" for i in range(count)]
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return ["mps"]
    return ["cpu"]


def run_devices(gpus: tuple[str, ...]) -> list[str]:
    """The config's `gpus` with `auto` expanded."""
    return visible_devices() if gpus == ("auto",) else list(gpus)


def torch_device(name: str):
    """The torch.device for a config device name, or a ModelError saying why not."""
    import torch

    if name == "auto":
        name = visible_devices()[0]
    kind, _, index = name.partition(":")
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ModelError(f"device {name}: MPS is not available on this machine")
        return torch.device("mps")
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        i = int(index or 0)
        if i >= count:
            raise ModelError(f"device {name}: this machine has {count} visible CUDA device(s)")
        return torch.device("cuda", i)
    raise ModelError(f"unknown device {name!r} (expected cuda:N, mps, cpu, cpu:N or auto)")


def to_device(array, device):
    """A host array onto `device`; through pinned memory on CUDA, so the copy is
    asynchronous and overlaps the work already queued."""
    import torch

    tensor = torch.from_numpy(array)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def model_dtype(name: str, device):
    """`model.dtype`: `auto` is bf16 on CUDA, fp32 elsewhere; never a checkpoint's own
    torch_dtype (often bf16), which is many times slower on a CPU."""
    import torch

    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)
