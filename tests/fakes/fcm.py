"""A fake Google OAuth2 token endpoint and FCM HTTP v1 send endpoint (aiohttp on localhost).

With ``cert_dir`` both are served over TLS with a certificate of a private CA made at start (``ca_file``),
as Google serves them over HTTPS only: a client that does not trust the CA cannot get a token. The send
endpoint is then also served over HTTP/2 (``h2_url``, the same certificate), as fcm.googleapis.com is, unless
``h2`` is off. Without ``cert_dir``, plain HTTP (the benchmarks' choice).

Token endpoint (``POST /token``): the JWT-bearer grant, the assertion RS256-signed by a known service
account's key (``kid`` = private_key_id), ``iss`` = its client_email, the firebase.messaging scope, ``exp``
in the future; answers ``{"access_token", "expires_in", "token_type"}`` or 400 ``invalid_grant``.

Send endpoint (``POST /v1/projects/<project>/messages:send``): bearer must be a live token of a service
account of that project (else 401 UNAUTHENTICATED or 403); the body is checked as Google does it
(exactly one target, string-only data, reserved data keys, the 4096-byte payload: the message without its
target, as compact UTF-8 JSON; ttl range, android priority as the v1 enum HIGH/NORMAL) → 400
INVALID_ARGUMENT with a BadRequest field violation; a per-minute project quota (429 QUOTA_EXCEEDED).
Scriptable: ``token_outage`` (503), ``token_stall`` (never answered), ``unregistered`` tokens (404
UNREGISTERED),
``other_sender`` tokens (403 SENDER_ID_MISMATCH), ``fail_next`` and ``outage`` (429 QUOTA_EXCEEDED,
503 UNAVAILABLE with Retry-After, 500 INTERNAL, 401 THIRD_PARTY_AUTH_ERROR), ``stall``.

Run alone: ``python -m tests.fakes.fcm --account PUBLIC_PEM:EMAIL:KEY_ID:PROJECT [--port N] [--echo]``;
prints one JSON line ``{"port", "h2_port", "cert"}`` when it listens (``--cert-dir DIR``: also HTTP/2 over
TLS on ``h2_port``); with ``--echo``, then one line ``TIME NOTIFICATION-BODY``
per accepted message (benchmarks time deliveries by them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import secrets
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web

from tests.fakes import h2server
from tests.fakes.apns import echo_line, report
from tests.fakes.certs import CertificateAuthority
from tests.fakes.keys import self_signed

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
# FCM error code -> HTTP status
ERRORS = {
    "INVALID_ARGUMENT": 400,
    "UNREGISTERED": 404,
    "SENDER_ID_MISMATCH": 403,
    "QUOTA_EXCEEDED": 429,
    "THIRD_PARTY_AUTH_ERROR": 401,
    "UNAVAILABLE": 503,
    "INTERNAL": 500,
}
RESERVED_DATA = ("from", "message_type")
MAX_PAYLOAD = 4096
TARGETS = ("token", "topic", "condition")


def payload_size(message: dict[str, Any]) -> int:
    """What FCM holds to 4096 bytes: the message's keys and values without the target, as UTF-8."""
    rest = {k: v for k, v in message.items() if k not in TARGETS}
    return len(json.dumps(rest, separators=(",", ":"), ensure_ascii=False).encode())


_SEND_PATH = re.compile(r"^/v1/projects/([^/]+)/messages:send$")


@dataclass
class Account:
    email: str
    project: str
    public_pem: str


@dataclass(frozen=True)
class Sent:
    project: str
    message: dict[str, Any]
    validate_only: bool = False

    @property
    def token(self) -> str:
        return str(self.message.get("token", ""))


class _Error(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, field: str | None = None) -> None:
        self.status, self.message, self.code, self.field = status, message, code, field

    def body(self) -> dict[str, Any]:
        details: list[dict[str, Any]] = []
        if self.code:
            details.append(
                {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": self.code}
            )
        if self.field:
            details.append(
                {
                    "@type": "type.googleapis.com/google.rpc.BadRequest",
                    "fieldViolations": [{"field": self.field, "description": self.message}],
                }
            )
        return {
            "error": {
                "code": self.status,
                "message": self.message,
                "status": _STATUS.get(self.status, "UNKNOWN"),
                "details": details,
            }
        }


@dataclass
class FakeFCM:
    host: str = "127.0.0.1"
    port: int = 0
    accounts: dict[str, Account] = field(default_factory=dict)  # private_key_id -> account
    unregistered: set[str] = field(default_factory=set)
    other_sender: set[str] = field(default_factory=set)
    fail_next: deque[tuple[str, float | None]] = field(default_factory=deque)  # (FCM code, Retry-After)
    outage: tuple[str, float | None] | None = None
    token_outage: bool = False
    token_stall: bool = False  # token requests are read and never answered while set
    stall: bool = False
    stall_after: int | None = None  # stall every send once this many were accepted
    token_lifetime_s: int = 3600
    quota_per_minute: int | None = None  # project-wide message quota (Google's default is 600,000)
    record: bool = True
    echo: Callable[[Sent], None] | None = None  # told of every accepted message (benchmarks)
    cert_dir: Path | None = None  # serve TLS with a private CA's certificate, written here
    h2: bool = True  # with cert_dir: the send endpoint also over HTTP/2, at ``h2_url``
    # Without cert_dir (plain HTTP): the send endpoint also over HTTP/2 with TLS, with the self-signed
    # certificate found or made in this directory (``cert_path``; the benchmarks share the fake APNs' one).
    h2_cert_dir: Path | None = None
    tls_http1: Path | None = None  # a second HTTP/1.1-only listener over TLS, certificate from this directory

    def __post_init__(self) -> None:
        self.ca_file: Path | None = None
        self._ssl: ssl.SSLContext | None = None
        self._leaf: tuple[Path, Path] | None = None
        if self.cert_dir is not None:
            ca = CertificateAuthority(self.cert_dir, "fake google CA")
            leaf = ca.server("localhost", ip=self.host)
            self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._ssl.load_cert_chain(leaf.cert, leaf.key)
            self.ca_file = ca.cert
            self._leaf = (leaf.cert, leaf.key)
        self.sent: list[Sent] = []
        self.answers: list[tuple[float, str, int]] = []  # (time, token, status) of every answered send
        self.accepted = 0
        self.rejected: dict[str, int] = {}
        self.tokens_issued = 0
        self._live: dict[str, tuple[str, float]] = {}  # access token -> (project, expiry)
        self._runner: web.AppRunner | None = None
        self._release = asyncio.Event()
        self.h2_port = 0
        self.tls_port = 0
        self.h2_requests = 0  # sends that came over HTTP/2
        self.cert_path: Path | None = None
        self._h2: asyncio.Server | None = None
        self._window: deque[float] = deque()  # times of accepted messages in the last minute
        self.stalled = 0

    def add_account(self, key_id: str, email: str, project: str, public_pem: str) -> None:
        self.accounts[key_id] = Account(email, project, public_pem)

    def revoke_tokens(self) -> None:
        self._live.clear()

    @property
    def url(self) -> str:
        return f"{'https' if self._ssl else 'http'}://{self.host}:{self.port}"

    async def start(self) -> FakeFCM:
        app = web.Application()
        app.router.add_post("/token", self._token)
        app.router.add_post("/v1/projects/{project}/messages:send", self._send)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self._ssl)
        await site.start()
        self.port = self._runner.addresses[0][1]
        if self._leaf is not None and self.h2:
            self.cert_path = self.ca_file  # what a client trusts for either listener
            self._h2, _ = await h2server.serve(self._h2_request, self.host, 0, *self._leaf)
            self.h2_port = self._h2.sockets[0].getsockname()[1]
        elif self.h2_cert_dir is not None:
            cert, key = self.h2_cert_dir / "localhost-cert.pem", self.h2_cert_dir / "localhost-key.pem"
            if not cert.exists():
                cert, key = self_signed(self.h2_cert_dir)
            self.cert_path = cert
            self._h2, _ = await h2server.serve(self._h2_request, self.host, 0, cert, key)
            self.h2_port = self._h2.sockets[0].getsockname()[1]
        if self.tls_http1 is not None:  # a server that does not speak HTTP/2: ALPN offers none
            cert, key = self_signed(self.tls_http1)
            self.cert_path = cert
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(cert, key)
            tls_site = web.TCPSite(self._runner, self.host, 0, ssl_context=ctx)
            await tls_site.start()
            self.tls_port = self._runner.addresses[-1][1]
        return self

    @property
    def h2_url(self) -> str:
        return f"https://localhost:{self.h2_port}"

    def _h2_request(self, headers: dict[str, str], body: bytes) -> h2server.Answer | None:
        self.h2_requests += 1
        match = _SEND_PATH.match(headers.get(":path", ""))
        if headers.get(":method") != "POST" or match is None:
            return 404, {}, json.dumps(_Error(404, "Not found").body()).encode()
        if self._stalls():
            return None
        return self.answer(match.group(1), headers.get("authorization", ""), body)

    async def stop(self) -> None:
        self._release.set()
        if self._h2 is not None:
            self._h2.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def count(self, token: str | None = None) -> int:
        return self.accepted if token is None else sum(1 for s in self.sent if s.token == token)

    # -- OAuth2 ---------------------------------------------------------------------------------------------
    async def _token(self, request: web.Request) -> web.Response:
        if self.token_stall:
            await self._release.wait()  # never answered while the fake runs
            raise web.HTTPServiceUnavailable()
        if self.token_outage:
            return web.json_response({"error": "temporarily_unavailable"}, status=503)
        form = await request.post()
        if form.get("grant_type") != GRANT:
            return _grant_error("unsupported_grant_type", "Invalid grant_type")
        assertion = str(form.get("assertion", ""))
        try:
            kid = str(jwt.get_unverified_header(assertion).get("kid"))
            account = self.accounts.get(kid)
            if account is None:
                return _grant_error("invalid_grant", "Invalid JWT Signature.")
            # aud is always Google's token URL (google-auth), so it is not compared with ours.
            claims = jwt.decode(
                assertion, account.public_pem, algorithms=["RS256"], options={"verify_aud": False}
            )
        except jwt.ExpiredSignatureError:
            return _grant_error("invalid_grant", "Invalid JWT: Token must be a short-lived token")
        except jwt.PyJWTError:
            return _grant_error("invalid_grant", "Invalid JWT Signature.")
        if claims.get("iss") != account.email:
            return _grant_error("invalid_grant", "Invalid JWT: iss does not match the key")
        if SCOPE not in str(claims.get("scope", "")).split():
            return _grant_error("invalid_scope", "Invalid OAuth scope or ID token audience provided.")
        token = "ya29.fake-" + secrets.token_urlsafe(24)
        self._live[token] = (account.project, time.time() + self.token_lifetime_s)
        self.tokens_issued += 1
        return web.json_response(
            {"access_token": token, "expires_in": self.token_lifetime_s, "token_type": "Bearer"}
        )

    # -- FCM HTTP v1 ----------------------------------------------------------------------------------------
    async def _send(self, request: web.Request) -> web.Response:
        if self._stalls():
            await self._release.wait()  # never answered while the fake runs
            raise web.HTTPServiceUnavailable()
        raw = await request.read()
        status, headers, body = self.answer(
            request.match_info["project"], request.headers.get("Authorization", ""), raw
        )
        return web.Response(status=status, headers=headers, body=body, content_type="application/json")

    def _stalls(self) -> bool:
        if self.stall or (self.stall_after is not None and self.accepted >= self.stall_after):
            self.stalled += 1
            return True
        return False

    def answer(self, project: str, auth: str, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        """One send, whichever HTTP version carried it: status, extra headers, JSON body."""
        try:
            sent = self._check(project, auth, raw)
        except _Error as e:
            if self.record:
                self.answers.append((time.monotonic(), _token_of(raw), e.status))
            reason = e.code or _STATUS.get(e.status, "ERROR")
            self.rejected[reason] = self.rejected.get(reason, 0) + 1
            headers = {"Retry-After": str(int(self._retry_after))} if self._retry_after is not None else {}
            return e.status, headers, json.dumps(e.body()).encode()
        if sent.validate_only:
            return 200, {}, json.dumps({"name": f"projects/{sent.project}/messages/fake_message_id"}).encode()
        self.accepted += 1
        if self.record:
            self.sent.append(sent)
            self.answers.append((time.monotonic(), sent.token, 200))
        if self.echo is not None:
            self.echo(sent)
        name = f"projects/{sent.project}/messages/0:{time.time_ns()}%{secrets.token_hex(8)}"
        return 200, {}, json.dumps({"name": name}).encode()

    _retry_after: float | None = None

    def _check(self, project: str, auth: str, raw: bytes) -> Sent:
        self._retry_after = None
        live = self._live.get(auth.removeprefix("Bearer ").strip()) if auth.startswith("Bearer ") else None
        if live is None or live[1] < time.time():
            raise _Error(401, "Request had invalid authentication credentials.")
        if live[0] != project:
            raise _Error(403, "Permission 'cloudmessaging.messages.create' denied on resource", None)
        try:
            doc = json.loads(raw)
        except ValueError:
            raise _Error(400, "Invalid JSON payload received.") from None
        msg = doc.get("message") if isinstance(doc, dict) else None
        if not isinstance(msg, dict):
            raise _Error(400, "Request contains an invalid argument.", "INVALID_ARGUMENT", "message")
        targets = [k for k in TARGETS if k in msg]
        if len(targets) != 1:
            raise _Error(
                400, "Exactly one of token, topic or condition must be set.", "INVALID_ARGUMENT", "message"
            )
        for where, data in (
            ("message.data", msg.get("data")),
            ("message.android.data", (msg.get("android") or {}).get("data")),
        ):
            if data is None:
                continue
            if not isinstance(data, dict):
                raise _Error(400, "Invalid value at 'message.data'", "INVALID_ARGUMENT", where)
            for i, (k, v) in enumerate(data.items()):
                if not isinstance(v, str):
                    raise _Error(
                        400,
                        f"Invalid value at '{where}[{i}].value' (TYPE_STRING)",
                        "INVALID_ARGUMENT",
                        f"{where}[{i}].value",
                    )
                if k in RESERVED_DATA or k.startswith(("google.", "gcm.notification.")):
                    raise _Error(400, f"Invalid data payload key: {k}", "INVALID_ARGUMENT", where)
        android = msg.get("android") or {}
        if android.get("priority") not in (None, "NORMAL", "HIGH"):  # the AndroidMessagePriority enum
            raise _Error(
                400,
                "Invalid value at 'message.android.priority'",
                "INVALID_ARGUMENT",
                "message.android.priority",
            )
        ttl = android.get("ttl")
        if ttl is not None:
            try:
                seconds = float(str(ttl).removesuffix("s"))
            except ValueError:
                seconds = -1
            if not str(ttl).endswith("s") or not 0 <= seconds <= 2_419_200:
                raise _Error(
                    400, "Invalid value at 'message.android.ttl'", "INVALID_ARGUMENT", "message.android.ttl"
                )
        if payload_size(msg) > MAX_PAYLOAD:
            raise _Error(400, "Message is too big", "INVALID_ARGUMENT", "message")
        token = msg.get("token")
        if isinstance(token, str) and (len(token) < 20 or not token.isprintable()):
            raise _Error(
                400,
                "The registration token is not a valid FCM registration token",
                "INVALID_ARGUMENT",
                "message.token",
            )
        scripted = self.fail_next.popleft() if self.fail_next else self.outage
        if scripted is not None:
            code, self._retry_after = scripted
            raise _Error(ERRORS[code], f"scripted {code}", code)
        if self.quota_per_minute is not None:
            now = time.monotonic()
            while self._window and self._window[0] <= now - 60:
                self._window.popleft()
            if len(self._window) >= self.quota_per_minute:
                self._retry_after = max(1.0, 60 - (now - self._window[0]))
                raise _Error(429, "Quota exceeded for quota metric 'Messages per minute'", "QUOTA_EXCEEDED")
            self._window.append(now)
        if token in self.unregistered:
            raise _Error(404, "Requested entity was not found.", "UNREGISTERED")
        if token in self.other_sender:
            raise _Error(403, "SenderId mismatch", "SENDER_ID_MISMATCH")
        return Sent(project, msg, bool(doc.get("validate_only")))


def _token_of(raw: bytes) -> str:
    try:
        return str(json.loads(raw)["message"]["token"])
    except (ValueError, KeyError, TypeError):
        return ""


def _grant_error(error: str, description: str) -> web.Response:
    return web.json_response({"error": error, "error_description": description}, status=400)


async def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--account", action="append", default=[], help="PUBLIC_PEM_FILE:EMAIL:KEY_ID:PROJECT")
    parser.add_argument("--echo", action="store_true", help="print 'TIME BODY' per accepted message")
    parser.add_argument("--cert-dir", type=Path, help="also serve the send endpoint over HTTP/2 with TLS")
    args = parser.parse_args()
    fake = FakeFCM(port=args.port, record=False, h2_cert_dir=args.cert_dir)
    if args.echo:
        fake.echo = lambda m: echo_line(m.message.get("notification", {}).get("body", ""))
    for spec in args.account:
        pem, email, kid, project = spec.split(":", 3)
        fake.add_account(kid, email, project, Path(pem).read_text())  # noqa: ASYNC240
    await fake.start()
    print(
        json.dumps({"port": fake.port, "h2_port": fake.h2_port, "cert": str(fake.cert_path or "")}),
        flush=True,
    )
    await report(lambda: {"accepted": fake.accepted, "rejected": fake.rejected}, args.echo)


if __name__ == "__main__":
    asyncio.run(_main())
