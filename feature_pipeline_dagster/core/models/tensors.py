"""Config device names mapped to torch: the device, its dtype, and host-to-device copies."""

from __future__ import annotations

from feature_pipeline_dagster.core.devices import visible_devices
from feature_pipeline_dagster.core.errors import ConfigError, ModelError


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


def check_devices(names: list[str], source) -> None:
    """Every configured device is on this machine, or a ConfigError naming the first that
    is not and what the machine has: checked once, before a video is touched (it failed
    each video one by one, and said nothing when nothing was to do). torch is imported
    only when a CUDA or MPS device is configured: a CPU config pays nothing."""
    if all(name.partition(":")[0] == "cpu" for name in names):
        return
    for name in names:
        try:
            torch_device(name)
        except ModelError:
            raise ConfigError(f"{source}: gpus: {name}: this machine has {_what_it_has()}; "
                              "name one of those, or `auto`") from None


def _what_it_has() -> str:
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    found = [f"cuda:{i}" for i in range(count)]
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        found.append("mps")
    return ", ".join(found + ["cpu"]) if found else "no CUDA or MPS device, only cpu"


def to_device(array, device):
    """A host array onto `device`; through pinned memory on CUDA, so the copy is
    asynchronous and overlaps the work already queued. A tensor already there (nvdec's
    frames) is taken as it is."""
    import torch

    if isinstance(array, torch.Tensor):
        return array.to(device)
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
