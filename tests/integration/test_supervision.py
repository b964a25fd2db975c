"""Supervision through a running service on a real Mosquitto: hostile payloads among good events, and a task
killed by an injected exception that restarts while /health/ready names it."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from service.app import Service
from tests.conftest import RunningService, publish, service_config, start_service
from tests.support import Mosquitto, wait_until

HOSTILE: list[bytes] = [
    b"[" * 100_000,
    b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    b'{"event": "ring\xff\xfe"}',
    b"\xff\xfe\x00",
    b'{"event": "ring", "pad": "' + b"x" * 300_000 + b'"}',
    b'{"event": "ring", "battery": NaN}',
    b'{"event": "ring", "battery": 1e999}',
    b"[" + b"9" * 5000 + b"]",
]


async def test_hostile_payloads_among_good_events(
    running: RunningService, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tocsin.mqtt")
    good = [json.dumps({"event": "ring", "id": f"ring-{i}"}) for i in range(40)]
    topics = ("home/front/doorbell", "home/back/doorbell")
    mixed: list[tuple[str, bytes | str]] = []
    for i, g in enumerate(good):
        mixed.append((topics[i % 2], g))
        if i % 5 == 0:  # every hostile payload, on both topics
            mixed += [
                (topics[0], HOSTILE[(i // 5) % len(HOSTILE)]),
                (topics[1], HOSTILE[(i // 5) % len(HOSTILE)]),
            ]
    bad = len(mixed) - len(good)
    await publish(running.broker_port, *mixed)
    await wait_until(lambda: running.printed.count() == len(good), 15, "every good event notified")
    m = running.service.metrics
    await wait_until(lambda: m.payloads_malformed.get("mqtt") == bad, 5, "every bad payload counted")
    assert (
        sorted(line["labels"]["room"] for line in running.printed.lines()) == ["back"] * 20 + ["front"] * 20
    )
    url = f"http://127.0.0.1:{running.service.http_port}/metrics"
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        text = await r.text()
    assert f'tocsin_payloads_malformed_total{{source="mqtt"}} {float(bad)}' in text
    warnings = [r.getMessage() for r in caplog.records if "malformed payload" in r.getMessage()]
    assert len(warnings) == len(topics), warnings  # rate-limited: once per topic per minute
    assert any("nested deeper than 64" in w for w in warnings)
    tasks = running.service.supervisor.states()
    every = {
        "rule-timers",
        "noise-timers",
        "source-mqtt",
        "report-retention",
        "outbox-checkpoint",
    }
    assert every | {f"dispatch-{i}" for i in range(running.service.config.delivery.workers)} <= set(tasks)
    assert m.internal_errors.total() == 0 and tasks["source-mqtt"]["restarts"] == 0
    assert running.service.source.is_connected


class Gate:
    """The supervisor's restart wait, held until the test has seen the task down."""

    def __init__(self) -> None:
        self.waiting = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, delay: float) -> None:
        self.waiting.set()
        await self.release.wait()


@pytest.fixture
async def failing_noise_timers(
    tmp_path: Path, broker: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Service, asyncio.Event]]:
    """A service whose noise-timer loop raises once, when the test sets the returned event."""
    trigger = asyncio.Event()
    original = Service._noise_timers
    calls = 0

    async def once_failing(self: Service) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await trigger.wait()
            raise RuntimeError("injected failure\nin the noise timers")
        await original(self)

    monkeypatch.setattr(Service, "_noise_timers", once_failing)
    service, _ = await start_service(service_config(tmp_path, broker.port))
    try:
        await wait_until(lambda: service.source.is_connected, 10, "the service to connect")
        yield service, trigger
    finally:
        await service.__aexit__(None, None, None)


async def test_a_crashed_task_restarts_and_readiness_names_it_meanwhile(
    failing_noise_timers: tuple[Service, asyncio.Event], caplog: pytest.LogCaptureFixture
) -> None:
    service, trigger = failing_noise_timers
    caplog.set_level(logging.WARNING, logger="tocsin.supervisor")
    gate = Gate()
    service.supervisor.sleep = gate
    base = f"http://127.0.0.1:{service.http_port}"
    waiting = asyncio.create_task(service.wait())
    async with aiohttp.ClientSession() as http:

        async def ready() -> tuple[int, dict[str, object]]:
            async with http.get(base + "/health/ready") as r:
                return r.status, await r.json()

        assert (await ready())[0] == 200
        trigger.set()
        await asyncio.wait_for(gate.waiting.wait(), 10)
        status, body = await ready()
        assert status == 503
        assert body["down"] == {"noise-timers": "RuntimeError: injected failure in the noise timers"}
        assert body["tasks"]["noise-timers"]["state"] == "restarting"  # type: ignore[index]
        async with http.get(base + "/metrics") as r:
            assert 'tocsin_internal_errors_total{task="noise-timers"} 1.0' in await r.text()
        assert not waiting.done()  # a dead task does not end the service
        gate.release.set()
        deadline = asyncio.get_running_loop().time() + 10
        while (await ready())[0] != 200:
            assert asyncio.get_running_loop().time() < deadline, "still not ready after the restart"
            await asyncio.sleep(0.01)
        async with http.get(base + "/health") as r:
            health = await r.json()
    assert health["down"] == {} and health["tasks"]["noise-timers"]["restarts"] == 1
    assert health["tasks"]["noise-timers"]["state"] == "running"
    crashes = [r for r in caplog.records if "crashed" in r.getMessage()]
    assert len(crashes) == 1 and crashes[0].exc_info is not None
    assert crashes[0].exc_info[0] is RuntimeError
    service.stop()
    await asyncio.wait_for(waiting, 5)


async def test_a_failing_keepalive_ends_the_session_and_the_intake_reconnects(
    running: RunningService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The keepalive task belongs to the MQTT session: if it raises, the session ends and reconnects (counted,
    logged), rather than living on without pings until the broker drops it."""
    import paho.mqtt.client as paho

    service = running.service
    connects = service.metrics.mqtt_connects.get()
    real = paho.Client.loop_misc
    failed: list[int] = []

    def loop_misc(self: paho.Client) -> object:
        if not failed:
            failed.append(1)
            raise RuntimeError("injected")
        return real(self)

    monkeypatch.setattr(paho.Client, "loop_misc", loop_misc)
    await wait_until(
        lambda: service.metrics.internal_errors.get("mqtt_keepalive") == 1, 10, "the failure counted"
    )
    await wait_until(lambda: service.metrics.mqtt_connects.get() > connects, 15, "a new session")
    await wait_until(lambda: service.source.is_connected, 10, "connected again")
    await publish(running.broker_port, ("home/front/doorbell", json.dumps({"event": "ring"})))
    await wait_until(lambda: running.printed.count() == 1, 10, "the next event notified")
