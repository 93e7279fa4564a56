"""One Milvus Lite server per data directory, shared by every process of the project.

Opening a Milvus Lite file in-process takes a lock that the process keeps until it
exits, so a second process (another run, the sensor, a check, the CLI) would fail with
`Open local milvus failed`. Instead the first process that needs the database starts
`milvus-lite server` on 127.0.0.1 for that data directory, records its port and pid in
a state file beside it, and every process connects over loopback. A lock file keeps
two starters from racing; a state file whose pid is dead or whose port is closed is
replaced. The server outlives the process that started it; `stop` ends it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from feature_pipeline_dagster.core.errors import StoreError

HOST = "127.0.0.1"
START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class ServerState:
    pid: int
    port: int
    data_dir: str

    @property
    def uri(self) -> str:
        return f"http://{HOST}:{self.port}"


class LiteServer:
    def __init__(self, data_dir: str | os.PathLike):
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

    def running(self) -> ServerState | None:
        """The live server's state, or None (a stale state file counts as none)."""
        try:
            raw = json.loads(self.state_file.read_text())
            state = ServerState(int(raw["pid"]), int(raw["port"]), raw["data_dir"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if state.data_dir != str(self.data_dir) or not _alive(state.pid) or not _accepts(state.port):
            return None
        return state

    def ensure_running(self) -> ServerState:
        state = self.running()
        if state:
            return state
        with self._locked():
            return self.running() or self._start()

    def _start(self) -> ServerState:
        port = _free_port()
        command = [sys.executable, "-m", __name__, "milvus_lite", "server", "--data-dir", str(self.data_dir),
                   "--host", HOST, "--port", str(port)]
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
        state = ServerState(process.pid, port, str(self.data_dir))
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state.__dict__))
        tmp.replace(self.state_file)
        return state

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

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # milvus-lite stops on KeyboardInterrupt
    return main(argv)


if __name__ == "__main__":
    sys.exit(_serve(sys.argv[2:]))  # argv[1] is "milvus_lite": the command line names what runs
