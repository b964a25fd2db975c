"""Webhook decisions against a real local aiohttp server: changes, "don't send", timeouts and bad answers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from rules.engine import EngineState, RuleEngine, compile_rules
from rules.event import Event
from rules.loader import parse_rule_text
from service.notify.model import Notification
from service.notify.pipeline import to_notification
from service.notify.webhook import WebhookDecider
from tests.conftest import publish, service_config, start_service
from tests.support import Mosquitto, wait_until


class UserServer:
    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.release = asyncio.Event()
        self.port = 0

    async def decide(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.received.append(body)
        kind = request.match_info["kind"]
        if kind == "change":
            n = body["notification"]
            return web.json_response(
                {
                    "send": True,
                    "changes": {
                        "title": f"{n['title']} (at home)",
                        "priority": "normal",
                        "audience": {"users": ["ann"]},
                        "data": {"link": "app://x"},
                    },
                }
            )
        if kind == "retitle":
            return web.json_response({"changes": {"title": "checked: " + body["notification"]["title"]}})
        if kind == "drop":
            return web.json_response({"send": False})
        if kind == "same":
            return web.Response(status=204)
        if kind == "slow":
            await self.release.wait()  # answers only after the test let it: beyond any timeout
            return web.json_response({"send": False})
        if kind == "bad":
            return web.json_response({"send": True, "changes": {"alert_id": "mine"}})
        return web.Response(status=500)


@pytest.fixture
async def user_server() -> AsyncIterator[UserServer]:
    server = UserServer()
    app = web.Application()
    app.router.add_post("/decide/{kind}", server.decide)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield server
    finally:
        server.release.set()
        await runner.cleanup()


def notification(port: int, kind: str, default: str = "send") -> Notification:
    rules, errors = parse_rule_text(
        "rules:\n  - id: bell\n    topic: home/{room}/bell\n    severity: major\n"
        "    title: 'Ring {{ room }}'\n"
        f"    webhook: {{url: 'http://127.0.0.1:{port}/decide/{kind}', timeout: 300ms, default: {default}}}\n"
        "    audience: {tags: [home]}\n",
        "w.yaml",
    )
    assert errors == []
    _, [t] = RuleEngine(compile_rules(rules)).evaluate(
        Event("e1", "mqtt", "home/front/bell", None, 0, {}), EngineState(), 0
    )
    return to_notification(t, 0)


async def test_server_changes_the_notification(user_server: UserServer) -> None:
    decider = WebhookDecider()
    try:
        got = await decider.decide(notification(user_server.port, "change"))
    finally:
        await decider.close()
    assert got is not None
    assert (got.title, got.options.priority, got.audience.users, got.audience.tags, dict(got.data)) == (
        "Ring front (at home)",
        "normal",
        ("ann",),
        (),
        {"link": "app://x"},
    )
    sent = user_server.received[0]["notification"]
    assert (sent["rule"], sent["labels"], sent["priority"]) == ("bell", {"room": "front"}, "high")


async def test_server_says_do_not_send_or_leaves_it_unchanged(user_server: UserServer) -> None:
    decider = WebhookDecider()
    try:
        assert await decider.decide(notification(user_server.port, "drop")) is None
        same = notification(user_server.port, "same")
        assert await decider.decide(same) is same
    finally:
        await decider.close()
    assert decider.outcomes == {"dropped": 1, "unchanged": 1}


@pytest.mark.parametrize("kind", ["slow", "bad", "error"])
async def test_timeout_or_bad_answer_falls_back_to_the_rules_default(
    user_server: UserServer, kind: str
) -> None:
    decider = WebhookDecider()
    try:
        sent = notification(user_server.port, kind, default="send")
        assert await decider.decide(sent) is sent
        assert await decider.decide(notification(user_server.port, kind, default="drop")) is None
    finally:
        await decider.close()
    assert decider.outcomes == {"fallback": 2}
    assert len(user_server.received) == 2 and json.dumps(user_server.received[0])


async def test_service_asks_the_server_before_sending(
    user_server: UserServer, tmp_path: Path, broker: Mosquitto
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n  - id: bell\n    topic: home/{room}/bell\n    title: 'Ring {{ room }}'\n"
        f"    webhook: {{url: 'http://127.0.0.1:{user_server.port}/decide/retitle'}}\n"
        "    audience: {tags: [home]}\n"
        "  - id: quiet-bell\n    topic: home/{room}/quiet\n    title: 'Hush'\n"
        f"    webhook: {{url: 'http://127.0.0.1:{user_server.port}/decide/drop'}}\n"
        "    audience: {tags: [home]}\n"
    )
    service, printed = await start_service(
        service_config(tmp_path, broker.port, TOCSIN_RULES__PATHS=f"[{rules}]")
    )
    try:
        await wait_until(lambda: service.source.is_connected, 10, "the service to connect")
        await publish(broker.port, ("home/hall/quiet", "x"), ("home/front/bell", "x"))
        await wait_until(lambda: printed.count() == 1, 5, "the notification")
        assert printed.lines()[0]["title"] == "checked: Ring front"
        await wait_until(lambda: service.metrics.suppressed.get("webhook") == 1, 5, "the dropped one")
    finally:
        await service.__aexit__(None, None, None)
