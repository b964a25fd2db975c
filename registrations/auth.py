"""API keys: per-app keys may register and unregister their own app's tokens; admin keys may do everything.

Only SHA-256 digests of keys are held (keys are long random strings, so a plain digest is enough); a request's
key is hashed and looked up. Keys come as ``Authorization: Bearer <key>``, ``X-API-Key: <key>``, or as the
password of HTTP Basic auth (what Cumulocity push gateway clients send).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling. API keys name an app (or are admin); a Cumulocity user names a tenant and a user.

    ``admin`` is admin of what the caller may see at all: everything for an admin key, its own tenant for a
    Cumulocity user with the service's admin role."""

    name: str
    admin: bool
    app: str | None = None
    tenant: str | None = None  # the Cumulocity tenant; None: the deployment's own registrations
    user: str | None = None  # the Cumulocity user name

    def may_write(self, app: str | None, user: str | None = None) -> bool:
        """Whether it may change a registration of ``app`` belonging to ``user``: admins all, an app key its
        app's, a platform user their own."""
        if self.admin:
            return True
        if self.app is not None and app == self.app:
            return True
        return self.user is not None and user == self.user


class Authenticator(Protocol):
    """Finds out who sent a request, or raises AuthError (401 unknown, 403 known but not allowed)."""

    async def authenticate(self, request: web.Request) -> Principal: ...


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class AuthError(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status, self.message = status, message
        super().__init__(message)


class KeyRing:
    """``keys`` maps SHA-256 hex digests to who holds them.

    With no keys at all and ``open_loopback``, callers on the loopback interface are admin: the embedded
    defaults then work without setup (the service only listens on 127.0.0.1 by default). Requests that a
    reverse proxy forwarded (``Forwarded``, ``X-Forwarded-For``) do not count as local.
    """

    def __init__(self, keys: dict[str, Principal], open_loopback: bool = False) -> None:
        self.keys = dict(keys)
        self.open_loopback = open_loopback and not keys

    async def authenticate(self, request: web.Request) -> Principal:
        return self.authenticate_key(request)

    def authenticate_key(self, request: web.Request) -> Principal:
        key = presented_key(request)
        if key is None:
            proxied = "Forwarded" in request.headers or "X-Forwarded-For" in request.headers
            if self.open_loopback and _loopback(request.remote) and not proxied:
                return Principal("loopback", admin=True)
            raise AuthError(401, "an API key is required (Authorization: Bearer <key>)")
        found = self.keys.get(digest(key))
        if found is None:
            raise AuthError(401, "the API key is not valid")
        return found


def presented_key(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if scheme.lower() == "basic" and value.strip():
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return "\0invalid"  # a key that matches nothing: answered 401
        return decoded.partition(":")[2] or "\0invalid"
    key = request.headers.get("X-API-Key", "").strip()
    return key or None


def _loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False
