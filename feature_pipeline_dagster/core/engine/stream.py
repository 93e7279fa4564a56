"""Overlap pipeline stages: run an iterable in its own thread, a bounded number of items
ahead of its consumer.

decord, torch and gRPC release the GIL while they work, so decoding, inference and
Milvus inserts proceed side by side; memory stays bounded by `depth`, not by the video.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
_DONE = object()


class _Raised:
    def __init__(self, error: BaseException):
        self.error = error


def put_unless_stopped(ready: queue.Queue, item, stop: threading.Event) -> bool:
    """Put `item`, waiting for room; False (not put) once `stop` is set."""
    while not stop.is_set():
        try:
            ready.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def prefetch(items: Iterable[T], depth: int = 2, name: str = "prefetch") -> Iterator[T]:
    """Yield `items` as produced by a background thread; its exceptions re-raise here.
    Closing the consumer early stops the producer at its next item."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        return put_unless_stopped(ready, item, stop)

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as error:  # handed to the consumer, re-raised there
            put(_Raised(error))

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, _Raised):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join(timeout=30)
