"""The webhook receiver provider against a user's HTTPS server that verifies the signature (the README's way).

Not ``test_webhook.py``: that one is the rule's *decision* webhook."""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service.providers import webhook_body
from service.providers.base import ConfigError, Delivered, Rejected, Retry, TokenInvalid
from service.providers.webhook import WebhookConfig, WebhookProvider, check_webhook_url
from tests.fakes.webhook_receiver import FakeWebhookReceiver
from tests.push_support import delivery, notification

SECRET = os.urandom(24).hex().encode()


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "webhook.secret"
    path.write_bytes(SECRET + b"\n")
    return path


@pytest.fixture
async def receiver(tmp_path: Path) -> AsyncIterator[FakeWebhookReceiver]:
    r = await FakeWebhookReceiver(tmp_path, SECRET).start()
    yield r
    await r.stop()


def config(receiver: FakeWebhookReceiver, secret_file: Path, **kw: object) -> WebhookConfig:
    return WebhookConfig(
        secret_path=secret_file,
        allowed_hosts=(receiver.host,),
        ca_file=receiver.ca.cert,
        **kw,
    )


@pytest.fixture
async def provider(receiver: FakeWebhookReceiver, secret_file: Path) -> AsyncIterator[WebhookProvider]:
    p = WebhookProvider(config(receiver, secret_file))
    yield p
    await p.close()


async def test_signed_body_in_the_documented_schema(
    receiver: FakeWebhookReceiver, provider: WebhookProvider
) -> None:
    n = notification("nid-3", data={"door": "garage"}, priority="normal", collapse_key="garage")
    n.labels = {"room": "garage"}
    n.tenant = "t100"
    url = f"{receiver.url}/hooks/tocsin"
    outcome = await provider.send(delivery(n, "webhook", url, user_id="ann", tags=("home",)))
    assert outcome == Delivered(), receiver.refused
    [got] = receiver.posted
    assert got.path == "/hooks/tocsin"
    body = got.body
    assert body["version"] == "tocsin.webhook/1" and body["status"] == "firing"
    assert body["nid"] == "nid-3" and body["alert_id"] == "a1" and body["episode"] == "e1"
    assert body["rule"] == "garage" and body["severity"] == "warning" and body["labels"] == {"room": "garage"}
    assert body["title"] == "Door open" and body["body"] == "The garage door is open"
    assert body["data"] == {"door": "garage"} and body["tenant"] == "t100"
    assert body["priority"] == "normal" and body["collapse_key"] == "garage"
    assert body["startsAt"].endswith("Z") and body["expiresAt"] > body["startsAt"]
    assert body["receiver"]["user_id"] == "ann" and body["receiver"]["tags"] == ["home"]
    h = got.headers
    assert h["Tocsin-Delivery"] == "nid-3" and abs(int(h["Tocsin-Timestamp"]) - time.time()) < 60
    assert webhook_body.verify(SECRET, h["Tocsin-Timestamp"], got.raw, h["Tocsin-Signature"], time.time())
    assert SECRET.decode() not in json.dumps(dict(h))


async def test_wrong_secret_is_refused_by_the_receiver_and_rejected(
    receiver: FakeWebhookReceiver, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong.secret"
    wrong.write_bytes(os.urandom(20).hex().encode())
    p = WebhookProvider(config(receiver, wrong))
    try:
        outcome = await p.send(delivery(notification(), "webhook", receiver.url + "/h"))
        assert isinstance(outcome, Rejected) and "401" in outcome.reason
        assert receiver.refused == {401: 1} and receiver.posted == []
    finally:
        await p.close()


async def test_answers_map_to_the_push_outcome_classes(
    receiver: FakeWebhookReceiver, provider: WebhookProvider
) -> None:
    d = delivery(notification(), "webhook", receiver.url + "/h")
    receiver.fail_next.extend([(429, 12.0), (503, None), (410, None), (404, None), (302, None)])
    throttled = await provider.send(d)
    assert isinstance(throttled, Retry) and throttled.after == 12.0
    assert isinstance(await provider.send(d), Retry)
    assert isinstance(await provider.send(d), TokenInvalid)
    not_found = await provider.send(d)
    assert isinstance(not_found, Rejected) and "404" in not_found.reason
    redirect = await provider.send(d)  # the Location points at a metadata address: never followed
    assert isinstance(redirect, Rejected) and "redirects are not followed" in redirect.reason
    assert await provider.send(d) == Delivered()
    assert receiver.requests == 6


async def test_untrusted_server_and_unreachable_url_retry(
    receiver: FakeWebhookReceiver, secret_file: Path
) -> None:
    p = WebhookProvider(WebhookConfig(secret_path=secret_file, allowed_hosts=("127.0.0.1",)))
    try:  # the system CAs do not know the receiver's CA
        outcome = await p.send(delivery(notification(), "webhook", receiver.url + "/h"))
        assert isinstance(outcome, Retry) and "TLS" in outcome.reason
    finally:
        await p.close()
    url = receiver.url + "/h"
    await receiver.stop()
    p = WebhookProvider(config(receiver, secret_file))
    try:
        outcome = await p.send(delivery(notification(), "webhook", url))
        assert isinstance(outcome, Retry) and "cannot reach" in outcome.reason
    finally:
        await p.close()


async def test_client_certificate_is_presented(tmp_path: Path, secret_file: Path) -> None:
    r = await FakeWebhookReceiver(tmp_path, SECRET, require_client_cert=True).start()
    client = r.ca.client("tocsin")
    try:
        without = WebhookProvider(config(r, secret_file))
        try:
            assert isinstance(await without.send(delivery(notification(), "webhook", r.url)), Retry)
        finally:
            await without.close()
        p = WebhookProvider(config(r, secret_file, client_cert_path=client.cert, client_key_path=client.key))
        try:
            assert await p.send(delivery(notification(), "webhook", r.url)) == Delivered()
            assert r.posted[0].client_cert
        finally:
            await p.close()
    finally:
        await r.stop()


async def test_secret_file_missing_short_or_rotated(receiver: FakeWebhookReceiver, tmp_path: Path) -> None:
    path = tmp_path / "rotating.secret"
    p = WebhookProvider(config(receiver, path))
    try:
        missing = await p.send(delivery(notification(), "webhook", receiver.url))
        assert isinstance(missing, ConfigError) and str(path) in missing.reason and p.degraded
        path.write_bytes(b"zq9x7w")
        short = await p.send(delivery(notification(), "webhook", receiver.url))
        assert isinstance(short, ConfigError) and "shorter than 16" in short.reason
        assert "zq9x7w" not in short.reason
        path.write_bytes(SECRET)
        p._checked = float("-inf")  # the once-a-second re-check, without waiting a second
        assert await p.send(delivery(notification(), "webhook", receiver.url)) == Delivered()
        assert p.degraded is None
    finally:
        await p.close()
    assert receiver.requests == 1


def test_url_check_refuses_request_forgery() -> None:
    open_config = WebhookConfig(secret_path=Path("/x"))
    assert check_webhook_url(open_config, "https://hooks.example.com/tocsin")
    for bad, why in (
        ("http://hooks.example.com/x", "https://"),
        ("ftp://hooks.example.com/x", "https://"),
        ("https://ann:pw@hooks.example.com/x", "credentials"),
        ("https://127.0.0.1:8080/admin", "internal"),
        ("https://[::1]/x", "internal"),
        ("https://10.1.2.3/x", "internal"),
        ("https://169.254.169.254/latest/meta-data", "internal"),
        ("https://localhost/x", "internal"),
        ("https:///nohost", "host"),
        ("https://hooks.example.com:99999/x", "absolute URL"),
        ("https://hooks.example.com/x#frag", "fragment"),
        ("https://hooks.example.com/" + "x" * 2100, "2048"),
    ):
        with pytest.raises(ValueError, match=why):
            check_webhook_url(open_config, bad)
    listed = WebhookConfig(
        secret_path=Path("/x"), allowed_hosts=("*.example.com", "10.0.0.5"), allow_http=True
    )
    assert check_webhook_url(listed, "http://a.b.example.com/x")
    assert check_webhook_url(listed, "https://10.0.0.5/x")
    for bad in ("https://example.com.evil.org/x", "https://evilexample.com/x", "https://10.0.0.6/x"):
        with pytest.raises(ValueError, match="allow-list"):
            check_webhook_url(listed, bad)
