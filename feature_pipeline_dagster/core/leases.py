"""Device leases: however a run starts (the queue, the UI, the CLI), it holds one of a
device's `runs_per_device` slots while it touches the device.

A slot is an exclusive `flock` on `<root>/<device>.<slot>.lock`: the kernel releases it
when the holder exits, so a killed run never leaks a slot. The run queue's tag limits
keep tagged runs from piling up; the lease is what guarantees the limit for the runs
that bypass the queue.

That holds on one host. Across hosts (`placement: kubernetes`) the scheduler is the lease:
a run's pod asks for `nvidia.com/gpu: 1` and the device plugin gives a GPU to one
container at a time (orchestration/placement.py); `scheduler_owns_device` says when a run
is such a pod.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("feature_pipeline.leases")


@dataclass
class DeviceLease:
    device: str
    slot: int
    path: Path | None  # None: the scheduler's (`scheduled`)
    acquired_at: float
    _fd: int = field(repr=False, default=-1)

    def release(self) -> float:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1
        return time.time()


def scheduler_owns_device(placement: str) -> bool:
    """True in a Kubernetes pod under `placement: kubernetes`: the pod was scheduled with
    its own GPU, which it sees as cuda:0, so no file lease is taken (a lock file on one
    node says nothing about another). Kubernetes sets KUBERNETES_SERVICE_HOST in every pod."""
    return placement == "kubernetes" and bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def scheduled(device: str) -> DeviceLease:
    """The lease of a device the scheduler gave this pod: nothing to lock or release."""
    return DeviceLease(device, 0, None, time.time())


def _try_slot(root: Path, device: str, slot: int) -> DeviceLease | None:
    path = root / f"{device.replace(':', '_')}.{slot}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return DeviceLease(device, slot, path, time.time(), fd)


POLL_S = 0.05
"""How often a waiting run tries the slots again: a try is an open and a non-blocking
flock per slot (microseconds); each sensor run waits at the door for the one before, and
at 0.5 s it took the freed device 0.25 s late on average (bench_gpu_standin.py's sensor:
four hand-overs a burst)."""


def acquire(devices: list[str], slots: int, root: Path, poll_s: float = POLL_S) -> DeviceLease:
    """A free slot on the first of `devices` that has one; waits while all are busy."""
    root.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        for device in devices:
            for slot in range(slots):
                lease = _try_slot(root, device, slot)
                if lease:
                    if waited:
                        log.info("device %s free: lease %d of %d taken", device, slot + 1, slots)
                    return lease
        if not waited:
            log.info("all %d slot(s) of %s busy: waiting for a device", slots, ", ".join(devices))
            waited = True
        time.sleep(poll_s)


def busy_slots(device: str, slots: int, root: Path) -> int:
    """How many of a device's slots are held now (for least-loaded placement)."""
    if not root.is_dir():
        return 0
    held = 0
    for slot in range(slots):
        lease = _try_slot(root, device, slot)
        if lease:
            lease.release()
        else:
            held += 1
    return held
