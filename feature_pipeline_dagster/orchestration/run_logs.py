"""Each run's log: the core's `feature_pipeline` logger mirrored into Dagster's run log
and into a timestamped file under `logs/`.

A run's work spans the asset body and the IO manager's `handle_output`, so the
handlers are attached per run id (idempotently) rather than around one call.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

CORE_LOGGER = "feature_pipeline"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_attached: dict[str, object] = {"run_id": None, "handlers": []}


PROGRESS_EVERY_S = 5.0


class _DagsterBridge(logging.Handler):
    """Into Dagster's run log: every line but the per-video "done" lines, of which one
    every `PROGRESS_EVERY_S` (the last says how far the run got). Each line is an event
    in Dagster's storage, 10-25 ms apiece on the default SQLite storage here, in the
    engine's writer thread: a run of 1000 short clips spent 10-25 s on them. Each video's
    own line stays in logs/ and its figures in its partition's materialization."""

    def __init__(self, dagster_log):
        super().__init__(logging.INFO)
        self.dagster_log = dagster_log
        self.said = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "progress", False):
            if time.monotonic() - self.said < PROGRESS_EVERY_S:
                return
            self.said = time.monotonic()
        self.dagster_log.log(record.levelno, record.getMessage())


def attach_run_log(run_id: str, dagster_log, logs_dir: Path) -> logging.Logger:
    """Route the core logger to this run (detaching any earlier run in this process)."""
    logger = logging.getLogger(CORE_LOGGER)
    logger.setLevel(logging.INFO)
    if _attached["run_id"] == run_id:
        _attached["handlers"][1].dagster_log = dagster_log
        return logger
    for handler in _attached["handlers"]:
        logger.removeHandler(handler)
        handler.close()
    logs_dir.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(logs_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{run_id[:8]}.log", encoding="utf-8")
    file_handler.setFormatter(logging.Formatter(_FORMAT))
    handlers = [file_handler, _DagsterBridge(dagster_log)]
    for handler in handlers:
        logger.addHandler(handler)
    logger.propagate = False
    _attached.update(run_id=run_id, handlers=handlers)
    return logger
