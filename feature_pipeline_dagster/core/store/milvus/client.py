"""The connection to Milvus: a Milvus Lite file, served by the shared loopback server
(core/store/lite_server.py), or a server's address; every failed call one `StoreError`
line; where Lite and a server differ in what a write needs (flush)."""

from __future__ import annotations

import logging
import time

from feature_pipeline_dagster.core.errors import ConfigError, StoreError, VideoError, one_line
from feature_pipeline_dagster.core.settings import CollectionSpec, is_lite_file as is_lite
from feature_pipeline_dagster.core.store.lite_server import LiteServer

MAX_REQUEST_BYTES = 48 * 1024 * 1024  # Milvus refuses requests over 64 MB; leave room for framing
MAX_QUERY_ROWS = 16384  # Milvus' limit on a plain query's offset + limit


def connect(uri: str, token: str | None, lite_idle_minutes: float | None):
    """A pymilvus `MilvusClient` for `uri` (a Lite file: its server started if none runs).

    `dedicated`: this client's own gRPC channel, closed with it. pymilvus otherwise
    shares one channel per address for the whole process and never closes it; after
    the server went away that channel stays in gRPC's reconnect backoff, so retries
    kept failing (8 s and more) after the server was back (test_db_faults).
    A Lite file is served by the shared loopback server; one that died a moment
    ago may still look alive, so a failed connect checks (and restarts) it again."""
    from pymilvus import MilvusClient

    _quiet_pymilvus()
    attempts = 3 if is_lite(uri) else 1
    for attempt in range(attempts):
        try:
            return MilvusClient(uri=_server_uri(uri, lite_idle_minutes), token=token or "", timeout=30, dedicated=True)
        except StoreError:
            raise
        except Exception as err:
            if attempt == attempts - 1:
                raise StoreError(f"Milvus at {uri}: cannot connect ({one_line(err)})") from None
            time.sleep(0.5)


def _server_uri(uri: str, lite_idle_minutes: float | None) -> str:
    if is_lite(uri):
        return LiteServer(uri, lite_idle_minutes).ensure_running().uri  # a start is logged there
    return uri


def call(uri: str, what: str, fn, *args, **kwargs):
    """`fn(*args, **kwargs)`, its failure as one line naming the store and the call."""
    try:
        return fn(*args, **kwargs)
    except (VideoError, ConfigError):
        raise
    except Exception as err:
        raise StoreError(f"Milvus at {uri}: {what} failed ({one_line(err)})") from None


def flush(client, uri: str, collection: str) -> None:
    """Flush, again at once if it fails: Milvus Lite 3.2 can refuse one of two flushes
    that race ("current_seq is monotonic"; seen with two runs writing, bench_load.py).
    A flush only persists what is in memory, so a repeat is safe, and cheaper than
    Dagster's retry, which embeds the run's videos again.

    A server needs none: an insert or delete it acknowledged is already in its log
    (rocksmq in a standalone, Pulsar or Kafka in a cluster) and survives a crash, and
    Strong consistency makes it visible to the next query. Milvus 2.3 also rate-limits
    flush and seals a segment per call: a flush there took ~2 s, so a commit ~4 s
    (core/test_store.py, `milvus_server` backend)."""
    if not is_lite(uri):
        return
    for pause in (0.1, 0.3):
        try:
            return client.flush(collection)
        except Exception:
            time.sleep(pause)
    call(uri, "flush", client.flush, collection)


def rows_per_request(spec: CollectionSpec, limit_bytes: int = MAX_REQUEST_BYTES) -> int:
    """The most rows one insert may carry under Milvus' request size limit, whatever
    `db.batch_size` says: a row costs its vector plus, at most, its scalar fields."""
    row_bytes = spec.vector_field.dim * 4 + sum((f.max_length or 0) * 4 + 8 for f in spec.fields) + 64
    return max(1, limit_bytes // row_bytes)


class _DropNoise(logging.Filter):
    """pymilvus warns on every query iterator against Milvus Lite, which has no MVCC
    timestamp to give; the iterator works without it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "mvccTs" not in record.getMessage()


def _quiet_pymilvus() -> None:
    """Failed calls are reported as one StoreError line; pymilvus would also log each
    with a 70-line traceback (and retry chatter) on the user's console."""
    logger = logging.getLogger("pymilvus.client.iterator.query_iterator")
    if not any(isinstance(f, _DropNoise) for f in logger.filters):
        logger.addFilter(_DropNoise())
    for name in ("pymilvus.decorators", "pymilvus.client.connection_manager"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
