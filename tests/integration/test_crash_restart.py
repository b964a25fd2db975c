"""A real service process killed with SIGKILL mid-delivery, then restarted: nothing pending is lost, nothing
delivered is sent again; only the requests in flight (sent, never answered) go out a second time, and they
carry the notification key as collapse id / tag so the phone shows them once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.conftest import publish
from tests.fakes.apns import FakeAPNs
from tests.fakes.fcm import FakeFCM
from tests.fakes.keys import apns_token, write_service_account
from tests.push_support import BUNDLE, fcm_account, trusted_key
from tests.support import Mosquitto, free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
PER_PLATFORM = 40


def _config(
    tmp: Path, broker: int, http: int, apns: FakeAPNs, fcm: FakeFCM, tokens: list[tuple[str, str]]
) -> Path:
    key = trusted_key(apns)
    (tmp / "AuthKey.p8").write_text(key.p8)
    sa = write_service_account(tmp / "sa.json", fcm_account(fcm))
    doc: dict[str, Any] = {
        "data_dir": str(tmp / "data"),
        "instance": {"id": "crash-test"},
        "mqtt": {"port": broker, "embedded_broker": "never", "reconnect_min_s": 0.05},
        "http": {"port": http},
        "providers": {
            "apns": {
                "apps": {
                    BUNDLE: {
                        "team_id": key.team_id,
                        "key_id": key.key_id,
                        "private_key_path": str(tmp / "AuthKey.p8"),
                    }
                },
                "production_url": f"https://localhost:{apns.port}",
                "ca_file": str(apns.cert_path),
                "timeout_s": 120,
            },
            "fcm": {
                "credentials_path": str(sa),
                "send_url": fcm.url,
                "ca_file": str(fcm.ca_file),
                "timeout_s": 120,
            },
        },
        "delivery": {"workers": 4},  # four requests in flight: all four stall, then the kill
        "registrations": {"seed": [{"provider": p, "token": t, "tags": ["home"]} for p, t in tokens]},
    }
    path = tmp / "tocsin.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "service", "run", "-c", str(config)],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


async def _get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            return resp.status, await resp.json()
    except aiohttp.ClientError:
        return 0, {}


async def test_sigkill_mid_delivery_then_restart(tmp_path: Path, broker: Mosquitto) -> None:
    apns = await FakeAPNs(tmp_path / "apns", stall_after=15).start()
    fcm = await FakeFCM(stall_after=15, cert_dir=tmp_path / "fcm").start()
    tokens = [("apns", apns_token()) for _ in range(PER_PLATFORM)]
    tokens += [("fcm", f"fcm-{i:03d}-" + "k" * 30) for i in range(PER_PLATFORM)]
    http = free_port()
    config = _config(tmp_path, broker.port, http, apns, fcm, tokens)
    log = tmp_path / "service.log"
    base = f"http://127.0.0.1:{http}"
    state: dict[str, Any] = {}

    async def poll(path: str) -> bool:
        status, body = await _get(base + path)
        state["status"], state["body"] = status, body
        return status == 200

    proc = _start(config, log)
    try:
        await _wait(lambda: poll("/health/ready"), 30, "the service to be ready", log)
        await publish(broker.port, ("home/hall/doorbell", json.dumps({"event": "ring"})))
        # Every worker ends up stuck on a request the fakes never answer.
        await wait_until(lambda: apns.stalled + fcm.stalled >= 4, 30, "the deliveries to stall")
        nid = next(r.headers["apns-collapse-id"] for r in apns.received)
        delivered_before = apns.accepted + fcm.accepted
        await _wait(
            lambda: _report_shows(poll, nid, delivered_before, state), 10, "the report to show them", log
        )
        assert state["body"]["pending"] == 2 * PER_PLATFORM - delivered_before
        in_flight = apns.stalled + fcm.stalled
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

    apns.stall_after = fcm.stall_after = None
    proc = _start(config, log)
    try:
        await _wait(
            lambda: _report_shows(poll, nid, 2 * PER_PLATFORM, state), 30, "every delivery after restart", log
        )
        report = state["body"]
        assert report["pending"] == 0 and report["failed"] == {}
        assert (
            report["platforms"]["apns"]["delivered"]
            == report["platforms"]["fcm"]["delivered"]
            == PER_PLATFORM
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        await apns.stop()
        await fcm.stop()
    accepted = Counter(r.token for r in apns.received) + Counter(s.token for s in fcm.sent)
    assert accepted == Counter(t for _, t in tokens)  # every token exactly once at the fakes
    # Sent twice: only the requests that were in flight at the kill (never answered the first time).
    assert apns.requests + len(fcm.answers) + fcm.stalled == 2 * PER_PLATFORM + in_flight
    assert f"outbox: {2 * PER_PLATFORM - delivered_before} pending deliveries" in log.read_text()
    assert {r.headers["apns-collapse-id"] for r in apns.received} == {nid}
    assert {s.message["android"]["notification"]["tag"] for s in fcm.sent} == {nid}


async def _report_shows(poll: Any, nid: str, delivered: int, state: dict[str, Any]) -> bool:
    return bool(await poll(f"/v1/notifications/{nid}")) and state["body"]["delivered"] == delivered


async def _wait(check: Any, timeout: float, what: str, log: Path) -> None:
    """Like wait_until, for async checks; the service's log goes into the failure message."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout} s waiting for {what}; log:\n{log.read_text()[-3000:]}"  # noqa: ASYNC240
            )
        await asyncio.sleep(0.05)
