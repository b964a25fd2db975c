"""The receivers' pure parts: webhook signatures, Web Push headers, VAPID tokens, subscription keys, the
credential checks behind ``tocsin check``, and ``tocsin webpush keys``."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import stat
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from registrations.model import check_subscription_keys
from service.cli import main
from service.providers import vapid, webhook_body
from service.providers.webhook import WebhookConfig, check_files
from service.providers.webpush import WebPushConfig, check_key, headers_for, topic
from tests.fakes.webpush import b64url, raw_public
from tests.push_support import delivery, notification

SECRET = os.urandom(32)


def test_signature_covers_timestamp_and_body_and_refuses_replays() -> None:
    d = delivery(notification("n1"), "webhook", "https://h.example.com/x")
    raw = webhook_body.encode(d)
    now = int(time.time())
    h = webhook_body.headers(SECRET, now, raw, "n1")
    sig, ts = h[webhook_body.SIGNATURE_HEADER], h[webhook_body.TIMESTAMP_HEADER]
    assert sig.startswith("v1=") and len(sig) == 3 + 64 and h[webhook_body.ID_HEADER] == "n1"
    assert webhook_body.verify(SECRET, ts, raw, sig, now)
    assert not webhook_body.verify(SECRET, ts, raw + b" ", sig, now)  # body changed
    assert not webhook_body.verify(SECRET, str(now + 1), raw, sig, now)  # timestamp changed
    assert not webhook_body.verify(os.urandom(32), ts, raw, sig, now)  # another secret
    assert not webhook_body.verify(SECRET, ts, raw, sig, now + webhook_body.TOLERANCE_S + 1)  # replayed late
    assert not webhook_body.verify(SECRET, "soon", raw, sig, now)
    # Several signatures (a rotation): any one matching is enough.
    assert webhook_body.verify(SECRET, ts, raw, f"v1={'0' * 64}, {sig}", now)


def test_webhook_body_status_and_locale() -> None:
    n = notification("n2")
    n.state, n.texts = "resolved", {"fr": ("Porte", "La porte est ouverte")}
    body = json.loads(webhook_body.encode(delivery(n, "webhook", "https://h/x", locale="fr-CH")))
    assert body["status"] == "resolved" and body["title"] == "Porte" and body["version"] == "tocsin.webhook/1"


@pytest.mark.parametrize(
    ("priority", "urgency"), [("high", "high"), ("normal", "normal"), ("low", "low"), (None, "high")]
)
def test_web_push_headers_from_expiry_priority_and_collapse_key(priority: str | None, urgency: str) -> None:
    n = notification("nid-1", ttl=120, priority=priority)
    h = headers_for(n, n.created)
    assert h["Urgency"] == urgency and h["TTL"] == "120" and h["Topic"] == "nid-1"
    assert headers_for(n, n.expires + 5)["TTL"] == "0"
    assert headers_for(notification(push_type="background"), time.time())["Urgency"] == "normal"


def test_topic_keeps_short_keys_and_hashes_the_others() -> None:
    assert topic("door-front_1") == "door-front_1"
    long = topic("x" * 33)
    assert len(long) == 32 and long != topic("x" * 34)
    assert len(topic("room/kitchen smoke")) == 32 and "/" not in topic("room/kitchen smoke")


def test_vapid_token_is_signed_cached_per_origin_and_bounded(tmp_path: Path) -> None:
    path = tmp_path / "v.pem"
    public = vapid.generate(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        vapid.generate(path)
    key = vapid.load(path)
    now = [1_800_000_000.0]
    signer = vapid.VapidSigner(key, "mailto:ops@example.com", 3600, clock=lambda: now[0], max_origins=2)
    header = signer.header("https://push.example.com")
    token = header.split("t=")[1].split(",")[0]
    claims = jwt.decode(token, key.public_key(), algorithms=["ES256"], audience="https://push.example.com",
                        options={"verify_exp": False})  # fmt: skip
    assert claims["exp"] == int(now[0] + 3600) and claims["sub"] == "mailto:ops@example.com"
    assert header.endswith(f"k={public}")
    assert signer.header("https://push.example.com") == header and signer.signed == 1
    signer.header("https://b.example"), signer.header("https://c.example")
    assert signer.signed == 3 and len(signer._cache) == 2
    with pytest.raises(ValueError, match="24 h"):
        vapid.VapidSigner(key, "mailto:x@example.com", 25 * 3600)


def test_vapid_key_file_must_be_p256(tmp_path: Path) -> None:
    other = tmp_path / "p384.pem"
    from cryptography.hazmat.primitives import serialization

    k = ec.generate_private_key(ec.SECP384R1())
    other.write_bytes(
        k.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(ValueError, match="P-256"):
        vapid.load(other)


def test_subscription_keys_are_checked() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    p256dh, auth = b64url(raw_public(key.public_key())), b64url(os.urandom(16))
    assert check_subscription_keys(p256dh + "=", auth + "==") == (p256dh, auth)
    with pytest.raises(ValueError, match="16-byte"):
        check_subscription_keys(p256dh, b64url(os.urandom(12)))
    with pytest.raises(ValueError, match="base64"):
        check_subscription_keys(p256dh.replace("A", "+", 1) if "A" in p256dh else "+" + p256dh[1:], auth)
    compressed = base64.urlsafe_b64encode(b"\x02" + os.urandom(64)).decode().rstrip("=")
    with pytest.raises(ValueError, match="uncompressed"):
        check_subscription_keys(compressed, auth)


def test_credential_checks_name_the_files(tmp_path: Path) -> None:
    secret = tmp_path / "s"
    assert check_files(WebhookConfig(secret_path=secret, ca_file=tmp_path / "ca.pem"))[0].endswith(
        "No such file or directory"
    )
    secret.write_text("x" * 20)
    assert check_files(WebhookConfig(secret_path=secret)) == []
    assert check_files(WebhookConfig(secret_path=secret, ca_file=tmp_path / "ca.pem")) == [
        f"{tmp_path / 'ca.pem'} is not a readable file"
    ]
    pem = tmp_path / "bad.pem"
    pem.write_text("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    assert check_key(WebPushConfig(vapid_private_key_path=pem)) == [
        f"{pem} is not an unencrypted PEM private key"
    ]
    assert WebPushConfig().configured is False and WebhookConfig().configured is False
    with pytest.raises(ValueError, match="mailto"):
        WebPushConfig(subject="ops@example.com")


def test_webpush_keys_command_prints_the_public_key(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    path = tmp_path / "k.pem"
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert main(["webpush", "keys", "--out", str(path), "--json"]) == 0
        assert main(["webpush", "keys", "--out", str(path)]) == 1
    doc = json.loads(out.getvalue())
    assert doc["public_key"] == vapid.public_key_b64(vapid.load(path)) and "not overwriting" in err.getvalue()
    assert "PRIVATE" not in out.getvalue()


def test_subscription_keys_survive_the_stores(tmp_path: Path) -> None:
    from registrations.inventory_store import from_fragment, to_fragment
    from registrations.model import Registration
    from registrations.sqlite_store import SqliteRegistrationDb

    key = ec.generate_private_key(ec.SECP256R1())
    reg = Registration(
        "webpush",
        "https://fcm.googleapis.com/fcm/send/x",
        p256dh=b64url(raw_public(key.public_key())),
        auth="a" * 22,
    )
    back = from_fragment(json.loads(json.dumps(to_fragment(reg))))
    assert (back.p256dh, back.auth) == (reg.p256dh, reg.auth)
    store = SqliteRegistrationDb(tmp_path / "r.db")
    store.upsert(reg, time.time())
    store.close()
    reopened = SqliteRegistrationDb(tmp_path / "r.db")
    got = reopened.get("webpush", reg.token)
    assert got is not None and (got.p256dh, got.auth) == (reg.p256dh, reg.auth)
    reopened.close()
