"""One tenant's alarms over Notifications 2.0 (specs/cumulocity.md §3a), delivered at least once.

``AlarmStream.run()`` makes sure the tenant-context alarms subscription exists (it is looked up, created when
missing, and never deleted: with the subscriber it is the durable queue that keeps alarms while tocsin is
down), takes a token, consumes the websocket and acknowledges each frame after ``await handler(frame)``
returned. A handler that raises leaves its frame unacknowledged (the platform redelivers it); a malformed
frame is acknowledged (it would come back forever). Frames of one tenant are handled one at a time, in
order; every tenant has its own stream (task), so a slow tenant holds up only itself.

The token is renewed before it expires: the stream takes a new one and reconnects. A lost connection is
retried after 0.1 s x 1.5^n (at most 30 s, reset after a good connection); a refusal (401/403/404/422 from
the platform: tenant unsubscribed, credentials revoked, a role missing) is shown in ``last_error`` and
retried slowly. The subscriber is never unsubscribed, so a restart resumes at the backlog.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeGuard

import aiohttp

from service.clock import Clock, SystemClock
from service.cumulocity.client import C8yClient, C8yError, redact
from service.cumulocity.frames import Frame, FrameError, parse_frame
from service.metrics import Counter, Metrics
from service.ratelimit import RateLimitedLog

log = logging.getLogger("tocsin.cumulocity")

SUBSCRIPTIONS = "/notification2/subscriptions"
TOKEN = "/notification2/token"
CONSUMER = "/notification2/consumer/"
NAME = re.compile(r"[a-zA-Z0-9]+")

FrameHandler = Callable[[Frame], Awaitable[None]]
CountHook = Callable[[str, str], None]  # (event, tenant); events: see StreamStats' fields


def backoff_delay(attempt: int, base_s: float = 0.1, factor: float = 1.5, cap_s: float = 30.0) -> float:
    """The wait before reconnect ``attempt`` (0 first): ``base_s * factor**attempt``, at most ``cap_s``."""
    if attempt > 200:  # factor**attempt would overflow long after the cap
        return cap_s
    return min(base_s * factor**attempt, cap_s)


def token_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT, decoded without verifying it (the platform's tokens use standard base64)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError(f"a JWT has 3 parts, this has {len(parts)}")
    payload = parts[1].replace("-", "+").replace("_", "/")  # tolerate base64url too
    try:
        claims = json.loads(base64.b64decode(payload + "=" * (-len(payload) % 4), validate=True))
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"the JWT payload is not base64 JSON ({exc})") from None
    if not isinstance(claims, dict):
        raise ValueError("the JWT payload is not a JSON object")
    return claims


def token_expiry(token: str) -> float | None:
    """The ``exp`` claim (seconds since the epoch) of a JWT; None when absent or unreadable."""
    try:
        exp = token_claims(token).get("exp")
    except ValueError:
        return None
    return float(exp) if _is_number(exp) else None


def renew_after(
    token: str, now: float, default_lifetime_s: float, fraction: float = 0.8, floor_s: float = 1.0
) -> float:
    """Seconds from ``now`` until ``token`` should be replaced: ``fraction`` of its lifetime.

    The lifetime is ``exp - iat - 1`` (both on the platform's clock, so a clock difference between us and the
    platform does not matter; ``iat`` is truncated to the second, so up to a second of it may be gone),
    else ``exp - now``, else ``default_lifetime_s``. Never less than ``floor_s``: a token that looks expired
    must not make a tight loop."""
    try:
        claims = token_claims(token)
    except ValueError:
        claims = {}
    exp, iat = claims.get("exp"), claims.get("iat")
    if _is_number(exp) and _is_number(iat):
        lifetime = float(exp) - float(iat) - 1.0
    elif _is_number(exp):
        lifetime = float(exp) - now
    else:
        lifetime = default_lifetime_s
    return max(lifetime * fraction, floor_s)


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass
class StreamStats:
    received: int = 0  # frames read from the websocket (redeliveries included)
    acked: int = 0  # frames acknowledged (handled, or malformed)
    failed: int = 0  # frames whose handler raised (left for redelivery)
    malformed: int = 0  # frames that could not be parsed
    connects: int = 0  # websocket connections opened
    reconnects: int = 0  # connections lost or refused (each followed by a new attempt)
    renewals: int = 0  # connections closed by us to take a new token before the old one expires
    tokens: int = 0  # tokens taken


def metrics_hook(metrics: Metrics) -> CountHook:
    """A ``counts`` hook adding to ``tocsin_cumulocity_stream{event}`` in ``metrics`` (all tenants)."""
    counter = Counter(
        "tocsin_cumulocity_stream",
        "Alarm stream events: frames received/acked/failed/malformed, (re)connects, renewals, tokens.",
        ("event",),
    )
    metrics.extra_counters.append(counter)
    return lambda event, _tenant: counter.inc(event)


class _Renew(Exception):
    """The token is about to expire: reconnect with a new one."""


class AlarmStream:
    def __init__(
        self,
        client: C8yClient,
        tenant: str,
        handler: FrameHandler,
        *,
        subscription: str = "tocsinalarms",
        subscriber: str = "tocsin",
        token_minutes: int = 1440,
        apis: tuple[str, ...] = ("alarms",),
        type_filter: str | None = None,
        shared: bool = False,
        consumer: str | None = None,
        non_persistent: bool = False,
        on_connect: Callable[[], Awaitable[None]] | None = None,
        clock: Clock | None = None,
        counts: CountHook | None = None,
        heartbeat_s: float = 60.0,
        renew_fraction: float = 0.8,
        renew_check_s: float = 30.0,
        backoff_cap_s: float = 30.0,
        refused_retry_s: float = 60.0,
        good_after_s: float = 5.0,
    ) -> None:
        for what, value in (("subscription", subscription), ("subscriber", subscriber)):
            if not NAME.fullmatch(value):
                raise ValueError(f"the {what} name must be letters and digits only, not {value!r}")
        if consumer is not None and not NAME.fullmatch(consumer):
            raise ValueError(f"the consumer name must be letters and digits only, not {consumer!r}")
        self.client, self.tenant, self.handler = client, tenant, handler
        # Shared: the connections of every replica with this subscriber split the frames by source, each
        # replica under its own stable consumer name (sticky assignment after a reconnect).
        self.apis, self.type_filter, self.shared, self.consumer = list(apis), type_filter, shared, consumer
        self.non_persistent = non_persistent
        self.on_connect = on_connect  # after each connection is up, before its first frame is read
        self.subscription, self.subscriber, self.token_minutes = subscription, subscriber, token_minutes
        self.clock: Clock = clock or SystemClock()
        self.counts = counts
        self.heartbeat_s, self.renew_fraction, self.renew_check_s = heartbeat_s, renew_fraction, renew_check_s
        self.backoff_cap_s, self.refused_retry_s, self.good_after_s = (
            backoff_cap_s,
            refused_retry_s,
            good_after_s,
        )
        self.stats = StreamStats()
        self.last_error: str | None = None
        self.subscription_id: str | None = None
        self.renew_at: float | None = None  # clock.time() at which the current token is replaced
        self._connected = False
        self._log = RateLimitedLog(log, self.clock, 60.0)

    def __repr__(self) -> str:
        return f"AlarmStream({self.tenant!r}, connected={self._connected})"

    @property
    def connected(self) -> bool:
        return self._connected

    def _count(self, event: str) -> None:
        setattr(self.stats, event, getattr(self.stats, event) + 1)
        if self.counts is not None:
            self.counts(event, self.tenant)

    async def run(self) -> None:
        """Consume until cancelled; never raises anything else."""
        attempt = 0
        while True:
            started = self.clock.monotonic()
            frames_before = self.stats.received
            try:
                await self._session()
            except asyncio.CancelledError:
                self._connected = False
                raise
            except _Renew:
                self._connected = False
                self._count("renewals")
                continue
            except C8yError as exc:
                self._connected = False
                self._count("reconnects")
                self.last_error = str(exc)
                if 400 <= exc.status < 500:
                    self.subscription_id = None  # look it up again: it may be gone
                    self._log.warning(
                        f"refused:{self.tenant}",
                        "tenant %s: the platform refused the alarm stream (%s); retrying in %.0f s",
                        self.tenant,
                        exc,
                        self.refused_retry_s,
                    )
                    await asyncio.sleep(self.refused_retry_s)
                    continue
            except Exception as exc:
                self._connected = False
                self._count("reconnects")
                self.last_error = _describe(exc)
                if not isinstance(exc, OSError | aiohttp.ClientError | TimeoutError):
                    log.error("tenant %s: unexpected error in the alarm stream", self.tenant, exc_info=True)
            else:
                self._connected = False
                self._count("reconnects")
                self.last_error = "the platform closed the notification websocket"
            good = (
                self.stats.received > frames_before or self.clock.monotonic() - started >= self.good_after_s
            )
            if good:
                attempt = 0
            delay = backoff_delay(attempt, cap_s=self.backoff_cap_s) * random.uniform(0.5, 1.0)
            attempt += 1
            self._log.warning(
                f"lost:{self.tenant}",
                "tenant %s: alarm stream interrupted (%s); reconnecting in %.1f s",
                self.tenant,
                self.last_error,
                delay,
            )
            await asyncio.sleep(delay)

    async def ensure_subscription(self) -> str:
        """The id of the tenant's alarms subscription, created when there is none (a 409 means a concurrent
        creation: look it up again). Never deleted."""
        if self.subscription_id is not None:
            return self.subscription_id
        found = await self._find_subscription()
        if found is None:
            sub_filter: dict[str, Any] = {"apis": self.apis}
            if self.type_filter is not None:
                sub_filter["typeFilter"] = self.type_filter
            body = {"subscription": self.subscription, "context": "tenant", "subscriptionFilter": sub_filter}
            try:
                created = await self.client.post(SUBSCRIPTIONS, body)
                found = created if isinstance(created, dict) and created.get("id") else None
                if found is not None:
                    log.info("tenant %s: created the alarms subscription %s", self.tenant, self.subscription)
            except C8yError as exc:
                if exc.status != 409:
                    raise
            if found is None:
                found = await self._find_subscription()
            if found is None:
                raise C8yError(
                    404, "subscription", f"subscription {self.subscription} was not found after creating it"
                )
        self.subscription_id = str(found["id"])
        return self.subscription_id

    async def _find_subscription(self) -> dict[str, Any] | None:
        async for sub in self.client.pages(SUBSCRIPTIONS, "subscriptions", {"context": "tenant"}):
            if sub.get("subscription") == self.subscription and sub.get("id"):
                apis = (sub.get("subscriptionFilter") or {}).get("apis")
                if apis not in (self.apis, ["*"], None):
                    log.warning(
                        "tenant %s: subscription %s filters apis %s, not %s",
                        self.tenant,
                        self.subscription,
                        apis,
                        self.apis,
                    )
                return sub
        return None

    async def new_token(self) -> str:
        """A token for the subscriber; sets ``renew_at`` from its ``exp``."""
        body: dict[str, Any] = {
            "subscriber": self.subscriber,
            "subscription": self.subscription,
            "expiresInMinutes": self.token_minutes,
        }
        if self.shared:
            body["shared"] = True
        if self.non_persistent:
            body["nonPersistent"] = True
        answer = await self.client.post(TOKEN, body)
        token = answer.get("token") if isinstance(answer, dict) else None
        if not isinstance(token, str) or not token:
            raise C8yError(200, "token", "the token answer holds no token", method="POST", path=TOKEN)
        self._count("tokens")
        now = self.clock.time()
        self.renew_at = now + renew_after(token, now, self.token_minutes * 60.0, self.renew_fraction)
        return token

    async def _session(self) -> None:
        """One connection: subscription, token, websocket; returns when the platform closes it."""
        await self.ensure_subscription()
        token = await self.new_token()
        try:
            params = {"token": token}
            if self.consumer is not None:
                params["consumer"] = self.consumer
            ws = await self.client.ws_connect(CONSUMER, params, heartbeat_s=self.heartbeat_s)
        except aiohttp.WSServerHandshakeError as exc:
            # An expired or unknown token, or the tenant went away: the next attempt takes a new token.
            raise ConnectionError(f"websocket handshake refused: HTTP {exc.status}") from None
        try:
            self._connected = True
            self.last_error = None
            self._count("connects")
            log.info("tenant %s: consuming subscription %s", self.tenant, self.subscription)
            if self.on_connect is not None:
                await self.on_connect()
            await self._consume(ws)
        finally:
            self._connected = False
            await ws.close()

    async def _consume(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            assert self.renew_at is not None
            remaining = self.renew_at - self.clock.time()
            if remaining <= 0:
                log.info("tenant %s: renewing the notification token", self.tenant)
                raise _Renew
            try:
                msg = await ws.receive(timeout=min(remaining, self.renew_check_s))
            except TimeoutError:
                continue
            if msg.type is aiohttp.WSMsgType.TEXT:
                await self._on_frame(ws, msg.data)
            elif msg.type is aiohttp.WSMsgType.BINARY:
                await self._on_frame(ws, msg.data.decode("utf-8", "replace"))
            elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                return
            elif msg.type is aiohttp.WSMsgType.ERROR:
                raise ConnectionError(f"websocket error: {_describe(msg.data)}")

    async def _on_frame(self, ws: aiohttp.ClientWebSocketResponse, text: str) -> None:
        self._count("received")
        try:
            frame = parse_frame(text)
        except FrameError as exc:
            self._count("malformed")
            self._log.warning(
                f"malformed:{self.tenant}", "tenant %s: malformed frame acknowledged: %s", self.tenant, exc
            )
            if exc.ack_id is not None:
                await ws.send_str(exc.ack_id)
                self._count("acked")
            return
        try:
            await self.handler(frame)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._count("failed")
            self._log.warning(
                f"failed:{self.tenant}",
                "tenant %s: handling %s of alarm %s from %s failed (%s: %s); not acknowledged (redelivered)",
                self.tenant,
                frame.action,
                frame.body.get("id"),
                frame.source_id,
                type(exc).__name__,
                exc,
            )
            log.debug("handler failure", exc_info=True)
            return
        await ws.send_str(frame.ack_id)
        self._count("acked")


def _describe(exc: BaseException | Any) -> str:
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"{type(exc).__name__}: HTTP {exc.status} {exc.message}"
    return redact(f"{type(exc).__name__}: {exc}")
