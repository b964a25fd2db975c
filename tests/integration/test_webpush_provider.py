"""The Web Push provider (pywebpush + py-vapid + aiohttp) against the fake push service over HTTPS.

The fake decrypts every message with the subscription's private key, so each delivered message shows the
encryption, the VAPID token and the headers are what a browser's push service accepts.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import jwt
import pytest

from service.providers import vapid
from service.providers.base import ConfigError, Delivered, Rejected, Retry, TokenInvalid, TokenSuspect
from service.providers.webpush import MAX_PLAINTEXT, WebPushConfig, WebPushProvider, check_endpoint
from tests.fakes.webpush import FakeWebPush, Subscription, unb64url
from tests.push_support import delivery, notification


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[FakeWebPush]:
    f = await FakeWebPush(tmp_path).start()
    yield f
    await f.stop()


@pytest.fixture
def key_path(tmp_path: Path) -> Path:
    path = tmp_path / "vapid.pem"
    vapid.generate(path)
    return path


def config(fake: FakeWebPush, key_path: Path, **kw: object) -> WebPushConfig:
    return WebPushConfig(
        vapid_private_key_path=key_path,
        subject="mailto:ops@example.com",
        allowed_hosts=(fake.host,),
        ca_file=fake.ca_file,
        **kw,
    )


@pytest.fixture
async def provider(fake: FakeWebPush, key_path: Path) -> AsyncIterator[WebPushProvider]:
    p = WebPushProvider(config(fake, key_path))
    yield p
    await p.close()


def subscribed(fake: FakeWebPush, key_path: Path) -> Subscription:
    public = vapid.public_key_b64(vapid.load(key_path))
    return fake.subscribe(application_server_key=unb64url(public))


def to(sub: Subscription, **kw: object):
    return {"p256dh": sub.p256dh, "auth": sub.auth_b64, **kw}


async def test_message_is_decrypted_by_the_browser_side_with_ttl_urgency_and_topic(
    fake: FakeWebPush, provider: WebPushProvider, key_path: Path
) -> None:
    sub = subscribed(fake, key_path)
    n = notification("nid-9", ttl=300, data={"door": "garage"}, priority="normal", collapse_key="door-garage")
    outcome = await provider.send(delivery(n, "webpush", sub.endpoint, **to(sub)))
    assert outcome == Delivered(), fake.refused
    [got] = fake.received
    msg = got.message
    assert msg["title"] == "Door open" and msg["body"] == "The garage door is open"
    assert msg["nid"] == "nid-9" and msg["data"] == {"door": "garage"} and msg["tag"] == "door-garage"
    assert 290 <= got.ttl <= 300 and got.urgency == "normal" and got.topic == "door-garage"
    assert got.headers["Content-Encoding"] == "aes128gcm"
    # RFC 8292 form, audience the push service's origin, at most 24 h.
    assert got.headers["Authorization"].startswith("vapid t=")
    assert got.claims["aud"] == fake.origin and got.claims["sub"] == "mailto:ops@example.com"
    assert time.time() < got.claims["exp"] <= time.time() + 24 * 3600


async def test_locale_text_and_hashed_topic_and_high_urgency(
    fake: FakeWebPush, provider: WebPushProvider, key_path: Path
) -> None:
    sub = subscribed(fake, key_path)
    n = notification("n2", collapse_key="room/kitchen: smoke & more than thirty-two characters")
    n.texts = {"de": ("Tür offen", "Das Garagentor ist offen")}
    assert await provider.send(delivery(n, "webpush", sub.endpoint, locale="de-AT", **to(sub))) == Delivered()
    [got] = fake.received
    assert got.message["title"] == "Tür offen" and got.urgency == "high"
    assert (
        got.topic is not None
        and len(got.topic) == 32
        and got.topic.replace("-", "").replace("_", "").isalnum()
    )


async def test_one_vapid_token_per_origin_is_reused(
    fake: FakeWebPush, provider: WebPushProvider, key_path: Path
) -> None:
    subs = [subscribed(fake, key_path) for _ in range(3)]
    for i, sub in enumerate(subs):
        assert (
            await provider.send(delivery(notification(f"n{i}"), "webpush", sub.endpoint, **to(sub)))
            == Delivered()
        )
    tokens = {r.headers["Authorization"] for r in fake.received}
    assert len(tokens) == 1 and provider.signer().signed == 1
    header = jwt.get_unverified_header(next(iter(tokens)).split("t=")[1].split(",")[0])
    assert header["alg"] == "ES256"


async def test_gone_and_unknown_subscriptions_disable_the_registration(
    fake: FakeWebPush, provider: WebPushProvider, key_path: Path
) -> None:
    sub = subscribed(fake, key_path)
    fake.unsubscribe(sub)
    gone = await provider.send(delivery(notification(), "webpush", sub.endpoint, **to(sub)))
    assert isinstance(gone, TokenInvalid) and "410" in gone.reason
    other = subscribed(fake, key_path)
    missing = other.endpoint.rsplit("/", 1)[0] + "/nosuchsubscription"
    unknown = await provider.send(delivery(notification(), "webpush", missing, **to(other)))
    assert isinstance(unknown, TokenInvalid) and "404" in unknown.reason


async def test_scripted_answers_map_to_outcomes(
    fake: FakeWebPush, provider: WebPushProvider, key_path: Path
) -> None:
    sub = subscribed(fake, key_path)
    d = delivery(notification(), "webpush", sub.endpoint, **to(sub))
    fake.fail_next.extend([(429, 17.0), (503, None), (413, None), (410, None), (404, None)])
    throttled = await provider.send(d)
    assert isinstance(throttled, Retry) and throttled.after == 17.0 and "429" in throttled.reason
    unavailable = await provider.send(d)
    assert isinstance(unavailable, Retry) and unavailable.after is None
    too_big = await provider.send(d)
    assert isinstance(too_big, Rejected) and "too large" in too_big.reason
    assert isinstance(await provider.send(d), TokenInvalid)
    assert isinstance(await provider.send(d), TokenInvalid)
    assert await provider.send(d) == Delivered()


async def test_payload_over_one_record_is_rejected_before_sending(
    fake: FakeWebPush, provider: WebPushProvider, key_path: Path
) -> None:
    sub = subscribed(fake, key_path)
    big = notification(body="x" * MAX_PLAINTEXT)
    outcome = await provider.send(delivery(big, "webpush", sub.endpoint, **to(sub)))
    assert isinstance(outcome, Rejected) and str(MAX_PLAINTEXT) in outcome.reason
    assert fake.answers == []  # nothing reached the push service
    # Just under the limit still fits one 4096-byte record, and the fake accepts it.
    fits = notification(body="x" * (MAX_PLAINTEXT - 400))
    assert await provider.send(delivery(fits, "webpush", sub.endpoint, **to(sub))) == Delivered()
    assert fake.received[0].body_size <= 4096


async def test_a_subscription_made_for_another_key_is_suspect_not_a_config_error(
    fake: FakeWebPush, provider: WebPushProvider, tmp_path: Path
) -> None:
    other = tmp_path / "other.pem"
    vapid.generate(other)
    sub = subscribed(fake, other)
    outcome = await provider.send(delivery(notification(), "webpush", sub.endpoint, **to(sub)))
    assert isinstance(outcome, TokenSuspect) and "403" in outcome.reason
    assert provider.degraded is None


async def test_missing_or_wrong_key_file_is_a_config_error_naming_it(
    fake: FakeWebPush, tmp_path: Path
) -> None:
    sub = fake.subscribe()
    for path, text in ((tmp_path / "absent.pem", None), (tmp_path / "rsa.pem", "not a key")):
        if text is not None:
            path.write_text(text)
        p = WebPushProvider(config(fake, path))
        try:
            outcome = await p.send(delivery(notification(), "webpush", sub.endpoint, **to(sub)))
            assert isinstance(outcome, ConfigError) and str(path) in outcome.reason
            assert p.degraded == outcome.reason
        finally:
            await p.close()
    assert fake.answers == []


async def test_expired_vapid_lifetime_is_renewed(fake: FakeWebPush, key_path: Path) -> None:
    now = [time.time()]
    p = WebPushProvider(config(fake, key_path, vapid_lifetime_s=600), clock=lambda: now[0])
    sub = subscribed(fake, key_path)
    try:
        d = delivery(notification(ttl=3600), "webpush", sub.endpoint, **to(sub))
        assert await p.send(d) == Delivered()
        now[0] += 500  # past three quarters of the lifetime: a new token before the old one expires
        assert await p.send(d) == Delivered()
        assert p.signer().signed == 2
    finally:
        await p.close()


def test_endpoint_check_refuses_what_is_not_a_push_service() -> None:
    c = WebPushConfig()
    assert check_endpoint(c, "https://fcm.googleapis.com/fcm/send/abc")
    assert check_endpoint(c, "https://updates.push.services.mozilla.com/wpush/v2/x")
    for bad, why in (
        ("http://fcm.googleapis.com/fcm/send/abc", "https://"),
        ("https://evil.example.com/x", "allow-list"),
        ("https://user:pw@fcm.googleapis.com/x", "credentials"),
        ("https://169.254.169.254/latest", "allow-list"),
        ("https://fcm.googleapis.com.evil.com/x", "allow-list"),
    ):
        with pytest.raises(ValueError, match=why):
            check_endpoint(c, bad)
