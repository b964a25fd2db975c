"""Shared test helpers: a real Mosquitto on a free port, waiting for conditions with a deadline, ports."""

from __future__ import annotations

import asyncio
import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_until_sync(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``condition`` until it holds; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.005)


async def wait_until_async(
    condition: Callable[[], Awaitable[bool]], timeout: float = 10.0, what: str = "condition"
) -> None:
    """``wait_until`` for a condition that must await (a store read, say)."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.005)


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if found is None:
        raise RuntimeError("mosquitto is not installed: scripts/test installs it from Debian's packages")
    return found


@dataclass(frozen=True)
class MosquittoTls:
    """A TLS listener: the broker's certificate and key, the CA it checks client certificates against."""

    cafile: Path
    certfile: Path
    keyfile: Path
    require_certificate: bool = False


class Mosquitto:
    """A real Mosquitto process on a free port; ``stop``/``start``/``restart`` keep the port."""

    def __init__(
        self,
        workdir: Path,
        persistence: bool = False,
        port: int | None = None,
        tls: MosquittoTls | None = None,
        users: dict[str, str] | None = None,
    ) -> None:
        """``tls``: the listener speaks TLS only; ``users``: name -> password, and no anonymous clients."""
        self.workdir, self.persistence, self.tls, self.users = workdir, persistence, tls, users
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    def _write_config(self) -> Path:
        conf = self.workdir / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1"]
        if self.tls is not None:
            lines += [
                f"cafile {self.tls.cafile}",
                f"certfile {self.tls.certfile}",
                f"keyfile {self.tls.keyfile}",
                f"require_certificate {'true' if self.tls.require_certificate else 'false'}",
            ]
        if self.users is not None:
            passwords = self.workdir / "passwords"
            passwords.write_text("")
            passwords.chmod(0o600)
            for name, password in self.users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(passwords), name, password], check=True)
            lines += [f"password_file {passwords}", "allow_anonymous false"]
        else:
            lines.append("allow_anonymous true")
        lines += [
            # As root, mosquitto would switch to a user that cannot write here.
            f"user {getpass.getuser()}",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            "autosave_interval 1",
            "max_queued_messages 100000",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            *(["log_type notice"] if self.tls is not None or self.users is not None else []),
        ]
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self) -> None:
        assert self.proc is None, "already running"
        conf = self._write_config()
        log = (self.workdir / "mosquitto.log").open("ab")
        self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while not port_open(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited with {self.proc.returncode}: "
                    f"{(self.workdir / 'mosquitto.log').read_text()[-2000:]}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError("mosquitto did not open its port within 10 s")
            time.sleep(0.01)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        wait_until_sync(lambda: not port_open(self.port), 10, "the broker port to close")

    def restart(self) -> None:
        self.stop()
        self.start()


ROOT = Path(__file__).resolve().parents[1]


class ServiceRun:
    """``tocsin run`` as a process of its own (``env`` on top of this one's), stdout and stderr collected
    line by line as it prints them."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service", "run"],
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        self.lines.extend(iter(self.proc.stdout.readline, ""))

    def stop(self) -> int:
        """SIGTERM, as a service manager would; returns the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        status = self.proc.wait(20)
        self._reader.join(5)
        return status
