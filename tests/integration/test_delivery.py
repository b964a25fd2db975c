"""Delivery end to end below the rules: dispatcher + outbox + registry + the real providers at the fakes.

Every outcome class, the delivery report, credential pause / rotation / resume, and a provider outage during
which nothing is lost (its length is ``TOCSIN_TEST_OUTAGE_S``, 3 s by default; the full minute runs in the
benchmark ``scripts/bench outage``).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from registrations.model import Registration
from registrations.sqlite_store import SqliteRegistrationStore
from service.clock import SystemClock
from service.metrics import Metrics
from service.notify.dispatch import Dispatcher
from service.notify.model import Delivery, Notification
from service.outbox import Outbox
from service.providers.apns import ApnsProvider
from service.providers.base import Provider
from service.providers.fcm import FcmProvider
from tests.fakes.apns import FakeAPNs
from tests.fakes.fcm import FakeFCM
from tests.fakes.keys import ApnsKey, apns_token
from tests.push_support import (
    BUNDLE,
    apns_config,
    fcm_account,
    fcm_config,
    notification,
    token_app,
    trusted_key,
)
from tests.support import wait_until

OUTAGE_S = float(os.environ.get("TOCSIN_TEST_OUTAGE_S", "3"))


@dataclass
class Rig:
    apns: FakeAPNs
    fcm: FakeFCM
    key: ApnsKey
    key_path: Path
    store: SqliteRegistrationStore
    outbox: Outbox
    dispatcher: Dispatcher
    metrics: Metrics

    async def register(self, n_apns: int, n_fcm: int) -> list[Registration]:
        regs = [Registration("apns", apns_token(), app=BUNDLE, tags=("home",)) for _ in range(n_apns)]
        regs += [Registration("fcm", f"fcm-{i:04d}-" + "f" * 30, tags=("home",)) for i in range(n_fcm)]
        return [await self.store.upsert(r, time.time()) for r in regs]

    async def send(self, n: Notification, regs: list[Registration]) -> None:
        for r in regs:
            await self.dispatcher.submit(Delivery(n, r))

    def report(self, nid: str) -> dict[str, object]:
        report = self.outbox.report(nid)
        assert report is not None
        return report


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    apns = await FakeAPNs(tmp_path / "apns").start()
    fcm = await FakeFCM(cert_dir=tmp_path / "fcm").start()
    key = trusted_key(apns)
    key_path = tmp_path / "AuthKey.p8"
    store = SqliteRegistrationStore(tmp_path / "tocsin.db")
    outbox = Outbox(tmp_path / "tocsin.db")
    providers: dict[str, Provider] = {
        "apns": ApnsProvider(apns_config(apns, {BUNDLE: token_app(key, key_path)}, timeout_s=2.0)),
        "fcm": FcmProvider(fcm_config(fcm, fcm_account(fcm))),
    }
    metrics = Metrics()
    dispatcher = Dispatcher(
        providers,
        store,
        metrics,
        SystemClock(),
        max_attempts=1000,
        outbox=outbox,
        retry_base_s=0.05,
        retry_cap_s=0.5,
        pause_probe_s=0.2,
    )
    dispatcher.start()
    yield Rig(apns, fcm, key, key_path, store, outbox, dispatcher, metrics)
    await dispatcher.stop()
    for p in providers.values():
        await p.close()
    outbox.close()
    await store.close()
    await apns.stop()
    await fcm.stop()


async def test_report_counts_delivered_and_failed_per_platform(rig: Rig) -> None:
    regs = await rig.register(3, 3)
    gone_apns, suspect_apns, gone_fcm = regs[0], regs[1], regs[3]
    rig.apns.unregistered[gone_apns.token] = int(time.time() * 1000) + 60_000
    rig.apns.bad_tokens.add(suspect_apns.token)
    rig.fcm.unregistered.add(gone_fcm.token)
    n = notification("nid-report")
    await rig.send(n, regs)
    await wait_until(lambda: rig.report("nid-report")["pending"] == 0, 10, "every delivery to finish")
    report = rig.report("nid-report")
    assert report["targeted"] == 6 and report["delivered"] == 3
    assert report["failed"] == {"token_invalid": 2, "token_suspect": 1}
    assert report["platforms"] == {
        "apns": {
            "targeted": 3,
            "delivered": 1,
            "pending": 0,
            "failed": {"token_invalid": 1, "token_suspect": 1},
        },
        "fcm": {"targeted": 3, "delivered": 2, "pending": 0, "failed": {"token_invalid": 1}},
    }
    states = {r.token: (await rig.store.get(r.provider, r.token)).state for r in regs}  # type: ignore[union-attr]
    assert states[gone_apns.token] == "invalid" and states[gone_fcm.token] == "invalid"
    assert states[suspect_apns.token] == "suspect"  # marked, not deleted
    assert rig.metrics.registrations_changed.get("apns", "invalid") == 1
    assert rig.metrics.registrations_changed.get("apns", "suspect") == 1
    assert rig.outbox.report("unknown") is None


async def test_unregistered_before_a_re_registration_keeps_the_token(rig: Rig) -> None:
    [reg] = await rig.register(1, 0)
    rig.apns.unregistered[reg.token] = int((reg.updated - 60) * 1000)  # died a minute before it registered
    await rig.send(notification("nid-old-410"), [reg])
    await wait_until(lambda: rig.report("nid-old-410")["pending"] == 0, 10, "the delivery to finish")
    assert (await rig.store.get("apns", reg.token)).state == "active"  # type: ignore[union-attr]


async def test_rejected_message_is_recorded_not_retried(rig: Rig) -> None:
    regs = await rig.register(1, 1)
    await rig.send(notification("nid-big", body="x" * 6000), regs)
    await wait_until(lambda: rig.report("nid-big")["pending"] == 0, 10, "the deliveries to finish")
    assert rig.report("nid-big")["failed"] == {"rejected": 2}
    assert rig.apns.requests == 0 and rig.fcm.accepted == 0


async def test_retry_honours_retry_after_and_stops_at_expiry(rig: Rig) -> None:
    [reg] = await rig.register(0, 1)
    rig.fcm.fail_next.append(("QUOTA_EXCEEDED", 1.0))
    await rig.send(notification("nid-429"), [reg])
    await wait_until(lambda: rig.report("nid-429")["delivered"] == 1, 10, "the retried delivery")
    (t0, _, s0), (t1, _, s1) = rig.fcm.answers
    assert (s0, s1) == (429, 200) and t1 - t0 >= 1.0
    rig.fcm.outage = ("UNAVAILABLE", None)
    await rig.send(notification("nid-expiring", ttl=2.0), [reg])
    await wait_until(lambda: rig.report("nid-expiring")["pending"] == 0, 10, "the delivery to be given up")
    assert rig.report("nid-expiring")["failed"] in ({"gave_up": 1}, {"expired": 1})
    assert sum(1 for _, token, _ in rig.fcm.answers if token == reg.token) - 2 >= 2


async def test_retries_after_a_throttled_burst_are_jittered_past_retry_after(rig: Rig) -> None:
    regs = await rig.register(0, 20)
    rig.fcm.fail_next.extend([("UNAVAILABLE", 1.0)] * 20)
    await rig.send(notification("nid-burst"), regs)
    await wait_until(lambda: rig.report("nid-burst")["delivered"] == 20, 15, "the retried deliveries")
    refused = {token: t for t, token, status in rig.fcm.answers if status == 503}
    retried = {token: t for t, token, status in rig.fcm.answers if status == 200}
    assert len(refused) == len(retried) == 20
    assert all(retried[token] - refused[token] >= 1.0 for token in retried)  # not before Retry-After
    times = sorted(retried.values())
    assert times[-1] - times[0] > 0.3  # spread over the second after it, not all in one millisecond


async def test_config_error_pauses_the_credential_without_burning_the_queue(rig: Rig) -> None:
    regs = await rig.register(20, 5)
    del rig.apns.keys[rig.key.key_id]  # the key was revoked
    await rig.send(notification("nid-paused"), regs)
    await wait_until(lambda: rig.report("nid-paused")["delivered"] == 5, 10, "the FCM deliveries")
    await wait_until(lambda: rig.dispatcher.parked_count == 20, 10, "the APNs deliveries to be parked")
    assert rig.dispatcher.config_errors["apns"] == f"{BUNDLE}: APNs 403 InvalidProviderToken"
    assert rig.metrics.config_errors.get("apns", BUNDLE) == 1
    report = rig.report("nid-paused")
    assert report["pending"] == 20 and report["failed"] == {}
    requests_while_paused = rig.apns.requests
    await wait_until(lambda: rig.apns.requests >= requests_while_paused + 2, 5, "two probes")
    assert rig.apns.requests <= requests_while_paused + 10  # probes only, not the whole queue
    # Credential rotation: the operator installs a new key file (same key id); the fake trusts the new key.
    new = ApnsKey.generate(team_id=rig.key.team_id)
    rig.apns.add_key(rig.key.key_id, new.team_id, new.public_pem)
    os.replace(_write(rig.key_path.with_suffix(".new"), new.p8), rig.key_path)
    provider = rig.dispatcher.providers["apns"]
    await wait_until(lambda: rig.report("nid-paused")["delivered"] == 25, 15, "every delivery after rotation")
    assert "apns" not in rig.dispatcher.config_errors and provider.degraded is None
    assert sorted(r.token for r in rig.apns.received) == sorted(r.token for r in regs[:20])


async def test_outage_loses_nothing(rig: Rig) -> None:
    regs = await rig.register(30, 30)
    rig.apns.outage = (503, "ServiceUnavailable")
    rig.fcm.outage = ("UNAVAILABLE", None)
    started = time.monotonic()
    await rig.send(notification("nid-outage", ttl=OUTAGE_S + 120), regs)
    await wait_until(lambda: rig.apns.requests >= 30 and len(rig.fcm.answers) >= 30, 10, "first tries")
    await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - started)))  # the outage itself, not a sync
    rig.apns.outage = None
    rig.fcm.outage = None
    await wait_until(
        lambda: rig.report("nid-outage")["delivered"] == 60, 30, "every delivery after the outage"
    )
    assert rig.report("nid-outage")["failed"] == {}
    assert sorted(r.token for r in rig.apns.received) == sorted(r.token for r in regs[:30])
    assert sorted(s.token for s in rig.fcm.sent) == sorted(r.token for r in regs[30:])


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


async def test_badge_increments_from_the_registrations_stored_count(rig: Rig) -> None:
    [reg] = await rig.register(1, 0)
    rig.outbox.next_badge(reg.id)  # one unread already
    for nid in ("nid-badge-0", "nid-badge-1"):
        await rig.send(notification(nid, badge_increment=True), [reg])
        await wait_until(lambda nid=nid: rig.report(nid)["delivered"] == 1, 10, "the delivery")  # type: ignore[misc]
    assert [r.payload["aps"]["badge"] for r in rig.apns.received] == [2, 3]
    rig.outbox.reset_badge(reg.id)
    await rig.send(notification("nid-badge-after-reset", badge_increment=True), [reg])
    await wait_until(lambda: rig.report("nid-badge-after-reset")["delivered"] == 1, 10, "the delivery")
    assert rig.apns.received[-1].payload["aps"]["badge"] == 1


async def test_badge_from_the_count_the_app_registered_with(rig: Rig) -> None:
    reg = await rig.store.upsert(
        Registration("apns", apns_token(), app=BUNDLE, tags=("home",), badge=5), time.time()
    )
    await rig.send(notification("nid-reg-badge"), [reg])
    await wait_until(lambda: rig.report("nid-reg-badge")["delivered"] == 1, 10, "the delivery")
    for nid in ("nid-reg-badge-0", "nid-reg-badge-1"):
        await rig.send(notification(nid, badge_increment=True), [reg])
        await wait_until(lambda nid=nid: rig.report(nid)["delivered"] == 1, 10, "the delivery")  # type: ignore[misc]
    await rig.send(notification("nid-reg-badge-set", badge=0), [reg])
    await wait_until(lambda: rig.report("nid-reg-badge-set")["delivered"] == 1, 10, "the delivery")
    assert [r.payload["aps"]["badge"] for r in rig.apns.received] == [5, 6, 7, 0]
