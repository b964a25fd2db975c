"""The APNs provider (aioapns) against the fake APNs: requests, options, outcomes, auth and rotation."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    load_pem_private_key,
    pkcs12,
)
from cryptography.x509 import load_pem_x509_certificate
from pydantic import SecretStr

from service.providers.apns import ApnsProvider
from service.providers.base import (
    ConfigError,
    Delivered,
    Rejected,
    Retry,
    TokenInvalid,
    TokenSuspect,
)
from service.push_config import ApnsAppConfig
from tests.fakes.apns import FakeAPNs
from tests.fakes.keys import ApnsKey, apns_token, client_certificate
from tests.push_support import BUNDLE, apns_config, delivery, notification, token_app, trusted_key


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[FakeAPNs]:
    f = await FakeAPNs(tmp_path / "apns").start()
    yield f
    await f.stop()


@pytest.fixture
async def provider(fake: FakeAPNs) -> AsyncIterator[ApnsProvider]:
    key = trusted_key(fake)
    p = ApnsProvider(apns_config(fake, {BUNDLE: token_app(key)}, timeout_s=2.0))
    yield p
    await p.close()


async def test_alert_reaches_the_fake_with_apples_headers_and_payload(
    fake: FakeAPNs, provider: ApnsProvider
) -> None:
    token = apns_token()
    n = notification(
        "nid-42",
        badge=3,
        sound="alarm.caf",
        thread_id="garage",
        category="DOOR",
        interruption_level="time-sensitive",
        mutable_content=True,
        subtitle="Home",
        data={"door": "garage"},
        custom={"count": 2},
    )
    assert await provider.send(delivery(n, "apns", token, app=BUNDLE)) == Delivered()
    [got] = fake.received
    assert got.token == token and got.topic == BUNDLE
    h = got.headers
    assert h["apns-collapse-id"] == "nid-42"  # an escaped duplicate replaces the first on the phone
    assert h["apns-push-type"] == "alert" and h["apns-priority"] == "10"
    assert int(h["apns-expiration"]) > 0 and h["authorization"].startswith("bearer ")
    aps = got.payload["aps"]
    assert aps["alert"] == {"title": "Door open", "subtitle": "Home", "body": "The garage door is open"}
    assert aps["badge"] == 3 and aps["sound"] == "alarm.caf" and aps["thread-id"] == "garage"
    assert aps["category"] == "DOOR" and aps["interruption-level"] == "time-sensitive"
    assert aps["mutable-content"] == 1
    assert got.payload["door"] == "garage" and got.payload["count"] == 2


async def test_background_push_is_content_available_integer_at_priority_5(
    fake: FakeAPNs, provider: ApnsProvider
) -> None:
    n = notification(push_type="background")
    assert await provider.send(delivery(n, "apns", apns_token(), app=BUNDLE)) == Delivered()
    [got] = fake.received
    assert got.payload["aps"] == {"content-available": 1}
    assert got.headers["apns-push-type"] == "background" and got.headers["apns-priority"] == "5"


async def test_localized_critical_alert_and_voip_topic(fake: FakeAPNs, provider: ApnsProvider) -> None:
    n = notification(
        title="",
        body="",
        loc_key="DOOR_OPEN",
        loc_args=("garage",),
        title_loc_key="ALARM",
        sound="siren.caf",
        critical_sound=True,
    )
    assert await provider.send(delivery(n, "apns", apns_token(), app=BUNDLE)) == Delivered()
    voip = notification("v1", push_type="voip")
    assert await provider.send(delivery(voip, "apns", apns_token(), app=BUNDLE)) == Delivered()
    first, second = fake.received
    assert first.payload["aps"]["alert"] == {
        "title-loc-key": "ALARM",
        "title-loc-args": [],
        "loc-key": "DOOR_OPEN",
        "loc-args": ["garage"],
    }
    assert first.payload["aps"]["sound"] == {"critical": 1, "name": "siren.caf", "volume": 1.0}
    assert second.topic == f"{BUNDLE}.voip" and second.headers["apns-push-type"] == "voip"


async def test_payload_over_the_limit_is_refused_before_sending(
    fake: FakeAPNs, provider: ApnsProvider
) -> None:
    big = notification(body="x" * 4200)
    outcome = await provider.send(delivery(big, "apns", apns_token(), app=BUNDLE))
    assert isinstance(outcome, Rejected) and "4096 bytes" in outcome.reason
    voip_ok = notification(body="x" * 4200, push_type="voip")  # VoIP may carry 5 KB
    assert await provider.send(delivery(voip_ok, "apns", apns_token(), app=BUNDLE)) == Delivered()
    voip_big = notification(body="x" * 5200, push_type="voip")
    outcome = await provider.send(delivery(voip_big, "apns", apns_token(), app=BUNDLE))
    assert isinstance(outcome, Rejected) and "5120 bytes" in outcome.reason
    assert fake.requests == 1


async def test_token_outcomes(fake: FakeAPNs, provider: ApnsProvider) -> None:
    gone, bad, other = apns_token(), apns_token(), apns_token()
    fake.unregistered[gone] = 1_700_000_000_000
    fake.bad_tokens.add(bad)
    fake.wrong_topic.add(other)
    invalid = await provider.send(delivery(notification(), "apns", gone, app=BUNDLE))
    assert invalid == TokenInvalid("APNs 410 Unregistered", 1_700_000_000.0)
    suspect = await provider.send(delivery(notification(), "apns", bad, app=BUNDLE))
    assert isinstance(suspect, TokenSuspect) and "BadDeviceToken" in suspect.reason
    suspect = await provider.send(delivery(notification(), "apns", other, app=BUNDLE))
    assert isinstance(suspect, TokenSuspect) and "DeviceTokenNotForTopic" in suspect.reason
    malformed = await provider.send(delivery(notification(), "apns", "not-hex", app=BUNDLE))
    assert isinstance(malformed, TokenSuspect)


@pytest.mark.parametrize(
    ("status", "reason"),
    [(429, "TooManyRequests"), (500, "InternalServerError"), (503, "ServiceUnavailable")],
)
async def test_throttling_and_server_errors_are_retried(
    fake: FakeAPNs, provider: ApnsProvider, status: int, reason: str
) -> None:
    fake.fail_next.extend([(status, reason)] * 3)
    for _ in range(3):
        outcome = await provider.send(delivery(notification(), "apns", apns_token(), app=BUNDLE))
        assert outcome == Retry(f"APNs {status} {reason}")
    assert await provider.send(delivery(notification(), "apns", apns_token(), app=BUNDLE)) == Delivered()


async def test_untrusted_key_is_a_config_error_and_degrades(fake: FakeAPNs) -> None:
    stranger = ApnsKey.generate()  # the fake does not know this key
    p = ApnsProvider(apns_config(fake, {BUNDLE: token_app(stranger)}))
    try:
        outcome = await p.send(delivery(notification(), "apns", apns_token(), app=BUNDLE))
        assert outcome == ConfigError(f"{BUNDLE}: APNs 403 InvalidProviderToken", BUNDLE)
        assert p.degraded is not None and "InvalidProviderToken" in p.degraded
        assert stranger.p8 not in (p.degraded or "")
    finally:
        await p.close()


async def test_expired_provider_token_is_renewed_once_then_pauses(
    fake: FakeAPNs, provider: ApnsProvider
) -> None:
    fake.max_token_age_s = -1  # every token is too old: the clock of this machine would be wrong
    first = await provider.send(delivery(notification(), "apns", apns_token(), app=BUNDLE))
    assert first == Retry("APNs 403 ExpiredProviderToken", after=0.0)
    assert provider.degraded is None
    second = await provider.send(delivery(notification(), "apns", apns_token(), app=BUNDLE))
    assert isinstance(second, ConfigError) and provider.degraded is not None
    assert "0 minutes old: is this machine's clock right?" in provider.degraded
    assert len(fake.key_tokens[next(iter(fake.keys))]) == 1  # a young token is not replaced
    fake.max_token_age_s = 3600
    assert await provider.send(delivery(notification(), "apns", apns_token(), app=BUNDLE)) == Delivered()
    assert provider.degraded is None


async def test_stalled_connection_times_out_and_is_replaced(fake: FakeAPNs, tmp_path: Path) -> None:
    key = trusted_key(fake)
    p = ApnsProvider(apns_config(fake, {BUNDLE: token_app(key)}, timeout_s=0.5))
    try:
        assert await p.send(delivery(notification(), "apns", apns_token(), app=BUNDLE)) == Delivered()
        fake.stall = True
        stalled = await p.send(delivery(notification(), "apns", apns_token(), app=BUNDLE))
        assert stalled == Retry("APNs did not answer in time")
        fake.stall = False
        assert await p.send(delivery(notification(), "apns", apns_token(), app=BUNDLE)) == Delivered()
        assert fake.connections == 2
    finally:
        await p.close()


async def test_sandbox_and_production_per_registration_and_several_apps(tmp_path: Path) -> None:
    prod = await FakeAPNs(tmp_path / "tls").start()
    sandbox = await FakeAPNs(tmp_path / "tls").start()
    try:
        second_app = "com.example.other"
        k1 = trusted_key(prod, {BUNDLE})
        k2 = trusted_key(prod, {second_app})
        for k, topics in ((k1, {BUNDLE}), (k2, {second_app})):
            sandbox.add_key(k.key_id, k.team_id, k.public_pem, topics)
        cfg = apns_config(
            prod,
            {BUNDLE: token_app(k1), second_app: token_app(k2)},
            sandbox_url=f"https://localhost:{sandbox.port}",
        )
        p = ApnsProvider(cfg)
        t1, t2, t3 = apns_token(), apns_token(), apns_token()
        results = await asyncio.gather(
            p.send(delivery(notification(), "apns", t1, app=BUNDLE)),
            p.send(delivery(notification(), "apns", t2, app=BUNDLE, environment="sandbox")),
            p.send(delivery(notification(), "apns", t3, app=second_app)),
        )
        assert list(results) == [Delivered()] * 3
        assert {(r.token, r.topic) for r in prod.received} == {(t1, BUNDLE), (t3, second_app)}
        assert [(r.token, r.topic) for r in sandbox.received] == [(t2, BUNDLE)]
        unknown = await p.send(delivery(notification(), "apns", t1, app="com.example.unknown"))
        assert isinstance(unknown, ConfigError) and "com.example.unknown" in unknown.reason
        await p.close()
    finally:
        await prod.stop()
        await sandbox.stop()


async def test_certificate_authentication_pem_and_pkcs12(tmp_path: Path) -> None:
    pem_path, _ = client_certificate(tmp_path / "certs", BUNDLE)
    other = "com.example.p12"
    other_pem, _ = client_certificate(tmp_path / "certs", other)
    fake = FakeAPNs(tmp_path / "apns")
    fake.trust_client_cert(pem_path, BUNDLE)
    fake.trust_client_cert(other_pem, other)
    await fake.start()
    raw = other_pem.read_bytes()
    key = load_pem_private_key(raw, None)
    cert = load_pem_x509_certificate(raw)
    p12 = tmp_path / "certs" / "app.p12"
    p12.write_bytes(
        pkcs12.serialize_key_and_certificates(
            b"app",
            key,  # type: ignore[arg-type]
            cert,
            None,
            BestAvailableEncryption(b"s3cret"),
        )
    )
    apps = {
        BUNDLE: ApnsAppConfig(certificate_path=pem_path),
        other: ApnsAppConfig(certificate_path=p12, password=SecretStr("s3cret")),
    }
    p = ApnsProvider(apns_config(fake, apps))
    try:
        t1, t2 = apns_token(), apns_token()
        assert await p.send(delivery(notification(), "apns", t1, app=BUNDLE)) == Delivered()
        assert await p.send(delivery(notification(), "apns", t2, app=other)) == Delivered()
        assert [(r.token, r.topic) for r in fake.received] == [(t1, BUNDLE), (t2, other)]
        assert "authorization" not in fake.received[0].headers
    finally:
        await p.close()
        await fake.stop()


async def test_rotated_key_file_is_picked_up(fake: FakeAPNs, tmp_path: Path) -> None:
    old = trusted_key(fake)
    path = tmp_path / "AuthKey.p8"
    p = ApnsProvider(apns_config(fake, {BUNDLE: token_app(old, path)}))
    try:
        assert await p.send(delivery(notification(), "apns", apns_token(), app=BUNDLE)) == Delivered()
        del fake.keys[old.key_id]  # revoked in the developer portal
        new = ApnsKey.generate(team_id=old.team_id)
        fake.add_key(old.key_id, new.team_id, new.public_pem)  # same key id, new key material
        revoked = await p.send(delivery(notification(), "apns", apns_token(), app=BUNDLE))
        assert isinstance(revoked, ConfigError)
        path.write_text(new.p8)
        stamp = path.stat().st_mtime + 2
        os.utime(path, (stamp, stamp))
        p._checked.clear()  # the once-a-second file check is due now
        assert await p.send(delivery(notification(), "apns", apns_token(), app=BUNDLE)) == Delivered()
        assert p.degraded is None
    finally:
        await p.close()


async def test_shutdown_goaway_is_retried_on_a_new_connection(fake: FakeAPNs, provider: ApnsProvider) -> None:
    assert await provider.send(delivery(notification(), "apns", apns_token(), app=BUNDLE)) == Delivered()
    fake.fail_next.append((503, "Shutdown"))
    assert await provider.send(delivery(notification(), "apns", apns_token(), app=BUNDLE)) == Retry(
        "APNs 503 Shutdown"
    )
    assert await provider.send(delivery(notification(), "apns", apns_token(), app=BUNDLE)) == Delivered()
    assert fake.connections == 2


async def test_many_error_answers_do_not_exhaust_the_connection_window(fake: FakeAPNs) -> None:
    """Each error body uses flow-control credit: 64 KiB of them block APNs unless the client returns it."""
    provider = ApnsProvider(apns_config(fake, {BUNDLE: token_app(trusted_key(fake))}, timeout_s=30))
    try:
        assert await provider.send(delivery(notification(), "apns", apns_token(), app=BUNDLE)) == Delivered()
        bad = [apns_token() for _ in range(2500)]  # ~2,500 x 30-byte bodies: more than the 65,535-byte window
        fake.bad_tokens.update(bad)
        for chunk in range(0, len(bad), 250):
            sends = (
                provider.send(delivery(notification(), "apns", t, app=BUNDLE))
                for t in bad[chunk : chunk + 250]
            )
            outcomes = await asyncio.gather(*sends)
            assert {type(o) for o in outcomes} == {TokenSuspect}, {str(o) for o in outcomes}
        assert fake.blocked == 0 and fake.connections == 1
        assert await provider.send(delivery(notification(), "apns", apns_token(), app=BUNDLE)) == Delivered()
    finally:
        await provider.close()
