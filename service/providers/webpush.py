"""The Web Push provider: RFC 8030 delivery of an RFC 8291 ``aes128gcm`` message with RFC 8292 VAPID.

A registration's token is its subscription's endpoint; ``p256dh`` and ``auth`` are the subscription's keys.
pywebpush encrypts (a fresh ECDH key and salt per message, as RFC 8291 asks), py-vapid signs the JWT (one per
push service origin, reused; see ``vapid``), aiohttp posts it. The message is the JSON of ``message()``, at
most 3993 bytes so that it fits the single 4096-byte record push services accept. Headers: ``TTL`` from the
notification's expiry, ``Urgency`` from its priority, ``Topic`` from its collapse key (so a newer message
replaces one still waiting in the push service).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pywebpush import WebPusher, WebPushException

from registrations.model import Registration
from service.notify.model import Delivery, Notification, describe, effective_priority
from service.providers import vapid
from service.providers.base import (
    ConfigError,
    Delivered,
    Outcome,
    Rejected,
    Retry,
    TokenInvalid,
    TokenSuspect,
    retry_after_s,
)
from service.providers.plugin import ProviderPlugin
from service.providers.targets import MAX_URL, check_url

log = logging.getLogger("tocsin.webpush")
MAX_PLAINTEXT = 3993  # RFC 8291 §4: 4096 bytes of body less the 86-byte header, padding delimiter and tag
_TOPIC = re.compile(r"[A-Za-z0-9_\-]{1,32}")
_URGENCY = {"high": "high", "normal": "normal", "low": "low"}
# The push services of the browsers that ship Web Push (Chrome/Edge/Opera via FCM, Firefox, Safari, Windows).
PUSH_SERVICES = (
    "fcm.googleapis.com",
    "*.push.services.mozilla.com",
    "push.services.mozilla.com",
    "web.push.apple.com",
    "*.push.apple.com",
    "*.notify.windows.com",
)


class WebPushConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    vapid_private_key_path: Path | None = Field(
        None, description="the VAPID key (PEM, from `tocsin webpush keys`); Web Push is off without it"
    )
    subject: str = Field(
        "mailto:admin@localhost",
        description="the VAPID `sub`: a mailto: or https: URI where the push service can reach the operator",
    )
    allowed_hosts: tuple[str, ...] = Field(
        PUSH_SERVICES, description="push service hosts a subscription's endpoint may name (*.example.com)"
    )
    vapid_lifetime_s: float = Field(12 * 3600.0, ge=60, le=vapid.MAX_LIFETIME_S)
    ca_file: Path | None = Field(None, description="trust these CAs instead of the system's (fakes, proxies)")
    timeout_s: float = Field(10.0, gt=0)
    max_connections: int = Field(100, ge=1)

    @field_validator("subject")
    @classmethod
    def _subject(cls, v: str) -> str:
        if not v.startswith(("mailto:", "https://")):
            raise ValueError("the VAPID subject is a mailto: or https:// URI")
        return v

    @property
    def configured(self) -> bool:
        return self.vapid_private_key_path is not None


def check_endpoint(config: WebPushConfig, endpoint: str) -> str:
    return check_url(endpoint, ("https",), config.allowed_hosts, "Web Push endpoint")


def check_token(token: str) -> str:
    """A Web Push registration's token is its subscription's endpoint (hosts: ``check_endpoint``)."""
    if not token.startswith("https://") or len(token) > MAX_URL or not token.isprintable():
        raise ValueError("a Web Push registration's token is its subscription's https:// endpoint")
    return token


def check_key(config: WebPushConfig) -> list[str]:
    if config.vapid_private_key_path is None:
        return []
    try:
        vapid.load(config.vapid_private_key_path)
    except ValueError as exc:
        return [str(exc)]
    return []


def message(n: Notification, reg: Registration) -> dict[str, Any]:
    """What the service worker's ``push`` event gets as ``event.data.json()``."""
    title, body = n.text_for(reg.locale)
    out = {**describe(n), "title": title, "body": body, "data": dict(n.data), "tag": collapse_of(n)}
    if n.options.badge is not None:
        out["badge_count"] = n.options.badge
    if n.options.image:
        out["image"] = n.options.image
    return out


def collapse_of(n: Notification) -> str:
    return n.options.collapse_key or n.nid


def topic(key: str) -> str:
    """RFC 8030 §5.4: at most 32 characters of the URL-safe base64 alphabet; other keys are hashed to one."""
    if _TOPIC.fullmatch(key):
        return key
    return base64.urlsafe_b64encode(hashlib.sha256(key.encode()).digest()).decode()[:32]


def headers_for(n: Notification, now: float) -> dict[str, str]:
    return {
        "TTL": str(max(0, int(n.expires - now))),
        "Urgency": _URGENCY[effective_priority(n.options)],
        "Topic": topic(collapse_of(n)),
    }


def origin_of(endpoint: str) -> str:
    parts = urlsplit(endpoint)
    return f"{parts.scheme}://{parts.netloc}"


class WebPushProvider:
    name = "webpush"

    def __init__(self, config: WebPushConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._clock = clock
        self._signer: vapid.VapidSigner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.problem: str | None = None

    @property
    def degraded(self) -> str | None:
        return self.problem

    def credential_for(self, registration: Registration) -> str:
        return ""

    def signer(self) -> vapid.VapidSigner:
        """The VAPID key, loaded once; ValueError naming the file when it cannot be used."""
        if self._signer is None:
            assert self.config.vapid_private_key_path is not None
            key = vapid.load(self.config.vapid_private_key_path)
            self._signer = vapid.VapidSigner(
                key, self.config.subject, self.config.vapid_lifetime_s, clock=self._clock
            )
        return self._signer

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            ctx: ssl.SSLContext | bool = True
            if self.config.ca_file is not None:
                ctx = ssl.create_default_context(cafile=str(self.config.ca_file))
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.config.max_connections, ssl=ctx),
                # Per socket operation: waiting for a pooled connection is not the push service's delay.
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=self.config.timeout_s, sock_read=self.config.timeout_s
                ),
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
        return self._session

    async def send(self, delivery: Delivery) -> Outcome:
        n, reg = delivery.notification, delivery.registration
        now = self._clock()
        if n.expires <= now:
            return Rejected("expired before it could be sent")
        if not reg.p256dh or not reg.auth:
            return Rejected("the registration has no subscription keys (p256dh, auth)")
        plaintext = orjson.dumps(message(n, reg))
        if len(plaintext) > MAX_PLAINTEXT:
            return Rejected(
                f"Web Push message of notification {n.nid} is {len(plaintext)} bytes, over the "
                f"{MAX_PLAINTEXT}-byte limit of one 4096-byte record"
            )
        try:
            signer = self.signer()
        except ValueError as exc:
            self.problem = str(exc)
            return ConfigError(self.problem)
        try:
            pusher = WebPusher({"endpoint": reg.token, "keys": {"p256dh": reg.p256dh, "auth": reg.auth}})
            body = pusher.encode(plaintext, "aes128gcm")["body"]
        except (WebPushException, ValueError) as exc:
            return TokenSuspect(f"cannot encrypt to this subscription's keys: {exc.__class__.__name__}")
        headers = headers_for(n, now)
        headers["Authorization"] = signer.header(origin_of(reg.token))
        headers["Content-Encoding"] = "aes128gcm"
        headers["Content-Type"] = "application/octet-stream"
        try:
            async with self._http().post(reg.token, data=body, headers=headers) as resp:
                status, text, retry_after = resp.status, await resp.read(), resp.headers.get("Retry-After")
        except TimeoutError:
            return Retry("the push service did not answer in time")
        except (aiohttp.ClientError, OSError) as exc:
            return Retry(f"cannot reach the push service: {exc.__class__.__name__}")
        return self._outcome(status, text, retry_after)

    def _outcome(self, status: int, raw: bytes, retry_after: str | None) -> Outcome:
        what = f"push service {status} {_reason(raw)}".strip()
        if 200 <= status < 300:
            self.problem = None
            return Delivered()
        if status in (404, 410):
            return TokenInvalid(what)
        if status == 413:
            return Rejected(f"{what}: the push service refused the payload as too large")
        if status == 429 or status >= 500:
            return Retry(what, retry_after_s(retry_after))
        if status == 401:  # our VAPID token: every send will fail alike
            self.problem = what
            return ConfigError(what)
        if status == 403:  # subscribed with another applicationServerKey: this subscription only
            return TokenSuspect(what)
        return Rejected(what)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _reason(raw: bytes) -> str:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw[:200].decode("utf-8", "replace")
    return str(doc.get("message", ""))[:200] if isinstance(doc, dict) else ""


PLUGIN = ProviderPlugin(
    name="webpush",
    config=WebPushConfig,
    build=WebPushProvider,
    check_token=check_token,
    enabled=lambda c: c.configured,
    check=check_key,
    check_target=check_endpoint,
    summary="Web Push to browsers and installed web apps (RFC 8030/8291/8292, VAPID)",
)
