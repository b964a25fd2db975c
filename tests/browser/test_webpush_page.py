"""The example Web Push page (deploy/webpush/) in a real headless Chromium: it registers its service worker,
subscribes with the VAPID key the service serves, and registers itself with tocsin; a push to its audience
is then accepted, and decrypted, by the fake push service its subscription points at.

The page is served the way the README suggests (one origin: the page's files, and tocsin's API behind a
reverse proxy). Chromium's own push client needs Google's servers, so ``push_service_shim.js`` stands in for
it (and only for it): see that file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import Browser, expect

from service.app import Service
from tests.conftest import service_config
from tests.fakes.webhook_receiver import FakeWebhookReceiver
from tests.fakes.webpush import FakeWebPush
from tests.integration.conftest import ADMIN, APP
from tests.receivers_support import SECRET, receiver_env, start_with_receivers
from tests.support import Mosquitto, wait_until

PAGE = Path(__file__).resolve().parents[2] / "deploy" / "webpush"
SHIM = Path(__file__).with_name("push_service_shim.js")


async def site(service_port: int) -> web.AppRunner:
    """The page's web site: its static files, and /v1/ proxied to tocsin."""
    http = aiohttp.ClientSession()
    upstream = f"http://127.0.0.1:{service_port}"

    async def proxy(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
        async with http.request(
            request.method, upstream + request.path_qs, data=await request.read(), headers=headers
        ) as r:
            body = await r.read()
            return web.Response(status=r.status, body=body, content_type=r.content_type)

    async def page(request: web.Request) -> web.FileResponse:
        return web.FileResponse(PAGE / "index.html")

    async def close(app: web.Application) -> None:
        await http.close()

    app = web.Application()
    app.on_cleanup.append(close)
    app.router.add_route("*", "/v1/{tail:.*}", proxy)
    app.router.add_get("/", page)
    app.router.add_static("/", PAGE)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


@pytest.fixture
async def served(tmp_path: Path, broker: Mosquitto) -> AsyncIterator[tuple[Service, FakeWebPush, str]]:
    push = await FakeWebPush(tmp_path / "push").start()
    hook = await FakeWebhookReceiver(tmp_path / "hook", SECRET).start()
    service, _ = await start_with_receivers(
        service_config(tmp_path, broker.port, **receiver_env(tmp_path, push, hook))
    )
    assert service.http_port is not None
    runner = await site(service.http_port)
    try:
        await wait_until(lambda: service.source.is_connected, 10, "the service to connect")
        yield service, push, f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
        await service.__aexit__(None, None, None)
        await hook.stop()
        await push.stop()


async def test_page_subscribes_registers_and_receives(
    served: tuple[Service, FakeWebPush, str], browser: Browser
) -> None:
    service, push, base = served
    context = await browser.new_context(ignore_https_errors=True)  # the fake's CA is not the system's
    await context.grant_permissions(["notifications"], origin=base)
    await context.add_init_script(SHIM.read_text().replace("__FAKE_ORIGIN__", push.origin))
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    await page.goto(base + "/")
    await page.fill("#api-key", APP)
    await page.fill("#user", "ann")
    await page.fill("#tags", "home browser")
    await page.click("#enable")
    await expect(page.locator("#status")).to_contain_text("Notifications are on", timeout=15_000)
    assert errors == []

    # The service worker is installed and active; the subscription it made is the one tocsin stored.
    active = await page.evaluate(
        "navigator.serviceWorker.getRegistration().then(r => Boolean(r && r.active))"
    )
    assert active
    [sub] = push.remote_subscriptions
    stored = await service.store.get("webpush", sub.endpoint)
    assert stored is not None and stored.user_id == "ann" and set(stored.tags) == {"home", "browser"}
    assert stored.p256dh == sub.p256dh and stored.auth == sub.auth_b64 and stored.app == "com.example.alarms"

    # A push to the page's audience: the fake decrypts it with the browser's own private key.
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"http://127.0.0.1:{service.http_port}/v1/push",
            json={"audience": {"tags": "browser"}, "title": "Smoke in the kitchen", "body": "Check now"},
            headers={"Authorization": f"Bearer {ADMIN}"},
        ) as r,
    ):
        assert r.status == 202, await r.text()
    await wait_until(lambda: len(push.for_subscription(sub)) == 1, 15, "the push at the fake")
    [got] = push.for_subscription(sub)
    assert got.message["title"] == "Smoke in the kitchen" and got.message["body"] == "Check now"

    # Turning it off unregisters it.
    await page.click("#disable")
    await expect(page.locator("#status")).to_contain_text("Notifications are off", timeout=10_000)
    assert await service.store.get("webpush", sub.endpoint) is None
    await context.close()
