"""Webhook and Web Push registrations through the running service: registered over the API (URLs checked),
reached by a rule fired over MQTT, by ``POST /v1/push`` and by ``tocsin push``; the fakes see the bytes."""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from service.providers import webhook_body
from tests.conftest import publish, service_config
from tests.fakes.webhook_receiver import FakeWebhookReceiver
from tests.fakes.webpush import FakeWebPush, Subscription, unb64url
from tests.integration.conftest import ADMIN, Api
from tests.integration.test_cli_api import tocsin
from tests.receivers_support import SECRET, receiver_env, start_with_receivers
from tests.support import Mosquitto, wait_until, wait_until_async


@dataclass
class Receivers:
    api: Api
    push: FakeWebPush
    hook: FakeWebhookReceiver
    public_key: str

    def subscribe(self) -> Subscription:
        return self.push.subscribe(application_server_key=unb64url(self.public_key))

    async def register_push(self, sub: Subscription, **fields: Any) -> tuple[int, Any]:
        return await self.api.call(
            "POST", "/v1/registrations", {"provider": "webpush", "subscription": sub.json, **fields}
        )

    async def register_hook(self, path: str, **fields: Any) -> tuple[int, Any]:
        url = f"{self.hook.url}{path}"
        return await self.api.call(
            "POST", "/v1/registrations", {"provider": "webhook", "token": url, **fields}
        )


@pytest.fixture
async def receivers(tmp_path: Path, broker: Mosquitto) -> AsyncIterator[Receivers]:
    push = await FakeWebPush(tmp_path / "push").start()
    hook = await FakeWebhookReceiver(tmp_path / "hook", SECRET).start()
    config = service_config(tmp_path, broker.port, **receiver_env(tmp_path, push, hook))
    service, printed = await start_with_receivers(config)
    try:
        await wait_until(lambda: service.source.is_connected, 10, "the service to connect")
        async with aiohttp.ClientSession() as http:
            api = Api(service, printed, http)
            status, doc = await api.call("GET", "/v1/webpush/vapid-public-key", key=None)
            assert status == 200, doc
            yield Receivers(api, push, hook, doc["public_key"])
    finally:
        await service.__aexit__(None, None, None)
        await hook.stop()
        await push.stop()


async def test_a_rule_reaches_a_browser_and_a_webhook(receivers: Receivers, broker: Mosquitto) -> None:
    r = receivers
    sub_en, sub_de = r.subscribe(), r.subscribe()
    status, saved = await r.register_push(sub_en, tags=["home"], user_id="ann")
    assert status == 201, saved
    assert saved["provider"] == "webpush" and saved["token"] == sub_en.endpoint
    assert saved["p256dh"] == sub_en.p256dh and "auth" not in saved  # the auth secret is never shown
    assert (await r.register_push(sub_de, tags=["home"], locale="de-AT"))[0] == 201
    status, hook_reg = await r.register_hook("/hooks/home", tags=["home"], user_id="ann")
    assert status == 201, hook_reg

    await publish(broker.port, ("home/front/doorbell", '{"event": "ring"}'))
    await wait_until(lambda: len(r.push.received) == 2 and len(r.hook.posted) == 1, 15, "both receivers")

    en, de = r.push.for_subscription(sub_en)[0], r.push.for_subscription(sub_de)[0]
    assert en.message["title"] == "Doorbell: front" and en.message["body"] == "Someone is at the front door."
    assert de.message["title"] == "Es klingelt: front"
    assert en.topic == "doorbell-front" and en.message["tag"] == "doorbell-front"
    # severity info: priority normal (major and critical are high), sent as Urgency: normal
    assert en.urgency == "normal" and en.ttl > 0 and en.message["rule"] == "home-doorbell"
    assert en.message["data"] == {"link": "myhome://camera/front"}
    assert en.claims["aud"] == r.push.origin and en.headers["Authorization"].startswith("vapid t=")
    assert en.headers["Authorization"].endswith(r.public_key)

    [posted] = r.hook.posted
    body = posted.body
    assert posted.path == "/hooks/home" and body["version"] == "tocsin.webhook/1"
    assert (
        body["status"] == "firing" and body["rule"] == "home-doorbell" and body["labels"]["room"] == "front"
    )
    assert body["title"] == "Doorbell: front" and body["collapse_key"] == "doorbell-front"
    assert body["receiver"]["id"] == hook_reg["id"] and body["receiver"]["user_id"] == "ann"
    ts, sig = posted.headers["Tocsin-Timestamp"], posted.headers["Tocsin-Signature"]
    assert webhook_body.verify(SECRET, ts, posted.raw, sig, time.time())
    assert body["nid"] == posted.headers["Tocsin-Delivery"] == en.message["nid"]

    # One delivery report for all three, each registration delivered.
    status, report = await r.api.call("GET", f"/v1/notifications/{body['nid']}")
    # the two browsers, the webhook, and the console's log registration (also tagged home)
    assert status == 200 and report["delivered"] == 4 and report["pending"] == 0, report


async def test_push_api_and_cli_target_receivers_by_platform(receivers: Receivers) -> None:
    r = receivers
    sub = r.subscribe()
    assert (await r.register_push(sub, tags=["ops"]))[0] == 201
    assert (await r.register_hook("/ops", tags=["ops"]))[0] == 201
    status, answer = await r.api.call(
        "POST",
        "/v1/push",
        {"audience": {"tags": "ops", "platforms": ["webhook"]}, "title": "Disk full", "body": "95 %"},
    )
    assert status == 202, answer
    await wait_until(lambda: len(r.hook.posted) == 1, 10, "the webhook post")
    assert r.hook.posted[0].body["title"] == "Disk full" and r.push.received == []

    code, out, err = await tocsin(
        "push", "--tags", "ops", "--platform", "webpush", "--title", "From the CLI", "--wait",
        "--url", r.api.base, key=ADMIN,
    )  # fmt: skip
    assert code == 0, err
    [got] = r.push.received
    assert got.message["title"] == "From the CLI" and "delivered" in out
    assert len(r.hook.posted) == 1


async def test_cli_registers_a_subscription_file_and_a_webhook(receivers: Receivers, tmp_path: Path) -> None:
    r = receivers
    sub = r.subscribe()
    path = tmp_path / "subscription.json"
    path.write_text(json.dumps({**sub.json, "expirationTime": None}))
    url = ("--url", r.api.base)
    code, out, err = await tocsin(
        "registrations", "add", "webpush", "--subscription", str(path), "--tag", "cli", *url, key=ADMIN
    )
    assert code == 0 and out.startswith(f"registered webpush {sub.endpoint}"), err
    code, out, err = await tocsin(
        "registrations", "add", "webhook", f"{r.hook.url}/cli", "--tag", "cli", *url, key=ADMIN
    )
    assert code == 0, err
    code, out, err = await tocsin(
        "registrations", "add", "webhook", "https://10.0.0.1/x", "--tag", "cli", *url, key=ADMIN
    )
    assert code != 0 and "allow-list" in err
    _, page = await r.api.call("GET", "/v1/registrations?tags=cli")
    assert sorted(i["provider"] for i in page["items"]) == ["webhook", "webpush"]
    stored = await r.api.service.store.get("webpush", sub.endpoint)
    assert stored is not None and stored.p256dh == sub.p256dh and stored.auth == sub.auth_b64


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"provider": "webhook", "token": "https://10.0.0.7/hook"}, "allow-list"),
        ({"provider": "webhook", "token": "http://127.0.0.1/hook"}, "https://"),
        ({"provider": "webhook", "token": "https://u:p@127.0.0.1/hook"}, "credentials"),
        ({"provider": "webpush", "token": "https://fcm.googleapis.com/x"}, "subscription"),
    ],
)
async def test_registrations_that_would_post_elsewhere_are_refused(
    receivers: Receivers, body: dict[str, Any], reason: str
) -> None:
    status, answer = await receivers.api.call("POST", "/v1/registrations", body)
    assert status == 400 and reason in json.dumps(answer), answer


async def test_subscription_checks(receivers: Receivers) -> None:
    r = receivers
    sub = r.subscribe()
    elsewhere = {**sub.json, "endpoint": "https://push.example.net/x"}
    status, answer = await r.api.call(
        "POST", "/v1/registrations", {"provider": "webpush", "subscription": elsewhere}
    )
    assert status == 400 and "allow-list" in answer["message"], answer
    off_curve = sub.p256dh[:-2] + ("AA" if sub.p256dh[-2:] != "AA" else "AQ")
    bad_key = {**sub.json, "keys": {"p256dh": off_curve, "auth": sub.auth_b64}}
    status, answer = await r.api.call(
        "POST", "/v1/registrations", {"provider": "webpush", "subscription": bad_key}
    )
    assert status == 400 and "P-256 curve" in json.dumps(answer), answer
    compressed = {**sub.json, "keys": {"p256dh": "A" + sub.p256dh[1:], "auth": sub.auth_b64}}
    status, answer = await r.api.call(
        "POST", "/v1/registrations", {"provider": "webpush", "subscription": compressed}
    )
    assert status == 400 and "uncompressed" in json.dumps(answer), answer
    short_auth = {**sub.json, "keys": {"p256dh": sub.p256dh, "auth": sub.auth_b64[:-4]}}
    status, answer = await r.api.call(
        "POST", "/v1/registrations", {"provider": "webpush", "subscription": short_auth}
    )
    assert status == 400 and "auth" in json.dumps(answer), answer
    assert await r.api.service.store.get("webpush", sub.endpoint) is None


async def test_gone_subscription_and_webhook_are_disabled(receivers: Receivers) -> None:
    r = receivers
    sub = r.subscribe()
    assert (await r.register_push(sub, tags=["gone"]))[0] == 201
    assert (await r.register_hook("/gone", tags=["gone"]))[0] == 201
    r.push.unsubscribe(sub)
    r.hook.fail_next.append((410, None))
    status, _ = await r.api.call("POST", "/v1/push", {"audience": {"tags": "gone"}, "title": "x"})
    assert status == 202

    async def disabled() -> bool:
        regs = [
            await r.api.service.store.get("webpush", sub.endpoint),
            await r.api.service.store.get("webhook", f"{r.hook.url}/gone"),
        ]
        return [x.state if x else "missing" for x in regs] == ["invalid", "invalid"]

    await wait_until_async(disabled, 10, "both registrations disabled")
    quoted = urllib.parse.quote(sub.endpoint, safe="")
    status, doc = await r.api.call("GET", f"/v1/registrations/webpush/{quoted}")
    assert status == 200 and doc["state"] == "invalid"
