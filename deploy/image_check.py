#!/usr/bin/env python3
"""Run the built image as Cumulocity runs it, against the Cumulocity double and the fake APNs on this host.

    python deploy/image_check.py --image IMAGE [--engine "podman ..."] [--run-opts "..."] [--figures F]

deploy/test-image calls it after the build (with the project's .venv and PYTHONPATH at the repository root).
The double (``python -m tests.fakes.cumulocity``) runs as its own process; the fake APNs runs in this one so
what it received can be read. The container gets the double's C8Y_* environment (as the platform injects it),
only ``NET_BIND_SERVICE`` (``--cap-drop ALL``, no new privileges, the manifest's memory limit) and the host's
network, so it serves port 80 on this host's loopback and reaches both fakes there; its configuration (the
APNs app, the fake's address and CA) is mounted read-only at /etc/tocsin. Checked, in order: the manifest's
liveness and readiness probes answer 200 (within the time the platform would wait), tocsin follows the
tenant's alarm stream, the main process holds exactly NET_BIND_SERVICE, the image's HEALTHCHECK passes, a
phone registered through the push gateway API gets an alarm created in the double (the payload the fake APNs
received), and SIGTERM stops it cleanly. Any failure ends the run with a message and the container's log;
the figures go to ``--figures``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import json
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from tests.fakes.apns import FakeAPNs
from tests.fakes.keys import ApnsKey, apns_token
from tests.push_support import BUNDLE
from tests.support import port_open

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "cumulocity-manifest.json"
CAP_NET_BIND_SERVICE = 1 << 10
WATCH_ALL = ["severity:all", "status:all", "deviceId:all", "type:all"]
CONFIG_DIR = "/etc/tocsin"  # where the container sees the mounted configuration


class CheckFailed(Exception):
    """The image does not do what the platform needs; the message says what and where."""


def say(text: str) -> None:
    print(f"image-check: {text}", flush=True)


def _basic(tenant: str, user: str, password: str) -> dict[str, str]:
    raw = f"{tenant}/{user}:{password}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def _memory_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity (the manifest's ``resources.memory``: 512M is 512,000,000 bytes)."""
    digits = quantity.rstrip("KMGi")
    return int(digits) * _UNITS[quantity[len(digits) :]]


def _proc_field(status: str, name: str) -> str:
    """The first word of a /proc/PID/status field, e.g. ``CapEff`` or ``VmHWM`` (in kB)."""
    return next(line.split()[1] for line in status.splitlines() if line.startswith(f"{name}:"))


def _probe_deadline(probe: dict[str, Any]) -> float:
    """Seconds after the start at which the platform gives up on a probe (Kubernetes' defaults apply)."""
    return float(
        probe.get("initialDelaySeconds", 0)
        + probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)
    )


class Container:
    """One container of the image, driven through the engine's command line (podman or docker)."""

    def __init__(self, engine: list[str], name: str) -> None:
        self.engine, self.name = engine, name
        self.started = False

    async def _run(self, *args: str, check: bool = True) -> str:
        proc = await asyncio.create_subprocess_exec(
            *self.engine, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await proc.communicate()
        if check and proc.returncode != 0:
            raise CheckFailed(f"{shlex.join([self.engine[0], *args])} failed: {err.decode().strip()}")
        return (out.decode() + ("" if check else err.decode())).strip()

    async def start(
        self, image: str, run_opts: list[str], env_file: Path, config_dir: Path, memory: int
    ) -> None:
        self.started = True
        await self._run(
            *("run", "--detach", "--name", self.name, "--network", "host"),
            *("--cap-drop", "ALL", "--cap-add", "NET_BIND_SERVICE", "--security-opt", "no-new-privileges"),
            *("--memory", str(memory), "--env-file", str(env_file)),
            *("--volume", f"{config_dir}:{CONFIG_DIR}:ro", *run_opts),
            *(image, "--config", f"{CONFIG_DIR}/tocsin.yaml"),
        )

    async def state(self, field: str) -> str:
        return await self._run("inspect", "--format", f"{{{{.State.{field}}}}}", self.name)

    async def running(self) -> bool:
        return await self.state("Running") == "true"

    async def status(self) -> str:
        """The main process's /proc status, read on the host."""
        pid = await self.state("Pid")
        return Path(f"/proc/{pid}/status").read_text()  # noqa: ASYNC240 (procfs: no disk to wait for)

    async def healthcheck(self, image: str) -> tuple[list[str], int]:
        """The image's HEALTHCHECK command, run in the container (as the engine would): (command, status)."""
        found = json.loads(
            await self._run("image", "inspect", "--format", "{{json .Config.Healthcheck}}", image)
        )
        if not found or found.get("Test", [""])[0] != "CMD":
            raise CheckFailed(f"{image} has no HEALTHCHECK CMD (build with --format docker)")
        command: list[str] = found["Test"][1:]
        proc = await asyncio.create_subprocess_exec(*self.engine, "exec", self.name, *command)
        return command, await proc.wait()

    async def logs(self, lines: int = 40) -> str:
        return await self._run("logs", "--tail", str(lines), self.name, check=False)

    async def stop(self, timeout_s: int) -> None:
        await self._run("stop", "--time", str(timeout_s), self.name)

    async def remove(self) -> None:
        if self.started:
            await self._run("rm", "--force", self.name, check=False)


async def _poll(
    condition: Callable[[], Any], deadline_s: float, what: str, container: Container, t0: float
) -> float:
    """Seconds from ``t0`` until the async ``condition`` holds; CheckFailed when the deadline passes or the
    container stops first."""
    while time.monotonic() - t0 < deadline_s:
        if await condition():
            return time.monotonic() - t0
        if not await container.running():
            code = await container.state("ExitCode")
            raise CheckFailed(f"the container stopped (exit code {code}) before {what}")
        await asyncio.sleep(0.1)
    raise CheckFailed(f"no {what} within {deadline_s:.0f} s of the start")


class Check:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args, self.workdir = args, workdir
        self.engine = shlex.split(args.engine)
        self.manifest: dict[str, Any] = json.loads(MANIFEST.read_text())
        self.figures: dict[str, Any] = {}

    async def run(self) -> None:
        live, ready = self.manifest["livenessProbe"], self.manifest["readinessProbe"]
        port = int(live["httpGet"].get("port", 80))
        if port_open(port):
            raise CheckFailed(
                f"port {port} is already taken on this host: the container serves there (host network); "
                "stop what listens on it"
            )
        double, info = await self._start_double()
        apns = FakeAPNs(self.workdir / "apns")
        key = ApnsKey.generate()
        apns.add_key(key.key_id, key.team_id, key.public_pem)
        await apns.start()
        container = Container(self.engine, f"tocsin-image-check-{int(time.time())}")
        try:
            config_dir, env_file = self._configure(info, apns, key)
            memory = str(self.manifest.get("resources", {}).get("memory", "512M"))
            self.figures["memory_limit_bytes"] = limit = _memory_bytes(memory)
            t0 = time.monotonic()
            await container.start(
                self.args.image, shlex.split(self.args.run_opts), env_file, config_dir, limit
            )
            say(f"started {self.args.image} as {container.name} ({self.engine[0]}, memory limit {memory})")
            try:
                await self._follow(container, info, port, live, ready, t0)
                await self._check_capabilities(container)
                command, status = await container.healthcheck(self.args.image)
                if status != 0:
                    raise CheckFailed(f"the image's HEALTHCHECK ({shlex.join(command)}) exited with {status}")
                say(f"the image's HEALTHCHECK ({command[0]} {command[1]} ...): exit code 0")
                await self._alarm_end_to_end(info, apns, port)
                await self._stop(container)
            except CheckFailed:
                say(f"the container's log (last lines):\n{await container.logs()}")
                raise
        finally:
            await container.remove()
            await apns.stop()
            with contextlib.suppress(ProcessLookupError):
                double.terminate()
            try:
                await asyncio.wait_for(double.wait(), 10)
            except TimeoutError:
                double.kill()
                await double.wait()

    async def _start_double(self) -> tuple[asyncio.subprocess.Process, dict[str, Any]]:
        with (self.workdir / "double.log").open("w") as log:
            double = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "tests.fakes.cumulocity", "--tenants", "1"),
                cwd=ROOT,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
            )
        assert double.stdout is not None
        try:
            first = await asyncio.wait_for(double.stdout.readline(), 60)
        except TimeoutError:
            double.kill()
            raise CheckFailed("the Cumulocity double did not start within 60 s") from None
        if not first:
            raise CheckFailed(f"the Cumulocity double exited:\n{(self.workdir / 'double.log').read_text()}")
        info: dict[str, Any] = json.loads(first)
        say(f"the Cumulocity double serves {info['base_url']} (tenant {', '.join(info['tenants'])})")
        return double, info

    def _configure(self, info: dict[str, Any], apns: FakeAPNs, key: ApnsKey) -> tuple[Path, Path]:
        """The mounted configuration folder and the environment file (the platform's C8Y_* variables)."""
        config_dir = self.workdir / "etc"
        config_dir.mkdir()
        (config_dir / "apns.p8").write_text(key.p8)
        (config_dir / "apns.p8").chmod(0o600)
        shutil.copy(apns.cert_path, config_dir / "apns-ca.pem")
        config = {
            "providers": {
                "apns": {
                    "apps": {
                        BUNDLE: {
                            "team_id": key.team_id,
                            "key_id": key.key_id,
                            "private_key_file": f"{CONFIG_DIR}/apns.p8",
                        }
                    },
                    "production_url": f"https://localhost:{apns.port}",
                    "ca_file": f"{CONFIG_DIR}/apns-ca.pem",
                }
            },
            "registrations": {"seed": []},
        }
        (config_dir / "tocsin.yaml").write_text(json.dumps(config, indent=2) + "\n")  # JSON is YAML
        env_file = self.workdir / "c8y.env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in info["environment"].items()))
        env_file.chmod(0o600)
        return config_dir, env_file

    async def _follow(
        self,
        container: Container,
        info: dict[str, Any],
        port: int,
        live: dict[str, Any],
        ready: dict[str, Any],
        t0: float,
    ) -> None:
        base = f"http://127.0.0.1:{port}"
        tenants = set(info["tenants"])
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:

            def answers_200(path: str) -> Callable[[], Any]:
                async def check() -> bool:
                    try:
                        async with http.get(base + path) as r:
                            return r.status == 200
                    except (aiohttp.ClientError, TimeoutError):
                        return False

                return check

            async def following() -> bool:
                try:
                    async with http.get(f"{base}/health") as r:
                        found = ((await r.json()).get("cumulocity") or {}).get("tenants") or {}
                except (aiohttp.ClientError, TimeoutError, ValueError):
                    return False
                return all((found.get(t) or {}).get("connected") for t in tenants)

            live_path, ready_path = live["httpGet"]["path"], ready["httpGet"]["path"]
            live_s = await _poll(
                answers_200(live_path), _probe_deadline(live), f"200 from the liveness probe {live_path}",
                container, t0,
            )  # fmt: skip
            ready_s = await _poll(
                answers_200(ready_path), _probe_deadline(ready), f"200 from the readiness probe {ready_path}",
                container, t0,
            )  # fmt: skip
            say(f"liveness probe GET {live_path}: 200 after {live_s:.2f} s")
            say(
                f"readiness probe GET {ready_path}: 200 after {ready_s:.2f} s "
                f"(the platform first asks at {ready.get('initialDelaySeconds', 0)} s)"
            )
            follow_s = await _poll(following, 60, "alarm stream of every tenant connected", container, t0)
            say(f"tocsin follows the tenant's alarm stream after {follow_s:.2f} s")
        self.figures.update(
            live_s=round(live_s, 2), ready_s=round(ready_s, 2), following_s=round(follow_s, 2)
        )

    async def _check_capabilities(self, container: Container) -> None:
        """The main process's capability sets, read from /proc on the host: NET_BIND_SERVICE only."""
        status = await container.status()
        for name in ("CapEff", "CapPrm", "CapBnd"):
            caps = int(_proc_field(status, name), 16)
            if caps != CAP_NET_BIND_SERVICE:
                raise CheckFailed(
                    f"the main process has {name} {caps:#x}; expected NET_BIND_SERVICE only "
                    f"({CAP_NET_BIND_SERVICE:#x})"
                )
        uid, no_new_privs = _proc_field(status, "Uid"), _proc_field(status, "NoNewPrivs")
        say(f"main process: uid {uid}, CapEff/CapPrm/CapBnd {CAP_NET_BIND_SERVICE:#x} (NET_BIND_SERVICE "
            f"only), NoNewPrivs {no_new_privs}")  # fmt: skip

    async def _alarm_end_to_end(self, info: dict[str, Any], apns: FakeAPNs, port: int) -> None:
        tenant, creds = next(iter(info["tenants"].items()))
        auth = _basic(tenant, creds["user"], creds["password"])
        phone = apns_token()
        registration = {
            "userId": creds["user"],
            "bundleId": BUNDLE,
            "tags": WATCH_ALL,
            "device": {"deviceName": "image check phone", "deviceToken": phone, "platform": "IOS"},
        }
        alarm = {
            "source": {"id": creds["device"]},
            "type": "tocsin_ImageCheck",
            "text": "image check: pump pressure too high",
            "severity": "CRITICAL",
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            url = f"http://127.0.0.1:{port}/registrations"
            async with http.post(url, json=registration, headers=auth) as r:
                if r.status != 204:
                    raise CheckFailed(
                        f"POST /registrations as {tenant}/{creds['user']}: {r.status} {await r.text()}"
                    )
            say(f"registered an iPhone ({BUNDLE}) through the push gateway API as {tenant}/{creds['user']}")
            sent = time.monotonic()
            async with http.post(f"{info['base_url']}/alarm/alarms", json=alarm, headers=auth) as r:
                if r.status != 201:
                    raise CheckFailed(f"creating the alarm in the double: {r.status} {await r.text()}")
                alarm_id = (await r.json(content_type=None))["id"]
        while not any(x.token == phone for x in apns.received):
            if time.monotonic() - sent > 30:
                raise CheckFailed(
                    f"alarm {alarm_id} reached no phone within 30 s (the fake APNs accepted {apns.accepted}, "
                    f"rejected {apns.rejected})"
                )
            await asyncio.sleep(0.05)
        push_ms = (time.monotonic() - sent) * 1000
        got = next(x for x in apns.received if x.token == phone)
        title = got.payload.get("aps", {}).get("alert", {}).get("title")
        if got.topic != BUNDLE or got.payload.get("alarmId") != alarm_id or title != "New CRITICAL alarm!":
            raise CheckFailed(
                f"the push for alarm {alarm_id} is not the alarm's: topic {got.topic}, {got.payload}"
            )
        say(f"alarm {alarm_id} (CRITICAL) → the fake APNs in {push_ms:.0f} ms: topic {got.topic}, "
            f"title {title!r}, alarmId {alarm_id}, sourceId {got.payload.get('sourceId')}")  # fmt: skip
        self.figures["alarm_to_push_ms"] = round(push_ms, 1)

    async def _stop(self, container: Container) -> None:
        status = await container.status()
        peak_kib = int(_proc_field(status, "VmHWM"))
        self.figures["peak_rss_mb"] = round(peak_kib / 1024, 1)
        say(f"main process: peak RSS {peak_kib / 1024:.1f} MiB (the manifest requests "
            f"{self.manifest.get('requestedResources', {}).get('memory')}, limit "
            f"{self.manifest.get('resources', {}).get('memory')})")  # fmt: skip
        t = time.monotonic()
        await container.stop(20)
        code = await container.state("ExitCode")
        stop_s = time.monotonic() - t
        if code != "0":
            raise CheckFailed(f"SIGTERM: the container exited with code {code} after {stop_s:.1f} s, not 0")
        say(f"SIGTERM: stopped cleanly (exit code 0) in {stop_s:.2f} s")
        self.figures["stop_s"] = round(stop_s, 2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument(
        "--image", required=True, help="the image to run, e.g. localhost/tocsin:0.1.0-SNAPSHOT"
    )
    parser.add_argument(
        "--engine", default="podman", help='the container engine\'s command (default "podman")'
    )
    parser.add_argument("--run-opts", default="", help="more options for `run` (e.g. this host's ulimits)")
    parser.add_argument("--figures", type=Path, help="write the figures (JSON) here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tocsin-image-check-") as tmp:
        check = Check(args, Path(tmp))
        try:
            asyncio.run(check.run())
        except CheckFailed as exc:
            print(f"image-check: FAILED: {exc}", file=sys.stderr, flush=True)
            return 1
    if args.figures is not None:
        args.figures.write_text(json.dumps(check.figures) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
