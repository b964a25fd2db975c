"""The webhook receiver: a registration's token is a URL; each delivery is one signed JSON ``POST`` to it.

Not to be confused with ``service/notify/webhook.py``, where the user's server *decides* about a
notification before it is sent. The body and its signature are in ``webhook_body``. Redirects are not
followed (a redirect could point anywhere the URL check refused), answers are read no further than 4 KiB.

Outcomes as for the push providers: 2xx delivered; 410 Gone disables the registration; 408, 425, 429 and
5xx retry (after Retry-After when given); timeouts and connection failures retry; 3xx and other 4xx are
rejected and counted.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, model_validator

from registrations.model import Registration
from service.notify.model import Delivery
from service.providers import webhook_body
from service.providers.base import (
    ConfigError,
    Delivered,
    Outcome,
    Rejected,
    Retry,
    TokenInvalid,
    retry_after_s,
)
from service.providers.plugin import ProviderPlugin
from service.providers.targets import MAX_URL, check_url

log = logging.getLogger("tocsin.webhook_receiver")
_RETRY = {408, 425, 429}
_MAX_ANSWER = 4096
MIN_SECRET = 16


class WebhookConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    secret_path: Path | None = Field(
        None,
        description="file holding the HMAC-SHA256 signing secret (at least 16 bytes; re-read when it "
        "changes); the webhook receiver is off without it",
    )
    allowed_hosts: tuple[str, ...] = Field(
        (), description="hosts a webhook URL may name (example.com, *.example.com); empty: any public host"
    )
    allow_http: bool = Field(False, description="also accept http:// URLs (default: https:// only)")
    ca_file: Path | None = Field(None, description="trust these CAs instead of the system's")
    client_cert_path: Path | None = Field(None, description="client certificate (PEM) for mutual TLS")
    client_key_path: Path | None = Field(None, description="its key (PEM), when not in client_cert_path")
    timeout_s: float = Field(
        10.0, gt=0, description="an answer (or its next part) not back by then is retried"
    )
    connect_timeout_s: float = Field(5.0, gt=0)
    max_connections: int = Field(100, ge=1)

    @model_validator(mode="after")
    def _key_needs_cert(self) -> WebhookConfig:
        if self.client_key_path is not None and self.client_cert_path is None:
            raise ValueError("client_key_path needs client_cert_path")
        return self

    @property
    def configured(self) -> bool:
        return self.secret_path is not None

    @property
    def schemes(self) -> tuple[str, ...]:
        return ("https", "http") if self.allow_http else ("https",)


def check_webhook_url(config: WebhookConfig, url: str) -> str:
    return check_url(url, config.schemes, config.allowed_hosts, "webhook URL")


def check_token(token: str) -> str:
    """The shape of a webhook registration's token: an http(s) URL (hosts: ``check_webhook_url``)."""
    if not token.startswith(("https://", "http://")) or len(token) > MAX_URL or not token.isprintable():
        raise ValueError(
            f"a webhook registration's token is its URL: https://... (at most {MAX_URL} characters)"
        )
    return token


def check_files(config: WebhookConfig) -> list[str]:
    problems = []
    if config.secret_path is not None:
        try:
            read_secret(config.secret_path)
        except ValueError as exc:
            problems.append(str(exc))
    for path in (config.ca_file, config.client_cert_path, config.client_key_path):
        if path is not None and not path.is_file():
            problems.append(f"{path} is not a readable file")
    return problems


def read_secret(path: Path) -> bytes:
    """The secret's bytes, surrounding whitespace dropped; ValueError naming the path otherwise."""
    try:
        secret = path.read_bytes().strip()
    except OSError as exc:
        raise ValueError(f"cannot read the webhook secret {path}: {exc.strerror}") from None
    if len(secret) < MIN_SECRET:
        raise ValueError(f"the webhook secret in {path} is shorter than {MIN_SECRET} bytes")
    return secret


class WebhookProvider:
    name = "webhook"

    def __init__(self, config: WebhookConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._clock = clock
        self._secret: bytes | None = None
        self._mtime: int | None = None
        self._checked = float("-inf")
        self._session: aiohttp.ClientSession | None = None
        self.problem: str | None = None

    @property
    def degraded(self) -> str | None:
        return self.problem

    def credential_for(self, registration: Registration) -> str:
        return ""

    def secret(self) -> bytes:
        """The signing secret, re-read at most once a second when its file changed (rotation)."""
        assert self.config.secret_path is not None
        now = time.monotonic()
        if self._secret is None or now - self._checked >= 1.0:
            self._checked = now
            path = self.config.secret_path
            try:
                mtime = path.stat().st_mtime_ns
            except OSError as exc:
                raise ValueError(f"cannot read the webhook secret {path}: {exc.strerror}") from None
            if self._secret is None or mtime != self._mtime:
                self._secret, self._mtime = read_secret(path), mtime
        return self._secret

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            c = self.config
            ctx = ssl.create_default_context(cafile=str(c.ca_file) if c.ca_file else None)
            if c.client_cert_path is not None:
                ctx.load_cert_chain(c.client_cert_path, c.client_key_path)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=c.max_connections, ssl=ctx),
                # Per socket operation, not in total: waiting for a pooled connection is not the peer's delay.
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=c.connect_timeout_s, sock_read=c.timeout_s
                ),
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                skip_auto_headers=("Accept-Encoding",),
                headers={"User-Agent": "tocsin-webhook/1"},
            )
        return self._session

    async def send(self, delivery: Delivery) -> Outcome:
        n, url = delivery.notification, delivery.registration.token
        now = self._clock()
        if n.expires <= now:
            return Rejected("expired before it could be sent")
        try:
            secret = self.secret()
        except ValueError as exc:
            self.problem = str(exc)
            return ConfigError(self.problem)
        try:
            session = self._http()
        except (OSError, ssl.SSLError) as exc:
            self.problem = f"cannot load the webhook TLS files: {exc}"
            return ConfigError(self.problem)
        raw = webhook_body.encode(delivery)
        headers = webhook_body.headers(secret, int(now), raw, n.nid)
        try:
            async with session.post(url, data=raw, headers=headers, allow_redirects=False) as resp:
                status, retry_after = resp.status, resp.headers.get("Retry-After")
                answer = await resp.content.read(_MAX_ANSWER)
        except TimeoutError:
            return Retry("the webhook did not answer in time")
        except aiohttp.ClientSSLError as exc:
            return Retry(f"TLS with the webhook failed: {exc.__class__.__name__}")
        except (aiohttp.ClientError, OSError) as exc:
            return Retry(f"cannot reach the webhook: {exc.__class__.__name__}")
        self.problem = None
        return outcome(status, answer, retry_after)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def outcome(status: int, answer: bytes, retry_after: str | None) -> Outcome:
    what = f"webhook answered {status}"
    text = answer[:200].decode("utf-8", "replace").strip()
    if text:
        what += f": {text}"
    if 200 <= status < 300:
        return Delivered()
    if status == 410:
        return TokenInvalid(what)
    if status in _RETRY or status >= 500:
        return Retry(what, retry_after_s(retry_after))
    if 300 <= status < 400:
        return Rejected(f"{what} (redirects are not followed)")
    return Rejected(what)


PLUGIN = ProviderPlugin(
    name="webhook",
    config=WebhookConfig,
    build=WebhookProvider,
    check_token=check_token,
    enabled=lambda c: c.configured,
    check=check_files,
    check_target=check_webhook_url,
    summary="a signed JSON POST to the registration's URL (schema tocsin.webhook/1)",
)
