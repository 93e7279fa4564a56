"""Faults a user can cause or fix. Their message is the whole story: callers print it
on one line instead of a traceback, and the Dagster layer turns it into a `Failure`."""


class PipelineError(Exception):
    """Base of every user-facing fault. `retryable` tells the orchestrator whether
    trying again could help (a database blip) or only repeat the failure (a bad file)."""

    retryable = False


class ConfigError(PipelineError):
    """The YAML file is wrong: the message names the file and the key."""


class VideoError(PipelineError):
    """One video cannot be embedded: unreadable, damaged, or its values do not fit."""


class FileInFluxError(VideoError):
    """The file is still being written (copied, recorded): not a fault of its content, so
    it is never recorded as failed (core/ledger.py); a later run finds it whole."""

    retryable = True


class ModelError(PipelineError):
    """The model cannot be loaded on the device, or disagrees with the config."""


class StoreError(PipelineError):
    """Milvus is unreachable or refused a request; usually worth a retry."""

    retryable = True


def one_line(err: BaseException) -> str:
    """The first non-blank line of a library's error message, whole (runs of whitespace
    collapsed): enough to act on, no traceback, and never cut mid-word."""
    for line in str(err).splitlines():
        if line.strip():
            return " ".join(line.split())
    return type(err).__name__


class DeviceMemoryError(PipelineError):
    """The device ran out of memory even at batch size 1: another run may free it."""

    retryable = True


class SearchError(PipelineError):
    """A query that cannot be answered as asked: no text tower, a collection written by
    another model or code version, a query image that does not open."""


class ClipError(PipelineError):
    """A moment that cannot be exported as asked: times outside the video, a target that is
    not a new `.mp4` file (core/clips.py)."""
