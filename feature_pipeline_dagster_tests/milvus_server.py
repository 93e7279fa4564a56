"""A real Milvus standalone server for the tests: the PyPI package `milvus` 2.3.5
(`milvus-server --data DIR`: etcd and milvus binaries, port 19530).

It binds every interface (19530, 9091, etcd's 2379...), so it only ever runs inside a
network namespace of its own: end_to_end/test_milvus_server.py runs pytest again under
`unshare` (network, mount and PID namespaces; loopback up; a private /run, where the
server keeps /run/milvus/standalone.pid) with FP_TEST_MILVUS_NAMESPACE=1, and there the
store suite, the kill test and the database-fault test take `milvus_server` as a backend
beside Milvus Lite. When that pytest (the namespace's last process but its init) exits,
the kernel kills whatever the server left (its `milvus` child outlives a plain kill of
the launcher). Started once per inner session: about 8 s to accept clients here.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

NAMESPACE_ENV = "FP_TEST_MILVUS_NAMESPACE"
HOST, PORT = "127.0.0.1", 19530
BACKEND = "milvus_server"
# After a SIGKILL the new process waits for the dead one's etcd sessions to expire (30 s
# TTL by default): a restart then took ~55 s here. 10 s keeps the fault test short.
EXTRA_CONFIG = ["--extra-config", "common.session.ttl=10"]


def inside_namespace() -> bool:
    """True in the private namespace end_to_end/test_milvus_server.py made for the server."""
    return os.environ.get(NAMESPACE_ENV) == "1"


def backends(*others: str) -> list[str]:
    """A test's store backends: the server is one only inside its namespace."""
    return [*others, BACKEND] if inside_namespace() else list(others)


def milvus_server_command() -> Path | None:
    found = Path(sys.executable).parent / "milvus-server"
    return found if found.exists() else None


class MilvusStandalone:
    """`milvus-server` in its own process group: started, killed (the group, and any
    `milvus` left under its data folder) and started again on the same data."""

    uri = f"http://{HOST}:{PORT}"

    def __init__(self, data_dir: Path):
        self.data_dir, self.process = data_dir, None
        self.binary: tuple[list[str], dict, str] | None = None
        self.start_seconds: list[float] = []
        self.last_error = ""

    def start(self, timeout: float = 120) -> None:
        """The first start goes through `milvus-server` (it writes the config and unpacks
        the binaries); a restart runs the `milvus` binary it started, with the same command,
        environment and config. The launcher probes its ports with a plain bind: after a
        SIGKILL with clients connected, 19530 sits in TIME_WAIT for a minute and the launcher
        silently moves the server to 19531; the Go binary binds with SO_REUSEADDR."""
        assert inside_namespace(), "the Milvus server binds every interface: start it only in its own namespace"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with open(self.data_dir.parent / "milvus-server.log", "ab") as log:
            if self.binary is None:
                command, env, cwd = [str(milvus_server_command()), "--data", str(self.data_dir), *EXTRA_CONFIG], None, None
            else:
                command, env, cwd = self.binary
            self.process = subprocess.Popen(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        while not self.ready():
            assert self.process.poll() is None, f"milvus-server exited; see {self.data_dir.parent / 'milvus-server.log'}"
            assert time.monotonic() - started < timeout, f"milvus-server did not accept clients in time ({self.last_error})"
            time.sleep(0.2)
        self.start_seconds.append(time.monotonic() - started)
        if self.binary is None:
            self.binary = self._binary_command()

    def _binary_command(self) -> tuple[list[str], dict, str]:
        """The running `milvus` binary's command line, environment and folder (/proc)."""
        for pid in self._binary_pids():
            read = Path(f"/proc/{pid}")
            command = [a.decode() for a in read.joinpath("cmdline").read_bytes().split(b"\0") if a]
            env = dict(e.decode().split("=", 1) for e in read.joinpath("environ").read_bytes().split(b"\0") if b"=" in e)
            return command, env, os.readlink(read / "cwd")
        raise AssertionError("milvus-server runs no milvus binary")

    def _binary_pids(self) -> list[int]:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if os.readlink(f"/proc/{pid}/exe").startswith(str(self.data_dir)):
                    found.append(int(pid))
            except OSError:
                continue
        return found

    def ready(self) -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((HOST, PORT)) != 0:
                return False
        from pymilvus import MilvusClient

        try:
            client = MilvusClient(uri=self.uri, timeout=5, dedicated=True)
        except Exception as err:
            self.last_error = f"connect: {err}"
            return False
        try:
            client.list_collections()
            return True
        except Exception as err:
            self.last_error = f"list_collections: {err}"
            return False
        finally:
            client.close()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the launcher's process group, then any milvus binary still running from
        the data folder (it may have left the group)."""
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()
        for pid in self._binary_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex((HOST, PORT)) != 0:
                    break
            time.sleep(0.1)
        Path("/run/milvus/standalone.pid").unlink(missing_ok=True)

    def reset(self) -> None:
        """Running, and without rows: each test starts from an empty server. Rows are
        deleted, not collections dropped: a drop, create, index and load cost ~3 s a test
        on Milvus 2.3 here, a delete of everything ~0.1 s; collections whose schema a test
        changes are named by that test."""
        from pymilvus import MilvusClient

        if not self.alive():
            self.kill()
            self.start()
        client = MilvusClient(uri=self.uri, dedicated=True)
        try:
            for name in client.list_collections():
                primary = next(f["name"] for f in client.describe_collection(name)["fields"] if f.get("is_primary"))
                client.load_collection(name)
                client.delete(name, filter=f"{primary} >= 0 or {primary} < 0")
        finally:
            client.close()
