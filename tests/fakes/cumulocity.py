"""A fake Cumulocity IoT platform (aiohttp, plain HTTP on localhost) for the multi-tenant microservice.

What is faithful (specs/cumulocity.md, its §8 checklist):

- Authentication as the platform does it: Basic ``<tenant>/<user>:<password>``; ``Bearer <jwt>`` (claims
  ``ten``, ``sub``, ``exp``, ``xsrfToken``); the browser form, cookie ``authorization=<jwt>`` plus header
  ``X-XSRF-TOKEN`` (the cookie wins over the Authorization header, which may then be a dummy). Bad or missing
  credentials: 401; a missing role: 403; always the error body ``{"error", "message", "info"}`` with content
  type ``application/vnd.com.nsn.cumulocity.error+json``. Vendor content types on every answer.
- Users: the bootstrap user of the owner tenant ``management`` (only the current application, its
  subscriptions and settings, the current tenant and user), one service user per subscribed tenant holding
  the manifest's ``requiredRoles`` (read from ``cumulocity-manifest.json``), tenant users with the roles tests
  give.
  Unsubscribing deletes the service user: its Basic credentials, its bearer tokens and the Notifications 2.0
  tokens it made fail from then on.
- ``/application/currentApplication[/subscriptions|/settings]``, ``/tenant/currentTenant``,
  ``/user/currentUser`` (``effectiveRoles``), ``/user/{tenant}/users/{userName}``,
  ``/tenant/options/{c}/{k}``.
- Alarms: POST validation, de-duplication by source and type (ACTIVE or ACKNOWLEDGED: ``count`` + 1, new
  ``time``, ``firstOccurrenceTime`` kept; CLEARED never), maintenance (``self`` ending
  ``/alarm/alarms/null``), PUT of text/status/severity/custom fragments only (other fields: 422), GET filters
  and paging, bulk status PUT (needs a query parameter), count. De-duplication is an index by (source, type):
  no scans on the hot path.
- Inventory: managed objects CRUD, ``type``/``fragmentType``/``ids``/``owner`` filters, paging (``pageSize``
  default 5, max 2000, ``currentPage``, ``withTotalPages``/``withTotalElements``, ``statistics``, ``next``
  whenever a page is full, ``prev``). Everything is isolated per tenant; ids are unique platform-wide.
- Notifications 2.0: subscriptions (name ``^[a-zA-Z0-9]+$``, context ``tenant``|``mo``, apis per context,
  ``typeFilter``, ``fragmentsToCopy``; 409 duplicate, 422 invalid, 404 unknown source), tokens (RS256 JWT with
  ``sub``, ``topic``, ``jti``, ``iat``, ``exp``; the payload segment never holds ``-`` or ``_`` so standard
  base64 decodes it), ``/notification2/unsubscribe``, and the consumer websocket
  ``/notification2/consumer/?token=&consumer=``: frames
  ``ackId\\n/<tenant>/alarms/<source>\\nACTION\\n\\n<json>`` (CREATE for a new alarm, UPDATE for a real change
  or a de-duplication hit, nothing for a PUT that changes nothing, DELETE with ``{"id"}`` only for an alarm
  deleted by ``DELETE /alarm/alarms?...``; ``managedobjects`` subscriptions get CREATE/UPDATE with the object
  and DELETE with its id, ``typeFilter`` matching the object's type); a per-subscriber backlog created on the
  first connection that persists while nobody is connected; an ack is a text frame holding exactly the ack
  id; unacked frames are re-sent after ``redeliver_after_s`` and on reconnect, before newer ones; one
  connection per subscriber for exclusive tokens (a second one is refused with 409 at the handshake);
  invalid, expired or revoked tokens are refused at the handshake (401); a connection is closed when its
  token expires; ``unsubscribe_subscriber`` as a frame drops the subscriber.

Shared tokens (``shared: true``): the connections of one subscriber split the frames by source id (one
device's frames all go to one connection). ``nonPersistent`` tokens: the backlog lives only while connected.
``user_cache`` (default on) caches successful Basic checks as the platform does (a removed user or a changed
password is noticed at once); off, every request verifies a salted PBKDF2 hash. ``token_lifetime_s``
overrides ``expiresInMinutes`` of Notifications 2.0 tokens (tests of renewal).

For tests: ``requests`` (what was called, by whom, with the application key or not, the answer's status),
``fail`` (fault injection by method and path glob), ``drop_consumers``, ``consumers``, ``FakeTenant.unacked``.

Run alone: ``python -m tests.fakes.cumulocity --tenants N [--port P] [--app-name tocsin]`` makes tenants
``t1..tN`` (subscribed), each with a user ``admin`` and one device, and prints one JSON line ``{"port",
"base_url", "app_key", "environment", "tenants": {id: {"user", "password", "device"}}}``; runs until
SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import fnmatch
import hashlib
import hmac
import json
import math
import re
import secrets
import signal
import time
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlencode

import jwt
from aiohttp import WSMsgType, web
from cryptography.hazmat.primitives.asymmetric import rsa

MANIFEST = Path(__file__).resolve().parents[2] / "cumulocity-manifest.json"
DEFAULT_REQUIRED_ROLES = (
    "ROLE_ALARM_READ",
    "ROLE_ALARM_ADMIN",
    "ROLE_NOTIFICATION_2_ADMIN",
    "ROLE_INVENTORY_READ",
    "ROLE_INVENTORY_ADMIN",
    "ROLE_OPTION_MANAGEMENT_READ",
    "ROLE_USER_MANAGEMENT_READ",
)
BOOTSTRAP_TENANT = "management"
BOOTSTRAP_ROLES = ("ROLE_APPLICATION_MANAGEMENT_READ",)
INFO = "https://cumulocity.com/guides/reference/rest-implementation/#a-name-error-reporting-a-error-reporting"
SEVERITIES = ("CRITICAL", "MAJOR", "MINOR", "WARNING")
STATUSES = ("ACTIVE", "ACKNOWLEDGED", "CLEARED")
ALARM_STANDARD = (
    "id",
    "self",
    "type",
    "text",
    "severity",
    "status",
    "source",
    "time",
    "creationTime",
    "lastUpdated",
    "count",
    "firstOccurrenceTime",
    "history",
)
ALARM_MODIFIABLE = ("text", "status", "severity")
MO_READONLY = ("id", "self", "creationTime", "lastUpdated", "owner")
N2_APIS = {
    "tenant": {"alarms", "managedobjects", "events"},
    "mo": {
        "alarms",
        "alarmsWithChildren",
        "events",
        "eventsWithChildren",
        "managedobjects",
        "measurements",
        "operations",
    },
}
_NAME = re.compile(r"^[a-zA-Z0-9]+$")
_TYPE_FILTER = re.compile(r"^\s*'[^']+'(\s+or\s+'[^']+')*\s*$")
_TYPE_ITEM = re.compile(r"'([^']+)'")
UNSUBSCRIBE_FRAME = "unsubscribe_subscriber"


def _vendor(kind: str) -> str:
    return f"application/vnd.com.nsn.cumulocity.{kind}+json"


def now_iso() -> str:
    """The platform's timestamp format: ISO-8601 UTC with milliseconds, e.g. ``2021-09-03T12:29:02.092Z``."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


_RSA_KEY: rsa.RSAPrivateKey | None = None


def _rsa_key() -> rsa.RSAPrivateKey:
    """One RSA key per process for Notifications 2.0 tokens (tokens are also checked against a registry)."""
    global _RSA_KEY
    if _RSA_KEY is None:
        _RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _RSA_KEY


# -- public value types --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """A platform user's credentials; the repr never shows the password."""

    tenant: str
    user: str
    password: str = field(repr=False)

    def basic(self) -> str:
        raw = f"{self.tenant}/{self.user}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake answered (token query values are redacted)."""

    method: str
    path: str
    query: dict[str, str]
    tenant: str | None
    user: str | None
    app_key_sent: bool
    status: int


@dataclass(eq=False)
class FakeUser:
    """A tenant user; ``roles`` become its ``effectiveRoles`` and decide what it may call."""

    tenant: str
    name: str
    password: str = field(repr=False)
    roles: set[str] = field(default_factory=set)
    email: str = ""
    service: bool = False

    @property
    def credentials(self) -> Credentials:
        return Credentials(self.tenant, self.name, self.password)


@dataclass(eq=False)
class _Principal:
    tenant: str
    user: str
    roles: set[str]
    kind: str  # "bootstrap" | "service" | "user"
    email: str = ""


PRINCIPAL = web.RequestKey("principal", _Principal)


class _Error(Exception):
    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(f"{status} {error}: {message}")
        self.status, self.error, self.message = status, error, message

    def response(self) -> web.Response:
        body = json.dumps({"error": self.error, "message": self.message, "info": INFO})
        headers = {}
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="Cumulocity"'
        return _json_response(body, "error", self.status, headers)


def _json_response(
    body: str, kind: str | None, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    ctype = f"{_vendor(kind)};charset=UTF-8;ver=0.9" if kind else "application/json; charset=utf-8"
    return web.Response(text=body, status=status, headers={"Content-Type": ctype, **(headers or {})})


def _dumps(doc: Any) -> str:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


# -- Notifications 2.0 internals -----------------------------------------------------------------------------


@dataclass(eq=False)
class _Msg:
    ack_id: str
    frame: str
    source: str
    sends: int = 0
    owner: _Consumer | None = (
        None  # the connection it is queued on or was sent to, until acked or that closes
    )
    sent_at: float | None = None  # last send to the owner; None while queued


@dataclass(eq=False)
class _TokenInfo:
    tenant: str
    subscriber: str
    subscription: str
    issuer: FakeUser
    shared: bool
    non_persistent: bool
    exp: float

    @property
    def backlog_key(self) -> str:
        return self.subscriber + ("/nonpersistent" if self.non_persistent else "")


class _Backlog:
    """A subscriber's queue on one subscription name: every frame stays until acknowledged.

    Exclusive tokens: one connection gets everything. Shared tokens: the connections (ordered by their
    ``consumer`` name) split the frames by source id, so one device's frames all go to one connection; frames
    of a connection that closes go to the others.
    """

    def __init__(self, tenant: str, subscription: str, key: str, persistent: bool) -> None:
        self.tenant, self.subscription, self.key, self.persistent = tenant, subscription, key, persistent
        self.unacked: dict[str, _Msg] = {}
        self.conns: list[_Consumer] = []
        self.shared = False
        self._seq = 0

    def next_ack_id(self) -> str:
        self._seq += 1
        return base64.b64encode(self._seq.to_bytes(6, "big") + secrets.token_bytes(3)).decode()

    def push(self, source: str, frame_tail: str) -> None:
        ack_id = self.next_ack_id()
        msg = self.unacked[ack_id] = _Msg(ack_id, f"{ack_id}\n{frame_tail}", source)
        if self.conns:
            self._assign(msg)

    def _assign(self, msg: _Msg) -> None:
        conns = self.conns
        conn = conns[0] if len(conns) == 1 else conns[zlib.crc32(msg.source.encode()) % len(conns)]
        msg.owner, msg.sent_at = conn, None
        conn.queue.append(msg)
        conn.wake.set()

    def _rebalance(self) -> None:
        """Unowned frames (queued while nobody was connected, or of a closed connection), oldest first."""
        if self.conns:
            for msg in self.unacked.values():
                if msg.owner is None:
                    self._assign(msg)

    def attach(self, conn: _Consumer) -> None:
        self.shared = conn.token.shared
        self.conns.append(conn)
        self.conns.sort(key=lambda c: c.consumer)
        self._rebalance()

    def detach(self, conn: _Consumer) -> None:
        if conn in self.conns:
            self.conns.remove(conn)
            for msg in self.unacked.values():
                if msg.owner is conn:
                    msg.owner, msg.sent_at = None, None
            self._rebalance()


class _Consumer:
    def __init__(
        self, ws: web.WebSocketResponse, backlog: _Backlog, token: _TokenInfo, consumer: str
    ) -> None:
        self.ws, self.backlog, self.token, self.consumer = ws, backlog, token, consumer
        self.queue: deque[_Msg] = deque()
        self.wake = asyncio.Event()
        self.closed = False


# -- tenants -------------------------------------------------------------------------------------------------


class FakeTenant:
    """One tenant: users, inventory, alarms, Notifications 2.0 subscriptions and subscriber backlogs."""

    def __init__(self, fake: FakeCumulocity, tenant_id: str) -> None:
        self._fake = fake
        self.id = tenant_id
        self.users: dict[str, FakeUser] = {}
        self.alarms: dict[str, dict[str, Any]] = {}
        self.managed_objects: dict[str, dict[str, Any]] = {}
        self.options: dict[tuple[str, str], str] = {}
        self.n2_subscriptions: dict[str, dict[str, Any]] = {}
        self._service_user: FakeUser | None = None
        self._dedup: dict[tuple[str, str], str] = {}  # (source id, type) -> open (ACTIVE/ACKNOWLEDGED) alarm
        self._alarms_by_source: dict[str, list[str]] = {}
        self._mo_by_type: dict[str, dict[str, None]] = {}
        self._n2_keys: dict[tuple[str, str, str], str] = {}  # (context, source id, name) -> subscription id
        self._backlogs: dict[str, dict[str, _Backlog]] = {}  # subscription name -> backlog key -> backlog

    def __repr__(self) -> str:
        return f"FakeTenant({self.id!r}, subscribed={self._service_user is not None})"

    @property
    def service_user(self) -> Credentials | None:
        return None if self._service_user is None else self._service_user.credentials

    def add_user(
        self, name: str, password: str | None = None, roles: Iterable[str] = (), *, email: str | None = None
    ) -> FakeUser:
        if name in self.users:
            raise ValueError(f"user {name!r} exists in tenant {self.id}")
        user = FakeUser(
            self.id, name, password or secrets.token_urlsafe(16), set(roles), email or f"{name}@example.com"
        )
        self.users[name] = user
        return user

    def remove_user(self, name: str) -> None:
        self.users.pop(name, None)

    def add_device(self, name: str, device_id: str | None = None) -> str:
        mo = self._create_mo({"name": name, "c8y_IsDevice": {}}, owner=f"device_{name}", mo_id=device_id)
        return str(mo["id"])

    def create_alarm(
        self,
        source_id: str,
        type: str,
        text: str,
        severity: str = "MAJOR",
        status: str = "ACTIVE",
        **fragments: Any,
    ) -> dict[str, Any]:
        """Raise an alarm through the same code path as ``POST /alarm/alarms`` (de-duplication included)."""
        body = {
            "source": {"id": source_id},
            "type": type,
            "text": text,
            "severity": severity,
            "status": status,
            "time": now_iso(),
            **fragments,
        }
        alarm, _ = self._create_alarm(body)
        return json.loads(_dumps(alarm))  # type: ignore[no-any-return]

    def update_alarm(self, alarm_id: str, **changes: Any) -> dict[str, Any]:
        """Change an alarm through the same code path as ``PUT /alarm/alarms/{id}``."""
        return json.loads(_dumps(self._update_alarm(alarm_id, changes)))  # type: ignore[no-any-return]

    def delete_alarm(self, alarm_id: str) -> None:
        """Delete an alarm through the same code path as ``DELETE /alarm/alarms?...``."""
        self._delete_alarm(alarm_id)

    def _delete_alarm(self, alarm_id: str) -> None:
        alarm = self.alarms.pop(alarm_id, None)
        if alarm is None:
            return
        source_id = alarm["source"]["id"]
        by_source = self._alarms_by_source.get(source_id, [])
        if alarm_id in by_source:
            by_source.remove(alarm_id)
        key = (source_id, alarm["type"])
        if self._dedup.get(key) == alarm_id:
            del self._dedup[key]
        # What a DELETE notification carries is not documented (specs/cumulocity.md §3a, [U]); the real-time
        # API sends only the id, and so does this double: the consumer has to know the rest.
        self._fake._notify(self, alarm, "DELETE", body={"id": alarm_id})

    def unacked(self) -> int:
        """Frames sent to this tenant's consumers at least once and not acknowledged yet."""
        return sum(1 for b in self._all_backlogs() for m in b.unacked.values() if m.sends)

    def backlog(self) -> int:
        """Frames waiting in this tenant's subscriber backlogs (sent or not), not acknowledged yet."""
        return sum(len(b.unacked) for b in self._all_backlogs())

    def _all_backlogs(self) -> Iterator[_Backlog]:
        for by_subscriber in self._backlogs.values():
            yield from by_subscriber.values()

    # -- inventory -------------------------------------------------------------------------------------------
    def _mo_self(self, mo_id: str) -> str:
        return f"{self._fake.base_url}/inventory/managedObjects/{mo_id}"

    def _create_mo(self, body: dict[str, Any], owner: str, mo_id: str | None = None) -> dict[str, Any]:
        mo_id = mo_id or self._fake._next_id()
        if mo_id in self.managed_objects:
            raise ValueError(f"managed object {mo_id} exists")
        stamp = now_iso()
        mo = {k: v for k, v in body.items() if k not in MO_READONLY and v is not None}
        mo.update(id=mo_id, self=self._mo_self(mo_id), owner=owner, creationTime=stamp, lastUpdated=stamp)
        self.managed_objects[mo_id] = mo
        if isinstance(mo.get("type"), str):
            self._mo_by_type.setdefault(mo["type"], {})[mo_id] = None
        self._fake._notify_mo(self, mo, "CREATE")
        return mo

    def _update_mo(self, mo_id: str, body: dict[str, Any]) -> dict[str, Any]:
        mo = self._mo(mo_id)
        old_type = mo.get("type")
        for k, v in body.items():
            if k in MO_READONLY:
                continue
            if v is None:
                mo.pop(k, None)
            else:
                mo[k] = v
        mo["lastUpdated"] = now_iso()
        if mo.get("type") != old_type:
            if isinstance(old_type, str):
                self._mo_by_type.get(old_type, {}).pop(mo_id, None)
            if isinstance(mo.get("type"), str):
                self._mo_by_type.setdefault(mo["type"], {})[mo_id] = None
        self._fake._notify_mo(self, mo, "UPDATE")
        return mo

    def _delete_mo(self, mo_id: str) -> None:
        mo = self._mo(mo_id)
        del self.managed_objects[mo_id]
        if isinstance(mo.get("type"), str):
            self._mo_by_type.get(mo["type"], {}).pop(mo_id, None)
        self._fake._notify_mo(self, mo, "DELETE")

    def _mo(self, mo_id: str) -> dict[str, Any]:
        mo = self.managed_objects.get(mo_id)
        if mo is None:
            raise _Error(
                404,
                "inventory/Not Found",
                f"Finding device data from database failed : No managedObject for id '{mo_id}'!",
            )
        return mo

    # -- alarms ----------------------------------------------------------------------------------------------
    def _create_alarm(self, body: Any) -> tuple[dict[str, Any], bool]:
        """POST semantics; returns (alarm, created). A de-duplication hit returns the existing alarm."""
        if not isinstance(body, dict):
            raise _Error(422, "undefined/validationError", "The alarm must be a JSON object")
        for name in ("type", "text", "severity", "time", "source"):
            if body.get(name) is None:
                raise _Error(
                    422, "undefined/validationError", f"Following mandatory fields should be included: {name}"
                )
        if not isinstance(body["type"], str) or not body["type"]:
            raise _Error(422, "undefined/validationError", "type must be a non-empty string")
        if not isinstance(body["text"], str):
            raise _Error(422, "undefined/validationError", "text must be a string")
        if body["severity"] not in SEVERITIES:
            raise _Error(422, "undefined/validationError", f"Invalid severity: {body['severity']!r}")
        status = body.get("status", "ACTIVE")
        if status not in STATUSES:
            raise _Error(422, "undefined/validationError", f"Invalid status: {status!r}")
        if _parse_time(body["time"]) is None:
            raise _Error(422, "undefined/validationError", "time must be an ISO-8601 date-time")
        source = body["source"]
        source_id = str(source.get("id", "")) if isinstance(source, dict) else ""
        mo = self.managed_objects.get(source_id)
        if mo is None:
            raise _Error(422, "undefined/validationError", f"Cannot find source managed object '{source_id}'")
        if (mo.get("c8y_Availability") or {}).get("status") == "MAINTENANCE":
            return {"self": f"{self._fake.base_url}/alarm/alarms/null"}, False
        key = (source_id, body["type"])
        stamp = now_iso()
        if status != "CLEARED" and key in self._dedup:
            alarm = self.alarms[self._dedup[key]]
            alarm.setdefault("firstOccurrenceTime", alarm["time"])
            alarm["count"] += 1
            alarm["time"] = body["time"]
            alarm["lastUpdated"] = stamp
            self._fake._notify(self, alarm, "UPDATE")
            return alarm, False
        alarm_id = self._fake._next_id()
        alarm = {k: v for k, v in body.items() if k not in ALARM_STANDARD and v is not None}
        alarm.update(
            id=alarm_id,
            self=f"{self._fake.base_url}/alarm/alarms/{alarm_id}",
            type=body["type"],
            text=body["text"],
            severity=body["severity"],
            status=status,
            source={"id": source_id, "name": mo.get("name", ""), "self": self._mo_self(source_id)},
            time=body["time"],
            creationTime=stamp,
            lastUpdated=stamp,
            count=1,
            history={"auditRecords": [], "self": f"{self._fake.base_url}/audit/auditRecords"},
        )
        self.alarms[alarm_id] = alarm
        self._alarms_by_source.setdefault(source_id, []).append(alarm_id)
        if status != "CLEARED":
            self._dedup[key] = alarm_id
        self._fake._notify(self, alarm, "CREATE")
        return alarm, True

    def _update_alarm(self, alarm_id: str, changes: Any) -> dict[str, Any]:
        alarm = self.alarms.get(alarm_id)
        if alarm is None:
            raise _Error(
                404, "alarm/Not Found", f"Finding alarm from database failed : No alarm for gid '{alarm_id}'!"
            )
        if not isinstance(changes, dict):
            raise _Error(422, "undefined/validationError", "The alarm must be a JSON object")
        fixed = sorted(k for k in changes if k in ALARM_STANDARD and k not in ALARM_MODIFIABLE)
        if fixed:
            raise _Error(422, "undefined/validationError", f"Cannot update fields: {', '.join(fixed)}")
        if "severity" in changes and changes["severity"] not in SEVERITIES:
            raise _Error(422, "undefined/validationError", f"Invalid severity: {changes['severity']!r}")
        if "status" in changes and changes["status"] not in STATUSES:
            raise _Error(422, "undefined/validationError", f"Invalid status: {changes['status']!r}")
        if "text" in changes and not isinstance(changes["text"], str):
            raise _Error(422, "undefined/validationError", "text must be a string")
        changed = False
        for k, v in changes.items():
            if v is None:
                if k in ALARM_MODIFIABLE:
                    raise _Error(422, "undefined/validationError", f"{k} must not be null")
                changed |= alarm.pop(k, None) is not None
            elif alarm.get(k) != v:
                alarm[k] = v
                changed = True
        if changed:
            key = (alarm["source"]["id"], alarm["type"])
            if alarm["status"] == "CLEARED":
                if self._dedup.get(key) == alarm_id:
                    del self._dedup[key]
            else:
                self._dedup.setdefault(key, alarm_id)
            alarm["lastUpdated"] = now_iso()
            self._fake._notify(self, alarm, "UPDATE")
        return alarm

    def _alarm_candidates(self, source: str | None) -> Iterator[dict[str, Any]]:
        """Newest first, as the platform lists alarms."""
        if source is not None:
            for alarm_id in reversed(self._alarms_by_source.get(source, [])):
                yield self.alarms[alarm_id]
        else:
            for alarm_id in reversed(self.alarms):
                yield self.alarms[alarm_id]

    # -- Notifications 2.0 -----------------------------------------------------------------------------------
    def _backlog(self, token: _TokenInfo) -> _Backlog:
        by_key = self._backlogs.setdefault(token.subscription, {})
        backlog = by_key.get(token.backlog_key)
        if backlog is None:
            backlog = by_key[token.backlog_key] = _Backlog(
                self.id, token.subscription, token.backlog_key, not token.non_persistent
            )
        return backlog

    def _drop_backlog(self, subscription: str, key: str) -> _Backlog | None:
        return self._backlogs.get(subscription, {}).pop(key, None)


# -- the platform --------------------------------------------------------------------------------------------


class FakeCumulocity:
    """The platform: REST API, Notifications 2.0 and the consumer websocket on 127.0.0.1 (free port)."""

    def __init__(
        self,
        app_name: str = "tocsin",
        *,
        redeliver_after_s: float = 60.0,
        token_lifetime_s: float | None = None,
        user_cache: bool = True,
        port: int = 0,
    ) -> None:
        self.app_name = app_name
        self.redeliver_after_s = redeliver_after_s
        self.token_lifetime_s = token_lifetime_s
        self.user_cache = user_cache
        self.port = port
        self.host = "127.0.0.1"
        self.app_key = f"{app_name}-key-{secrets.token_hex(8)}"
        self.app_id = "1001"
        self.bootstrap = Credentials(
            BOOTSTRAP_TENANT, f"servicebootstrap_{app_name}", secrets.token_urlsafe(16)
        )
        self.manifest = _load_manifest(app_name)
        self.required_roles = set(self.manifest.get("requiredRoles") or DEFAULT_REQUIRED_ROLES)
        self.requests: list[RecordedRequest] = []
        self.record = True
        self._tenants: dict[str, FakeTenant] = {}
        self._id = 10000
        self._jwt_secret = secrets.token_bytes(32)
        self._issuer = f"fake-c8y-{secrets.token_hex(4)}"
        self._faults: list[list[Any]] = []  # [method, path glob, status, remaining]
        self._n2_tokens: dict[str, _TokenInfo] = {}  # jti -> token
        self._consumers: set[_Consumer] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._auth_cache: dict[str, FakeUser] = {}
        self._salt = secrets.token_bytes(16)
        self._runner: web.AppRunner | None = None
        self.base_url = ""
        self.lose_acks = 0  # the next this many acknowledgements are ignored (the frames come again)

    def __repr__(self) -> str:
        return f"FakeCumulocity({self.base_url or 'not started'}, tenants={len(self._tenants)})"

    # -- lifecycle -------------------------------------------------------------------------------------------
    async def __aenter__(self) -> FakeCumulocity:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> FakeCumulocity:
        app = web.Application(middlewares=[self._middleware], client_max_size=4 * 1024 * 1024)
        r = app.router
        r.add_get("/application/currentApplication", self._current_application)
        r.add_get("/application/currentApplication/subscriptions", self._subscriptions)
        r.add_get("/application/currentApplication/settings", self._settings)
        r.add_get("/tenant/currentTenant", self._current_tenant)
        r.add_get("/tenant/options/{category}/{key}", self._option)
        r.add_get("/user/currentUser", self._current_user)
        r.add_get("/user/{tenant}/users/{user}", self._user)
        r.add_get("/alarm/alarms", self._alarms_get)
        r.add_post("/alarm/alarms", self._alarms_post)
        r.add_put("/alarm/alarms", self._alarms_bulk_put)
        r.add_delete("/alarm/alarms", self._alarms_delete)
        r.add_get("/alarm/alarms/count", self._alarms_count)
        r.add_get("/alarm/alarms/{id}", self._alarm_get)
        r.add_put("/alarm/alarms/{id}", self._alarm_put)
        r.add_get("/inventory/managedObjects", self._mos_get)
        r.add_post("/inventory/managedObjects", self._mos_post)
        r.add_get("/inventory/managedObjects/{id}", self._mo_get)
        r.add_put("/inventory/managedObjects/{id}", self._mo_put)
        r.add_delete("/inventory/managedObjects/{id}", self._mo_delete)
        r.add_get("/notification2/subscriptions", self._n2_subs_get)
        r.add_post("/notification2/subscriptions", self._n2_subs_post)
        r.add_delete("/notification2/subscriptions", self._n2_subs_delete_many)
        r.add_get("/notification2/subscriptions/{id}", self._n2_sub_get)
        r.add_delete("/notification2/subscriptions/{id}", self._n2_sub_delete)
        r.add_post("/notification2/token", self._n2_token)
        r.add_post("/notification2/unsubscribe", self._n2_unsubscribe)
        r.add_get("/notification2/consumer/", self._n2_consumer)
        r.add_get("/notification2/consumer", self._n2_consumer)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self.base_url = f"http://{self.host}:{self.port}"
        return self

    async def stop(self) -> None:
        for c in list(self._consumers):
            self._close_consumer(c, 1001, "server stopping")
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)
        for task in list(self._tasks):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- test-facing API -------------------------------------------------------------------------------------
    def environment(self, isolation: str = "MULTI_TENANT", tenant: str | None = None) -> dict[str, str]:
        """The variables the platform injects into the microservice's container."""
        env = {
            "C8Y_BASEURL": self.base_url,
            "C8Y_BASEURL_MQTT": f"tcp://{self.host}:1883",
            "C8Y_BOOTSTRAP_REGISTER": "false",
            "C8Y_BOOTSTRAP_TENANT": self.bootstrap.tenant,
            "C8Y_BOOTSTRAP_USER": self.bootstrap.user,
            "C8Y_BOOTSTRAP_PASSWORD": self.bootstrap.password,
            "C8Y_MICROSERVICE_ISOLATION": isolation,
            "APPLICATION_NAME": self.app_name,
            "APPLICATION_KEY": self.app_key,
            "SERVER_PORT": "80",
            "MICROSERVICE_SUBSCRIPTION_ENABLED": "true",
        }
        if tenant is not None:
            creds = self.tenant(tenant).service_user
            if creds is None:
                raise ValueError(f"tenant {tenant} is not subscribed")
            env.update(C8Y_TENANT=creds.tenant, C8Y_USER=creds.user, C8Y_PASSWORD=creds.password)
        return env

    def add_tenant(self, tenant_id: str, *, subscribed: bool = True) -> FakeTenant:
        if tenant_id in self._tenants or tenant_id == BOOTSTRAP_TENANT:
            raise ValueError(f"tenant {tenant_id} exists")
        t = self._tenants[tenant_id] = FakeTenant(self, tenant_id)
        category = str(
            self.manifest.get("settingsCategory") or self.manifest.get("contextPath") or self.app_name
        )
        for setting in self.manifest.get("settings") or []:
            if isinstance(setting, dict) and "key" in setting:
                t.options[(category, str(setting["key"]))] = str(setting.get("defaultValue", ""))
        if subscribed:
            self.subscribe(tenant_id)
        return t

    def tenant(self, tenant_id: str) -> FakeTenant:
        return self._tenants[tenant_id]

    @property
    def tenants(self) -> dict[str, FakeTenant]:
        return dict(self._tenants)

    def subscribe(self, tenant_id: str) -> None:
        """Subscribe the tenant to the application: a new service user with a fresh random password."""
        t = self.tenant(tenant_id)
        if t._service_user is not None:
            self._revoke(t, t._service_user)
        name = f"service_{self.app_name}"
        user = FakeUser(tenant_id, name, secrets.token_urlsafe(24), set(self.required_roles), service=True)
        t.users[name] = user
        t._service_user = user

    def unsubscribe(self, tenant_id: str) -> None:
        """Delete the service user (its credentials and tokens fail from now on), close the consumers."""
        t = self.tenant(tenant_id)
        if t._service_user is not None:
            self._revoke(t, t._service_user)
            t._service_user = None
        for c in [c for c in self._consumers if c.backlog.tenant == tenant_id]:
            self._close_consumer(c, 1008, "tenant unsubscribed")

    def _revoke(self, t: FakeTenant, user: FakeUser) -> None:
        if t.users.get(user.name) is user:
            del t.users[user.name]
        for header in [h for h, u in self._auth_cache.items() if u is user]:
            del self._auth_cache[header]

    def bearer_token(self, tenant_id: str, user: str, *, lifetime_s: float = 3600) -> str:
        """A platform JWT (OAI-Secure style) accepted as ``Authorization: Bearer`` and as cookie."""
        now = time.time()
        claims = {
            "iss": self._issuer,
            "aud": self._issuer,
            "sub": user,
            "ten": tenant_id,
            "tci": str(uuid.uuid4()),
            "jti": str(uuid.uuid4()),
            "iat": int(now),
            "nbf": int(now),
            "exp": math.ceil(now + lifetime_s),
            "xsrfToken": secrets.token_hex(16),
            "tfa": False,
        }
        return jwt.encode(claims, self._jwt_secret, algorithm="HS256")

    def xsrf_token(self, token: str) -> str:
        """The XSRF token that goes with a JWT cookie (the JWT's ``xsrfToken`` claim)."""
        claims = jwt.decode(token, options={"verify_signature": False})
        return str(claims["xsrfToken"])

    def drop_consumers(self, tenant_id: str | None = None) -> int:
        """The server closes consumer websockets (of one tenant, or all); returns how many."""
        doomed = [c for c in self._consumers if tenant_id is None or c.backlog.tenant == tenant_id]
        for c in doomed:
            self._close_consumer(c, 1011, "dropped")
        return len(doomed)

    def consumers(self, tenant_id: str) -> int:
        return sum(1 for c in self._consumers if c.backlog.tenant == tenant_id)

    def fail(self, method: str, path_pattern: str, status: int, times: int = 1) -> None:
        """The next ``times`` requests matching method (``*`` = any) and path glob get ``status``."""
        self._faults.append([method.upper(), path_pattern, status, times])

    # -- internals: ids, auth --------------------------------------------------------------------------------
    def _next_id(self) -> str:
        self._id += 1
        return str(self._id)

    def _check_password(self, user: FakeUser, password: str) -> bool:
        """The platform keeps salted hashes, so a check costs real time: that is why it caches users."""
        salt = self._salt
        expected = hashlib.pbkdf2_hmac("sha256", user.password.encode(), salt, 1000)
        return hmac.compare_digest(hashlib.pbkdf2_hmac("sha256", password.encode(), salt, 1000), expected)

    def _live_user(self, tenant_id: str, name: str) -> FakeUser | None:
        t = self._tenants.get(tenant_id)
        return None if t is None else t.users.get(name)

    def _principal_of(self, user: FakeUser) -> _Principal:
        return _Principal(
            user.tenant, user.name, user.roles, "service" if user.service else "user", user.email
        )

    def _authenticate(self, request: web.Request) -> _Principal:
        cookie = request.cookies.get("authorization")
        if cookie:
            claims = self._verify_jwt(cookie)
            xsrf = request.headers.get("X-XSRF-TOKEN", "")
            if not hmac.compare_digest(xsrf.encode(), str(claims.get("xsrfToken", "")).encode()):
                raise _Error(401, "security/Unauthorized", "Invalid XSRF token")
            return self._jwt_principal(claims)
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value:
            return self._jwt_principal(self._verify_jwt(value.strip()))
        if scheme.lower() != "basic" or not value:
            raise _Error(
                401, "security/Unauthorized", "Full authentication is required to access this resource"
            )
        cached = self._auth_cache.get(header) if self.user_cache else None
        if (
            cached is not None
            and self._live_user(cached.tenant, cached.name) is cached
            and cached.credentials.basic() == header  # the password was not changed since
        ):
            return self._principal_of(cached)
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise _Error(401, "security/Unauthorized", "Invalid credentials!") from None
        login, sep, password = decoded.partition(":")
        tenant_id, slash, name = login.partition("/")
        if not sep or not slash:
            raise _Error(401, "security/Unauthorized", "Invalid credentials!")
        if tenant_id == self.bootstrap.tenant and name == self.bootstrap.user:
            if hmac.compare_digest(password.encode(), self.bootstrap.password.encode()):
                return _Principal(tenant_id, name, set(BOOTSTRAP_ROLES), "bootstrap")
            raise _Error(401, "security/Unauthorized", "Invalid credentials!")
        user = self._live_user(tenant_id, name)
        if user is None or not self._check_password(user, password):
            raise _Error(401, "security/Unauthorized", "Invalid credentials!")
        if self.user_cache:
            self._auth_cache[header] = user
        return self._principal_of(user)

    def _verify_jwt(self, token: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token, self._jwt_secret, algorithms=["HS256"], audience=self._issuer, issuer=self._issuer
            )
        except jwt.ExpiredSignatureError:
            raise _Error(401, "security/Unauthorized", "Token expired") from None
        except jwt.PyJWTError:
            raise _Error(401, "security/Unauthorized", "Invalid token") from None
        return claims

    def _jwt_principal(self, claims: dict[str, Any]) -> _Principal:
        user = self._live_user(str(claims.get("ten")), str(claims.get("sub")))
        if user is None:
            raise _Error(401, "security/Unauthorized", "Invalid credentials!")
        return self._principal_of(user)

    # -- middleware ------------------------------------------------------------------------------------------
    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        response: web.StreamResponse
        fault = self._fault(request)
        if fault is not None:
            response = _Error(fault, "fault/injected", f"Injected failure {fault}").response()
        else:
            try:
                response = await handler(request)
            except _Error as e:
                response = e.response()
            except web.HTTPException as e:
                reason = e.reason or "Error"
                response = _Error(e.status, f"undefined/{reason}", f"{reason}: {request.path}").response()
        if self.record:
            principal = request.get(PRINCIPAL)
            query = {k: ("<redacted>" if k == "token" else v) for k, v in request.query.items()}
            self.requests.append(
                RecordedRequest(
                    request.method,
                    request.path,
                    query,
                    principal.tenant if principal else None,
                    principal.user if principal else None,
                    request.headers.get("X-Cumulocity-Application-Key") == self.app_key,
                    response.status,
                )
            )
        return response

    def _fault(self, request: web.Request) -> int | None:
        for rule in self._faults:
            method, pattern, status, remaining = rule
            if (
                remaining > 0
                and method in ("*", request.method)
                and fnmatch.fnmatchcase(request.path, pattern)
            ):
                rule[3] -= 1
                if rule[3] <= 0:
                    self._faults.remove(rule)
                return int(status)
        return None

    def _auth(self, request: web.Request, *any_of: str) -> _Principal:
        """Authenticate; with roles given, require one of them (a missing role is 403)."""
        principal = self._authenticate(request)
        request[PRINCIPAL] = principal
        if principal.kind == "bootstrap":
            raise _Error(403, "security/Forbidden", "Access is denied")
        if any_of and not principal.roles.intersection(any_of):
            raise _Error(403, "security/Forbidden", "Access is denied")
        return principal

    def _tenant_of(self, principal: _Principal) -> FakeTenant:
        return self._tenants[principal.tenant]

    async def _body(self, request: web.Request) -> Any:
        try:
            return await request.json(loads=json.loads)
        except ValueError:
            raise _Error(422, "undefined/validationError", "Could not parse the request body") from None

    def _ok(
        self, request: web.Request, doc: Any, kind: str | None, status: int = 200, **headers: str
    ) -> web.Response:
        if request.method in ("POST", "PUT") and "Accept" not in request.headers:
            # Without an Accept header the platform answers POST/PUT with an empty body.
            return web.Response(status=status, headers=headers)
        return _json_response(_dumps(doc), kind, status, headers)

    # -- application, tenant, users --------------------------------------------------------------------------
    def _app_principal(self, request: web.Request, bootstrap_only: bool) -> _Principal:
        principal = self._authenticate(request)
        request[PRINCIPAL] = principal
        if principal.kind != "bootstrap" and (bootstrap_only or principal.kind != "service"):
            raise _Error(403, "security/Forbidden", "Access is denied")
        return principal

    async def _current_application(self, request: web.Request) -> web.Response:
        self._app_principal(request, bootstrap_only=False)
        doc = {
            "id": self.app_id,
            "key": self.app_key,
            "name": self.app_name,
            "type": "MICROSERVICE",
            "contextPath": self.manifest.get("contextPath", self.app_name),
            "availability": "MARKET",
            "owner": {"tenant": {"id": BOOTSTRAP_TENANT}},
            "manifest": self.manifest,
            "requiredRoles": sorted(self.required_roles),
            "roles": list(self.manifest.get("roles") or []),
            "self": f"{self.base_url}/application/applications/{self.app_id}",
        }
        return _json_response(_dumps(doc), "application")

    async def _subscriptions(self, request: web.Request) -> web.Response:
        self._app_principal(request, bootstrap_only=True)
        users = [
            {"tenant": t.id, "name": t._service_user.name, "password": t._service_user.password}
            for t in self._tenants.values()
            if t._service_user is not None
        ]
        doc = {"users": users, "self": f"{self.base_url}/application/currentApplication/subscriptions"}
        return _json_response(_dumps(doc), "applicationusercollection")

    async def _settings(self, request: web.Request) -> web.Response:
        self._app_principal(request, bootstrap_only=False)
        return _json_response(_dumps(list(self.manifest.get("settings") or [])), "optioncollection")

    async def _current_tenant(self, request: web.Request) -> web.Response:
        principal = self._authenticate(request)
        request[PRINCIPAL] = principal
        doc = {
            "name": principal.tenant,
            "domainName": f"{principal.tenant}.example.com",
            "allowCreateTenants": principal.kind == "bootstrap",
            "customProperties": {},
            "self": f"{self.base_url}/tenant/currentTenant",
        }
        return _json_response(_dumps(doc), "currenttenant")

    async def _option(self, request: web.Request) -> web.Response:
        principal = self._auth(request, "ROLE_OPTION_MANAGEMENT_READ", "ROLE_OPTION_MANAGEMENT_ADMIN")
        category, key = request.match_info["category"], request.match_info["key"]
        value = self._tenant_of(principal).options.get((category, key))
        if value is None:
            raise _Error(404, "options/Not Found", f"Unable to find option by given key: {category}/{key}")
        doc = {
            "category": category,
            "key": key,
            "value": value,
            "self": f"{self.base_url}/tenant/options/{category}/{key}",
        }
        return _json_response(_dumps(doc), "option")

    def _roles_json(self, roles: Iterable[str]) -> list[dict[str, str]]:
        return [{"id": r, "name": r, "self": f"{self.base_url}/user/roles/{r}"} for r in sorted(roles)]

    async def _current_user(self, request: web.Request) -> web.Response:
        principal = self._authenticate(request)
        request[PRINCIPAL] = principal
        doc = {
            "id": principal.user,
            "userName": principal.user,
            "email": principal.email,
            "enabled": True,
            "shouldResetPassword": False,
            "effectiveRoles": self._roles_json(principal.roles),
            "self": f"{self.base_url}/user/currentUser",
        }
        return _json_response(_dumps(doc), "currentuser")

    async def _user(self, request: web.Request) -> web.Response:
        principal = self._auth(request, "ROLE_USER_MANAGEMENT_READ", "ROLE_USER_MANAGEMENT_ADMIN")
        tenant_id, name = request.match_info["tenant"], request.match_info["user"]
        if tenant_id != principal.tenant:
            raise _Error(403, "security/Forbidden", "Access is denied")
        user = self._tenant_of(principal).users.get(name)
        if user is None:
            raise _Error(404, "user/Not Found", f"User with id {name} not found")
        doc = {
            "id": user.name,
            "userName": user.name,
            "email": user.email,
            "enabled": True,
            "effectiveRoles": self._roles_json(user.roles),
            "self": f"{self.base_url}/user/{tenant_id}/users/{user.name}",
        }
        return _json_response(_dumps(doc), "user")

    # -- paging ----------------------------------------------------------------------------------------------
    def _page(self, request: web.Request, key: str, items: Iterator[dict[str, Any]]) -> dict[str, Any]:
        q = request.query
        try:
            size = int(q.get("pageSize", "5"))
            page = int(q.get("currentPage", "1"))
        except ValueError:
            raise _Error(
                422, "undefined/validationError", "pageSize and currentPage must be integers"
            ) from None
        if not 1 <= size <= 2000:
            raise _Error(422, "undefined/validationError", "pageSize must be between 1 and 2000")
        if page < 1:
            raise _Error(422, "undefined/validationError", "currentPage must be at least 1")
        want_total = q.get("withTotalPages") == "true" or q.get("withTotalElements") == "true"
        skip = (page - 1) * size
        chosen: list[dict[str, Any]] = []
        total = 0
        for item in items:
            if skip <= total < skip + size:
                chosen.append(item)
            total += 1
            if not want_total and total >= skip + size:
                break
        base = f"{self.base_url}{request.path}"
        params = dict(q)

        def link(p: int) -> str:
            return f"{base}?{urlencode({**params, 'pageSize': str(size), 'currentPage': str(p)})}"

        stats: dict[str, Any] = {"currentPage": page, "pageSize": size}
        if q.get("withTotalPages") == "true":
            stats["totalPages"] = max(1, math.ceil(total / size)) if total else 0
        if q.get("withTotalElements") == "true":
            stats["totalElements"] = total
        doc: dict[str, Any] = {"self": link(page), key: chosen, "statistics": stats}
        if len(chosen) == size:
            doc["next"] = link(page + 1)
        if page > 1:
            doc["prev"] = link(page - 1)
        return doc

    # -- alarms ----------------------------------------------------------------------------------------------
    def _alarm_filter(self, request: web.Request) -> Callable[[dict[str, Any]], bool]:
        q = request.query

        def values(name: str, allowed: tuple[str, ...] | None = None) -> set[str] | None:
            raw = q.get(name)
            if raw is None or raw == "":
                return None
            got = {v.strip() for v in raw.split(",") if v.strip()}
            if allowed is not None and not got <= set(allowed):
                raise _Error(422, "undefined/validationError", f"Invalid value of {name}: {raw}")
            return got

        statuses = values("status", STATUSES)
        severities = values("severity", SEVERITIES)
        types = values("type")
        resolved = q.get("resolved")
        if resolved == "true":
            statuses = (statuses or set(STATUSES)) & {"CLEARED"}
        elif resolved == "false":
            statuses = (statuses or set(STATUSES)) - {"CLEARED"}
        bounds = []
        for name, fld, op in (
            ("dateFrom", "time", 1),
            ("dateTo", "time", -1),
            ("createdFrom", "creationTime", 1),
            ("createdTo", "creationTime", -1),
            ("lastUpdatedFrom", "lastUpdated", 1),
            ("lastUpdatedTo", "lastUpdated", -1),
        ):
            if name in q:
                bound = _parse_time(q[name])
                if bound is None:
                    raise _Error(422, "undefined/validationError", f"Invalid date-time in {name}")
                bounds.append((fld, op, bound))

        def keep(a: dict[str, Any]) -> bool:
            if statuses is not None and a["status"] not in statuses:
                return False
            if severities is not None and a["severity"] not in severities:
                return False
            if types is not None and a["type"] not in types:
                return False
            for fld, op, bound in bounds:
                t = _parse_time(a.get(fld))
                if t is None or (t < bound if op > 0 else t >= bound):
                    return False
            return True

        return keep

    def _filtered_alarms(self, request: web.Request, t: FakeTenant) -> Iterator[dict[str, Any]]:
        keep = self._alarm_filter(request)
        return (a for a in t._alarm_candidates(request.query.get("source") or None) if keep(a))

    async def _alarms_get(self, request: web.Request) -> web.Response:
        principal = self._auth(request, "ROLE_ALARM_READ", "ROLE_ALARM_ADMIN")
        t = self._tenant_of(principal)
        return _json_response(
            _dumps(self._page(request, "alarms", self._filtered_alarms(request, t))), "alarmcollection"
        )

    async def _alarms_count(self, request: web.Request) -> web.Response:
        principal = self._auth(request, "ROLE_ALARM_READ", "ROLE_ALARM_ADMIN")
        count = sum(1 for _ in self._filtered_alarms(request, self._tenant_of(principal)))
        return web.Response(text=str(count), content_type="text/plain")

    async def _alarms_post(self, request: web.Request) -> web.Response:
        principal = self._auth(request, "ROLE_ALARM_ADMIN")
        body = await self._body(request)
        alarm, _ = self._tenant_of(principal)._create_alarm(body)
        return self._ok(request, alarm, "alarm", 201, Location=str(alarm["self"]))

    async def _alarm_get(self, request: web.Request) -> web.Response:
        principal = self._auth(request, "ROLE_ALARM_READ", "ROLE_ALARM_ADMIN")
        alarm_id = request.match_info["id"]
        alarm = self._tenant_of(principal).alarms.get(alarm_id)
        if alarm is None:
            raise _Error(
                404, "alarm/Not Found", f"Finding alarm from database failed : No alarm for gid '{alarm_id}'!"
            )
        return _json_response(_dumps(alarm), "alarm")

    async def _alarm_put(self, request: web.Request) -> web.Response:
        principal = self._auth(request, "ROLE_ALARM_ADMIN")
        body = await self._body(request)
        alarm = self._tenant_of(principal)._update_alarm(request.match_info["id"], body)
        return self._ok(request, alarm, "alarm")

    async def _alarms_bulk_put(self, request: web.Request) -> web.Response:
        principal = self._auth(request, "ROLE_ALARM_ADMIN")
        paging = {"pageSize", "currentPage", "withTotalPages", "withTotalElements"}
        if not set(request.query) - paging:
            raise _Error(422, "undefined/validationError", "At least one query parameter is required")
        body = await self._body(request)
        if not isinstance(body, dict) or set(body) != {"status"} or body["status"] not in STATUSES:
            raise _Error(422, "undefined/validationError", "Only the status can be changed in bulk")
        t = self._tenant_of(principal)
        for alarm in list(self._filtered_alarms(request, t)):
            t._update_alarm(alarm["id"], {"status": body["status"]})
        return web.Response(status=200)

    async def _alarms_delete(self, request: web.Request) -> web.Response:
        principal = self._auth(request, "ROLE_ALARM_ADMIN")
        t = self._tenant_of(principal)
        for alarm in list(self._filtered_alarms(request, t)):  # no parameter: every alarm, as the platform
            t._delete_alarm(alarm["id"])
        return web.Response(status=204)

    # -- inventory -------------------------------------------------------------------------------------------
    async def _mos_get(self, request: web.Request) -> web.Response:
        principal = self._auth(request, "ROLE_INVENTORY_READ", "ROLE_INVENTORY_ADMIN")
        t = self._tenant_of(principal)
        q = request.query
        mo_type, fragment, owner = (
            q.get("type") or None,
            q.get("fragmentType") or None,
            q.get("owner") or None,
        )
        ids = [i.strip() for i in q["ids"].split(",") if i.strip()] if q.get("ids") else None
        source: Iterable[str]
        if ids is not None:
            source = ids
        elif mo_type is not None:
            source = list(t._mo_by_type.get(mo_type, {}))
        else:
            source = list(t.managed_objects)

        def items() -> Iterator[dict[str, Any]]:
            for mo_id in source:
                mo = t.managed_objects.get(mo_id)
                if mo is None or (mo_type is not None and mo.get("type") != mo_type):
                    continue
                if (fragment is not None and fragment not in mo) or (
                    owner is not None and mo.get("owner") != owner
                ):
                    continue
                yield mo

        doc = self._page(request, "managedObjects", items())
        return _json_response(_dumps(doc), "managedobjectcollection")

    async def _mos_post(self, request: web.Request) -> web.Response:
        principal = self._auth(request, "ROLE_INVENTORY_ADMIN", "ROLE_INVENTORY_CREATE")
        body = await self._body(request)
        if not isinstance(body, dict):
            raise _Error(422, "undefined/validationError", "The managed object must be a JSON object")
        mo = self._tenant_of(principal)._create_mo(body, owner=principal.user)
        return self._ok(request, mo, "managedobject", 201, Location=str(mo["self"]))

    async def _mo_get(self, request: web.Request) -> web.Response:
        principal = self._auth(request, "ROLE_INVENTORY_READ", "ROLE_INVENTORY_ADMIN")
        return _json_response(
            _dumps(self._tenant_of(principal)._mo(request.match_info["id"])), "managedobject"
        )

    def _may_write_mo(self, request: web.Request) -> tuple[FakeTenant, str]:
        principal = self._auth(request, "ROLE_INVENTORY_ADMIN", "ROLE_INVENTORY_CREATE")
        t, mo_id = self._tenant_of(principal), request.match_info["id"]
        mo = t._mo(mo_id)
        if "ROLE_INVENTORY_ADMIN" not in principal.roles and mo.get("owner") != principal.user:
            raise _Error(403, "security/Forbidden", "Access is denied")
        return t, mo_id

    async def _mo_put(self, request: web.Request) -> web.Response:
        t, mo_id = self._may_write_mo(request)
        body = await self._body(request)
        if not isinstance(body, dict):
            raise _Error(422, "undefined/validationError", "The managed object must be a JSON object")
        return self._ok(request, t._update_mo(mo_id, body), "managedobject")

    async def _mo_delete(self, request: web.Request) -> web.Response:
        t, mo_id = self._may_write_mo(request)
        t._delete_mo(mo_id)
        return web.Response(status=204)

    # -- Notifications 2.0: subscriptions --------------------------------------------------------------------
    def _n2(self, request: web.Request) -> FakeTenant:
        return self._tenant_of(self._auth(request, "ROLE_NOTIFICATION_2_ADMIN"))

    async def _n2_subs_post(self, request: web.Request) -> web.Response:
        t = self._n2(request)
        body = await self._body(request)
        sub = self._validate_subscription(t, body)
        key = (sub["context"], sub.get("source", {}).get("id", ""), sub["subscription"])
        if key in t._n2_keys:
            raise _Error(409, "notification2/Conflict", f"Duplicated subscription: {sub['subscription']}")
        sub_id = self._next_id()
        sub.update(id=sub_id, self=f"{self.base_url}/notification2/subscriptions/{sub_id}")
        t.n2_subscriptions[sub_id] = sub
        t._n2_keys[key] = sub_id
        return self._ok(request, sub, "subscription", 201, Location=sub["self"])

    def _validate_subscription(self, t: FakeTenant, body: Any) -> dict[str, Any]:
        def invalid(message: str) -> _Error:
            return _Error(422, "undefined/validationError", message)

        if not isinstance(body, dict):
            raise invalid("The subscription must be a JSON object")
        name, context = body.get("subscription"), body.get("context")
        if not isinstance(name, str) or not _NAME.match(name):
            raise invalid("subscription: must match ^[a-zA-Z0-9]+$")
        if context not in N2_APIS:
            raise invalid("context: must be 'mo' or 'tenant'")
        sub: dict[str, Any] = {"context": context, "subscription": name}
        if context == "mo":
            source = body.get("source")
            source_id = str(source.get("id", "")) if isinstance(source, dict) else ""
            if not source_id:
                raise invalid("source: required for the mo context")
            mo = t.managed_objects.get(source_id)
            if mo is None:
                raise _Error(404, "inventory/Not Found", f"Managed object {source_id} not found")
            sub["source"] = {"id": source_id, "name": mo.get("name", ""), "self": t._mo_self(source_id)}
        flt = body.get("subscriptionFilter") or {}
        if not isinstance(flt, dict):
            raise invalid("subscriptionFilter: must be an object")
        apis = flt.get("apis", ["*"])
        if not isinstance(apis, list) or not apis or not all(isinstance(a, str) for a in apis):
            raise invalid("subscriptionFilter.apis: must be a non-empty list of strings")
        if "*" in apis and len(apis) > 1:
            raise invalid("subscriptionFilter.apis: '*' must be alone")
        if apis != ["*"] and not set(apis) <= N2_APIS[context]:
            raise invalid(f"subscriptionFilter.apis: not allowed in the {context} context: {apis}")
        type_filter = flt.get("typeFilter")
        if type_filter is not None:
            if not isinstance(type_filter, str) or not (
                _TYPE_FILTER.match(type_filter) or re.match(r"^[^'\s]+$", type_filter)
            ):
                raise invalid("subscriptionFilter.typeFilter: a type or 'a' or 'b'")
        elif context == "tenant" and "events" in apis:
            raise invalid("subscriptionFilter.typeFilter: required for events in the tenant context")
        sub["subscriptionFilter"] = {"apis": apis, **({"typeFilter": type_filter} if type_filter else {})}
        fragments = body.get("fragmentsToCopy")
        if fragments is not None:
            if not isinstance(fragments, list) or not all(isinstance(f, str) for f in fragments):
                raise invalid("fragmentsToCopy: must be a list of strings")
            sub["fragmentsToCopy"] = fragments
        non_persistent = body.get("nonPersistent", False)
        if not isinstance(non_persistent, bool):
            raise invalid("nonPersistent: must be a boolean")
        sub["nonPersistent"] = non_persistent
        return sub

    async def _n2_subs_get(self, request: web.Request) -> web.Response:
        t = self._n2(request)
        q = request.query
        context, source, name = q.get("context"), q.get("source"), q.get("subscription")
        items = (
            s
            for s in t.n2_subscriptions.values()
            if (context is None or s["context"] == context)
            and (source is None or s.get("source", {}).get("id") == source)
            and (name is None or s["subscription"] == name)
        )
        return _json_response(_dumps(self._page(request, "subscriptions", items)), "subscriptioncollection")

    async def _n2_sub_get(self, request: web.Request) -> web.Response:
        t = self._n2(request)
        sub = t.n2_subscriptions.get(request.match_info["id"])
        if sub is None:
            raise _Error(404, "notification2/Not Found", "Subscription not found")
        return _json_response(_dumps(sub), "subscription")

    def _delete_subscription(self, t: FakeTenant, sub_id: str) -> None:
        sub = t.n2_subscriptions.pop(sub_id)
        t._n2_keys.pop((sub["context"], sub.get("source", {}).get("id", ""), sub["subscription"]), None)

    async def _n2_sub_delete(self, request: web.Request) -> web.Response:
        t = self._n2(request)
        if request.match_info["id"] not in t.n2_subscriptions:
            raise _Error(404, "notification2/Not Found", "Subscription not found")
        self._delete_subscription(t, request.match_info["id"])
        return web.Response(status=204)

    async def _n2_subs_delete_many(self, request: web.Request) -> web.Response:
        t = self._n2(request)
        context, source = request.query.get("context"), request.query.get("source")
        if context is None and source is None:
            raise _Error(422, "undefined/validationError", "context or source is required")
        if context == "mo" and source is None:
            raise _Error(422, "undefined/validationError", "source is required for the mo context")
        for sub_id, s in list(t.n2_subscriptions.items()):
            if (context is None or s["context"] == context) and (
                source is None or s.get("source", {}).get("id") == source
            ):
                self._delete_subscription(t, sub_id)
        return web.Response(status=204)

    # -- Notifications 2.0: tokens ---------------------------------------------------------------------------
    async def _n2_token(self, request: web.Request) -> web.Response:
        principal = self._auth(request, "ROLE_NOTIFICATION_2_ADMIN")
        t = self._tenant_of(principal)
        body = await self._body(request)
        if not isinstance(body, dict):
            raise _Error(422, "undefined/validationError", "The token request must be a JSON object")
        subscriber, subscription = body.get("subscriber"), body.get("subscription")
        if not isinstance(subscriber, str) or not _NAME.match(subscriber):
            raise _Error(422, "undefined/validationError", "subscriber: required, letters and digits only")
        if not isinstance(subscription, str) or not any(
            s["subscription"] == subscription for s in t.n2_subscriptions.values()
        ):
            raise _Error(
                422, "undefined/validationError", f"subscription: no subscription named {subscription!r}"
            )
        minutes = body.get("expiresInMinutes", 1440)
        if not isinstance(minutes, int) or isinstance(minutes, bool) or minutes < 1:
            raise _Error(422, "undefined/validationError", "expiresInMinutes: must be a positive integer")
        shared, non_persistent = body.get("shared", False), body.get("nonPersistent", False)
        if not isinstance(shared, bool) or not isinstance(non_persistent, bool):
            raise _Error(422, "undefined/validationError", "shared and nonPersistent must be booleans")
        user = t.users.get(principal.user)
        assert user is not None
        now = time.time()
        lifetime = self.token_lifetime_s if self.token_lifetime_s is not None else minutes * 60.0
        exp = math.ceil(now + lifetime)
        jti = str(uuid.uuid4())
        claims = {
            "sub": subscriber,
            "topic": f"{t.id}/relnotif/{subscription}",
            "jti": jti,
            "iat": int(now),
            "exp": exp,
        }
        if shared:
            claims["shared"] = True
        token = jwt.encode(claims, _rsa_key(), algorithm="RS256")
        payload = token.split(".")[1]
        if "-" in payload or "_" in payload:  # cannot happen for ASCII claims without '>', '?', '~'
            raise _Error(500, "undefined/Internal", "token payload is not standard-base64 safe")
        self._n2_tokens[jti] = _TokenInfo(
            t.id, subscriber, subscription, user, shared, non_persistent, float(exp)
        )
        return _json_response(_dumps({"token": token}), None)

    def _token_info(self, token: str, check_exp: bool = True) -> _TokenInfo:
        try:
            claims = jwt.decode(
                token,
                _rsa_key().public_key(),
                algorithms=["RS256"],
                options={"verify_exp": check_exp, "require": ["exp", "jti", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise _Error(401, "security/Unauthorized", "Token expired") from None
        except jwt.PyJWTError:
            raise _Error(401, "security/Unauthorized", "Invalid token") from None
        info = self._n2_tokens.get(str(claims["jti"]))
        if info is None:
            raise _Error(401, "security/Unauthorized", "Unknown token")
        if self._live_user(info.tenant, info.issuer.name) is not info.issuer:
            raise _Error(401, "security/Unauthorized", "Token revoked")
        return info

    async def _n2_unsubscribe(self, request: web.Request) -> web.Response:
        principal = self._auth(request, "ROLE_NOTIFICATION_2_ADMIN")
        info = self._token_info(request.query.get("token", ""), check_exp=False)
        if info.tenant != principal.tenant:
            raise _Error(403, "security/Forbidden", "Access is denied")
        self._unsubscribe_subscriber(self._tenants[info.tenant], info.subscription, info.backlog_key)
        return _json_response(_dumps({"result": "DONE"}), None)

    def _unsubscribe_subscriber(self, t: FakeTenant, subscription: str, key: str) -> None:
        backlog = t._drop_backlog(subscription, key)
        for conn in list(backlog.conns if backlog is not None else ()):
            self._close_consumer(conn, 1000, "unsubscribed")

    # -- Notifications 2.0: the consumer websocket -----------------------------------------------------------
    async def _n2_consumer(self, request: web.Request) -> web.StreamResponse:
        info = self._token_info(request.query.get("token", ""))
        t = self._tenants[info.tenant]
        if not any(s["subscription"] == info.subscription for s in t.n2_subscriptions.values()):
            raise _Error(401, "security/Unauthorized", "The token's subscription does not exist any more")
        request[PRINCIPAL] = _Principal(info.tenant, info.issuer.name, set(), "token")
        backlog = t._backlog(info)
        if backlog.conns and not (info.shared and backlog.shared):
            raise _Error(409, "notification2/Conflict", "A consumer is already connected for this subscriber")
        ws = web.WebSocketResponse(autoping=True)
        conn = _Consumer(ws, backlog, info, request.query.get("consumer", ""))
        backlog.attach(conn)  # before prepare: a second handshake racing this one is refused
        self._consumers.add(conn)
        try:
            await ws.prepare(request)
        except BaseException:
            self._forget(conn)
            raise
        tasks = [self._spawn(self._sender(conn)), self._spawn(self._redeliverer(conn))]
        tasks.append(self._spawn(self._expirer(conn)))
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT or conn.closed:
                    continue
                if msg.data == UNSUBSCRIBE_FRAME:
                    self._unsubscribe_subscriber(t, info.subscription, info.backlog_key)
                    break
                if self.lose_acks > 0:  # fault injection: as if the acknowledgement got lost on the way
                    self.lose_acks -= 1
                    continue
                backlog.unacked.pop(msg.data, None)
        finally:
            self._forget(conn)
            for task in tasks:
                task.cancel()
        return ws

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _forget(self, conn: _Consumer) -> None:
        conn.closed = True
        conn.wake.set()
        backlog = conn.backlog
        backlog.detach(conn)
        self._consumers.discard(conn)
        if not backlog.persistent and not backlog.conns:
            t = self._tenants.get(backlog.tenant)
            if t is not None and t._backlogs.get(backlog.subscription, {}).get(backlog.key) is backlog:
                t._drop_backlog(backlog.subscription, backlog.key)

    def _close_consumer(self, conn: _Consumer, code: int, reason: str) -> None:
        self._forget(conn)
        if not conn.ws.closed:
            self._spawn(conn.ws.close(code=code, message=reason.encode()))

    async def _sender(self, conn: _Consumer) -> None:
        unacked = conn.backlog.unacked
        with contextlib.suppress(ConnectionError, RuntimeError):
            while not conn.closed:
                await conn.wake.wait()
                conn.wake.clear()
                while conn.queue and not conn.closed:
                    msg = conn.queue.popleft()
                    if msg.owner is not conn or msg.ack_id not in unacked:
                        continue
                    msg.sends += 1
                    msg.sent_at = time.monotonic()
                    await conn.ws.send_str(msg.frame)

    async def _redeliverer(self, conn: _Consumer) -> None:
        tick = min(max(self.redeliver_after_s / 4, 0.01), 1.0)
        unacked = conn.backlog.unacked
        while not conn.closed:
            await asyncio.sleep(tick)
            now = time.monotonic()
            due = [
                m
                for m in unacked.values()
                if m.owner is conn and m.sent_at is not None and now - m.sent_at >= self.redeliver_after_s
            ]
            for m in due:
                m.sent_at = None
                conn.queue.append(m)
            if due:
                conn.wake.set()

    async def _expirer(self, conn: _Consumer) -> None:
        await asyncio.sleep(max(0.0, conn.token.exp - time.time()))
        if not conn.closed:
            self._close_consumer(conn, 1008, "token expired")

    def _notify_mo(self, t: FakeTenant, mo: dict[str, Any], action: str) -> None:
        """Fan a managed object change out to the subscriptions on ``managedobjects`` (a DELETE carries the
        id only); ``typeFilter`` matches the object's type."""
        if not t.n2_subscriptions:
            return
        mo_id, mo_type = str(mo["id"]), mo.get("type")
        body = _dumps({"id": mo_id}) if action == "DELETE" else _dumps(mo)
        frames: dict[str, str] = {}
        for sub in t.n2_subscriptions.values():
            name, apis = sub["subscription"], sub["subscriptionFilter"]["apis"]
            if name in frames or (apis != ["*"] and "managedobjects" not in apis):
                continue
            if sub["context"] == "mo" and sub["source"]["id"] != mo_id:
                continue
            type_filter = sub["subscriptionFilter"].get("typeFilter")
            if type_filter and mo_type not in (_TYPE_ITEM.findall(type_filter) or [type_filter]):
                continue
            frames[name] = f"/{t.id}/managedobjects/{mo_id}\n{action}\n\n{body}"
        for name, tail in frames.items():
            for backlog in t._backlogs.get(name, {}).values():
                backlog.push(mo_id, tail)

    def _notify(
        self, t: FakeTenant, alarm: dict[str, Any], action: str, body: dict[str, Any] | None = None
    ) -> None:
        """Fan an alarm change out to the backlogs of every subscription it matches (``body``: what the
        frame carries instead of the alarm)."""
        if not t.n2_subscriptions:
            return
        source_id = alarm["source"]["id"]
        frames: dict[str, str] = {}  # subscription name -> frame after the ack id
        bodies: dict[tuple[str, ...] | None, str] = {}
        for sub in t.n2_subscriptions.values():
            name = sub["subscription"]
            if name in frames:
                continue
            apis = sub["subscriptionFilter"]["apis"]
            if sub["context"] == "mo":
                if sub["source"]["id"] != source_id:
                    continue
                api = "alarmsWithChildren" if "alarmsWithChildren" in apis else "alarms"
                if apis != ["*"] and api not in apis:
                    continue
            else:
                api = "alarms"
                if apis != ["*"] and "alarms" not in apis:
                    continue
            type_filter = sub["subscriptionFilter"].get("typeFilter")
            if type_filter and alarm["type"] not in (_TYPE_ITEM.findall(type_filter) or [type_filter]):
                continue
            copy = sub.get("fragmentsToCopy")
            fkey = None if copy is None else tuple(copy)
            text = bodies.get(fkey)
            if text is None:
                doc = (
                    body
                    if body is not None
                    else alarm
                    if copy is None
                    else {k: v for k, v in alarm.items() if k in ALARM_STANDARD or k in copy}
                )
                text = bodies[fkey] = _dumps(doc)
            frames[name] = f"/{t.id}/{api}/{source_id}\n{action}\n\n{text}"
        for name, tail in frames.items():
            for backlog in t._backlogs.get(name, {}).values():
                backlog.push(source_id, tail)


def _load_manifest(app_name: str) -> dict[str, Any]:
    try:
        manifest: dict[str, Any] = json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        manifest = {"name": app_name, "requiredRoles": list(DEFAULT_REQUIRED_ROLES), "roles": []}
    return manifest


ADMIN_ROLES = (
    "ROLE_ALARM_ADMIN",
    "ROLE_ALARM_READ",
    "ROLE_INVENTORY_ADMIN",
    "ROLE_TOCSIN_ADMIN",
    "ROLE_TOCSIN_READ",
)


async def _main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--tenants", type=int, default=1)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--app-name", default="tocsin")
    parser.add_argument("--redeliver-after-s", type=float, default=60.0)
    args = parser.parse_args()
    fake = FakeCumulocity(args.app_name, redeliver_after_s=args.redeliver_after_s, port=args.port)
    fake.record = False
    await fake.start()
    tenants: dict[str, dict[str, str]] = {}
    for i in range(1, args.tenants + 1):
        t = fake.add_tenant(f"t{i}")
        admin = t.add_user("admin", roles=ADMIN_ROLES)
        device = t.add_device(f"device-t{i}")
        tenants[t.id] = {"user": admin.name, "password": admin.password, "device": device}
    line = {
        "port": fake.port,
        "base_url": fake.base_url,
        "app_key": fake.app_key,
        "environment": fake.environment(),
        "tenants": tenants,
    }
    print(json.dumps(line), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await fake.stop()


if __name__ == "__main__":
    asyncio.run(_main())
