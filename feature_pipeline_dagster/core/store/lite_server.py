"""One Milvus Lite server per data directory, shared by every process of the project.

Opening a Milvus Lite file in-process takes a lock that the process keeps until it
exits, so a second process (another run, the sensor, a check, the CLI) would fail with
`Open local milvus failed`. Instead the first process that needs the database starts
`milvus-lite server` on 127.0.0.1 for that data directory, records its port and pid in
a state file beside it, and every process connects over loopback. A lock file keeps
two starters from racing; a state file whose pid is dead or whose port is closed is
replaced. The server outlives the process that started it; `stop` ends it, and so does
the server itself once it has had no client for `idle_minutes` (the watchdog in `_serve`).

Each start is also registered in the starter's working folder (`REGISTRY`, one file per
data directory), so `db status --all` and `db stop --all` find the servers of every config
tried there, not only the current one's; an entry whose server has gone (or was replaced
by one started elsewhere) is removed when the registry is read.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from feature_pipeline_dagster.core.errors import StoreError

if TYPE_CHECKING:
    from feature_pipeline_dagster.core.settings import DbSettings

HOST = "127.0.0.1"
START_TIMEOUT_S = 60.0
DEFAULT_IDLE_MINUTES = 10.0  # db.lite_idle_minutes
IDLE_POLL_S = 5.0  # how often the watchdog looks for clients (shorter for short idle times)
SETTLE_S = 1.0  # with the state file gone, how long a retiring server waits for late clients
REGISTRY = Path(".feature-pipeline") / "lite-servers"  # under the starter's working folder
logger = logging.getLogger("feature_pipeline.lite_server")
_retiring_lock = None  # the lock a retiring server holds until its process exits
_last_request = 0.0  # in the server: when it last took a request (time.monotonic)


@dataclass(frozen=True)
class ServerState:
    pid: int
    port: int
    data_dir: str
    idle_minutes: float | None = None  # None: a server from before idle stops
    started_now: bool = field(default=False, compare=False)  # this call started it

    @property
    def uri(self) -> str:
        return f"http://{HOST}:{self.port}"


class LiteServer:
    def __init__(self, data_dir: str | os.PathLike, idle_minutes: float | None = None):
        self.name = os.fspath(data_dir)  # as the config says it, for messages
        self.idle_minutes = float(idle_minutes or DEFAULT_IDLE_MINUTES)
        self.data_dir = Path(data_dir).resolve()
        self.state_file = self.data_dir.with_name(self.data_dir.name + ".server.json")
        self.lock_file = self.data_dir.with_name(self.data_dir.name + ".server.lock")
        self.log_file = self.data_dir.with_name(self.data_dir.name + ".server.log")

    @contextlib.contextmanager
    def _locked(self):
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_file, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _recorded(self) -> ServerState | None:
        try:
            raw = json.loads(self.state_file.read_text())
            idle = None if raw.get("idle_minutes") is None else float(raw["idle_minutes"])
            return ServerState(int(raw["pid"]), int(raw["port"]), raw["data_dir"], idle)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def _record(self, state: ServerState) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": state.pid, "port": state.port, "data_dir": state.data_dir,
                                   "idle_minutes": state.idle_minutes}))
        tmp.replace(self.state_file)

    def running(self) -> ServerState | None:
        """The live server's state, or None (a stale state file counts as none). Starts nothing."""
        state = self._recorded()
        if state is None or state.data_dir != str(self.data_dir) or not _alive(state.pid) or not _accepts(state.port):
            return None
        return state

    def ensure_running(self) -> ServerState:
        """The live server's state; started if there is none (then `started_now` is true,
        and the start is logged on `feature_pipeline.lite_server`)."""
        state = self.running()
        if state:
            return state
        with self._locked():
            return self.running() or self._start()

    def started_message(self, state: ServerState) -> str:
        return (f"started Milvus Lite server for {self.name} on {HOST}:{state.port} (pid {state.pid}); "
                f"it stops itself after {state.idle_minutes:g} idle minutes, or: feature-pipeline db stop")

    def _start(self) -> ServerState:
        port = _free_port()
        command = [sys.executable, "-m", __name__, "milvus_lite", "server", "--data-dir", str(self.data_dir),
                   "--host", HOST, "--port", str(port), "--idle-minutes", repr(self.idle_minutes)]
        with open(self.log_file, "ab") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)  # outlives this process and its signals
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _accepts(port):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise StoreError(
                    f"Milvus Lite server for {self.data_dir} did not start on {HOST}:{port} "
                    f"(see {self.log_file}: {_tail(self.log_file)})"
                )
            time.sleep(0.1)
        state = ServerState(process.pid, port, str(self.data_dir), self.idle_minutes, started_now=True)
        self._record(state)
        self._register(state)
        logger.info(self.started_message(state))
        return state

    def _entry(self, registry: Path) -> Path:
        return registry / (hashlib.sha1(str(self.data_dir).encode()).hexdigest()[:16] + ".json")

    def _register(self, state: ServerState) -> None:
        """Under the lock, after a start: this working folder's registry names the server
        (a working folder that cannot be written only loses `--all`'s view of it)."""
        registry = Path.cwd() / REGISTRY
        try:
            registry.mkdir(parents=True, exist_ok=True)
            entry = self._entry(registry)
            tmp = entry.with_suffix(".tmp")
            tmp.write_text(json.dumps({"data_dir": state.data_dir, "pid": state.pid, "port": state.port}))
            tmp.replace(entry)
        except OSError as err:
            logger.debug("not registered in %s: %s", registry, err)

    def stop(self, timeout: float = 30.0) -> ServerState | None:
        """Stop the server cleanly (SIGTERM: it drains requests and closes the database),
        then SIGKILL after `timeout`."""
        with self._locked():
            state = self.running()
            if state:
                os.kill(state.pid, signal.SIGTERM)
                deadline = time.monotonic() + timeout
                while _alive(state.pid) and time.monotonic() < deadline:
                    time.sleep(0.1)
                if _alive(state.pid):
                    os.kill(state.pid, signal.SIGKILL)
            self.state_file.unlink(missing_ok=True)
            return state

    def _retire(self, port: int) -> bool:
        """In the server, after it has been idle: True if it should stop now. Under the lock
        starters take, the state file is removed (newcomers wait for the lock and then
        start a fresh server), late clients that read it just before get `SETTLE_S` to
        connect, and if any did, the record is put back and the server stays. When it
        goes, the lock is kept until the process exits, so no new server opens the data
        directory before this one has closed it."""
        global _retiring_lock
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.lock_file, "a+")
        fcntl.flock(handle, fcntl.LOCK_EX)
        since = time.monotonic()
        recorded = self._recorded()
        ours = recorded is not None and recorded.pid == os.getpid() and recorded.port == port
        if ours:
            self.state_file.unlink(missing_ok=True)
            time.sleep(min(SETTLE_S, self.idle_minutes * 60 / 10))
        if _clients(port) or _last_request >= since:
            if ours:
                self._record(recorded)
            handle.close()  # unlocks
            return False
        _retiring_lock = handle
        return True


def start_lite_server(db: DbSettings, say: Callable[[str], None] | None = None) -> ServerState | None:
    """Before a command's work: the config's Lite server running, started if need be (None
    for a Milvus server). A start is said once, by `say` (default: a line on stderr), so
    the user learns a process now outlives the command and how to stop it; the server then
    serves the command's workers too."""
    if not db.is_lite:
        return None
    server = LiteServer(db.uri, db.lite_idle_minutes)
    state = server.ensure_running()
    if state.started_now:
        (say or _stderr)(server.started_message(state))
    return state


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def registered(folder: str | os.PathLike | None = None) -> list[tuple[LiteServer, ServerState]]:
    """The live Lite servers started from the working folder `folder` (default: the current
    one), by data directory. An entry whose server is gone (its pid dead, its port closed, its
    record removed) or was replaced by a server started from elsewhere is deleted; the
    check is made under the data directory's lock, so a start in progress is not mistaken
    for a stale entry."""
    registry = Path(folder or Path.cwd()) / REGISTRY
    found = []
    for entry in sorted(registry.glob("*.json")):
        try:
            raw = json.loads(entry.read_text())
            server, pid = LiteServer(raw["data_dir"]), int(raw["pid"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            entry.unlink(missing_ok=True)
            continue
        state = server.running()
        if state is None or state.pid != pid:
            if not server.data_dir.parent.is_dir():  # its folder deleted: nothing can run there
                entry.unlink(missing_ok=True)
                continue
            with server._locked():
                state = server.running()
                if state is None or state.pid != _registered_pid(entry):
                    entry.unlink(missing_ok=True)
                    continue
        found.append((server, state))
    return found


def _registered_pid(entry: Path) -> int | None:
    try:
        return int(json.loads(entry.read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def clients(port: int) -> int:
    """Connections open to the server on `port` now (0: idle)."""
    return _clients(port)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # a zombie child of ours is dead too
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:  # and so is anyone's zombie, where nothing reaps orphans (containers)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def _clients(port: int) -> int:
    """Established TCP connections to `port` on this machine (the server's side of each
    client's connection; pymilvus keeps one open while a store is open). Where the
    tables cannot be read, a client is assumed: the server then never stops itself."""
    count, readable = 0, False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for line in lines:
            fields = line.split()  # sl local_address rem_address st ...; addresses are HEX:PORT
            if len(fields) > 3 and fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                count += 1
    return count if readable else 1


def _note_requests() -> None:
    """In the server: every request it takes marks it busy, so a store opened and closed
    between two of the watchdog's looks counts too (an interceptor on the gRPC server
    milvus-lite builds; should it build it otherwise, open connections still count)."""
    import grpc

    class Seen(grpc.ServerInterceptor):
        def intercept_service(self, continuation, details):
            global _last_request
            _last_request = time.monotonic()
            return continuation(details)

    build = grpc.server

    def server(*args, **kwargs):
        kwargs["interceptors"] = [*(kwargs.get("interceptors") or ()), Seen()]
        return build(*args, **kwargs)

    grpc.server = server


def _watch_idle(server: LiteServer, port: int) -> None:
    """The server's watchdog thread: once it has had no client connected and no request
    for the idle time, stop it the way SIGTERM does (drain, close the database)."""
    idle_s = server.idle_minutes * 60
    poll = min(IDLE_POLL_S, idle_s / 4)
    last_client = time.monotonic()
    while True:
        time.sleep(poll)
        if _clients(port):
            last_client = time.monotonic()
        elif time.monotonic() - max(last_client, _last_request) >= idle_s:
            if server._retire(port):
                break
            last_client = time.monotonic()
    print(f"no client for {server.idle_minutes:g} minutes: stopping", flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(START_TIMEOUT_S)  # a shutdown that hangs must not hold the lock for ever
    os._exit(1)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "no output"


def _serve(argv: list[str]) -> int:
    """`milvus-lite server`, with SIGINT and SIGTERM both ending it cleanly, whatever the
    starter's signals were. Ignored signals are inherited: a process started in the
    background ignores SIGINT, and Dagster maps SIGTERM onto SIGINT's handler, so a
    server started from there ignored both and every `stop` waited out its timeout."""
    from milvus_lite.cmdline import main

    from .lite_search import SEARCH_ENV, install

    try:
        print(install(os.environ.get(SEARCH_ENV, "project")), flush=True)
    except ValueError as error:  # a value it does not know: one line, which the starter quotes
        print(error, flush=True)
        return 2
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # milvus-lite stops on KeyboardInterrupt
    if "--idle-minutes" in argv:  # ours, not milvus-lite's: the watchdog's idle time
        at = argv.index("--idle-minutes")
        minutes = float(argv[at + 1])
        del argv[at:at + 2]
        server = LiteServer(argv[argv.index("--data-dir") + 1], minutes)
        _note_requests()
        threading.Thread(target=_watch_idle, args=(server, int(argv[argv.index("--port") + 1])),
                         name="idle-watchdog", daemon=True).start()
    return main(argv)


if __name__ == "__main__":
    sys.exit(_serve(sys.argv[2:]))  # argv[1] is "milvus_lite": the command line names what runs
