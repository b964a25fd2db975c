"""A private PostgreSQL server for tests and benchmarks: ``initdb`` + ``pg_ctl`` in a temporary directory on a
free port (Debian's ``postgresql`` package), never the machine's own server.

PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` user the package creates,
in a directory it owns.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

import psycopg

from tests.support import free_port

USER = "tocsin"


def bin_dir() -> Path:
    """The newest installed server's binaries (/usr/lib/postgresql/<major>/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if not found:
        raise RuntimeError("no PostgreSQL server installed: apt-get install postgresql (scripts/test does)")
    return Path(found[-1]).parent


class PostgresServer:
    """``start()``, ``url(database)``, ``create_database()``, ``stop()``. ``durable=False`` (tests) turns off
    fsync: the server's data dies with it anyway."""

    def __init__(self, durable: bool = False, port: int | None = None, shared_buffers: str = "128MB") -> None:
        self.durable, self.shared_buffers = durable, shared_buffers
        self.port = port or free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="tocsin-pg-"))
        self.data = self.workdir / "data"
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.workdir, owner.pw_uid, owner.pw_gid)
            self._as = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}

    def _run(self, *args: str) -> None:
        result = subprocess.run(
            [str(bin_dir() / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            cwd=self.workdir,
            check=False,
            **self._as,
        )
        if result.returncode != 0:
            log = self.workdir / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{args[0]} failed ({result.returncode}): {result.stderr.strip()}\n{tail}")

    def start(self) -> None:
        if not self.data.exists():
            self._run(
                "initdb", "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8", "--locale=C", "-N"
            )
        options = [
            f"-p {self.port}",
            f"-k {self.workdir}",
            "-c listen_addresses=127.0.0.1",
            "-c max_connections=200",
            f"-c shared_buffers={self.shared_buffers}",
        ]
        if not self.durable:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.workdir / "server.log"), "-w", "-t", "60",
                  "-o", " ".join(options), "start")  # fmt: skip

    def url(self, database: str = "postgres", user: str = USER) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def add_password_user(self, name: str, password: str) -> None:
        """A role that must log in with its password (SCRAM), while the rest stays on trust."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE ROLE \"{name}\" LOGIN SUPERUSER PASSWORD '{password}'")
        hba = self.data / "pg_hba.conf"
        rules = f"host all {name} 127.0.0.1/32 scram-sha-256\n" + hba.read_text()
        self._write_as_owner(hba, rules)
        self._run("pg_ctl", "-D", str(self.data), "reload")

    def _write_as_owner(self, path: Path, text: str) -> None:
        stat = path.stat()
        path.write_text(text)
        os.chown(path, stat.st_uid, stat.st_gid)

    def stop_server(self) -> None:
        """Stop the server as a crash would (``-m immediate``), keeping its data: ``start`` brings it back."""
        if self.data.exists():
            with contextlib.suppress(RuntimeError):  # not running
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def stop(self) -> None:
        self.stop_server()
        shutil.rmtree(self.workdir, ignore_errors=True)
