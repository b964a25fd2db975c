"""Who calls through ``/service/tocsin/...``: the platform checks the caller's credentials, its roles decide.

The gateway forwards the caller's credentials unchanged: ``Authorization: Basic base64(tenant/user:pass)``,
``Authorization: Bearer <jwt>``, or the browser's cookie ``authorization=<jwt>`` with an ``X-XSRF-TOKEN``
header (optionally ``tfatoken``). They are passed on to ``GET /user/currentUser``: 200 is a valid user with
its ``effectiveRoles``, 401 is not. Answers are cached briefly (keyed by a digest of the credentials, never
the credentials themselves). API keys configured for the deployment keep working alongside.

A tenant user with the admin role (``ROLE_TOCSIN_ADMIN``) may do everything within its tenant; one with the
user role (``ROLE_TOCSIN_READ``) registers its own phones and acknowledges alerts; others are refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import time
from collections.abc import Callable, Container
from typing import Any

from aiohttp import web

from registrations.auth import AuthError, KeyRing, Principal, digest, presented_key
from service.cumulocity.client import C8yClient, C8yError
from service.cumulocity.stream import token_claims

log = logging.getLogger("tocsin.cumulocity.auth")
CACHE_LIMIT = 10_000


def tenant_of(authorization: str, cookie_jwt: str | None) -> str | None:
    """The caller's tenant as its credentials name it: Basic ``tenant/user``, a JWT's ``ten`` claim."""
    if cookie_jwt:
        return _jwt_claim(cookie_jwt, "ten")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "basic":
        try:
            user = base64.b64decode(value.strip(), validate=True).decode().partition(":")[0]
        except (binascii.Error, UnicodeDecodeError):
            return None
        tenant, slash, _ = user.partition("/")
        return tenant if slash and tenant else None
    if scheme.lower() == "bearer":
        return _jwt_claim(value.strip(), "ten")
    return None


def _jwt_claim(token: str, claim: str) -> str | None:
    """A claim of a JWT the platform will verify (we only route by it, the platform decides validity)."""
    try:
        value = token_claims(token).get(claim)
    except ValueError:
        return None
    return value if isinstance(value, str) else None


def platform_credentials(request: web.Request) -> dict[str, str] | None:
    """The headers that carry the caller's platform credentials, or None when it sent none."""
    headers: dict[str, str] = {}
    cookie = request.cookies.get("authorization")
    if cookie:
        headers["Cookie"] = f"authorization={cookie}"
        headers["X-XSRF-TOKEN"] = request.headers.get("X-XSRF-TOKEN", "")
    else:
        authorization = request.headers.get("Authorization", "")
        if authorization.partition(" ")[0].lower() not in ("basic", "bearer"):
            return None
        headers["Authorization"] = authorization
    if "tfatoken" in request.headers:
        headers["tfatoken"] = request.headers["tfatoken"]
    return headers


class PlatformAuthenticator:
    """``subscribed(tenant)`` tells whether the tenant is subscribed (its requests are served)."""

    def __init__(
        self,
        client: C8yClient | None,
        keys: KeyRing,
        subscribed: Container[str],
        *,
        admin_role: str = "ROLE_TOCSIN_ADMIN",
        user_role: str = "ROLE_TOCSIN_READ",
        cache_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client, self.keys, self.subscribed = client, keys, subscribed
        self.admin_role, self.user_role, self.cache_s, self.clock = admin_role, user_role, cache_s, clock
        self._cache: dict[str, tuple[float, Principal | AuthError]] = {}
        self.checks = 0  # calls to the platform (the rest came from the cache)

    async def authenticate(self, request: web.Request) -> Principal:
        key = presented_key(request)
        if key is not None and digest(key) in self.keys.keys:  # the deployment's own API keys
            return self.keys.authenticate_key(request)
        headers = platform_credentials(request)
        if headers is None:
            raise AuthError(401, "credentials are required (Basic tenant/user, Bearer, or the login cookie)")
        cache_key = hashlib.sha256(json.dumps(headers, sort_keys=True).encode()).hexdigest()
        now = self.clock()
        cached = self._cache.get(cache_key)
        if cached is not None and cached[0] > now:
            found = cached[1]
        else:
            found = await self._check(request, headers)
            if len(self._cache) >= CACHE_LIMIT:
                self._cache.clear()
            if not (isinstance(found, AuthError) and found.status >= 500):
                self._cache[cache_key] = (now + self.cache_s, found)
        if isinstance(found, AuthError):
            raise found
        if found.tenant not in self.subscribed:
            raise AuthError(403, f"tenant {found.tenant} is not subscribed to this service")
        return found

    async def _check(self, request: web.Request, headers: dict[str, str]) -> Principal | AuthError:
        if self.client is None:
            return AuthError(503, "the service is still starting; try again")
        self.checks += 1
        try:
            user: Any = await self.client.request("GET", "/user/currentUser", headers=headers, retry=False)
            tenant = tenant_of(request.headers.get("Authorization", ""), request.cookies.get("authorization"))
            if tenant is None:
                current = await self.client.request(
                    "GET", "/tenant/currentTenant", headers=headers, retry=False
                )
                tenant = current.get("name") if isinstance(current, dict) else None
        except C8yError as exc:
            if exc.status == 401:
                return AuthError(401, "the platform did not accept these credentials")
            if exc.status == 403:
                return AuthError(403, "the platform refused these credentials")
            log.warning("checking a caller's credentials with the platform failed: %s", exc)
            return AuthError(503, "the platform could not check the credentials; try again")
        if not isinstance(user, dict) or not isinstance(tenant, str) or not tenant:
            return AuthError(503, "the platform's answer about the caller was not understood")
        name = str(user.get("userName") or user.get("id") or "")
        roles = {
            r.get("name") or r.get("id") for r in user.get("effectiveRoles") or [] if isinstance(r, dict)
        }
        admin = self.admin_role in roles
        if not admin and self.user_role not in roles:
            return AuthError(403, f"user {name} has neither {self.user_role} nor {self.admin_role}")
        return Principal(f"{tenant}/{name}", admin=admin, tenant=tenant, user=name)
