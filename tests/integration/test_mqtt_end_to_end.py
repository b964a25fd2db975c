"""From an MQTT publish on a real Mosquitto, through the rules, to the provider."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import RunningService, publish, service_config, start_service
from tests.support import Mosquitto, wait_until


async def test_doorbell_reaches_the_provider(running: RunningService) -> None:
    await publish(running.broker_port, ("home/front/doorbell", json.dumps({"event": "ring"})))
    await wait_until(lambda: running.printed.count() == 1, 5, "the notification")
    (line,) = running.printed.lines()
    assert line["rule"] == "doorbell"
    assert line["labels"] == {"room": "front"}
    assert line["body"] == "Someone is at the front door."
    assert line["to"] == "console"
    m = running.service.metrics
    assert m.events_received.get("mqtt") == 1
    assert m.rule_matches.get("doorbell", "firing") == 1
    assert m.notifications.get("log", "delivered") == 1


async def test_condition_filters_and_plain_text_payloads(running: RunningService) -> None:
    await publish(
        running.broker_port,
        ("home/hall/doorbell", json.dumps({"event": "battery-low"})),  # condition does not hold
        ("home/hall/doorbell", "ring"),  # plain text: no 'event' field
        ("home/garden/doorbell", json.dumps({"event": "ring", "id": 7})),
    )
    await wait_until(lambda: running.service.metrics.events_received.get("mqtt") == 3, 5, "three events")
    await wait_until(lambda: running.printed.count() == 1, 5, "one notification")
    assert running.printed.lines()[0]["labels"] == {"room": "garden"}


async def test_with_an_event_id_field_a_repeated_id_notifies_once(tmp_path: Path, broker: Mosquitto) -> None:
    service, printed = await start_service(
        service_config(tmp_path, broker.port, TOCSIN_MQTT__EVENT_ID_FIELD="id")
    )
    try:
        await wait_until(lambda: service.source.is_connected, 10, "the service to connect")
        msg = ("home/front/doorbell", json.dumps({"event": "ring", "id": "abc-1"}))
        await publish(
            broker.port, msg, msg, ("home/front/doorbell", json.dumps({"event": "ring", "id": "abc-2"}))
        )
        await wait_until(lambda: service.metrics.events_received.get("mqtt") == 3, 5, "three events")
        await wait_until(lambda: printed.count() == 2, 5, "two notifications")
        assert service.metrics.suppressed.get("dedup") == 1
    finally:
        await service.__aexit__(None, None, None)


async def test_without_an_event_id_field_every_message_is_an_event(running: RunningService) -> None:
    """Devices often name themselves in "id"; genuine repeats of the same payload are events too."""
    ring = ("home/front/doorbell", json.dumps({"event": "ring", "id": "front-bell"}))
    await publish(running.broker_port, ring, ring, ring)
    await wait_until(lambda: running.printed.count() == 3, 5, "three notifications")
    assert running.service.metrics.suppressed.get("dedup") == 0
    assert len({line["episode"] for line in running.printed.lines()}) == 3


async def test_malformed_payloads_are_counted_and_do_not_stop_good_ones(running: RunningService) -> None:
    good = [("home/front/doorbell", json.dumps({"event": "ring", "id": i})) for i in range(20)]
    bad: list[tuple[str, bytes | str]] = [
        ("home/front/doorbell", b"{not json"),
        ("home/front/doorbell", b"\xff\xfe\x00"),
        ("home/back/doorbell", b"[1, 2"),
    ]
    mixed: list[tuple[str, bytes | str]] = []
    for i, g in enumerate(good):
        mixed.append(g)
        if i % 7 == 0:
            mixed.append(bad[(i // 7) % len(bad)])
    await publish(running.broker_port, *mixed)
    await wait_until(lambda: running.printed.count() == 20, 5, "all good notifications")
    m = running.service.metrics
    await wait_until(lambda: m.payloads_malformed.get("mqtt") == 3, 5, "three malformed counted")
    assert m.events_received.get("mqtt") == 23
    assert sorted(int(x["episode"] != "") for x in running.printed.lines()) == [1] * 20
    assert running.service.source.is_connected


async def test_malformed_payload_is_logged_once_per_topic_per_minute(running: RunningService, caplog) -> None:
    caplog.set_level("WARNING", logger="tocsin.mqtt")
    await publish(running.broker_port, *[("home/front/doorbell", b"{bad")] * 5, ("home/x/doorbell", b"{bad"))
    m = running.service.metrics
    await wait_until(lambda: m.payloads_malformed.get("mqtt") == 6, 5, "six malformed counted")
    lines = [r.getMessage() for r in caplog.records if "malformed payload" in r.getMessage()]
    assert len(lines) == 2, lines
    assert any("home/front/doorbell" in line for line in lines)
    assert any("home/x/doorbell" in line for line in lines)


async def test_broker_restart_mid_stream_keeps_notifying(tmp_path: Path, broker: Mosquitto) -> None:
    service, printed = await start_service(service_config(tmp_path, broker.port))
    try:
        await wait_until(lambda: service.source.is_connected, 10, "connect")
        await publish(
            broker.port, *[("home/a/doorbell", json.dumps({"event": "ring", "id": i})) for i in range(5)]
        )
        await wait_until(lambda: printed.count() == 5, 5, "five before the restart")
        broker.restart()  # persistence off: the broker forgets the session and subscriptions
        await wait_until(
            lambda: service.source.is_connected and service.metrics.mqtt_connects.get() == 2,
            10,
            "the service to reconnect and resubscribe",
        )
        await publish(
            broker.port, *[("home/a/doorbell", json.dumps({"event": "ring", "id": i})) for i in range(5, 10)]
        )
        await wait_until(lambda: printed.count() == 10, 5, "five after the restart")
        assert sorted(int(x["episode"] != "") for x in printed.lines()) == [1] * 10
        assert service.metrics.mqtt_disconnects.get() >= 1
    finally:
        await service.__aexit__(None, None, None)


async def test_persistent_session_keeps_events_published_while_disconnected(
    tmp_path: Path, persistent_broker: Mosquitto
) -> None:
    """QoS 1 on a persistent session: what is published while tocsin reconnects is queued, not lost."""
    cfg = service_config(
        tmp_path, persistent_broker.port, TOCSIN_MQTT__RECONNECT_MIN_S="1", TOCSIN_MQTT__RECONNECT_MAX_S="1"
    )
    service, printed = await start_service(cfg)
    try:
        await wait_until(lambda: service.source.is_connected, 10, "connect")
        persistent_broker.restart()
        # Published before tocsin reconnects (its retry waits at least 0.5 s): the broker queues it.
        await publish(
            persistent_broker.port, ("home/a/doorbell", json.dumps({"event": "ring", "id": "while-away"}))
        )
        assert service.metrics.mqtt_connects.get() == 1
        await wait_until(lambda: printed.count() == 1, 10, "the queued event after reconnecting")
        assert service.metrics.mqtt_connects.get() == 2
    finally:
        await service.__aexit__(None, None, None)
