"""Pending ``for`` timers and open alerts survive a restart of the service."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from tests.conftest import publish, service_config, start_service
from tests.support import Mosquitto, wait_until

RULES = """rules:
  - id: hot
    topic: servers/{host}/cpu
    threshold: {value: v, above: 90, clear: 80, for: 2s}
    title: "{{ host }} {{ state }}"
    audience: {tags: [ops]}
  - id: crash
    topic: servers/{host}/proc
    change: {from: [running], to: [crashed]}
    title: "{{ host }} crashed"
    audience: {tags: [ops]}
"""


async def test_pending_timer_and_open_alert_survive_a_restart(tmp_path: Path, broker: Mosquitto) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    config = service_config(tmp_path, broker.port, TOCSIN_RULES__PATHS=f"[{rules}]")

    first, _ = await start_service(config)
    try:
        await wait_until(lambda: first.source.is_connected, 10, "the first service to connect")
        await publish(
            broker.port, ("servers/a/cpu", '{"id": "opening", "v": 95}'), ("servers/a/proc", "running")
        )
        await wait_until(lambda: len(first.state.alerts) == 1 and len(first.state.values) == 1, 5, "pending")
        [alert] = first.state.alerts.values()
        assert alert.status == "pending"
    finally:
        await first.__aexit__(None, None, None)  # stops before the two seconds of 'for' are over

    second, printed = await start_service(config)
    try:
        await wait_until(lambda: second.source.is_connected, 10, "the second service to connect")
        # the timer came back from disk and fires: the episode is the event the first instance saw
        await wait_until(lambda: printed.count() == 1, 5, "the firing notification after the restart")
        fired = printed.lines()[0]
        assert (fired["rule"], fired["state"], fired["title"]) == ("hot", "firing", "a firing")
        await publish(broker.port, ("servers/a/proc", "crashed"))  # the state before the restart counts
        await wait_until(lambda: printed.count() == 2, 5, "the crash notification")
        assert printed.lines()[1]["title"] == "a crashed"
    finally:
        await second.__aexit__(None, None, None)

    third, printed = await start_service(config)
    try:
        await wait_until(lambda: third.source.is_connected, 10, "the third service to connect")
        await publish(broker.port, ("servers/a/cpu", '{"v": 50}'))
        await wait_until(lambda: printed.count() == 1, 5, "the resolve notification")
        resolved = printed.lines()[0]
        assert (resolved["state"], resolved["episode"], resolved["alert_id"]) == (
            "resolved",
            fired["episode"],
            fired["alert_id"],
        )
    finally:
        await third.__aexit__(None, None, None)


async def test_silences_survive_a_restart(tmp_path: Path, broker: Mosquitto) -> None:
    config = service_config(tmp_path, broker.port)
    first, _ = await start_service(config)
    try:
        async with aiohttp.ClientSession() as http:
            body = {"matchers": {"rule": "doorbell"}, "duration": "1h", "comment": "holiday"}
            async with http.post(f"http://127.0.0.1:{first.http_port}/v1/silences", json=body) as r:
                assert r.status == 201
    finally:
        await first.__aexit__(None, None, None)
    second, _ = await start_service(config)
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{second.http_port}/v1/silences") as r,
        ):
            assert [s["comment"] for s in (await r.json())["silences"]] == ["holiday"]
    finally:
        await second.__aexit__(None, None, None)
