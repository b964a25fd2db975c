"""A fake Web Push service (RFC 8030 delivery, RFC 8291 encryption, RFC 8292 VAPID) over HTTPS.

``POST /push/<id>`` is a subscription's endpoint. The fake checks what Mozilla's autopush and FCM's Web Push
endpoint check, in this order, and answers as they do:

- the subscription exists (404 otherwise; 410 once it has been ``unsubscribe``d);
- ``Authorization: vapid t=<JWT>, k=<public key>`` (RFC 8292 §3; the draft form ``WebPush <JWT>`` with
  ``Crypto-Key: p256ecdsa=<key>`` is accepted too): the JWT is ES256-signed by ``k``, ``aud`` is this
  service's origin, ``exp`` is in the future and at most 24 h ahead, ``sub`` is a ``mailto:`` or ``https:``
  URI; a subscription made with an ``applicationServerKey`` only takes that key (401/403 otherwise);
- ``TTL`` present and a non-negative integer; ``Urgency`` one of very-low, low, normal, high; ``Topic`` at
  most 32 characters of the URL-safe base64 alphabet (400 otherwise);
- a body needs ``Content-Encoding: aes128gcm``, is at most 4096 bytes (413 otherwise), and must decrypt with
  the subscription's private key and auth secret as a browser's push service client does (400 otherwise).

Accepted messages are answered 201 with a ``Location`` and recorded (decrypted) in ``received``.
Scriptable: ``fail_next`` (a queue of (status, Retry-After) answers: 404, 410, 413, 429, 500, ...).

A subscription is made by ``subscribe()`` (keys made here, as a browser would) or, for a real browser whose
page made its own keys, by ``POST /subscriptions`` with ``{"private_jwk", "auth", "application_server_key"}``
(answers ``{"endpoint"}``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
import secrets
import ssl
import time
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import http_ece
import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.fakes.certs import CertificateAuthority

MAX_BODY = 4096
URGENCIES = ("very-low", "low", "normal", "high")
_TOPIC = re.compile(r"[A-Za-z0-9_\-]{1,32}")
_MAX_EXP_S = 24 * 3600
_CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST",
    "Access-Control-Allow-Headers": "Content-Type",
}


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def raw_public(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


@dataclass
class Subscription:
    """What a browser holds for one subscription; ``json`` is what ``PushSubscription.toJSON()`` gives."""

    id: str
    endpoint: str
    private_key: ec.EllipticCurvePrivateKey
    auth: bytes
    application_server_key: bytes | None = None

    @property
    def p256dh(self) -> str:
        return b64url(raw_public(self.private_key.public_key()))

    @property
    def auth_b64(self) -> str:
        return b64url(self.auth)

    @property
    def json(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "keys": {"p256dh": self.p256dh, "auth": self.auth_b64}}


@dataclass(frozen=True)
class Received:
    subscription: str
    plaintext: bytes
    ttl: int
    urgency: str | None
    topic: str | None
    body_size: int
    headers: dict[str, str]
    claims: dict[str, Any]

    @property
    def message(self) -> Any:
        return json.loads(self.plaintext)


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        self.status, self.reason = status, reason


@dataclass
class FakeWebPush:
    directory: Path
    host: str = "127.0.0.1"
    port: int = 0
    fail_next: deque[tuple[int, float | None]] = field(default_factory=deque)
    record: bool = True

    def __post_init__(self) -> None:
        self.ca = CertificateAuthority(self.directory / "webpush-ca", "fake web push CA")
        self.subscriptions: dict[str, Subscription] = {}
        self.gone: set[str] = set()
        self.remote_subscriptions: list[Subscription] = []
        self.received: list[Received] = []
        self.accepted = 0
        self.refused: dict[str, int] = {}  # reason -> count
        self.answers: list[tuple[str, int]] = []  # (subscription id, status) of every request
        self._runner: web.AppRunner | None = None

    @property
    def origin(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.ca.cert

    async def start(self) -> FakeWebPush:
        issued = self.ca.server("localhost", ip=self.host)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(issued.cert, issued.key)
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_post("/push/{sid}", self._push)
        app.router.add_post("/subscriptions", self._subscribe_remote)
        app.router.add_route("OPTIONS", "/subscriptions", self._preflight)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=ctx)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # -- subscriptions --------------------------------------------------------------------------------------

    def subscribe(self, application_server_key: bytes | None = None) -> Subscription:
        return self._add(
            ec.generate_private_key(ec.SECP256R1()), secrets.token_bytes(16), application_server_key
        )

    def _add(
        self, key: ec.EllipticCurvePrivateKey, auth: bytes, server_key: bytes | None, sid: str | None = None
    ) -> Subscription:
        sid = sid or secrets.token_urlsafe(24)
        sub = Subscription(sid, f"{self.origin}/push/{sid}", key, auth, server_key)
        self.subscriptions[sid] = sub
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """The browser dropped it: the endpoint answers 410 Gone from now on."""
        self.subscriptions.pop(sub.id, None)
        self.gone.add(sub.id)

    def for_subscription(self, sub: Subscription) -> list[Received]:
        return [r for r in self.received if r.subscription == sub.id]

    async def _preflight(self, request: web.Request) -> web.Response:
        return web.Response(status=204, headers=_CORS)

    async def _subscribe_remote(self, request: web.Request) -> web.Response:
        """A real browser's page hands over the keys it made (WebCrypto JWK), so the fake can decrypt."""
        doc = await request.json()
        jwk = doc["private_jwk"]
        if jwk.get("kty") != "EC" or jwk.get("crv") != "P-256":
            return web.json_response({"message": "a P-256 ECDH key"}, status=400, headers=_CORS)
        number = int.from_bytes(unb64url(jwk["d"]), "big")
        key = ec.derive_private_key(number, ec.SECP256R1())
        server_key = doc.get("application_server_key")
        sub = self._add(key, unb64url(doc["auth"]), unb64url(server_key) if server_key else None)
        self.remote_subscriptions.append(sub)
        body = {"endpoint": sub.endpoint, "keys": sub.json["keys"]}
        return web.json_response(body, status=201, headers=_CORS)

    # -- delivery -------------------------------------------------------------------------------------------

    async def _push(self, request: web.Request) -> web.Response:
        sid = request.match_info["sid"]
        body = await request.read()
        try:
            received = self._check(sid, request, body)
        except _Refused as exc:
            self.refused[exc.reason] = self.refused.get(exc.reason, 0) + 1
            self.answers.append((sid, exc.status))
            return web.json_response(
                {
                    "code": exc.status,
                    "errno": 0,
                    "error": HTTPStatus(exc.status).phrase,
                    "message": exc.reason,
                },
                status=exc.status,
            )
        if self.fail_next:
            status, retry_after = self.fail_next.popleft()
            self.answers.append((sid, status))
            headers = {"Retry-After": str(int(retry_after))} if retry_after is not None else {}
            return web.json_response({"code": status, "message": "scripted"}, status=status, headers=headers)
        self.accepted += 1
        self.answers.append((sid, 201))
        if self.record:
            self.received.append(received)
        return web.Response(status=201, headers={"Location": f"{self.origin}/message/{secrets.token_hex(8)}"})

    def _check(self, sid: str, request: web.Request, body: bytes) -> Received:
        if sid in self.gone:
            raise _Refused(410, "subscription expired")
        sub = self.subscriptions.get(sid)
        if sub is None:
            raise _Refused(404, "no such subscription")
        claims = self._vapid(request, sub)
        ttl_text = request.headers.get("TTL")
        if ttl_text is None or not ttl_text.isdigit():
            raise _Refused(400, "missing or bad TTL header")
        urgency = request.headers.get("Urgency")
        if urgency is not None and urgency not in URGENCIES:
            raise _Refused(400, f"bad Urgency {urgency!r}")
        topic = request.headers.get("Topic")
        if topic is not None and not _TOPIC.fullmatch(topic):
            raise _Refused(400, "Topic must be at most 32 URL-safe base64 characters")
        plaintext = b""
        if body:
            if len(body) > MAX_BODY:
                raise _Refused(413, f"payload of {len(body)} bytes is over {MAX_BODY}")
            if request.headers.get("Content-Encoding") != "aes128gcm":
                raise _Refused(400, "Content-Encoding must be aes128gcm")
            try:
                plaintext = http_ece.decrypt(
                    body, private_key=sub.private_key, auth_secret=sub.auth, version="aes128gcm"
                )
            except Exception as exc:  # any failure to decrypt is the sender's
                raise _Refused(400, f"cannot decrypt: {exc.__class__.__name__}") from None
        return Received(
            sid, plaintext, int(ttl_text), urgency, topic, len(body), dict(request.headers), claims
        )

    def _vapid(self, request: web.Request, sub: Subscription) -> dict[str, Any]:
        auth = request.headers.get("Authorization", "")
        scheme, _, rest = auth.partition(" ")
        if scheme.lower() == "vapid":  # RFC 8292 §3: vapid t=<jwt>, k=<key>
            params = dict(p.strip().split("=", 1) for p in rest.split(",") if "=" in p)
            token, key_text = params.get("t", ""), params.get("k", "")
        elif scheme == "WebPush":  # the draft's form, still accepted by the big push services
            token = rest.strip()
            crypto = dict(
                p.strip().split("=", 1) for p in request.headers.get("Crypto-Key", "").split(";") if "=" in p
            )
            key_text = crypto.get("p256ecdsa", "")
        else:
            raise _Refused(401, "missing VAPID Authorization")
        try:
            key_raw = unb64url(key_text)
            public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), key_raw)
        except ValueError:
            raise _Refused(401, "bad VAPID public key") from None
        if sub.application_server_key is not None and key_raw != sub.application_server_key:
            raise _Refused(403, "VAPID key differs from the subscription's applicationServerKey")
        try:
            header = jwt.get_unverified_header(token)
            if header.get("alg") != "ES256":
                raise _Refused(401, "VAPID JWT must be ES256")
            claims: dict[str, Any] = jwt.decode(
                token, public, algorithms=["ES256"], audience=self.origin, options={"require": ["exp", "aud"]}
            )
        except jwt.InvalidAudienceError:
            raise _Refused(401, "VAPID aud is not this push service's origin") from None
        except jwt.ExpiredSignatureError:
            raise _Refused(401, "VAPID JWT expired") from None
        except jwt.PyJWTError as exc:
            raise _Refused(401, f"bad VAPID JWT: {exc.__class__.__name__}") from None
        if int(claims["exp"]) > time.time() + _MAX_EXP_S:
            raise _Refused(401, "VAPID exp more than 24 hours ahead")
        sub_claim = claims.get("sub")
        if not isinstance(sub_claim, str) or not sub_claim.startswith(("mailto:", "https:")):
            raise _Refused(401, "VAPID sub must be a mailto: or https: URI")
        return claims


async def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, required=True, help="where the CA and certificates are written")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--bench", type=int, default=0, help="make this many subscriptions b0, b1, ... sharing one key pair"
    )
    parser.add_argument("--application-server-key", help="the VAPID public key the bench subscribed with")
    args = parser.parse_args()
    fake = await FakeWebPush(args.dir, port=args.port, record=False).start()
    info: dict[str, Any] = {"port": fake.port, "ca": str(fake.ca_file), "origin": fake.origin}
    if args.bench:
        key, auth = ec.generate_private_key(ec.SECP256R1()), secrets.token_bytes(16)
        server = unb64url(args.application_server_key) if args.application_server_key else None
        for i in range(args.bench):
            sub = fake._add(key, auth, server, f"b{i}")
        info |= {"endpoint_prefix": f"{fake.origin}/push/b", **sub.json["keys"]}
    print(json.dumps(info), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_main())
