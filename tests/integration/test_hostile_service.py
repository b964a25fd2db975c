"""Hostile events through a running service (issue 14): template budgets where they take effect."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import publish, service_config, start_service
from tests.support import Mosquitto, wait_until

RULES = """rules:
  - id: loop
    topic: home/{room}/bell
    title: "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}{{ room }}"
    body: "{% if room %}{{ room.nope() }}{% endif %}"
    audience: {users: [console]}
"""


async def test_a_template_over_budget_pushes_a_fallback_title_and_is_counted(
    tmp_path: Path, broker: Mosquitto
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    service, printed = await start_service(
        service_config(tmp_path, broker.port, TOCSIN_RULES__PATHS=f"[{rules}]")
    )
    try:
        await wait_until(lambda: service.source.is_connected, 10, "the service to connect")
        await publish(broker.port, ("home/hall/bell", "{}"))
        await wait_until(lambda: printed.count() >= 1, 5, "the notification")
        [line] = printed.lines()
        assert line["title"] == "loop (template error)", line
        assert "range" not in str(line) and "nope" not in str(line) and "Undefined" not in str(line)
        assert service.metrics.template_errors.get("budget") == 1
        assert service.metrics.template_errors.get("error") == 1
    finally:
        await service.__aexit__(None, None, None)


async def test_a_newline_in_a_payload_cannot_forge_a_line_of_the_text_log(
    tmp_path: Path, broker: Mosquitto
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n  - id: msg\n    topic: home/msg\n"
        '    title: "{{ payload.text }}"\n    audience: {users: [console]}\n'
    )
    config = service_config(
        tmp_path, broker.port, TOCSIN_RULES__PATHS=f"[{rules}]", TOCSIN_PROVIDERS__LOG__FORMAT="text"
    )
    service, printed = await start_service(config)
    try:
        await wait_until(lambda: service.source.is_connected, 10, "the service to connect")
        forged = "hi\n[notification] 2026-01-01 00:00:00 FIRING door (critical) to console: forged\r\x1b[2K"
        await publish(broker.port, ("home/msg", json.dumps({"text": forged})))
        await wait_until(lambda: "hi" in printed.stream.getvalue(), 5, "the notification")
        lines = printed.stream.getvalue().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].endswith(
            r"hi\n[notification] 2026-01-01 00:00:00 FIRING door (critical) to console: forged\r\x1b[2K"
        )
    finally:
        await service.__aexit__(None, None, None)


async def _closed_within(port: int, seconds: float, send: bytes = b"", drip: bytes = b"") -> bool:
    """Whether the server closes a connection that sends ``send`` and then ``drip`` a byte at a time."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(send)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        i = 0
        while loop.time() < deadline:
            if drip:
                writer.write(drip[i % len(drip) : i % len(drip) + 1])
                i += 1
            try:
                if await asyncio.wait_for(reader.read(1024), 0.1) == b"":
                    return True
            except TimeoutError:
                continue
            except ConnectionError:
                return True
        return False
    finally:
        writer.close()


async def test_idle_and_slow_clients_are_disconnected(tmp_path: Path, broker: Mosquitto) -> None:
    service, _ = await start_service(service_config(tmp_path, broker.port, TOCSIN_HTTP__KEEPALIVE_S="0.5"))
    try:
        port = service.http_port
        assert port is not None
        assert await _closed_within(port, 3), "an idle socket"
        assert await _closed_within(port, 3, b"GET /health HTTP/1.1\r\n", drip=b"X-Slow: aaaa"), (
            "slow headers"
        )
        assert await _closed_within(port, 3, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"), "keep-alive idle"
    finally:
        await service.__aexit__(None, None, None)


async def test_malformed_requests_are_logged_rate_limited_and_counted(
    tmp_path: Path, broker: Mosquitto, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    service, _ = await start_service(service_config(tmp_path, broker.port))
    try:
        for _ in range(100):
            reader, writer = await asyncio.open_connection("127.0.0.1", service.http_port)
            writer.write(b"GET /v1/alerts HTTP/1.1\r\nHost: x\r\nX-Bad: a\x00b\r\n\r\n")
            assert b" 400 " in await reader.readline()
            writer.close()
        await wait_until(lambda: service.metrics.http_malformed.get() == 100, 5, "the requests counted")
    finally:
        await service.__aexit__(None, None, None)
    server_lines = [r for r in caplog.records if r.name in ("tocsin.http", "aiohttp.server")]
    assert 1 <= len(server_lines) <= 6, [r.getMessage() for r in server_lines]
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in server_lines)
    assert "Traceback" not in capsys.readouterr().err


OPEN_RULES = """rules:
  - id: bell
    topic: home/{room}/bell
    title: "Ring {{ room }}"
    audience: {users: [console]}
  - id: hot
    topic: home/{room}/temp
    threshold: {above: 30}
    resolve_notice: false
    title: "Hot in the {{ room }}"
    audience: {users: [console]}
  - id: gone
    topic: dev/{device}/up
    absent: {for: 1h}
    title: "{{ device }} is gone"
    audience: {users: [console]}
"""


async def _open_alerts(base: str) -> tuple[float, list[str]]:
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/v1/alerts") as r:
            listed = [a["rule"] for a in (await r.json())["alerts"]]
        async with http.get(base + "/metrics") as r:
            text = await r.text()
    [gauge] = [line for line in text.splitlines() if line.startswith("tocsin_open_alerts ")]
    return float(gauge.split()[1]), listed


async def test_the_open_alerts_are_the_alerts_that_can_still_resolve(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """Event rules (a doorbell) never resolve, and a threshold without a resolve notice clears silently:
    neither stays an open alert, and the gauge counts what the list shows; devices past the per-rule limit
    are forgotten, counted."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(OPEN_RULES)
    service, printed = await start_service(
        service_config(
            tmp_path, broker.port, TOCSIN_RULES__PATHS=f"[{rules}]", TOCSIN_RULES__MAX_TRACKED_PER_RULE="3"
        )
    )
    base = f"http://127.0.0.1:{service.http_port}"
    try:
        await wait_until(lambda: service.source.is_connected, 10, "the service to connect")
        await publish(broker.port, ("home/hall/bell", "{}"), ("home/attic/temp", "35"))
        await wait_until(lambda: printed.count() >= 2, 5, "both notifications")
        assert await _open_alerts(base) == (1.0, ["hot"])
        await publish(broker.port, ("home/attic/temp", "20"))
        await wait_until(lambda: not service.state.alerts, 5, "the threshold to clear")
        assert await _open_alerts(base) == (0.0, [])
        await publish(broker.port, *((f"dev/d{i}/up", "1") for i in range(5)))
        await wait_until(lambda: service.metrics.rule_evictions.get("gone") == 2, 5, "two devices forgotten")
        assert sorted(a.labels["device"] for a in service.state.alerts.values()) == ["d2", "d3", "d4"]
        async with aiohttp.ClientSession() as http, http.get(base + "/metrics") as r:
            assert 'tocsin_rule_devices_evicted_total{rule="gone"} 2.0' in await r.text()
    finally:
        await service.__aexit__(None, None, None)


async def _read_all(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """What the server sends until it closes the connection (or ``seconds`` pass)."""
    out = b""
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(seconds):
            while chunk := await reader.read(4096):
                out += chunk
    return out


async def test_a_slow_body_is_a_408_and_the_connection_closes(tmp_path: Path, broker: Mosquitto) -> None:
    service, _ = await start_service(service_config(tmp_path, broker.port, TOCSIN_HTTP__BODY_TIMEOUT_S="0.5"))
    try:
        for path in ("/v1/registrations", "/v1/silences", "/registrations"):
            reader, writer = await asyncio.open_connection("127.0.0.1", service.http_port)
            head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            writer.write(head.encode() + b'Content-Length: 100\r\n\r\n{"provider": ')
            answer = await _read_all(reader, 5)  # nothing more is sent: the body never completes
            writer.close()
            status, _, rest = answer.partition(b"\r\n")
            assert b" 408 " in status, answer
            body = json.loads(rest.split(b"\r\n\r\n", 1)[1])
            assert body["status"] == 408 and body["error"].endswith("body_timeout"), body
            assert b"application/problem+json" in rest, answer
    finally:
        await service.__aexit__(None, None, None)


async def test_connections_per_client_address_are_capped(tmp_path: Path, broker: Mosquitto) -> None:
    service, _ = await start_service(
        service_config(tmp_path, broker.port, TOCSIN_HTTP__MAX_CONNECTIONS_PER_CLIENT="3")
    )
    try:
        held = [await asyncio.open_connection("127.0.0.1", service.http_port) for _ in range(3)]
        await wait_until(lambda: sum(service.http_connections_open().values()) == 3, 5, "three connections")
        reader, writer = await asyncio.open_connection("127.0.0.1", service.http_port)
        answer = await _read_all(reader, 5)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 429 "), answer
        body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        assert body["error"] == "too_many_connections" and body["status"] == 429, body
        assert service.metrics.http_refused.get() == 1
        held[0][1].close()
        await wait_until(lambda: sum(service.http_connections_open().values()) == 2, 5, "one closed")
        reader, writer = await asyncio.open_connection("127.0.0.1", service.http_port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await _read_all(reader, 5)).startswith(b"HTTP/1.1 200 ")
        writer.close()
        for _, w in held[1:]:
            w.close()
    finally:
        await service.__aexit__(None, None, None)
