"""Noise control in a running service: repeats and escalation stopped by acknowledgement over HTTP, silences
created and deleted over HTTP."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from tests.conftest import publish, service_config, start_service
from tests.support import Mosquitto, wait_until

RULES = """rules:
  - id: leak
    topic: home/{room}/leak
    threshold: {above: 0}
    repeat: 200ms
    escalate:
      - {after: 300ms, audience: {users: [console]}}
    title: "Leak in the {{ room }}"
    audience: {tags: [home]}
  - id: bell
    topic: home/{room}/doorbell
    title: "Ring {{ room }}"
    audience: {tags: [home]}
"""


async def test_ack_stops_repeats_and_escalation_and_silences_mute(tmp_path: Path, broker: Mosquitto) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    service, printed = await start_service(
        service_config(tmp_path, broker.port, TOCSIN_RULES__PATHS=f"[{rules}]")
    )
    base = f"http://127.0.0.1:{service.http_port}"
    try:
        await wait_until(lambda: service.source.is_connected, 10, "the service to connect")
        await publish(broker.port, ("home/cellar/leak", "1"))
        # first notification, repeats every 200 ms, one escalation after 300 ms
        await wait_until(lambda: printed.count() >= 3, 5, "the notification, a repeat and the escalation")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/v1/alerts") as r:
                [alert] = (await r.json())["alerts"]
            assert alert["rule"] == "leak" and alert["acknowledged"] is False
            async with http.post(f"{base}/v1/alerts/{alert['id']}/ack", json={"by": "ann"}) as r:
                assert r.status == 200 and (await r.json())["by"] == "ann"
            async with http.post(f"{base}/v1/alerts/nope/ack") as r:
                assert r.status == 404
            # once acknowledged, the pending repeat finds nothing to do and nothing is scheduled again
            await wait_until(lambda: service.noise.next_deadline() is None, 5, "the repeats to stop")
            await service.dispatcher.drain()
            count = printed.count()
            titles = {line["title"] for line in printed.lines()}
            assert titles == {"Leak in the cellar"}

            async with http.post(f"{base}/v1/silences", json={"matchers": {"room": "hall"}}) as r:
                assert r.status == 400 and "duration" in (await r.json())["message"]
            body = {"matchers": {"rule": "bell", "room": "~^ha"}, "duration": "1h", "comment": "party"}
            async with http.post(f"{base}/v1/silences", json=body) as r:
                assert r.status == 201
                silence = await r.json()
            await publish(broker.port, ("home/hall/doorbell", "ring"))
            await wait_until(lambda: service.metrics.suppressed.get("silence") == 1, 5, "the silenced ring")
            async with http.get(f"{base}/v1/silences") as r:
                assert [s["comment"] for s in (await r.json())["silences"]] == ["party"]
            async with http.delete(f"{base}/v1/silences/{silence['id']}") as r:
                assert r.status == 204
            await publish(broker.port, ("home/hall/doorbell", "ring again"))
            await wait_until(lambda: printed.count() == count + 1, 5, "the ring after the silence")
            assert printed.lines()[-1]["title"] == "Ring hall"
    finally:
        await service.__aexit__(None, None, None)


async def test_configured_rate_limit_ends_with_one_summary_and_quiet_hours_hold(
    tmp_path: Path, broker: Mosquitto
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    service, printed = await start_service(
        service_config(
            tmp_path,
            broker.port,
            TOCSIN_RULES__PATHS=f"[{rules}]",
            TOCSIN_NOTIFY__RATE_LIMIT='{"max": 2, "per_s": 0.5}',
        )
    )
    try:
        await wait_until(lambda: service.source.is_connected, 10, "the service to connect")
        await publish(broker.port, *[("home/hall/doorbell", f'{{"id": {i}}}') for i in range(5)])
        await wait_until(lambda: printed.count() == 3, 5, "two rings and the summary")
        assert [line["title"] for line in printed.lines()] == ["Ring hall", "Ring hall", "… and 3 more"]
        assert service.metrics.suppressed.get("rate_limit") == 3
    finally:
        await service.__aexit__(None, None, None)

    # quiet all day long (00:00 to 23:59:59 in the registration's zone, UTC by default): nothing is delivered
    service, printed = await start_service(
        service_config(
            tmp_path,
            broker.port,
            TOCSIN_RULES__PATHS=f"[{rules}]",
            TOCSIN_NOTIFY__QUIET_HOURS='{"start": "00:00", "end": "23:59:59"}',
        )
    )
    try:
        await wait_until(lambda: service.source.is_connected, 10, "the service to connect")
        await publish(broker.port, ("home/hall/doorbell", '{"id": "q"}'))
        await wait_until(lambda: service.metrics.suppressed.get("quiet_hours") == 1, 5, "the held ring")
        assert printed.count() == 0
    finally:
        await service.__aexit__(None, None, None)
