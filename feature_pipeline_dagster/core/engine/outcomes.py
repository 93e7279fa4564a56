"""Each video's outcome in a run, as a typed event: committed, failed or interrupted.

The writer emits exactly one per video of its run, to the run's report (which the IO
manager reads) and to whoever listens in this process (the local scheduler,
orchestration/local_runs.py, which shows progress per video, not per run). Events, not
log records: the scheduler once parsed them back out of the engine's log lines.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Union

from feature_pipeline_dagster.core.videos import partition_key


@dataclass(frozen=True)
class _Outcome:
    video: str  # its path relative to video_input.path

    @property
    def key(self) -> str:
        """Its partition key."""
        return partition_key(self.video)


@dataclass(frozen=True)
class Embedded(_Outcome):
    """Committed: its rows, shots and ledger entry are in the store."""

    rows: int
    partial: str = ""  # embedded, but only the sound part of a damaged or cut-short file
    saved_searches: dict = field(default_factory=dict)  # the saved searches it matches (core/search/watch.py)
    metadata: dict = field(default_factory=dict, compare=False)  # what its partition shows (stays in the run)


@dataclass(frozen=True)
class Failed(_Outcome):
    error: str  # one line; none of its rows are kept


@dataclass(frozen=True)
class Interrupted(_Outcome):
    """Not finished: a stop was asked for; the next run embeds it."""


Outcome = Union[Embedded, Failed, Interrupted]
KINDS = {"embedded": Embedded, "failed": Failed, "interrupted": Interrupted}

_listeners: list[Callable[[Outcome], None]] = []
_lock = threading.Lock()


@contextmanager
def listening(sink: Callable[[Outcome], None]) -> Iterator[None]:
    """Every outcome emitted in this process while inside, to `sink` (called from the
    writer's thread too, never two at once; `sink` must not emit)."""
    with _lock:
        _listeners.append(sink)
    try:
        yield
    finally:
        with _lock:
            _listeners.remove(sink)


def emit(outcome: Outcome) -> None:
    """To every listener, one outcome at a time: the writer's thread (commits) and the
    stream's (failures) both emit, and a sink may write lines to a pipe."""
    with _lock:
        for sink in _listeners:
            sink(outcome)


def to_json(outcome: Outcome) -> dict:
    """As a worker process sends it (metadata stays with the run that wrote it)."""
    fields = {k: v for k, v in vars(outcome).items() if k != "metadata"}
    return {"kind": next(k for k, cls in KINDS.items() if isinstance(outcome, cls)), **fields}


def from_json(data: dict) -> Outcome:
    data = dict(data)
    return KINDS[data.pop("kind")](**data)


@dataclass
class RunReport:
    """A run's outcomes by video, filled in as it goes, so a run-level failure still says
    how far it got (what the IO manager reports per partition)."""

    written: dict[str, dict] = field(default_factory=dict)  # video -> its metadata
    failed: dict[str, str] = field(default_factory=dict)  # video -> one-line reason
    interrupted: list[str] = field(default_factory=list)  # not finished: a stop was asked for
    lease: dict = field(default_factory=dict)  # device, slot, acquired_at, released_at

    def add(self, outcome: Outcome) -> None:
        if isinstance(outcome, Embedded):
            self.written[outcome.video] = outcome.metadata
        elif isinstance(outcome, Failed):
            self.failed[outcome.video] = outcome.error
        else:
            self.interrupted.append(outcome.video)
