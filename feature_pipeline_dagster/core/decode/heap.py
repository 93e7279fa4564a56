"""Keep a long video's memory flat on Linux.

glibc raises its mmap threshold to the largest block freed so far (up to 32 MiB); after
the first frame batch is freed, later batches and tensors come from the heap instead,
which fragments and grows over a long video (+50 MiB over 60 minutes, measured by
bench/bench_long_video.py). A fixed 1 MiB threshold gives every large buffer back to
the system when it is freed, for a page-fault cost well under 1% of a batch's work.
"""

from __future__ import annotations

import sys

M_MMAP_THRESHOLD = -3
_fixed = False


def fix_mmap_threshold() -> None:
    """Once per process; a no-op off glibc."""
    global _fixed
    if _fixed or not sys.platform.startswith("linux"):
        return
    _fixed = True
    try:
        import ctypes

        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, 1 << 20)
    except (OSError, AttributeError):
        pass
