"""Device names from the config (`cuda:N`, `mps`, `cpu`, `cpu:N`, `auto`), found without
importing torch: the sensor places runs and must stay light.

Named CPU slots (`cpu:0`, `cpu:1`) are distinct devices to the run queue but the same
torch device, so the queue can be exercised on a machine without a GPU.
"""

from __future__ import annotations

import os
import platform
import sys


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
