"""What every family's weights share: the random-weights marker and the hub download.

A random-weight folder is real architecture with meaningless vectors (smoke runs and
tests on machines without a network): it carries a marker file, and every model loaded
from it says so in its description and in a warning.

A hub download is tried once per model load, which is once per run: huggingface_hub's
`snapshot_download` makes one listing request without retries and falls back to the local
Hugging Face cache. A transient fault (an HTTP 5xx or 429, a dropped connection, a read
timeout) is tried once more after `HUB_RETRY_DELAY_S`; no connection at all (DNS failure,
refused, connect timeout, proxy error, HF_HUB_OFFLINE) is not. Either way the failure is
one `ModelError` line that says what to do.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from feature_pipeline_dagster.core.errors import ModelError, one_line

log = logging.getLogger("feature_pipeline.models")
RANDOM_NOTICE = "RANDOM WEIGHTS: this model gives meaningless vectors. For smoke runs and tests only."
RANDOM_MARKER = "RANDOM_WEIGHTS.txt"


def mark_random(folder: Path) -> None:
    (folder / RANDOM_MARKER).write_text(RANDOM_NOTICE + "\n")


def is_random(folder: Path) -> bool:
    """Whether the weights in `folder` were made random (`mark_random`)."""
    return (folder / RANDOM_MARKER).exists()


_warned: set[str] = set()  # model paths whose random weights this process has warned about


def labelled(description: str, folder: Path, model_path: str) -> str:
    """The model's description, loudly labelled if its weights are random, and a warning
    logged the first time this process loads it (a second load, a second device, a text
    tower beside the image tower: one warning)."""
    if not is_random(folder):
        return description
    if model_path not in _warned:
        _warned.add(model_path)
        log.warning("%s: %s", model_path, "RANDOM WEIGHTS: this model gives meaningless vectors")
    return description + " [RANDOM WEIGHTS: meaningless vectors]"


def warned_elsewhere(model_path: str) -> None:
    """The caller says the random-weights warning in its own words (`search` from the
    result's warnings, `serve` in its banner): the log's line is not said as well, so a
    command prints it once."""
    _warned.add(model_path)


# What a user without a connection to the hub does, in every such message.
OFFLINE_ADVICE = ("on a machine with access run `feature-pipeline models download`, copy the folder it writes "
                  "here and set model.source: folder and model.path to it")
HUB_RETRY_DELAY_S = 1.0  # before the one retry of a transient hub fault

_TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)
# Transport faults by class name (httpx, httpx2 or requests, whichever huggingface_hub uses):
# first a fault of an established connection (worth one more try), then none at all (not).
_TRANSIENT = ("ReadTimeout", "WriteTimeout", "PoolTimeout", "RemoteProtocolError", "ReadError", "WriteError",
              "ChunkedEncodingError", "ConnectionResetError", "ConnectionAbortedError")
_NO_CONNECTION = ("ProxyError", "ConnectTimeout", "ConnectError", "ConnectionError")
_OTHER_TRANSIENT = ("TimeoutException", "Timeout", "NetworkError")


@dataclass(frozen=True)
class HubFault:
    """Why the hub did not give the files, in words, and what kind of fault it is."""

    reason: str
    kind: str  # "offline" (HF_HUB_OFFLINE), "no connection", "transient", "refused" (the hub said no), "other"
    partial_cache: bool = False  # the local cache holds the repository, but not every requested file
    cache_checked: bool = False  # huggingface_hub looked for a copy in the local cache, in vain

    @property
    def transient(self) -> bool:
        return self.kind == "transient"


class HubError(ModelError):
    """The hub did not give a model's files; `fault` says why."""

    def __init__(self, message: str, fault: HubFault | None = None):
        super().__init__(message)
        self.fault = fault or HubFault(message, "other")


def hub_fault(err: BaseException) -> HubFault:
    """Classify a huggingface_hub error by its chain of causes, outermost first."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    chain: list[BaseException] = []
    e: BaseException | None = err
    while e is not None and all(e is not c for c in chain):
        chain.append(e)
        e = e.__cause__ or e.__context__
    partial = type(err).__name__ == "IncompleteSnapshotError"
    for e in chain:
        names = {cls.__name__ for cls in type(e).__mro__}
        if isinstance(e, OfflineModeIsEnabled):
            return HubFault("HF_HUB_OFFLINE is set", "offline", partial, True)
        if isinstance(e, HfHubHTTPError) and getattr(e, "response", None) is not None:
            status = e.response.status_code
            if isinstance(e, (RepositoryNotFoundError, RevisionNotFoundError)) or status in (401, 403, 404):
                return HubFault(f"HTTP {status}: {one_line(e)}", "refused", partial)
            if status in _TRANSIENT_STATUS:
                return HubFault(f"{constants.ENDPOINT} answered HTTP {status}", "transient", partial, True)
            return HubFault(f"HTTP {status}: {one_line(e)}", "other", partial)
        transient = HubFault(f"{constants.ENDPOINT}: {type(e).__name__}: {one_line(e)}", "transient", partial, True)
        if type(e).__name__ in _TRANSIENT:
            return transient
        if names & set(_NO_CONNECTION):
            return HubFault(f"no connection to {constants.ENDPOINT}: {one_line(e)}", "no connection", partial, True)
        if names & set(_OTHER_TRANSIENT):
            return transient
    return HubFault(one_line(err), "other", partial)


def hub_error(model_path: str, label: str, fault: HubFault, tries: int = 1) -> HubError:
    """The one line a user reads when the hub did not give the weights."""
    reason = fault.reason + (f", also on a second try {HUB_RETRY_DELAY_S:.0f} s later" if tries > 1 else "")
    if fault.cache_checked:
        reason += "; no copy in the local Hugging Face cache"
    if fault.kind == "refused":
        todo = "check model.path (and HF_TOKEN for a gated or private repository)"
    elif fault.kind == "offline":
        todo = OFFLINE_ADVICE
    elif fault.transient:
        todo = "try again later, or " + OFFLINE_ADVICE
    else:
        todo = "is the hub reachable? If not, " + OFFLINE_ADVICE
    return HubError(f"model.path {model_path}: cannot load {label}: download failed ({reason}); {todo}", fault)


def fetch_from_hub(model_path: str, patterns: list[str], dest: Path | None = None, label: str = "the model",
                   repo: str | None = None) -> Path:
    """The files matching `patterns` (never remote code) of the hub repository `repo`
    (default: the one `model_path` names, `hf-hub:` optional), into `dest` or the Hugging
    Face cache, whose copy is used when the hub cannot be reached. Tried once, a transient
    fault once more; a failure is one `HubError` line naming `model_path` and `label`."""
    import huggingface_hub

    repo = repo or model_path.removeprefix("hf-hub:")
    for attempt in (1, 2):
        try:
            return Path(huggingface_hub.snapshot_download(repo, local_dir=dest, allow_patterns=patterns))
        except Exception as err:  # huggingface_hub's own kinds, transport errors, OSError
            fault = hub_fault(err)
            if attempt == 1 and fault.transient:
                log.info("model.path %s: %s; trying once more in %.0f s", model_path, fault.reason, HUB_RETRY_DELAY_S)
                time.sleep(HUB_RETRY_DELAY_S)
                continue
            raise hub_error(model_path, label, fault, attempt) from None
    raise AssertionError("unreachable")


def fetch_first_file(model_path: str, repo: str, candidates: list[str], label: str) -> Path:
    """The first of `candidates` that the hub repository (or the local cache of it) holds,
    tried in order while the hub answers or the cache has the repository; no connection
    and no cached copy stops at the first, so an offline machine makes one attempt."""
    partial: HubError | None = None
    for name in candidates:
        try:
            folder = fetch_from_hub(model_path, [name], label=label, repo=repo)
        except HubError as err:
            if not err.fault.partial_cache:
                raise
            partial = err  # cached, but without this file: maybe with the next
            continue
        if (folder / name).is_file():
            return folder / name
    if partial is not None:
        raise partial
    raise ModelError(f"model.path {model_path}: cannot load {label}: hub repository {repo} "
                     f"holds none of {', '.join(candidates)}")
