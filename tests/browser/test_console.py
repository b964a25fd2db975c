"""The web console in a real headless Chromium against a running service and a real Mosquitto: sign in, an
alert fires after an MQTT publish and appears without a reload, silence it from the page, the next publish
stays quiet (and says why), acknowledge, read a delivery report; every page is photographed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Dialog, Page, expect

from service.app import Service
from tests.conftest import (
    Printed,
    RunningService,
    acknowledgeable_examples,
    publish,
    service_config,
    start_service,
)
from tests.support import Mosquitto, wait_until

ADMIN = "console-admin-key-0123456789"
KEYS = json.dumps([{"name": "ops", "role": "admin", "api_key": ADMIN}])


@pytest.fixture
async def served(tmp_path: Path, broker: Mosquitto) -> AsyncIterator[tuple[Service, Printed]]:
    rules = acknowledgeable_examples(tmp_path)
    service, printed = await start_service(
        service_config(tmp_path, broker.port, TOCSIN_API__KEYS=KEYS, TOCSIN_RULES__PATHS=f"[{rules}]")
    )
    try:
        await wait_until(lambda: service.source.is_connected, 10, "the service to connect")
        yield service, printed
    finally:
        await service.__aexit__(None, None, None)


async def sign_in(page: Page, base: str, key: str = ADMIN) -> None:
    await page.goto(f"{base}/ui/")
    await page.fill("#login-key", key)
    await page.click("#login-submit")


async def test_fire_silence_acknowledge_report(
    served: tuple[Service, Printed], broker: Mosquitto, browser: Browser, shots: Path
) -> None:
    service, printed = served
    base = f"http://127.0.0.1:{service.http_port}"
    page = await browser.new_page(viewport={"width": 1280, "height": 860})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    # A wrong key is refused on the page; the right one opens the alerts.
    await sign_in(page, base, "not-the-key-0000000000")
    await expect(page.locator("#login-error")).to_contain_text("not accepted")
    await sign_in(page, base)
    await expect(page.locator("#page")).to_contain_text("All quiet")
    await expect(page.locator("#login")).to_be_hidden()
    await expect(page.locator("#live")).to_have_class("live on")

    # A ring: the alert appears without reloading, through the event stream.
    # (each ring carries its own seq: identical messages within the coalescing window are one event)
    await publish(broker.port, ("home/front/doorbell", '{"event": "ring", "seq": 1}'))
    firing = page.locator('[data-rule="doorbell"] [data-state="firing"]')
    await expect(firing).to_have_count(1, timeout=10_000)
    await expect(firing).to_contain_text("room=front")
    await wait_until(lambda: printed.count() == 1, 10, "the first ring's notification")
    await page.fill("#filter-text", "room=back")
    await expect(page.locator("#alert-groups")).to_contain_text("No alert matches")
    await page.fill("#filter-text", "room=front")
    await expect(firing).to_have_count(1)
    await page.fill("#filter-text", "")
    await expect(page.locator("#chart")).to_contain_text("delivered 1", timeout=10_000)
    await page.screenshot(path=str(shots / "console-alerts.png"), full_page=True)

    # Silence it from the alert: the matchers are prefilled and the preview shows what it mutes.
    await firing.locator("button.silence").click()
    await expect(page.locator("#silence-matchers")).to_have_value("rule=doorbell\nroom=front")
    await expect(page.locator("#silence-preview")).to_contain_text("Would mute 1 firing alert")
    await page.fill("#silence-comment", "party tonight")
    await page.click("#silence-create")
    await expect(page.locator("#flash")).to_contain_text("created")
    active = page.locator("tr[data-silence]")
    await expect(active).to_have_count(1)
    await expect(active).to_contain_text("party tonight")
    (silence,) = service.noise.silences.list(service.clock.time())
    assert silence.matchers == {"rule": "doorbell", "room": "front"} and silence.comment == "party tonight"
    await page.screenshot(path=str(shots / "console-silences.png"), full_page=True)

    # The next ring stays quiet, and the console says why.
    await publish(broker.port, ("home/front/doorbell", '{"event": "ring", "seq": 2}'))
    await wait_until(
        lambda: any(s.stage == "silence" for s in service.explainer.recent), 10, "the second ring to be held"
    )
    assert printed.count() == 1
    held = next(s for s in service.explainer.recent if s.stage == "silence")
    assert silence.id in held.reason and "party tonight" in held.reason

    # Acknowledge from the alerts page (the prompt asks for a comment).
    await page.click('#nav a[data-page="alerts"]')

    async def answer(dialog: Dialog) -> None:
        await dialog.accept("on my way")

    page.once("dialog", answer)
    await page.locator('[data-rule="doorbell"] button.ack').click()
    await expect(page.locator('[data-rule="doorbell"]')).to_contain_text("acknowledged by ops: on my way")
    (alert_id,) = list(service.noise.open_alerts())
    assert service.noise.acks.acked(service.noise.open_alerts()[alert_id])

    # The delivery report of the first ring: one delivered to the log provider; the held one says why.
    await page.click('#nav a[data-page="notifications"]')
    sent = page.locator("tr[data-notification]")
    await expect(sent).to_have_count(1)
    await sent.first.click()
    report = page.locator("#report")
    await expect(report).to_contain_text("log")
    await expect(report.locator(".stat").nth(1)).to_contain_text("1")  # delivered
    await page.screenshot(path=str(shots / "console-notifications.png"), full_page=True)
    await page.locator(f'tr[data-held="{held.nid}"]').click()
    await expect(report).to_contain_text("a silence matches it")
    await expect(report).to_contain_text("held back")

    # The other pages: registrations (search, token health), cluster, rules with the test box.
    await page.click('#nav a[data-page="registrations"]')
    await expect(page.locator('tr[data-token="console"]')).to_contain_text("active")
    await page.fill("#reg-user_id", "nobody")
    await page.press("#reg-user_id", "Enter")
    await expect(page.locator("#page")).to_contain_text("No registration matches")
    await page.fill("#reg-user_id", "")
    await page.press("#reg-user_id", "Enter")
    await page.locator('tr[data-token="console"] button', has_text="Disable").click()
    await expect(page.locator('tr[data-token="console"]')).to_contain_text("invalid")
    stored = await service.store.get("log", "console")
    assert stored is not None and stored.state == "invalid"
    await page.screenshot(path=str(shots / "console-registrations.png"), full_page=True)

    await page.click('#nav a[data-page="cluster"]')
    await expect(page.locator("#page")).to_contain_text("runs alone")
    await page.screenshot(path=str(shots / "console-cluster.png"), full_page=True)

    await page.click('#nav a[data-page="rules"]')
    await expect(page.locator('tr[data-rule="doorbell"]')).to_contain_text("firing 2")
    rings = "\n".join(
        json.dumps({"time": t, "topic": "home/back/doorbell", "payload": {"event": "ring"}}) for t in (0, 1)
    )
    await page.fill("#test-events", rings)
    await page.select_option("#test-rule", "doorbell")
    await page.click("#test-run")
    await expect(page.locator("#test-results")).to_contain_text("2 events, 2 notifications, 0 held back")
    await expect(page.locator("#test-results")).to_contain_text("Someone is at the back door.")
    await page.screenshot(path=str(shots / "console-rules.png"), full_page=True)

    # The API's documentation page, rendered from /openapi.json.
    await page.goto(f"{base}/docs")
    await expect(page.locator("#paths")).to_contain_text("/v1/silences")
    await page.screenshot(path=str(shots / "api-docs.png"), full_page=True)

    # Phone width: the alerts page still fits.
    phone = await browser.new_page(viewport={"width": 390, "height": 844})
    await sign_in(phone, base)
    await expect(phone.locator('[data-rule="doorbell"]')).to_be_visible()
    width = await phone.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page is {width} px wide at phone width"
    await phone.screenshot(path=str(shots / "console-alerts-phone.png"), full_page=True)
    assert not errors, errors


async def test_no_keys_configured_sign_in_empty_from_this_machine(
    running: RunningService, browser: Browser
) -> None:
    page = await browser.new_page()
    await page.goto(f"http://127.0.0.1:{running.service.http_port}/ui/")
    await page.click("#login-submit")
    await expect(page.locator("#me")).to_have_text("loopback")
    await page.click('#nav a[data-page="rules"]')
    await expect(page.locator('tr[data-rule="doorbell"]')).to_contain_text("never")
    await page.click("#logout")
    await expect(page.locator("#login")).to_be_visible()
