"""A thin aiohttp client for the platform's REST API (specs/cumulocity.md §1.4-1.6).

Basic auth as ``tenant/user:password``, ``Accept`` on every request, ``X-Cumulocity-Application-Key`` when the
application key is known (requests without it count as device traffic), the platform's error JSON mapped to
``C8yError``, and connection errors, timeouts and 502-504 retried a few times with a short backoff. Passwords
and notification tokens never appear in reprs, errors or logs.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp

log = logging.getLogger("tocsin.cumulocity")

RETRY_STATUSES = frozenset({502, 503, 504})
_SECRET_QUERY = re.compile(r"(token=)[^&\s'\"]+", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with the value of any ``token=`` query parameter replaced (URLs in library errors)."""
    return _SECRET_QUERY.sub(r"\1***", text)


@dataclass(frozen=True)
class Credentials:
    """A platform user: ``tenant/user:password`` for Basic auth. The repr leaves the password out."""

    tenant: str
    user: str
    password: str = field(repr=False)

    @property
    def username(self) -> str:
        return f"{self.tenant}/{self.user}"

    def basic(self) -> str:
        """The ``Authorization`` header value."""
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


class C8yError(Exception):
    """The platform refused a request (``status`` >= 400) with its error body ``{"error","message"}``."""

    def __init__(self, status: int, error: str, message: str, *, method: str = "", path: str = "") -> None:
        self.status, self.error, self.message = status, error, message
        self.method, self.path = method, path
        where = f"{method} {path}: " if method else ""
        super().__init__(f"{where}{status} {error}: {message}")


class C8yUnavailable(C8yError):
    """The platform could not be reached (connection error, timeout or 502-504) after the retries."""


def _error_from(status: int, raw: bytes, method: str, path: str) -> C8yError:
    error, message = "http", raw[:200].decode("utf-8", "replace").strip() or f"HTTP {status}"
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = str(body.get("error") or error)
        message = str(body.get("message") or message)
    cls = C8yUnavailable if status in RETRY_STATUSES else C8yError
    return cls(status, error, redact(message), method=method, path=path)


class C8yClient:
    """Requests as one platform user over a shared ``aiohttp.ClientSession`` (the caller owns the session)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        credentials: Credentials | None,
        app_key: str | None = None,
        *,
        retries: int = 3,
        retry_backoff_s: float = 0.1,
        timeout_s: float = 30.0,
    ) -> None:
        scheme = urlsplit(base_url).scheme
        if scheme not in ("http", "https"):
            raise ValueError(f"the platform URL must be http:// or https://, not {scheme or 'relative'}")
        self.session, self.base_url = session, base_url.rstrip("/")
        self.credentials, self.app_key = credentials, app_key or None
        self.retries, self.retry_backoff_s = retries, retry_backoff_s
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    def __repr__(self) -> str:
        who = self.credentials.username if self.credentials else "anonymous"
        return f"C8yClient({self.base_url!r}, {who!r})"

    @property
    def tenant(self) -> str | None:
        return self.credentials.tenant if self.credentials else None

    def for_credentials(self, credentials: Credentials) -> C8yClient:
        """A client for another user (a tenant's service user) on the same session, URL and key."""
        return C8yClient(
            self.session,
            self.base_url,
            credentials,
            self.app_key,
            retries=self.retries,
            retry_backoff_s=self.retry_backoff_s,
            timeout_s=self.timeout.total or 30.0,
        )

    def headers(self, *, has_body: bool = False) -> dict[str, str]:
        """What every request carries: auth, ``Accept``, the application key, the body's content type."""
        h = {"Accept": "application/json"}
        if self.credentials is not None:
            h["Authorization"] = self.credentials.basic()
        if self.app_key:
            h["X-Cumulocity-Application-Key"] = self.app_key
        if has_body:
            h["Content-Type"] = "application/json"
        return h

    def url(self, path: str) -> str:
        return self.base_url + "/" + path.lstrip("/")

    def ws_url(self, path: str, params: Mapping[str, str] | None = None) -> str:
        """The websocket URL of ``path``: ``ws://`` for an ``http://`` platform URL, ``wss://`` for https."""
        parts = urlsplit(self.url(path))
        scheme = "wss" if parts.scheme == "https" else "ws"
        return urlunsplit((scheme, parts.netloc, parts.path, urlencode(dict(params or {})), ""))

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        retry: bool = True,
    ) -> Any:
        """The decoded JSON answer (None when empty); ``C8yError`` for 4xx/5xx, ``C8yUnavailable`` when the
        platform stays unreachable. ``headers`` add to or override the defaults."""
        h = self.headers(has_body=json is not None)
        h.update(headers or {})
        data = _dumps(json) if json is not None else None
        query = {k: str(v) for k, v in (params or {}).items()}
        attempts = 1 + (self.retries if retry else 0)
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                async with self.session.request(
                    method, self.url(path), params=query, data=data, headers=h, timeout=self.timeout
                ) as resp:
                    raw = await resp.read()
                    status = resp.status
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
                problem = redact(f"{type(exc).__name__}: {exc}")
                if last:
                    raise C8yUnavailable(0, "unreachable", problem, method=method, path=path) from exc
            else:
                if status < 400:
                    try:
                        return json_loads(raw)
                    except ValueError:
                        raise C8yError(
                            status, "unexpected", "the answer is not JSON", method=method, path=path
                        ) from None
                if status not in RETRY_STATUSES or last:
                    raise _error_from(status, raw, method, path)
                problem = f"HTTP {status}"
            delay = self.retry_backoff_s * 2**attempt
            log.warning("%s %s: %s; retrying in %.2f s", method, path, problem, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def get(self, path: str, *, params: Mapping[str, str | int] | None = None) -> Any:
        return await self.request("GET", path, params=params)

    async def post(
        self, path: str, json: Any = None, *, params: Mapping[str, str | int] | None = None
    ) -> Any:
        return await self.request("POST", path, params=params, json=json if json is not None else {})

    async def put(self, path: str, json: Any, *, params: Mapping[str, str | int] | None = None) -> Any:
        return await self.request("PUT", path, params=params, json=json)

    async def delete(self, path: str, *, params: Mapping[str, str | int] | None = None) -> Any:
        return await self.request("DELETE", path, params=params)

    async def pages(
        self, path: str, key: str, params: Mapping[str, str | int] | None = None, *, page_size: int = 100
    ) -> AsyncIterator[dict[str, Any]]:
        """Every element of the collection ``path`` (list under ``key``), page by page (``currentPage``)."""
        page = 1
        while True:
            query: dict[str, str | int] = {**(params or {}), "pageSize": page_size, "currentPage": page}
            body = await self.get(path, params=query)
            items = body.get(key) if isinstance(body, dict) else None
            if not isinstance(items, list):
                raise C8yError(200, "unexpected", f"no list {key!r} in the answer", method="GET", path=path)
            for item in items:
                if isinstance(item, dict):
                    yield item
            stats = body.get("statistics") or {}
            total = stats.get("totalPages") if isinstance(stats, dict) else None
            if len(items) < page_size or (isinstance(total, int) and page >= total):
                return
            page += 1

    async def ws_connect(
        self, path: str, params: Mapping[str, str], *, heartbeat_s: float | None = 60.0
    ) -> aiohttp.ClientWebSocketResponse:
        """Open a websocket to ``path`` (its auth is in ``params``, e.g. a notification token)."""
        headers = {"X-Cumulocity-Application-Key": self.app_key} if self.app_key else None
        async with asyncio.timeout(self.timeout.total):
            return await self.session.ws_connect(
                self.ws_url(path, params),
                heartbeat=heartbeat_s,
                headers=headers,
                timeout=aiohttp.ClientWSTimeout(ws_close=10.0),
            )


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def json_loads(raw: bytes) -> Any:
    """The JSON in ``raw``; None for an empty body (204, or a POST answered without content)."""
    if not raw.strip():
        return None
    return json.loads(raw)
