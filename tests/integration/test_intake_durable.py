"""The MQTT intake acknowledges only what is durable, and recognises a redelivery from durable state."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import paho.mqtt.client as paho
import pytest

from tests.conftest import publish, service_config, start_service
from tests.support import Mosquitto, free_port, wait_until


async def test_a_message_committed_whose_puback_was_lost_is_not_sent_again_after_a_restart(
    tmp_path: Path, broker: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The window between commit and PUBACK: the events were handled and committed, the acknowledgements
    never reached the broker (here: never sent), the process goes. The broker delivers them again (DUP) to
    the restarted service, which finds them in its acknowledgement record and sends nothing twice."""
    env = {"TOCSIN_INSTANCE__ID": f"durable-{free_port()}"}
    lost_acks: list[int] = []
    with monkeypatch.context() as m:
        m.setattr(paho.Client, "ack", lambda self, mid, qos: lost_acks.append(mid))
        service, printed = await start_service(service_config(tmp_path, broker.port, **env))
        try:
            await wait_until(lambda: service.source.is_connected, 10, "the service to connect")
            rings = [("home/front/doorbell", json.dumps({"event": "ring", "n": i})) for i in range(5)]
            await publish(broker.port, *rings)
            await wait_until(lambda: printed.count() == 5, 10, "five notifications")
            await wait_until(lambda: len(lost_acks) == 5, 10, "five acknowledgements (lost)")
        finally:
            await service.__aexit__(None, None, None)
    service, printed = await start_service(service_config(tmp_path, broker.port, **env))
    try:
        dup = service.metrics.duplicates
        await wait_until(lambda: dup.get("mqtt", "redelivered") == 5, 10, "the five redeliveries")
        await publish(broker.port, ("home/front/doorbell", json.dumps({"event": "ring", "n": 99})))
        await wait_until(lambda: printed.count() == 1, 10, "the new event's notification")
        assert printed.lines()[0]["rule"] == "doorbell"
        assert service.metrics.events_received.get("mqtt") == 6
    finally:
        await service.__aexit__(None, None, None)


async def test_a_stalled_provider_leaves_the_backlog_with_the_broker(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """Backpressure: nothing is acknowledged while deliveries cannot be queued, so the broker stops sending
    at the receive maximum and keeps the rest; once the provider moves, every event is notified."""
    config = service_config(
        tmp_path,
        broker.port,
        TOCSIN_MQTT__MAX_INFLIGHT="50",
        TOCSIN_MQTT__BATCH_MAX="10",
        TOCSIN_NOTIFY__QUEUE_SIZE="100",
        TOCSIN_DELIVERY__WORKERS="1",
    )
    service, printed = await start_service(config)
    gate = asyncio.Event()
    provider: Any = service.providers["log"]
    send = provider.send

    async def stalled(delivery: Any) -> Any:
        await gate.wait()
        return await send(delivery)

    provider.send = stalled
    try:
        await wait_until(lambda: service.source.is_connected, 10, "the service to connect")
        total = 2000
        await publish(
            broker.port,
            *[("home/front/doorbell", json.dumps({"event": "ring", "n": i})) for i in range(total)],
        )
        received = service.metrics.events_received
        # 1 in the worker + 100 queued + one blocked submit; then at most the receive maximum waits unacked.
        await wait_until(lambda: received.get("mqtt") >= 100, 10, "the queue to fill")
        bound = 1 + 100 + 1 + 50 + 10
        await wait_until(service.dispatcher.queue.full, 10, "the dispatcher's queue to fill")
        # Watch for a second (an observation window, not a synchronisation): the intake takes no more.
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            seen = received.get("mqtt")
            assert seen <= bound, f"{seen} messages taken in while the provider was stalled (bound {bound})"
            await asyncio.sleep(0.01)
        assert printed.count() == 0
        gate.set()
        await wait_until(lambda: printed.count() == total, 60, "every event notified once the provider moved")
        url = f"http://127.0.0.1:{service.http_port}/health"
        async with aiohttp.ClientSession() as http, http.get(url) as r:
            assert (await r.json())["broker"]["unacknowledged"] == 0
    finally:
        gate.set()
        await service.__aexit__(None, None, None)
