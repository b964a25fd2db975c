"""The FCM HTTP v1 provider (google-auth; aiohttp over HTTP/1.1, or tocsin's HTTP/2 client to an https
endpoint) against the fake token and send endpoints. Every test runs over both transports.

The fake runs in the test's own event loop: a token refresh that blocked the loop could never be answered,
so every delivered message here also shows that the refresh runs off the loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from service.notify.model import Notification
from service.providers.base import ConfigError, Delivered, Rejected, Retry, TokenInvalid, TokenSuspect
from service.providers.fcm import FcmProvider, message, payload_size
from tests.fakes.fcm import FakeFCM
from tests.fakes.keys import service_account, write_service_account
from tests.push_support import delivery, fcm_account, fcm_config, notification

TOKEN = "fcm-token-" + "a" * 40


@pytest.fixture(params=["http1", "http2"])
async def fake(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[FakeFCM]:
    # HTTPS with a private CA, as Google is; sends over HTTP/2 or HTTP/1.1
    f = await FakeFCM(cert_dir=tmp_path / "fcm", h2=request.param == "http2").start()
    yield f
    await f.stop()


@pytest.fixture
async def provider(fake: FakeFCM) -> AsyncIterator[FcmProvider]:
    p = FcmProvider(fcm_config(fake, fcm_account(fake)))
    yield p
    await p.close()


async def test_message_carries_the_options_and_the_nid_as_tag(fake: FakeFCM, provider: FcmProvider) -> None:
    n = notification(
        "nid-7",
        data={"door": "garage"},
        custom={"count": 2},
        android_channel="alarms",
        android_sound="siren",
        android_color="#ff0000",
        image="https://example.invalid/i.png",
        fcm_apns={"headers": {"apns-priority": "10"}},
        fcm_webpush={"headers": {"Urgency": "high"}},
    )
    assert await provider.send(delivery(n, "fcm", TOKEN)) == Delivered()
    [sent] = fake.sent
    m = sent.message
    assert sent.project == "tocsin-test" and m["token"] == TOKEN
    assert m["data"] == {"door": "garage", "count": "2", "nid": "nid-7"}
    assert m["notification"] == {
        "title": "Door open",
        "body": "The garage door is open",
        "image": "https://example.invalid/i.png",
    }
    android = m["android"]
    assert android["priority"] == "HIGH" and android["collapse_key"] == "nid-7"
    assert android["ttl"].endswith("s") and 590 <= int(android["ttl"][:-1]) <= 600
    assert android["notification"]["tag"] == "nid-7"  # a repeat replaces the first on the phone
    assert android["notification"]["channel_id"] == "alarms" and android["notification"]["sound"] == "siren"
    assert m["apns"] == {"headers": {"apns-priority": "10"}} and m["webpush"]["headers"]["Urgency"] == "high"
    assert fake.tokens_issued == 1
    assert fake.h2_requests == (1 if fake.h2_port else 0)  # the transport asked for


async def test_one_token_for_many_sends_and_background_is_data_only(
    fake: FakeFCM, provider: FcmProvider
) -> None:
    for i in range(5):
        assert await provider.send(delivery(notification(f"n{i}"), "fcm", TOKEN)) == Delivered()
    assert await provider.send(delivery(notification(push_type="background"), "fcm", TOKEN)) == Delivered()
    assert fake.tokens_issued == 1
    last = fake.sent[-1].message
    assert "notification" not in last and last["android"]["priority"] == "NORMAL"


async def test_outcomes_follow_googles_error_codes(fake: FakeFCM, provider: FcmProvider) -> None:
    gone, foreign = "gone-" + "b" * 30, "foreign-" + "c" * 30
    fake.unregistered.add(gone)
    fake.other_sender.add(foreign)
    invalid = await provider.send(delivery(notification(), "fcm", gone))
    assert isinstance(invalid, TokenInvalid) and "UNREGISTERED" in invalid.reason
    suspect = await provider.send(delivery(notification(), "fcm", "short"))
    assert isinstance(suspect, TokenSuspect) and "not a valid FCM registration token" in suspect.reason
    mismatch = await provider.send(delivery(notification(), "fcm", foreign))
    assert isinstance(mismatch, ConfigError) and "SENDER_ID_MISMATCH" in mismatch.reason
    assert provider.degraded is not None
    fake.fail_next.append(("THIRD_PARTY_AUTH_ERROR", None))
    auth = await provider.send(delivery(notification(), "fcm", TOKEN))
    assert isinstance(auth, ConfigError) and "THIRD_PARTY_AUTH_ERROR" in auth.reason
    assert await provider.send(delivery(notification(), "fcm", TOKEN)) == Delivered()
    assert provider.degraded is None


@pytest.mark.parametrize(
    ("code", "after"), [("QUOTA_EXCEEDED", 30.0), ("UNAVAILABLE", 7.0), ("INTERNAL", None)]
)
async def test_throttling_and_server_errors_are_retried_with_retry_after(
    fake: FakeFCM, provider: FcmProvider, code: str, after: float | None
) -> None:
    fake.fail_next.append((code, after))
    outcome = await provider.send(delivery(notification(), "fcm", TOKEN))
    assert isinstance(outcome, Retry) and code in outcome.reason and outcome.after == after


async def test_bad_messages_are_rejected_not_retried(fake: FakeFCM, provider: FcmProvider) -> None:
    big = notification(body="x" * 6000)
    outcome = await provider.send(delivery(big, "fcm", TOKEN))
    assert isinstance(outcome, Rejected) and "4096" in outcome.reason
    reserved = notification(data={"google.sent_time": "1"})
    outcome = await provider.send(delivery(reserved, "fcm", TOKEN))
    assert isinstance(outcome, Rejected) and "INVALID_ARGUMENT" in outcome.reason
    assert fake.accepted == 0


async def test_rejected_access_token_is_refreshed_once(fake: FakeFCM, provider: FcmProvider) -> None:
    assert await provider.send(delivery(notification(), "fcm", TOKEN)) == Delivered()
    fake.revoke_tokens()
    assert await provider.send(delivery(notification(), "fcm", TOKEN)) == Delivered()
    assert fake.tokens_issued == 2


async def test_unknown_service_account_and_token_endpoint_outage(fake: FakeFCM) -> None:
    info, _ = service_account("tocsin-test", f"{fake.url}/token")  # the fake does not know this key
    p = FcmProvider(fcm_config(fake, info))
    try:
        outcome = await p.send(delivery(notification(), "fcm", TOKEN))
        assert isinstance(outcome, ConfigError) and "invalid_grant" in outcome.reason
        assert info["private_key"] not in outcome.reason
    finally:
        await p.close()
    known = fcm_account(fake)
    fake.token_outage = True
    p = FcmProvider(fcm_config(fake, known))
    try:
        outcome = await p.send(delivery(notification(), "fcm", TOKEN))
        assert isinstance(outcome, Retry), outcome
    finally:
        await p.close()


async def test_rotated_service_account_file_is_picked_up(fake: FakeFCM, tmp_path: Path) -> None:
    old = fcm_account(fake)
    path = write_service_account(tmp_path / "sa.json", old)
    p = FcmProvider(fcm_config(fake, credentials_path=path))
    try:
        assert await p.send(delivery(notification(), "fcm", TOKEN)) == Delivered()
        fake.accounts.clear()
        fake.revoke_tokens()  # the old key was deleted in the console
        assert isinstance(await p.send(delivery(notification(), "fcm", TOKEN)), ConfigError)
        write_service_account(path, fcm_account(fake))
        stamp = path.stat().st_mtime + 2
        os.utime(path, (stamp, stamp))
        p._checked = 0.0  # the once-a-second file check is due now
        assert await p.send(delivery(notification(), "fcm", TOKEN)) == Delivered()
    finally:
        await p.close()


async def test_fake_checks_bodies_like_google(fake: FakeFCM) -> None:
    info = fcm_account(fake)
    url = f"{fake.url}/v1/projects/tocsin-test/messages:send"
    trust = ssl.create_default_context(cafile=str(fake.ca_file))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust)) as http:
        async with http.post(url, json={"message": {"token": TOKEN}}) as resp:
            assert resp.status == 401 and (await resp.json())["error"]["status"] == "UNAUTHENTICATED"
        p = FcmProvider(fcm_config(fake, info))
        try:
            assert p._credential() is not None
            token = await p._credential().token()
        finally:
            await p.close()
        auth = {"Authorization": f"Bearer {token}"}
        cases = [
            ({"message": {"token": TOKEN, "topic": "x"}}, "message"),
            ({"message": {"token": TOKEN, "data": {"n": 1}}}, "message.data[0].value"),
            ({"message": {"token": TOKEN, "android": {"ttl": "3000000s"}}}, "message.android.ttl"),
            ({"message": {"token": TOKEN, "android": {"priority": "urgent"}}}, "message.android.priority"),
            ({"message": {"token": TOKEN, "android": {"priority": "high"}}}, "message.android.priority"),
            ({"message": {"token": TOKEN, "data": {"k": "ü" * 2040}}}, "message"),  # 4,093 bytes + the keys
        ]
        for body, field in cases:
            async with http.post(url, data=json.dumps(body), headers=auth) as resp:
                doc = await resp.json()
                assert resp.status == 400 and doc["error"]["status"] == "INVALID_ARGUMENT"
                violations = [d for d in doc["error"]["details"] if d["@type"].endswith("BadRequest")]
                assert violations[0]["fieldViolations"][0]["field"] == field
        other = f"{fake.url}/v1/projects/someone-else/messages:send"
        async with http.post(other, json={"message": {"token": TOKEN}}, headers=auth) as resp:
            assert resp.status == 403
        dry = {"message": {"token": TOKEN}, "validate_only": True}
        async with http.post(url, data=json.dumps(dry), headers=auth) as resp:
            assert resp.status == 200
    assert fake.accepted == 0


async def test_project_quota_answers_429_with_retry_after(fake: FakeFCM, provider: FcmProvider) -> None:
    fake.quota_per_minute = 3
    for _ in range(3):
        assert await provider.send(delivery(notification(), "fcm", TOKEN)) == Delivered()
    over = await provider.send(delivery(notification(), "fcm", TOKEN))
    assert isinstance(over, Retry) and "QUOTA_EXCEEDED" in over.reason
    assert over.after is not None and 50 <= over.after <= 60


async def test_token_endpoint_is_reached_with_the_configured_ca_only(fake: FakeFCM) -> None:
    info = fcm_account(fake)
    p = FcmProvider(fcm_config(fake, info, ca_file=None))  # the system's CAs do not know the fake's
    try:
        outcome = await p.send(delivery(notification(), "fcm", TOKEN))
        assert isinstance(outcome, Retry) and fake.tokens_issued == 0
        assert p.degraded is not None and p.degraded == outcome.reason
        assert p.degraded.startswith(
            f"no access token from {fake.url}/token: its TLS certificate is not trusted"
        )
        assert "see providers.fcm.ca_file" in p.degraded
    finally:
        await p.close()
    p = FcmProvider(fcm_config(fake, info))  # ca_file: the fake's CA
    try:
        assert await p.send(delivery(notification(), "fcm", TOKEN)) == Delivered()
        assert fake.tokens_issued == 1 and p.degraded is None
    finally:
        await p.close()


async def test_token_request_times_out_degrades_and_recovers(fake: FakeFCM) -> None:
    p = FcmProvider(fcm_config(fake, fcm_account(fake), timeout_s=0.5))
    try:
        fake.token_stall = True
        outcome = await p.send(delivery(notification(), "fcm", TOKEN))
        assert isinstance(outcome, Retry)
        assert p.degraded == f"no access token from {fake.url}/token: no answer within 0.5 s"
        fake.token_stall = False
        assert await p.send(delivery(notification(), "fcm", TOKEN)) == Delivered()
        assert p.degraded is None and fake.tokens_issued == 1
    finally:
        await p.close()


async def test_payload_limit_is_4096_bytes_as_fcm_counts_them(fake: FakeFCM, provider: FcmProvider) -> None:
    """FCM counts the message's keys and values without the target, in UTF-8: a body of exactly 4,096
    payload bytes gets through, one byte more is refused here, before sending, as the fake would refuse it."""

    def sized(extra: int) -> Notification:
        n = notification("nid-size", body="")
        base = payload_size(message(n, TOKEN, 600))
        return notification("nid-size", body="ü" * ((4096 - base) // 2) + "x" * ((4096 - base) % 2 + extra))

    exact, over = sized(0), sized(1)
    assert payload_size(message(exact, TOKEN, 600)) == 4096
    assert await provider.send(delivery(exact, "fcm", TOKEN)) == Delivered()
    assert fake.accepted == 1 and fake.sent[0].message["notification"]["body"] == exact.body
    refused = await provider.send(delivery(over, "fcm", TOKEN))
    assert refused == Rejected("FCM payload of notification nid-size is 4097 bytes, over the 4096-byte limit")
    assert len(fake.answers) == 1  # never sent


async def test_more_sends_in_flight_than_the_servers_stream_limit(
    fake: FakeFCM, provider: FcmProvider
) -> None:
    """300 at once: over HTTP/2 more than the fake's 100 streams per connection, so requests wait for a
    stream or a new connection instead of failing."""
    tokens = [f"fcm-token-{i:040d}" for i in range(300)]
    outcomes = await asyncio.gather(*(provider.send(delivery(notification(), "fcm", t)) for t in tokens))
    assert outcomes == [Delivered()] * 300
    assert sorted(s.token for s in fake.sent) == tokens


async def test_an_https_endpoint_without_http2_is_reached_over_http1(tmp_path: Path) -> None:
    """An https send_url whose server offers no h2 in ALPN (a proxy, say): HTTP/1.1 from then on."""
    fake = await FakeFCM(tls_http1=tmp_path / "tls").start()
    config = fcm_config(fake, fcm_account(fake))
    p = FcmProvider(
        config.model_copy(
            update={"send_url": f"https://localhost:{fake.tls_port}", "ca_file": fake.cert_path}
        )
    )
    try:
        for i in range(2):
            assert await p.send(delivery(notification(f"n{i}"), "fcm", TOKEN)) == Delivered()
        assert fake.count() == 2 and fake.h2_requests == 0
    finally:
        await p.close()
        await fake.stop()
