"""A fake APNs: HTTP/2 over TLS (self-signed, made at start) that checks requests the way Apple does.

It validates, in pushy's MockApnsServer order, the apns-id, method, topic, collapse id, priority, push type,
path and token format, the token's registration, the provider token (ES256 JWT: key id, team id, signature,
age, one token per connection changed at most every 20 minutes, and a key's token changed at most once in 20
minutes across all connections: a second change is 429 TooManyProviderTokenUpdates) or the client
certificate, then the payload
(empty, 4096 bytes, 5120 for voip). Answers are Apple's: 200 with ``apns-id`` echoed and no body; errors
with one DATA frame ``{"reason": ...}`` (plus ``timestamp`` for 410).

Scriptable failures: ``unregistered`` / ``bad_tokens`` / ``wrong_topic`` tokens, ``fail_next`` (e.g. a burst
of 429s; 503 ``Shutdown`` also sends GOAWAY), ``outage`` (every request answered 500/503 while set),
``max_token_age_s`` (0 makes every provider token expired), ``stall`` / ``stall_after`` (requests are read
and never answered).

Run alone: ``python -m tests.fakes.apns --cert-dir DIR --key KID:TEAM:PUBLIC_PEM_FILE [--port N]``; it prints
one JSON line ``{"port", "cert"}`` when it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import ssl
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes

from tests.fakes.keys import self_signed

PUSH_TYPES = {
    "alert",
    "background",
    "location",
    "voip",
    "complication",
    "fileprovider",
    "mdm",
    "liveactivity",
    "pushtotalk",
}
_TOKEN = re.compile(r"^[0-9a-fA-F]{64}$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass
class Key:
    team_id: str
    public_pem: str
    topics: set[str] | None = None  # None: every topic of the team


@dataclass(frozen=True)
class Received:
    token: str
    topic: str
    apns_id: str
    headers: dict[str, str]
    payload: dict[str, Any]
    sandbox_host: bool


class _Reject(Exception):
    def __init__(self, status: int, reason: str, timestamp: int | None = None) -> None:
        self.status, self.reason, self.timestamp = status, reason, timestamp


@dataclass
class FakeAPNs:
    cert_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    keys: dict[str, Key] = field(default_factory=dict)
    client_certs: dict[str, str] = field(default_factory=dict)  # cert PEM path -> topic
    unregistered: dict[str, int] = field(default_factory=dict)  # token -> ms timestamp
    bad_tokens: set[str] = field(default_factory=set)
    wrong_topic: set[str] = field(default_factory=set)
    fail_next: deque[tuple[int, str]] = field(default_factory=deque)
    outage: tuple[int, str] | None = None
    stall: bool = False
    stall_after: int | None = None  # stall every request once this many were accepted
    max_token_age_s: float = 3600.0
    min_token_change_s: float = 20 * 60
    record: bool = True
    clock: Callable[[], float] = time.time  # what provider-token ages are measured with (tests may drive it)

    def __post_init__(self) -> None:
        self.received: list[Received] = []
        self.accepted = 0
        self.rejected: dict[str, int] = {}
        self.requests = 0
        self.stalled = 0
        self.blocked = 0  # error bodies that had to wait for the client's flow-control credit
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._open: set[_Connection] = set()
        self.key_tokens: dict[
            str, set[str]
        ] = {}  # key id -> every provider token it signed that was accepted
        self._key_changes: dict[str, deque[float]] = {}  # key id -> when a new token of it was first seen
        self.cert_path, self.key_path = (
            self.cert_dir / "localhost-cert.pem",
            self.cert_dir / "localhost-key.pem",
        )
        if not self.cert_path.exists():  # several fakes may share one certificate (one CA file to trust)
            self.cert_path, self.key_path = self_signed(self.cert_dir)

    def add_key(self, key_id: str, team_id: str, public_pem: str, topics: set[str] | None = None) -> None:
        self.keys[key_id] = Key(team_id, public_pem, topics)

    def trust_client_cert(self, pem_path: Path, topic: str) -> None:
        """Accept this client certificate (before ``start``) for ``topic``."""
        self.client_certs[str(pem_path)] = topic

    async def start(self) -> FakeAPNs:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert_path, self.key_path)
        ctx.set_alpn_protocols(["h2"])
        if self.client_certs:
            ctx.verify_mode = ssl.CERT_OPTIONAL
            for pem in self.client_certs:
                ctx.load_verify_locations(pem)
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Connection(self), self.host, self.port, ssl=ctx
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for conn in list(self._open):
                if conn.transport is not None:
                    conn.transport.abort()
            await self._server.wait_closed()

    def count(self, token: str | None = None) -> int:
        return self.accepted if token is None else sum(1 for r in self.received if r.token == token)

    # -- validation, in Apple's (pushy's) order -----------------------------------------------------------
    def answer(self, conn: _Connection, headers: dict[str, str], dup: bool, body: bytes) -> Received:
        apns_id = headers.get("apns-id")
        if apns_id is not None and not _UUID.match(apns_id):
            raise _Reject(400, "BadMessageId")
        if dup:
            raise _Reject(400, "DuplicateHeaders")
        if headers.get(":method") != "POST":
            raise _Reject(405, "MethodNotAllowed")
        path = headers.get(":path", "")
        if not path.startswith("/3/device/"):
            raise _Reject(404, "BadPath")
        topic = headers.get("apns-topic") or conn.cert_topic
        if not topic:
            raise _Reject(400, "MissingTopic")
        if len(headers.get("apns-collapse-id", "").encode()) > 64:
            raise _Reject(400, "BadCollapseId")
        if headers.get("apns-priority", "10") not in ("10", "5", "1"):
            raise _Reject(400, "BadPriority")
        push_type = headers.get("apns-push-type", "alert")
        if push_type not in PUSH_TYPES:
            raise _Reject(400, "InvalidPushType")
        expiration = headers.get("apns-expiration", "0")
        if not expiration.isdigit():
            raise _Reject(400, "BadExpirationDate")
        token = path.removeprefix("/3/device/")
        if not token:
            raise _Reject(400, "MissingDeviceToken")
        if not _TOKEN.match(token) or token in self.bad_tokens:
            raise _Reject(400, "BadDeviceToken")
        self._authorize(conn, headers, topic, push_type)
        if token in self.unregistered:
            raise _Reject(410, "Unregistered", self.unregistered[token])
        if token in self.wrong_topic:
            raise _Reject(400, "DeviceTokenNotForTopic")
        if not body:
            raise _Reject(400, "PayloadEmpty")
        if len(body) > (5120 if push_type == "voip" else 4096):
            raise _Reject(413, "PayloadTooLarge")
        try:
            payload = json.loads(body)
        except ValueError:
            raise _Reject(400, "BadPayload") from None  # Apple answers malformed JSON with a 400 too
        if not isinstance(payload, dict) or not isinstance(payload.get("aps", {}), dict):
            raise _Reject(400, "BadPayload")
        aps = payload.get("aps", {})
        if "content-available" in aps and aps["content-available"] != 1:
            raise _Reject(400, "BadPayload")
        if push_type == "background" and headers.get("apns-priority", "10") == "10":
            raise _Reject(400, "BadPriority")  # background pushes must be sent at priority 5
        if self.fail_next:
            status, reason = self.fail_next.popleft()
            raise _Reject(status, reason)
        if self.outage is not None:
            raise _Reject(*self.outage)
        return Received(
            token, topic, apns_id or str(uuid.uuid4()), headers, payload, "sandbox" in headers.get("host", "")
        )

    def _authorize(self, conn: _Connection, headers: dict[str, str], topic: str, push_type: str) -> None:
        if conn.cert_topic is not None and "authorization" not in headers:
            allowed = {conn.cert_topic, f"{conn.cert_topic}.voip", f"{conn.cert_topic}.complication"}
            if topic not in allowed:
                raise _Reject(400, "TopicDisallowed")
            if push_type in ("location", "liveactivity"):
                raise _Reject(400, "InvalidPushType")  # these need token authentication
            return
        auth = headers.get("authorization", "")
        if not auth.startswith("bearer ") or not auth[7:].strip():
            raise _Reject(403, "MissingProviderToken")
        token = auth[7:].strip()
        now = self.clock()
        cached = conn.verified.get(token)
        if cached is not None and self.keys.get(cached[0]) is not cached[1]:
            cached = None  # the key was revoked or replaced since
        if cached is None:
            try:
                header = jwt.get_unverified_header(token)
            except jwt.PyJWTError:
                raise _Reject(403, "InvalidProviderToken") from None
            kid = str(header.get("kid"))
            key = self.keys.get(kid)
            if header.get("alg") != "ES256" or key is None:
                raise _Reject(403, "InvalidProviderToken")
            try:
                claims = jwt.decode(
                    token, key.public_pem, algorithms=["ES256"], options={"verify_iat": False}
                )
            except jwt.PyJWTError:
                raise _Reject(403, "InvalidProviderToken") from None
            if claims.get("iss") != key.team_id or not isinstance(claims.get("iat"), int):
                raise _Reject(403, "InvalidProviderToken")
            if conn.team is not None and conn.team != key.team_id:
                raise _Reject(403, "InvalidProviderToken")  # one team per connection
            if (
                conn.token is not None
                and conn.token != token
                and now - conn.token_since < self.min_token_change_s
            ):
                raise _Reject(429, "TooManyProviderTokenUpdates")
            self._key_token_change(kid, token, now)
            cached = conn.verified[token] = (kid, key, claims)
        _, key, claims = cached
        if key.topics is not None and topic.split(".voip")[0] not in key.topics:
            raise _Reject(403, "InvalidProviderToken")
        if now - float(claims["iat"]) > self.max_token_age_s:
            raise _Reject(403, "ExpiredProviderToken")
        if conn.token != token:
            conn.token, conn.token_since = token, now
            conn.team = claims["iss"]

    def _key_token_change(self, kid: str, token: str, now: float) -> None:
        """A key's first token is free; a new one after that is a change, at most one in 20 minutes."""
        seen = self.key_tokens.setdefault(kid, set())
        if token in seen:
            return
        if seen:
            changes = self._key_changes.setdefault(kid, deque())
            while changes and now - changes[0] >= self.min_token_change_s:
                changes.popleft()
            if changes:
                raise _Reject(429, "TooManyProviderTokenUpdates")
            changes.append(now)
        seen.add(token)


class _Connection(asyncio.Protocol):
    def __init__(self, fake: FakeAPNs) -> None:
        self.fake = fake
        self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.streams: dict[int, tuple[dict[str, str], bool, bytearray]] = {}
        self.transport: asyncio.Transport | None = None
        self.cert_topic: str | None = None
        self.token: str | None = None
        self.token_since = 0.0
        self.team: str | None = None
        self.verified: dict[str, tuple[str, Key, dict[str, Any]]] = {}
        self.blocked: deque[tuple[int, bytes]] = deque()  # error bodies waiting for flow-control credit
        self.opened = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.fake.connections += 1
        self.fake._open.add(self)
        peer = transport.get_extra_info("peercert")
        if peer:
            for rdn in peer.get("subject", ()):
                for name, value in rdn:
                    if name == "userId":
                        self.cert_topic = value
        # Apple allows one stream until a request with a valid provider token came in.
        self.h2.local_settings.max_concurrent_streams = 1
        self.h2.initiate_connection()
        transport.write(self.h2.data_to_send())

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except ProtocolError:
            assert self.transport is not None
            self.transport.close()
            return
        for ev in events:
            if isinstance(ev, RequestReceived):
                headers: dict[str, str] = {}
                dup = False
                for k, v in ev.headers:
                    name, value = bytes(k).decode(), bytes(v).decode()
                    dup = dup or name in headers
                    headers[name] = value
                self.streams[ev.stream_id] = (headers, dup, bytearray())
            elif isinstance(ev, DataReceived):
                if ev.stream_id in self.streams:
                    self.streams[ev.stream_id][2].extend(ev.data)
                self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, StreamEnded):
                self._respond(ev.stream_id)
            elif isinstance(ev, StreamReset):
                self.streams.pop(ev.stream_id, None)
            elif isinstance(ev, WindowUpdated):
                self._unblock()
            elif isinstance(ev, ConnectionTerminated):
                assert self.transport is not None
                self.transport.close()
        if self.transport is not None:
            self.transport.write(self.h2.data_to_send())

    def _respond(self, stream_id: int) -> None:
        headers, dup, body = self.streams.pop(stream_id)
        fake = self.fake
        fake.requests += 1
        if fake.stall or (fake.stall_after is not None and fake.accepted >= fake.stall_after):
            fake.stalled += 1
            return
        apns_id = headers.get("apns-id") or str(uuid.uuid4())
        try:
            received = fake.answer(self, headers, dup, bytes(body))
        except _Reject as r:
            fake.rejected[r.reason] = fake.rejected.get(r.reason, 0) + 1
            doc: dict[str, Any] = {"reason": r.reason}
            if r.timestamp is not None:
                doc["timestamp"] = r.timestamp
            out = [(":status", str(r.status)), ("apns-id", apns_id), ("content-type", "application/json")]
            self.h2.send_headers(stream_id, out)
            self._send_body(stream_id, json.dumps(doc).encode())
            if r.reason == "Shutdown":  # Apple closes the connection with a GOAWAY carrying the reason
                self.h2.close_connection(additional_data=json.dumps({"reason": "Shutdown"}).encode())
            return
        fake.accepted += 1
        if fake.record:
            fake.received.append(received)
        self.h2.send_headers(stream_id, [(":status", "200"), ("apns-id", apns_id)], end_stream=True)
        if not self.opened:  # authenticated: open up to many concurrent streams, as Apple does
            self.opened = True
            self.h2.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: 1000})

    def _send_body(self, stream_id: int, body: bytes) -> None:
        """Like Apple, wait for flow-control credit when the client's window is spent."""
        if self.blocked or self.h2.local_flow_control_window(stream_id) < len(body):
            self.blocked.append((stream_id, body))
            self.fake.blocked += 1
            return
        self.h2.send_data(stream_id, body, end_stream=True)

    def _unblock(self) -> None:
        while self.blocked:
            stream_id, body = self.blocked[0]
            if self.h2.local_flow_control_window(stream_id) < len(body):
                return
            self.blocked.popleft()
            self.h2.send_data(stream_id, body, end_stream=True)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.fake._open.discard(self)


async def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cert-dir", type=Path, required=True)
    parser.add_argument("--key", action="append", default=[], help="KEY_ID:TEAM_ID:PUBLIC_PEM_FILE")
    parser.add_argument("--unregistered", type=Path, help="file of tokens (one a line) to answer 410")
    args = parser.parse_args()
    fake = FakeAPNs(args.cert_dir, port=args.port, record=False)
    for spec in args.key:
        kid, team, pem = spec.split(":", 2)
        fake.add_key(kid, team, Path(pem).read_text())  # noqa: ASYNC240
    if args.unregistered:
        now_ms = int(time.time() * 1000)
        fake.unregistered = {t: now_ms for t in args.unregistered.read_text().split()}
    await fake.start()
    print(json.dumps({"port": fake.port, "cert": str(fake.cert_path)}), flush=True)
    while True:
        await asyncio.sleep(5)
        print(json.dumps({"accepted": fake.accepted, "rejected": fake.rejected}), flush=True)


if __name__ == "__main__":
    asyncio.run(_main())
