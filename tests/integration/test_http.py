"""The HTTP server of a running service: health (liveness and readiness) and Prometheus metrics."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp

from tests.conftest import RunningService, publish, service_config, start_service
from tests.support import Mosquitto, wait_until


def url(rs: RunningService, path: str) -> str:
    return f"http://127.0.0.1:{rs.service.http_port}{path}"


async def test_health_reports_broker_and_providers(running: RunningService) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(url(running, "/health")) as r:
            assert r.status == 200
            body = await r.json()
        async with http.get(url(running, "/health/ready")) as r:
            assert r.status == 200
    assert body["status"] == "ok"
    assert body["broker"]["connected"] is True
    assert body["providers"] == {"log": {"degraded": None}}


async def test_metrics_in_prometheus_text_format(running: RunningService) -> None:
    await publish(
        running.broker_port,
        ("home/front/doorbell", json.dumps({"event": "ring"})),
        ("home/front/doorbell", b"{oops"),
    )
    await wait_until(lambda: running.printed.count() == 1, 5, "notification")
    await wait_until(lambda: running.service.metrics.payloads_malformed.get("mqtt") == 1, 5, "malformed")
    async with aiohttp.ClientSession() as http, http.get(url(running, "/metrics")) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await r.text()
    assert 'tocsin_events_received_total{source="mqtt"} 2.0' in text
    assert 'tocsin_payloads_malformed_total{source="mqtt"} 1.0' in text
    assert 'tocsin_rule_matches_total{rule="doorbell",state="firing"} 1.0' in text
    assert 'tocsin_notifications_total{outcome="delivered",provider="log"} 1.0' in text
    assert "tocsin_mqtt_connected 1.0" in text
    assert "# TYPE tocsin_events_received_total counter" in text


async def test_not_ready_and_degraded_while_the_broker_is_down(tmp_path: Path, broker: Mosquitto) -> None:
    service, _ = await start_service(
        service_config(tmp_path, broker.port, TOCSIN_MQTT__RECONNECT_MIN_S="0.2")
    )
    try:
        await wait_until(lambda: service.source.is_connected, 10, "connect")
        broker.stop()
        await wait_until(lambda: not service.source.is_connected, 10, "the disconnect to be seen")
        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{service.http_port}"
            async with http.get(base + "/health") as r:
                assert r.status == 200  # alive: do not restart the pod for a broker outage
                body = await r.json()
            async with http.get(base + "/health/ready") as r:
                assert r.status == 503
        assert body["status"] == "degraded" and body["broker"]["connected"] is False
        assert body["broker"]["error"]
        broker.start()
        await wait_until(lambda: service.source.is_connected, 10, "reconnect")
    finally:
        await service.__aexit__(None, None, None)


async def test_provider_config_error_shows_as_degraded(running: RunningService) -> None:
    running.service.dispatcher.config_errors["log"] = "InvalidProviderToken"
    body = running.service.health()
    assert body["status"] == "degraded"
    assert body["providers"] == {"log": {"degraded": "InvalidProviderToken"}}
