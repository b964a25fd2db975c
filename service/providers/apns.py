"""The APNs provider, on aioapns 4.0: one client per (app, environment), token or certificate authentication.

aioapns has no host option: each client's pool gets a protocol subclass carrying the configured host and port
(spec §2.3), so tests and benchmarks reach the fake by configuration only. aioapns would sign a JWT per
connection; the subclass hands every connection the signing key's one provider token instead
(apns_token.py). aioapns does not retry on 429/5xx and never times out a request whose answer does not come:
both are handled here.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import ssl
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

from aioapns import APNs, NotificationRequest, PushType
from aioapns.common import NotificationResult
from aioapns.connection import APNsProductionClientProtocol
from aioapns.exceptions import MaxAttemptsExceeded
from h2.events import ConnectionTerminated

from registrations.model import Registration
from service.clock import Clock
from service.notify.model import Delivery
from service.providers import apns_payload
from service.providers.apns_token import ProviderToken, ProviderTokens, es256
from service.providers.base import (
    ConfigError,
    Delivered,
    Outcome,
    Rejected,
    Retry,
    TokenInvalid,
    TokenSuspect,
)
from service.providers.plugin import ProviderPlugin
from service.push_config import ApnsAppConfig, ApnsConfig

log = logging.getLogger("tocsin.apns")
_SUSPECT = {"BadDeviceToken", "DeviceTokenNotForTopic", "MissingDeviceToken"}
_RETRY_STATUS = {"429", "500", "503"}
_TOKEN = re.compile(r"[0-9a-fA-F]{64}")  # 32 bytes as 64 hex digits (specs/push-providers.md)


def check_token(token: str) -> str:
    if not _TOKEN.fullmatch(token):
        raise ValueError("an APNs device token is 64 hexadecimal characters")
    return token.lower()


@dataclass(frozen=True, slots=True)
class _PushTypeValue:
    """aioapns's enum lacks location and pushtotalk; it only reads ``.value``."""

    value: str


def _push_type(name: str) -> PushType:
    try:
        return PushType(name)
    except ValueError:
        return cast(PushType, _PushTypeValue(name))


async def _quiet(request: NotificationRequest, result: NotificationResult) -> None:
    """aioapns logs every failure at ERROR; the dispatcher logs outcomes with their meaning instead."""


class _LeanProtocol(APNsProductionClientProtocol):
    """aioapns's protocol with cheaper header encoding: HPACK without Huffman coding (pure-Python Huffman
    was the largest CPU cost per request) and no re-validation of the headers aioapns itself builds.

    ``SHARED_TOKEN``: the signing key's one provider token (apns_token.py), used instead of the token aioapns
    would make for each connection."""

    SHARED_TOKEN: ProviderToken | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.SHARED_TOKEN is not None:
            self.auth_provider = self.SHARED_TOKEN  # type: ignore[assignment]  # same get_header() interface

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.conn.config.validate_outbound_headers = False
        self.conn.config.normalize_outbound_headers = False
        encoder = self.conn.encoder
        encoder.encode = functools.partial(type(encoder).encode, encoder, huffman=False)  # type: ignore[method-assign]
        super().connection_made(transport)

    def on_data_received(self, data: bytes, stream_id: int) -> None:
        """aioapns never returns flow-control credit for error bodies: after 64 KiB of them on a
        connection APNs could not answer any more. Acknowledge each body (sent with the next flush)."""
        super().on_data_received(data, stream_id)
        self.conn.acknowledge_received_data(len(data), stream_id)

    def on_connection_terminated(self, event: ConnectionTerminated) -> None:
        """After a GOAWAY, leave the pool at once: aioapns only does so when the transport is gone, and in
        between it would hand the dead connection to the next request."""
        super().on_connection_terminated(event)
        discard, self.on_connection_lost = self.on_connection_lost, None
        if discard is not None:
            discard(self)


def _endpoint(url: str, token: ProviderToken | None = None) -> type[APNsProductionClientProtocol]:
    """aioapns has no host option: a protocol class carrying the configured host and port (spec §2.3)."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"APNs endpoint {url!r} must be https://host[:port]")
    attrs = {"APNS_SERVER": parts.hostname, "APNS_PORT": parts.port or 443, "SHARED_TOKEN": token}
    return type("ConfiguredAPNsEndpoint", (_LeanProtocol,), attrs)


def _credential_file(app: ApnsAppConfig) -> Path | None:
    return app.private_key_path or app.certificate_path


def _mtime(path: Path | None) -> float | None:
    if path is None:
        return None
    try:
        return path.stat().st_mtime_ns / 1e9
    except OSError:
        return None


class ApnsProvider:
    name = "apns"

    def __init__(self, config: ApnsConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.tokens = ProviderTokens(clock)  # one JWT per signing key, shared by all clients and connections
        self._clients: dict[tuple[str, str], APNs] = {}
        self._mtimes: dict[str, float | None] = {}
        self._checked: dict[str, float] = {}
        self.problems: dict[str, str] = {}  # app -> why its credential is paused
        self._renewed: set[str] = set()  # apps whose tokens were just regenerated after ExpiredProviderToken
        self._throttled: set[str] = set()  # apps answered TooManyProviderTokenUpdates (logged once)
        self._app_tokens: dict[str, ProviderToken] = {}  # app -> its signing key's token (token auth)
        self._warm: set[tuple[str, str]] = set()  # clients that had a request answered
        self._gates: dict[tuple[str, str], asyncio.Lock] = {}

    @property
    def degraded(self) -> str | None:
        if not self.problems:
            return None
        return "; ".join(f"{app}: {why}" for app, why in sorted(self.problems.items()))

    def credential_for(self, registration: Registration) -> str:
        """Which credential a registration's deliveries use: its app (bundle id)."""
        found = self._app(registration.app)
        return found[0] if found else str(registration.app)

    def _app(self, name: str | None) -> tuple[str, ApnsAppConfig] | None:
        apps = self.config.apps
        if name is None and len(apps) == 1:
            name = next(iter(apps))
        if name is None or name not in apps:
            return None
        return name, apps[name]

    def _client(self, app: str, cfg: ApnsAppConfig, environment: str) -> APNs:
        self._watch(app, cfg)
        key = (app, environment)
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = self._build(app, cfg, environment)
        return client

    def _watch(self, app: str, cfg: ApnsAppConfig) -> None:
        """Credential rotation: a changed key or certificate file replaces the app's clients."""
        path = _credential_file(cfg)
        if path is None:
            return
        now = time.monotonic()
        if now - self._checked.get(app, 0.0) < 1.0:
            return
        self._checked[app] = now
        mtime = _mtime(path)
        if app in self._mtimes and self._mtimes[app] != mtime:
            log.info("APNs credential of %s changed on disk: reconnecting with it", app)
            self._drop(app)
        self._mtimes[app] = mtime

    def _drop(self, app: str) -> None:
        for key in [k for k in self._clients if k[0] == app]:
            self._clients.pop(key).pool.close()
            self._warm.discard(key)

    def _build(self, app: str, cfg: ApnsAppConfig, environment: str) -> APNs:
        url = self.config.sandbox_url if environment == "sandbox" else self.config.production_url
        ctx = ssl.create_default_context(cafile=str(self.config.ca_file) if self.config.ca_file else None)
        common: dict[str, Any] = {
            "topic": app,
            "max_connections": self.config.max_connections,
            "max_connection_attempts": 3,
            "ssl_context": ctx,
            "err_func": _quiet,
        }
        token: ProviderToken | None = None
        if cfg.certificate_path is not None:
            client = self._cert_client(cfg, common)
        else:
            key = (
                cfg.private_key.get_secret_value()
                if cfg.private_key is not None
                else Path(cast(Path, cfg.private_key_path)).read_text(encoding="utf-8")
            )
            token = self._app_tokens[app] = self.tokens.for_key(
                cast(str, cfg.team_id), cast(str, cfg.key_id), key
            )
            client = APNs(key=key, key_id=cfg.key_id, team_id=cfg.team_id, **common)
        client.pool.protocol_class = _endpoint(url, token)
        return client

    def _cert_client(self, cfg: ApnsAppConfig, common: dict[str, Any]) -> APNs:
        path = cast(Path, cfg.certificate_path)
        raw = path.read_bytes()
        if b"-----BEGIN" in raw:
            return APNs(client_cert=str(path), **common)
        # PKCS#12: aioapns loads a PEM file once, at construction; hand it a private temporary one.
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.serialization import pkcs12

        password = cfg.password.get_secret_value().encode() if cfg.password else None
        key, cert, extra = pkcs12.load_key_and_certificates(raw, password)
        if key is None or cert is None:
            raise ValueError(f"{path}: the PKCS#12 file holds no key and certificate")
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ) + b"".join(c.public_bytes(serialization.Encoding.PEM) for c in [cert, *extra])
        fd, tmp = tempfile.mkstemp(suffix=".pem")
        try:
            os.write(fd, pem)
            os.close(fd)
            return APNs(client_cert=tmp, **common)
        finally:
            os.unlink(tmp)

    async def send(self, delivery: Delivery) -> Outcome:
        n, reg = delivery.notification, delivery.registration
        found = self._app(reg.app)
        if found is None:
            return ConfigError(f"no APNs credentials are configured for app {reg.app!r}", str(reg.app))
        app, cfg = found
        body = apns_payload.payload(n, reg.locale)
        try:
            apns_payload.check_size(n, body)
        except apns_payload.PayloadTooLarge as exc:
            return Rejected(str(exc))
        remaining = n.expires - time.time()
        if remaining <= 0:
            return Rejected("expired before it could be sent")
        ttl = max(1, int(remaining))
        try:
            client = self._client(app, cfg, reg.environment)
        except (OSError, ValueError, TypeError, ssl.SSLError) as exc:
            path = _credential_file(cfg)
            reason = f"cannot load the APNs credential of {app}: {f'{path}: ' if path else ''}{_why(exc)}"
            self.problems[app] = reason
            return ConfigError(reason, app)
        request = NotificationRequest(
            device_token=reg.token,
            message=body,
            notification_id=str(uuid.uuid4()),
            time_to_live=ttl,
            priority=apns_payload.priority(n),
            collapse_key=n.options.collapse_key or n.nid,  # a repeat replaces the first on the phone
            push_type=_push_type(n.options.push_type),
            apns_topic=apns_payload.topic(app, n.options.push_type),
        )
        key = (app, reg.environment)
        if not client.pool.connections:  # idle connections close after 10 s: the next one starts cold
            self._warm.discard(key)
        if key not in self._warm:
            # Apple allows one stream until a request with a valid token was answered; aioapns would open
            # hundreds on a fresh connection before the server's settings arrive. The first goes alone.
            async with self._gates.setdefault(key, asyncio.Lock()):
                if key not in self._warm:
                    outcome = await self._send(app, reg.environment, client, request)
                    if isinstance(outcome, Delivered | TokenInvalid | TokenSuspect | Rejected):
                        self._warm.add(key)
                    return outcome
        return await self._send(app, reg.environment, client, request)

    async def _send(self, app: str, environment: str, client: APNs, request: NotificationRequest) -> Outcome:
        try:
            async with asyncio.timeout(self.config.timeout_s):  # no extra task per request, unlike wait_for
                result = await client.send_notification(request)
        except TimeoutError:
            self._abandon(client, request.notification_id)
            return Retry("APNs did not answer in time")
        except (MaxAttemptsExceeded, ConnectionError, OSError) as exc:
            return Retry(f"cannot reach APNs: {exc.__class__.__name__}")
        except Exception as exc:  # h2 protocol errors and the like: a new try on a fresh connection
            log.warning("APNs client error for %s: %s: %s", app, exc.__class__.__name__, exc)
            return Retry(f"APNs client error: {exc.__class__.__name__}")
        return self._outcome(app, environment, result)

    def _abandon(self, client: APNs, notification_id: str) -> None:
        """A stalled connection holds its streams forever: close it, aioapns opens a fresh one."""
        for conn in list(client.pool.connections):
            if notification_id in conn.requests:
                conn.requests.pop(notification_id)  # its waiter is cancelled already: nothing to fail
                conn.close()

    def _outcome(self, app: str, environment: str, result: NotificationResult) -> Outcome:
        status, reason = str(result.status), result.description or ""
        if status == "200":
            self.problems.pop(app, None)
            self._renewed.discard(app)
            self._throttled.discard(app)
            return Delivered()
        what = f"APNs {status} {reason}".strip()
        if status == "410":
            since = result.timestamp / 1000 if isinstance(result.timestamp, int | float) else None
            return TokenInvalid(what, since)
        if status == "400" and reason in _SUSPECT:
            return TokenSuspect(f"{what} ({environment})")
        if status == "403":
            token = self._app_tokens.get(app)
            if reason == "ExpiredProviderToken" and token is not None:
                if app not in self._renewed:
                    # Renewed (unless the token is under 20 minutes old), then retried once; a second one in a
                    # row pauses the app: the token cannot be the cause, this machine's clock may be.
                    self._renewed.add(app)
                    token.expired()
                    return Retry(what, after=0.0)
                what += f" with a token {token.age / 60:.0f} minutes old: is this machine's clock right?"
            self.problems[app] = what
            return ConfigError(f"{app}: {what}", app)
        if reason == "TooManyProviderTokenUpdates" and app not in self._throttled:
            self._throttled.add(app)  # keep the token: it is accepted once the last change is old enough
            log.warning("APNs answered %s for %s: retrying with the same provider token", reason, app)
        if status in _RETRY_STATUS:
            return Retry(what)
        return Rejected(what)

    async def close(self) -> None:
        for client in self._clients.values():
            client.pool.close()
        self._clients.clear()


def check_credentials(config: ApnsConfig) -> list[str]:
    """Each app's key or certificate file, read and parsed now: a missing or malformed file named by path."""
    from cryptography.hazmat.primitives.serialization import pkcs12

    problems: list[str] = []
    for app, cfg in config.apps.items():
        where = f"apps.{app}"
        try:
            if cfg.certificate_path is not None:
                raw = cfg.certificate_path.read_bytes()
                if b"-----BEGIN" in raw:
                    ssl.create_default_context().load_cert_chain(str(cfg.certificate_path))
                else:
                    password = cfg.password.get_secret_value().encode() if cfg.password else None
                    key, cert, _ = pkcs12.load_key_and_certificates(raw, password)
                    if key is None or cert is None:
                        raise ValueError("the PKCS#12 file holds no key and certificate")
            else:
                text = (
                    cfg.private_key.get_secret_value()
                    if cfg.private_key is not None
                    else Path(cast(Path, cfg.private_key_path)).read_text(encoding="utf-8")
                )
                es256(text)  # parsed as the signer will: an EC (P-256) private key
        except (OSError, ValueError, TypeError, ssl.SSLError) as exc:
            path = cfg.certificate_path or cfg.private_key_path
            what = f"{path}: " if path is not None else "private_key: "
            problems.append(f"{where}: {what}{_why(exc)}")
    return problems


def _why(exc: Exception) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, PermissionError):
        return "not readable (permission denied)"
    if isinstance(exc, OSError):
        return f"cannot read: {exc.strerror or exc.__class__.__name__}"
    return f"not a valid key or certificate ({exc.__class__.__name__})"


PLUGIN = ProviderPlugin(
    name="apns",
    config=ApnsConfig,
    build=ApnsProvider,
    check_token=check_token,
    enabled=lambda c: bool(c.apps),
    check=check_credentials,
    c8y_platform="IOS",
    summary="Apple Push Notification service (token or certificate authentication)",
)
