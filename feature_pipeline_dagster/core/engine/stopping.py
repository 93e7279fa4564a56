"""A graceful stop for the engine, asked for by the first Ctrl-C or SIGTERM.

Once asked, no video is started or decoded further; videos whose rows are all in are
committed, the rows of those in flight are taken back, and the run reports which videos
it did not finish. What is committed is exact; what is not is embedded by the next run.
"""

import threading

_requested = threading.Event()


def request_stop() -> None:
    _requested.set()


def stop_requested() -> bool:
    return _requested.is_set()
