"""A real PostgreSQL server for the tests (Debian's `postgresql` package; `.ci/run`
installs it): `initdb` and `pg_ctl` in a private folder, on 127.0.0.1 and a free port,
with password authentication, started once per test session (about 2 s here); each
test gets a database of its own."""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
USER = "feature_pipeline"


def postgres_bin() -> Path | None:
    """Where initdb and pg_ctl are (Debian keeps them off PATH), or None."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(versions[-1]).parent if versions else None


@dataclass
class Postgres:
    bin: Path
    data: Path
    port: int
    password: str
    run_as: list[str]

    def env(self, db_name: str) -> dict[str, str]:
        """The variables deploy/dagster.yaml reads its credentials from."""
        return {"DAGSTER_PG_USERNAME": USER, "DAGSTER_PG_PASSWORD": self.password, "DAGSTER_PG_HOST": HOST,
                "DAGSTER_PG_PORT": str(self.port), "DAGSTER_PG_DB": db_name}

    def create_database(self, name: str) -> None:
        import psycopg2

        conn = psycopg2.connect(host=HOST, port=self.port, user=USER, password=self.password, dbname="postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()

    def stop(self) -> None:
        subprocess.run([*self.run_as, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(self.data.parent, ignore_errors=True)


def start_postgres() -> Postgres:
    """initdb refuses to run as root: as root, the server runs as the `postgres` user."""
    bin_dir = postgres_bin()
    assert bin_dir, "no PostgreSQL: apt-get install postgresql"
    root = Path(tempfile.mkdtemp(prefix="fp-postgres-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(root, owner.pw_uid, owner.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    password = secrets.token_urlsafe(16)
    pwfile = root / "pw"
    pwfile.write_text(password + "\n")
    if run_as:
        os.chown(pwfile, owner.pw_uid, owner.pw_gid)
    data = root / "data"
    subprocess.run([*run_as, str(bin_dir / "initdb"), "-D", str(data), "-U", USER, "--pwfile", str(pwfile),
                    "--auth", "scram-sha-256", "-E", "UTF8", "--no-sync"], check=True, capture_output=True)
    pwfile.unlink()
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port = sock.getsockname()[1]
    # No durability needed for a test database: fsync off saves seconds of the daemon test.
    options = f"-c listen_addresses={HOST} -p {port} -k {root} -c fsync=off -c synchronous_commit=off"
    subprocess.run([*run_as, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"),
                    "-o", options, "-w", "start"], check=True, capture_output=True)
    return Postgres(bin_dir, data, port, password, run_as)
