"""Cumulocity benchmark: alarms created in the double → Notifications 2.0 → the tocsin service → provider.

Both run as their own processes: the Cumulocity double (``python -m tests.fakes.cumulocity --tenants N``)
and tocsin (``tocsin run``) with the double's environment, so it runs as a multi-tenant microservice on the
alarm app's default rule. Per tenant, one phone with provider ``log`` is registered through tocsin's native
API (as the tenant's admin, watching everything). This process then creates alarms through the double's REST
API at a steady rate, round-robin over the tenants (each of a new type: no de-duplication), and reads the
``log`` provider's JSON lines from tocsin's stdout; each line carries ``sent_at``, the time the notification
was handed to the provider.

Latency is ``sent_at`` minus the alarm's creation time, taken as ``time.time()`` just before this process
sends the alarm's POST (so it includes the double's handling of the POST). The line holds no ``alarmId``
(the log provider prints the notification's title, body and labels, not its data), so each alarm's text
carries a sequence number that comes back in the body; the POST's answer gives the alarm id behind it.
The latency from the double's ``creationTime`` (milliseconds) is printed too, for comparison.

Measured: alarms created, pushed, lost (no push within the grace period), duplicates, the achieved creation
rate, p50/p95/p99/max latency, tocsin's CPU seconds (psutil). Before the measured run, one alarm per tenant
warms every path up (not counted).
With ``--replicas N`` the tenants' alarm streams are shared by N tocsin pods (shared consumer tokens, each
pod its own consumer name); ``--restart-every S`` stops the next pod every S seconds (SIGTERM, as the
platform does) and starts a new one on an empty disk under a new name. After the measured run, the first
alarm of each tenant is cleared: ``state_lost`` counts the resolve notices that did not come (an alert
forgotten by a restart), and resolve notices sent twice count as duplicates. The JSON line adds
``replicas``, ``restarts`` and ``state_lost``.

Usage: scripts/bench cumulocity [--tenants 100] [--rate 100] [--seconds 30] [--grace 10] [--register api]
       [--replicas 1] [--restart-every 0]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from registrations.inventory_store import MO_TYPE
from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
WATCH_ALL = ["severity:all", "status:all", "deviceId:all", "type:all"]
_SEQ = re.compile(r"^bench#(\d+) ")
START_S = 120.0  # deadline for the double, tocsin, and the tenants to come up (a loaded machine)


def _basic(tenant: str, user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{tenant}/{user}:{password}".encode()).decode()


def _tocsin_command() -> list[str]:
    exe = Path(sys.executable).with_name("tocsin")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "service"]


async def _terminate(proc: asyncio.subprocess.Process, name: str) -> None:
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), 20)
    except TimeoutError:
        print(f"{name} did not stop within 20 s: killed", file=sys.stderr)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


@dataclass
class Double:
    proc: asyncio.subprocess.Process
    info: dict[str, Any]

    @property
    def base_url(self) -> str:
        return str(self.info["base_url"])

    @property
    def tenants(self) -> dict[str, dict[str, str]]:
        found: dict[str, dict[str, str]] = self.info["tenants"]
        return found


@dataclass
class Tocsin:
    proc: asyncio.subprocess.Process
    http_port: int
    ps: psutil.Process
    pushes: list[dict[str, Any]] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None
    name: str = "tocsin"
    workdir: Path | None = None

    def cpu_seconds(self) -> float:
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    async def read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            with contextlib.suppress(ValueError):
                line = json.loads(raw)
                if isinstance(line, dict) and "sent_at" in line:
                    self.pushes.append(line)


def _prepare(workdir: Path, poll_s: float, name: str = "tocsin") -> tuple[Path, int]:
    """The work directory and tocsin's configuration: (its path, tocsin's HTTP port). ``name`` is the
    instance id, which names the replica's consumer on the tenants' shared alarm streams."""
    workdir.mkdir(parents=True, exist_ok=True)
    http_port = free_port()
    config = workdir / "tocsin.yaml"
    config.write_text(
        f"data_dir: {workdir / 'data'}\n"
        f"instance: {{id: {name}}}\n"
        f"http: {{port: {http_port}}}\n"
        "providers: {log: {format: json}}\n"
        "registrations: {seed: []}\n"
        f"cumulocity: {{poll_s: {poll_s}}}\n"
        "logging: {level: WARNING}\n"
    )
    return config, http_port


class Fleet:
    """tocsin's replicas (pods), each its own process with its own work directory; every push any of them
    makes lands in one list. ``restart(i)`` stops pod ``i`` as the platform does (SIGTERM) and starts a new
    one on an empty disk, under a new name."""

    def __init__(self, workdir: Path, env: dict[str, str], poll_s: float, log: Any) -> None:
        self.workdir, self.env, self.poll_s, self.log = workdir, env, poll_s, log
        self.pods: list[Tocsin] = []
        self.pushes: list[dict[str, Any]] = []
        self.restarts = 0
        self.spent_cpu = 0.0  # CPU seconds of the pods that were stopped
        self._generation = 0

    async def start(self, slot: int | None = None) -> Tocsin:
        self._generation += 1
        name = f"pod{self._generation}"
        pod_dir = self.workdir / name
        config, http_port = _prepare(pod_dir, self.poll_s, name)
        proc = await asyncio.create_subprocess_exec(
            *_tocsin_command(),
            "run",
            "--config",
            str(config),
            cwd=pod_dir,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=self.log,
        )
        pod = Tocsin(proc, http_port, psutil.Process(proc.pid), self.pushes, name=name, workdir=pod_dir)
        pod.reader = asyncio.create_task(pod.read())
        if slot is None:
            self.pods.append(pod)
        else:
            self.pods[slot] = pod
        return pod

    async def stop(self, pod: Tocsin) -> None:
        with contextlib.suppress(psutil.Error):
            self.spent_cpu += pod.cpu_seconds()
        await _terminate(pod.proc, pod.name)
        if pod.reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(pod.reader, 5)
        if pod.workdir is not None:
            shutil.rmtree(pod.workdir / "data", ignore_errors=True)  # the platform keeps no disk

    async def restart(self, slot: int) -> None:
        await self.stop(self.pods[slot])
        await self.start(slot)
        self.restarts += 1

    def cpu_seconds(self) -> float:
        total = self.spent_cpu
        for pod in self.pods:
            with contextlib.suppress(psutil.Error):
                total += pod.cpu_seconds()
        return total

    async def close(self) -> None:
        for pod in self.pods:
            await _terminate(pod.proc, pod.name)
            if pod.reader is not None:
                pod.reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pod.reader


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text()[-chars:]
    except OSError:
        return ""


@contextlib.asynccontextmanager
async def running(
    tenants: int,
    workdir: Path,
    poll_s: float = 0.5,
    before_tocsin: Callable[[Double], Awaitable[None]] | None = None,
    replicas: int = 1,
) -> AsyncIterator[tuple[Double, Fleet]]:
    """The double with ``tenants`` tenants and ``replicas`` tocsin pods following all of them, each its own
    process (stderr to ``double.log`` and ``tocsin.log`` in ``workdir``); all stop when the block ends,
    however it ends."""
    dproc: asyncio.subprocess.Process | None = None
    fleet: Fleet | None = None
    with contextlib.ExitStack() as files:
        double_log = files.enter_context(open(workdir / "double.log", "w"))  # noqa: ASYNC230
        tocsin_log = files.enter_context(open(workdir / "tocsin.log", "w"))  # noqa: ASYNC230
        try:
            dproc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.fakes.cumulocity",
                "--tenants",
                str(tenants),
                cwd=ROOT,
                stdout=asyncio.subprocess.PIPE,
                stderr=double_log,
            )
            assert dproc.stdout is not None
            try:
                first = await asyncio.wait_for(dproc.stdout.readline(), START_S)
            except TimeoutError:
                raise RuntimeError(f"the double did not start within {START_S:.0f} s") from None
            if not first:
                raise RuntimeError(f"the double exited:\n{_tail(workdir / 'double.log')}")
            double = Double(dproc, json.loads(first))
            if before_tocsin is not None:
                await before_tocsin(double)
            fleet = Fleet(workdir, {**os.environ, **double.info["environment"]}, poll_s, tocsin_log)
            for _ in range(replicas):
                await fleet.start()
            for pod in fleet.pods:
                await _wait_following(pod, set(double.tenants), workdir)
            yield double, fleet
        finally:
            if fleet is not None:
                await fleet.close()
            if dproc is not None:
                await _terminate(dproc, "the Cumulocity double")


async def _wait_following(tocsin: Tocsin, tenants: set[str], workdir: Path) -> None:
    """Until /health/ready answers 200 and /health shows every tenant's alarm stream connected."""
    base = f"http://127.0.0.1:{tocsin.http_port}"
    deadline = time.monotonic() + START_S
    ready, followed = False, 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while time.monotonic() < deadline:
            if tocsin.proc.returncode is not None:
                tail = _tail(workdir / "tocsin.log")
                raise RuntimeError(f"tocsin exited with {tocsin.proc.returncode}:\n{tail}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                if not ready:
                    async with http.get(f"{base}/health/ready") as r:
                        ready = r.status == 200
                if ready:
                    async with http.get(f"{base}/health") as r:
                        health = await r.json()
                    found = (health.get("cumulocity") or {}).get("tenants") or {}
                    followed = sum(1 for t in tenants if (found.get(t) or {}).get("connected"))
                    if followed == len(tenants):
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(
        f"within {START_S:.0f} s tocsin was {'ready' if ready else 'not ready'} and followed "
        f"{followed} of {len(tenants)} tenants (see {workdir / 'tocsin.log'})"
    )


@dataclass
class Created:
    seq: int
    tenant: str
    at: float  # time.time() just before the POST
    alarm_id: str = ""
    creation_time: float = 0.0  # the double's creationTime (ms resolution)
    status: int = 0


def _iso(value: str) -> float:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


class Load:
    """Creates alarms through the double's REST API, one session, paced by a schedule."""

    def __init__(self, double: Double, http: aiohttp.ClientSession) -> None:
        self.double, self.http = double, http
        self.tenant_ids = sorted(double.tenants, key=lambda t: (len(t), t))
        self.auth = {t: _basic(t, c["user"], c["password"]) for t, c in double.tenants.items()}
        self.created: dict[int, Created] = {}
        self.errors: list[str] = []
        self._seq = 0

    async def _create(self, c: Created) -> None:
        body = {
            "source": {"id": self.double.tenants[c.tenant]["device"]},
            "type": f"bench_Alarm{c.seq}",
            "text": f"bench#{c.seq} alarm",
            "severity": "MAJOR",
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }
        headers = {"Authorization": self.auth[c.tenant], "Accept": "application/json"}
        c.at = time.time()
        try:
            async with self.http.post(
                f"{self.double.base_url}/alarm/alarms", json=body, headers=headers
            ) as r:
                c.status = r.status
                answer = await r.json(content_type=None)
            c.alarm_id = str(answer.get("id", ""))
            c.creation_time = _iso(str(answer["creationTime"]))
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
            self.errors.append(f"alarm {c.seq}: {exc!r}")
        if c.status != 201 and len(self.errors) < 20:
            self.errors.append(f"alarm {c.seq}: HTTP {c.status}")

    async def run(self, count: int, rate: float) -> list[Created]:
        """``count`` alarms at ``rate`` per second, round-robin over the tenants; returns them when every
        POST has been answered."""
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[None]] = []
        batch: list[Created] = []
        t0 = loop.time()
        for i in range(count):
            delay = t0 + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            seq = self._seq = self._seq + 1
            c = self.created[seq] = Created(seq, self.tenant_ids[i % len(self.tenant_ids)], 0.0)
            batch.append(c)
            tasks.append(asyncio.create_task(self._create(c)))
        await asyncio.gather(*tasks)
        return batch


def pct(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(p / 100 * len(sorted_values)))]


def _seq_of(push: dict[str, Any]) -> int | None:
    m = _SEQ.match(str(push.get("body", "")))
    return int(m.group(1)) if m else None


async def _await_pushes(tocsin: Tocsin | Fleet, batch: list[Created], grace: float) -> None:
    """Until every alarm of the batch that the double accepted has a push, or ``grace`` seconds passed."""
    wanted = {c.seq for c in batch if c.status == 201}
    seen: set[int] = set()
    done = 0
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        for push in tocsin.pushes[done:]:
            seq = _seq_of(push)
            if seq is not None:
                seen.add(seq)
        done = len(tocsin.pushes)
        if wanted <= seen:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # a moment more, for duplicates right behind the last push


def phone_of(tenant: str) -> str:
    return f"bench-phone-{tenant}"


async def register(double: Double, tocsin: Tocsin | Fleet, http: aiohttp.ClientSession) -> dict[str, str]:
    """One phone (provider ``log``) per tenant, through tocsin's native API as the tenant's admin (watching
    everything): tenant -> token."""
    gate = asyncio.Semaphore(16)

    async def one(tenant: str, creds: dict[str, str]) -> None:
        body = {"provider": "log", "token": phone_of(tenant), "tags": WATCH_ALL}
        headers = {"Authorization": _basic(tenant, creds["user"], creds["password"])}
        port = tocsin.pods[0].http_port if isinstance(tocsin, Fleet) else tocsin.http_port
        url = f"http://127.0.0.1:{port}/v1/registrations"
        async with gate, http.post(url, json=body, headers=headers) as r:
            if r.status not in (200, 201):
                raise RuntimeError(
                    f"registering {tenant}'s phone through tocsin's API: HTTP {r.status}: {await r.text()} "
                    "(with many tenants, see tocsin.log; --register inventory puts the registrations in "
                    "the tenants' inventories before tocsin starts instead)"
                )

    await asyncio.gather(*(one(t, c) for t, c in double.tenants.items()))
    return {t: phone_of(t) for t in double.tenants}


async def seed_inventories(double: Double) -> None:
    """The same registrations, written straight into each tenant's inventory (the managed objects tocsin's
    inventory store keeps, as the tenant's admin) before tocsin starts: it reads them when it follows the
    tenant, as after a restart."""
    gate = asyncio.Semaphore(16)
    async with aiohttp.ClientSession() as http:

        async def one(tenant: str, creds: dict[str, str]) -> None:
            fragment = {"provider": "log", "token": phone_of(tenant), "tags": WATCH_ALL, "state": "active"}
            body = {"type": MO_TYPE, "name": f"bench phone of {tenant}", MO_TYPE: fragment}
            headers = {"Authorization": _basic(tenant, creds["user"], creds["password"])}
            url = f"{double.base_url}/inventory/managedObjects"
            async with gate, http.post(url, json=body, headers=headers) as r:
                if r.status != 201:
                    raise RuntimeError(f"seeding {tenant}'s inventory: HTTP {r.status}: {await r.text()}")

        await asyncio.gather(*(one(t, c) for t, c in double.tenants.items()))


async def bench(
    tenants: int = 100,
    rate: float = 100.0,
    seconds: float = 30.0,
    grace: float = 10.0,
    workdir: Path | None = None,
    say: Any = print,
    register_by: str = "api",
    replicas: int = 1,
    restart_every: float = 0.0,
) -> dict[str, Any]:
    """The whole benchmark; returns its figures (the JSON line's and more). ``restart_every`` > 0: every so
    many seconds of the measured run, the next pod is stopped (SIGTERM) and replaced by a new one on an
    empty disk."""
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tocsin-bench-c8y-")))
        say(f"starting the Cumulocity double ({tenants} tenants) and {replicas} tocsin pod(s) ...")
        started = time.monotonic()
        seed = seed_inventories if register_by == "inventory" else None
        async with running(tenants, workdir, before_tocsin=seed, replicas=replicas) as (double, fleet):
            say(f"  tocsin follows all {tenants} tenants after {time.monotonic() - started:.1f} s")
            connector = aiohttp.TCPConnector(limit=200)
            async with aiohttp.ClientSession(connector=connector) as http:
                if seed is None:
                    tokens = await register(double, fleet, http)
                else:
                    tokens = {t: phone_of(t) for t in double.tenants}
                load = Load(double, http)
                how = "through tocsin's API" if seed is None else "in the inventories before tocsin started"
                say(f"  {len(tokens)} phones registered {how}; warming up: one alarm per tenant ...")
                warm = await load.run(tenants, min(rate, 100.0))
                await _await_pushes(fleet, warm, grace)
                first_push = len(fleet.pushes)
                count = max(1, round(rate * seconds))
                restarting = f", a pod restarted every {restart_every:g} s" if restart_every > 0 else ""
                say(f"creating {count} alarms at {rate:g}/s over {tenants} tenants{restarting} ...")
                cpu0, dcpu0 = fleet.cpu_seconds(), _cpu(double.proc.pid)
                restarter = (
                    asyncio.create_task(_restart_pods(fleet, restart_every, say))
                    if restart_every > 0
                    else None
                )
                try:
                    batch = await load.run(count, rate)
                finally:
                    if restarter is not None:
                        restarter.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await restarter
                await _await_pushes(fleet, batch, grace)
                cpu, dcpu = fleet.cpu_seconds() - cpu0, _cpu(double.proc.pid) - dcpu0
                # Alerts opened before the restarts: clearing them must bring their resolve notices
                # from whichever pod has their source now.
                state_lost, resolve_dups = await _clear_and_count(
                    double, load, fleet, batch, http, grace, say
                )
            pushes = fleet.pushes[first_push:]
            _write_latencies(workdir / "latencies.csv", batch, pushes)
            figures = _figures(batch, pushes, tokens, load.errors, tenants, cpu, dcpu, say)
            figures["duplicates"] += resolve_dups
            figures.update(replicas=replicas, restarts=fleet.restarts, state_lost=state_lost)
            return figures
    raise AssertionError("unreachable")


async def _restart_pods(fleet: Fleet, every: float, say: Any) -> None:
    slot = 0
    while True:
        await asyncio.sleep(every)
        started = time.monotonic()
        await fleet.restart(slot)
        say(f"  restarted pod {slot} on an empty disk in {time.monotonic() - started:.1f} s")
        slot = (slot + 1) % len(fleet.pods)


_CLEARED = re.compile(r"^bench_Alarm(\d+) on ")


async def _clear_and_count(
    double: Double,
    load: Load,
    fleet: Fleet,
    batch: list[Created],
    http: aiohttp.ClientSession,
    grace: float,
    say: Any,
) -> tuple[int, int]:
    """Clears the first alarm of each tenant in the batch; returns (resolve notices missing, twice)."""
    first: dict[str, Created] = {}
    for c in batch:
        if c.status == 201 and c.alarm_id:
            first.setdefault(c.tenant, c)
    mark = len(fleet.pushes)

    async def clear(c: Created) -> None:
        headers = {"Authorization": load.auth[c.tenant], "Accept": "application/json"}
        url = f"{double.base_url}/alarm/alarms/{c.alarm_id}"
        async with http.put(url, json={"status": "CLEARED"}, headers=headers) as r:
            if r.status != 200:
                load.errors.append(f"clearing alarm {c.seq}: HTTP {r.status}")

    await asyncio.gather(*(clear(c) for c in first.values()))
    wanted = {c.seq for c in first.values()}
    got: dict[int, int] = {}
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        got = {}
        for push in fleet.pushes[mark:]:
            m = _CLEARED.match(str(push.get("body", "")))
            if m:
                got[int(m.group(1))] = got.get(int(m.group(1)), 0) + 1
        if wanted <= set(got):
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    lost = len(wanted - set(got))
    twice = sum(n - 1 for n in got.values())
    say(f"  cleared {len(wanted)} alarms opened during the run: {len(wanted) - lost} resolve notices, "
        f"{lost} missing, {twice} twice")  # fmt: skip
    return lost, twice


def _write_latencies(path: Path, batch: list[Created], pushes: list[dict[str, Any]]) -> None:
    """Per alarm: seq, tenant, alarm id, created (before the POST), creationTime, sent_at (empty: lost)."""
    sent: dict[int, float] = {}
    for push in pushes:
        seq = _seq_of(push)
        if seq is not None:
            sent.setdefault(seq, push["sent_at"])
    rows = ["seq,tenant,alarm,created,creation_time,sent_at"]
    for c in batch:
        at = sent.get(c.seq)
        rows.append(
            f"{c.seq},{c.tenant},{c.alarm_id},{c.at:.6f},{c.creation_time:.3f},{'' if at is None else at}"
        )
    path.write_text("\n".join(rows) + "\n")


def _cpu(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def _figures(
    batch: list[Created],
    pushes: list[dict[str, Any]],
    tokens: dict[str, str],
    errors: list[str],
    tenants: int,
    cpu: float,
    double_cpu: float,
    say: Any,
) -> dict[str, Any]:
    by_seq = {c.seq: c for c in batch}
    accepted = [c for c in batch if c.status == 201]
    got: dict[int, list[dict[str, Any]]] = {}
    misrouted = 0
    for push in pushes:
        seq = _seq_of(push)
        if seq is None or seq not in by_seq:
            continue
        got.setdefault(seq, []).append(push)
        if push.get("to") != tokens[by_seq[seq].tenant]:
            misrouted += 1
    pushed = [c for c in accepted if c.seq in got]
    lost = len(accepted) - len(pushed)
    duplicates = sum(len(v) - 1 for v in got.values())
    lat = sorted((got[c.seq][0]["sent_at"] - c.at) * 1000 for c in pushed)
    lat_c8y = sorted((got[c.seq][0]["sent_at"] - c.creation_time) * 1000 for c in pushed)
    stamps = sorted(c.at for c in batch)
    span = stamps[-1] - stamps[0]
    created_per_s = (len(batch) - 1) / span if span > 0 else float("nan")
    sent = sorted(got[c.seq][0]["sent_at"] for c in pushed)
    handled_per_s = (len(sent) - 1) / (sent[-1] - sent[0]) if len(sent) > 1 and sent[-1] > sent[0] else 0.0
    per_1k = cpu / len(pushed) * 1000 if pushed else float("nan")
    say(
        f"  created {len(batch)} alarms ({len(accepted)} accepted by the double) at {created_per_s:.1f}/s; "
        f"pushed {len(pushed)} ({handled_per_s:.1f}/s, first to last push); lost {lost}; "
        f"duplicates {duplicates}; misrouted {misrouted}"
    )
    say(
        f"  latency, creation (before the POST) to provider: p50 {pct(lat, 50):.2f} ms, "
        f"p95 {pct(lat, 95):.2f} ms, p99 {pct(lat, 99):.2f} ms, max {pct(lat, 100):.2f} ms"
    )
    say(
        f"  latency from the double's creationTime: p50 {pct(lat_c8y, 50):.2f} ms, "
        f"p99 {pct(lat_c8y, 99):.2f} ms"
    )
    say(f"  tocsin CPU {cpu:.2f} s ({per_1k:.3f} s per 1,000 alarms); the double's CPU {double_cpu:.2f} s")
    for e in errors[:5]:
        say(f"  error: {e}")
    return {
        "tenants": tenants,
        "alarms": len(batch),
        "alarms_per_s": round(handled_per_s, 1),
        "created_per_s": round(created_per_s, 1),
        "p50_ms": round(pct(lat, 50), 2),
        "p95_ms": round(pct(lat, 95), 2),
        "p99_ms": round(pct(lat, 99), 2),
        "max_ms": round(pct(lat, 100), 2),
        "lost": lost,
        "duplicates": duplicates,
        "misrouted": misrouted,
        "errors": len(errors),
        "cpu_s_per_1k": round(per_1k, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--tenants", type=int, default=100)
    ap.add_argument("--rate", type=float, default=100.0, help="alarms per second")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--grace", type=float, default=10.0, help="how long to wait for the last pushes")
    ap.add_argument("--keep", type=Path, help="keep the work directory (logs, data) here")
    ap.add_argument(
        "--register",
        choices=("api", "inventory"),
        default="api",
        help="api: POST /v1/registrations as each tenant's admin; inventory: managed objects written into "
        "the tenants' inventories before tocsin starts",
    )
    ap.add_argument("--replicas", type=int, default=1, help="tocsin pods sharing the tenants' alarm streams")
    ap.add_argument(
        "--restart-every",
        type=float,
        default=0.0,
        help="seconds between pod restarts (SIGTERM, then a new pod on an empty disk); 0: none",
    )
    ap.add_argument("--smoke", action="store_true", help="a few seconds, for the suite: it still runs")
    args = ap.parse_args()
    if args.smoke:  # two pods, one restarted half way
        args.tenants, args.rate, args.seconds, args.grace = 2, 10.0, 2.0, 5.0
        args.replicas, args.restart_every = 2, 1.0

    def say(text: str) -> None:
        print(text, flush=True)

    figures = asyncio.run(
        bench(
            args.tenants,
            args.rate,
            args.seconds,
            args.grace,
            args.keep,
            say,
            args.register,
            args.replicas,
            args.restart_every,
        )
    )
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
