"""``POST /v1/push`` (native) and ``POST /notification`` (Cumulocity push gateway): a notification to an
audience, handed to the notify pipeline. Answers at once (202 with the notification id); fan-out runs in the
background, at ``schedule_at`` when given.

Scheduled pushes wait in memory: a restart before their time loses them (the durable outbox is the
push-delivery issue's).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field, field_validator, model_validator

from registrations.auth import Authenticator, Principal
from registrations.http import ApiError, RejectCounter, guarded, parse, timestamp
from registrations.http import check_expression as checked
from registrations.model import Audience
from registrations.schemas import MAX_TAGS, AudienceIn, C8yStrict, Strict
from service.clock import Clock
from service.cumulocity.client import C8yError
from service.notify.model import Notification
from service.notify.options import PushOptions, PushType
from service.notify.pipeline import DEFAULT_EXPIRY_S, Pipeline
from service.providers import plugins

log = logging.getLogger("tocsin.push")
MAX_SCHEDULE_S = 30 * 86400
MAX_EXPIRY_S = 28 * 86400  # APNs and FCM keep a message at most about four weeks


class LocaleText(Strict):
    title: str | None = Field(default=None, min_length=1, max_length=1000)
    body: str | None = Field(default=None, max_length=4000)


class PushFields(BaseModel):
    """What a notification can say beyond its title and text, spelled as in rules and mapped as the spec
    maps them (APNs headers and ``aps``; FCM ``android`` and ``apns`` blocks). One definition for
    ``POST /v1/push``, the Cumulocity ``POST /notification`` and the flags of ``tocsin push``."""

    locales: dict[str, LocaleText] = Field(
        default_factory=dict,
        max_length=50,
        description="text per locale, picked by the registration's locale (de-AT, then de, then the"
        " default title and body)",
    )
    sound: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="aps.sound and the Android sound, e.g. bell.caf",
    )
    badge: int | None = Field(
        default=None, ge=0, le=1_000_000, description="aps.badge: the number on the app icon (0 clears it)"
    )
    badge_increment: bool = Field(
        default=False, description="aps.badge: the registration's stored count plus one"
    )
    priority: Literal["high", "normal", "low"] | None = Field(
        default=None,
        description="apns-priority 10, 5 or 1 and Android HIGH or NORMAL (default: high for alerts)",
    )
    collapse_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="apns-collapse-id and the Android collapse key and tag: a newer push with the same key"
        " replaces the older one on the phone (default: the notification id)",
    )
    push_type: PushType = Field(
        default="alert", description="apns-push-type; background is data only, at priority 5"
    )
    content_available: bool = Field(
        default=False, description="aps.content-available: 1, the app is woken to fetch content"
    )
    mutable_content: bool = Field(
        default=False, description="aps.mutable-content: 1, the app's service extension may change it"
    )
    interruption_level: Literal["passive", "active", "time-sensitive", "critical"] | None = Field(
        default=None, description="aps.interruption-level: whether it breaks through Focus"
    )
    thread_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="aps.thread-id: notifications with the same one are grouped",
    )
    category: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="aps.category: which actions the app offers with it, e.g. DOORBELL",
    )

    @field_validator("collapse_key")
    @classmethod
    def _collapse_bytes(cls, v: str | None) -> str | None:
        if v is not None and len(v.encode()) > 64:
            raise ValueError("at most 64 bytes (APNs apns-collapse-id)")
        return v

    def options(self) -> PushOptions:
        return PushOptions(
            push_type=self.push_type,
            priority=self.priority,
            sound=self.sound,
            badge=self.badge,
            badge_increment=self.badge_increment,
            collapse_key=self.collapse_key,
            content_available=self.content_available,
            mutable_content=self.mutable_content,
            interruption_level=self.interruption_level,
            thread_id=self.thread_id,
            category=self.category,
        )

    def texts(self, title: str, body: str) -> dict[str, tuple[str, str]]:
        """Title and text per locale; what a locale leaves out is the default's."""
        return {
            k: (v.title or title, v.body if v.body is not None else body) for k, v in self.locales.items()
        }


class PushIn(Strict, PushFields):
    """``POST /v1/push``."""

    audience: AudienceIn
    title: str = Field(min_length=1, max_length=1000)
    body: str = Field(default="", max_length=4000)
    data: dict[str, str] = Field(
        default_factory=dict, max_length=50, description="key/values for the app: FCM data, APNs custom keys"
    )
    severity: Literal["info", "warning", "minor", "major", "critical"] = Field(
        default="info", description="the notification's severity (reports, webhooks, the console)"
    )
    schedule_at: dt.datetime | None = Field(
        default=None, description="when to send: ISO 8601 with zone (default now), e.g. 2026-01-01T08:00:00Z"
    )
    expires_at: dt.datetime | None = Field(
        default=None, description="not delivered after: ISO 8601 with zone (default 1 h after sending)"
    )

    @model_validator(mode="after")
    def _zones(self) -> PushIn:
        for name in ("schedule_at", "expires_at"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise ValueError(f"{name} needs a time zone (e.g. 2026-01-01T08:00:00Z)")
        return self


class C8yReceiver(C8yStrict):
    userIds: list[str] = Field(default_factory=list, max_length=10_000)
    deviceTokens: list[str] = Field(default_factory=list, max_length=10_000)


class C8yBody(C8yStrict):
    alarmId: str = Field(min_length=1, max_length=255)


class C8yMessage(C8yStrict, PushFields):
    """The push gateway's message, and the options of ``POST /v1/push`` beside its title."""

    title: str = Field(min_length=1, max_length=1000)
    body: C8yBody


class C8yNotification(C8yStrict):
    """Cumulocity push gateway ``POST /notification``."""

    receiver: C8yReceiver | None = None
    tags: list[str] = Field(default_factory=list, max_length=MAX_TAGS)
    message: C8yMessage


def audience_of(a: AudienceIn) -> Audience:
    return Audience(
        users=tuple(a.users),
        tokens=tuple(a.tokens),
        expression=checked(a.tags, "audience.tags") if a.tags else None,
        channels=tuple(a.channels),
        platforms=tuple(a.platforms),
        apps=tuple(a.apps),
    )


def c8y_audience(body: C8yNotification) -> Audience:
    """Receivers select (users, tokens); ``tags`` (any of, each a tag expression) filter them, or with no
    receiver select on their own; neither is a broadcast, as in the gateway."""
    exprs = [checked(t, f"tags[{i}]") for i, t in enumerate(body.tags)]
    either = " || ".join(f"({e})" for e in exprs) or None
    receiver = body.receiver
    if receiver is not None and (receiver.userIds or receiver.deviceTokens):
        return Audience(users=tuple(receiver.userIds), tokens=tuple(receiver.deviceTokens), where=either)
    if either:
        return Audience(expression=either)
    return Audience(platforms=tuple(plugins.c8y_providers().values()))  # the gateway's phones, not the log


class PushApi:
    def __init__(
        self,
        pipeline: Pipeline,
        auth: Authenticator,
        clock: Clock,
        on_reject: RejectCounter = lambda r, s: None,
    ) -> None:
        self.pipeline, self.auth, self.clock, self.on_reject = pipeline, auth, clock, on_reject
        # A Cumulocity tenant's alarm by id (CumulocityRuntime.alarm), when running on the platform.
        self.load_alarm: Callable[[str, str], Awaitable[Mapping[str, Any] | None]] | None = None
        self._tasks: set[asyncio.Task[int]] = set()
        self._timers: set[asyncio.TimerHandle] = set()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/push", guarded("push", "native", self.on_reject)(self.push)),
            web.post(
                "/notification", guarded("c8y_notification", "c8y", self.on_reject)(self.c8y_notification)
            ),
        ]

    async def _admin(self, request: web.Request) -> Principal:
        """Senders are admins; a Cumulocity tenant's admins send to their own tenant's registrations."""
        principal = await self.auth.authenticate(request)
        if not principal.admin:
            raise ApiError(403, "forbidden", "sending needs an admin key or role")
        return principal

    async def push(self, request: web.Request) -> web.Response:
        principal = await self._admin(request)
        body = await parse(request, PushIn)
        now = self.clock.time()
        audience = audience_of(body.audience)
        at = body.schedule_at.timestamp() if body.schedule_at else now
        expires = body.expires_at.timestamp() if body.expires_at else max(at, now) + DEFAULT_EXPIRY_S
        if at > now + MAX_SCHEDULE_S:
            raise ApiError(
                400,
                "invalid_body",
                "schedule_at: at most 30 days ahead",
                [{"field": "schedule_at", "reason": "at most 30 days ahead"}],
            )
        if expires <= max(at, now) or expires > max(at, now) + MAX_EXPIRY_S:
            reason = "must be after schedule_at (or now) and at most 28 days after it"
            raise ApiError(
                400, "invalid_body", f"expires_at: {reason}", [{"field": "expires_at", "reason": reason}]
            )
        n = self.notification(audience, body.title, body.body, dict(body.data), body.severity, now, expires)
        n.options, n.texts, n.tenant = body.options(), body.texts(body.title, body.body), principal.tenant
        self.submit(n, at)
        scheduled = timestamp(at) if at > now else None
        return web.json_response(
            {"id": n.nid, "scheduled_for": scheduled, "expires": timestamp(expires)}, status=202
        )

    async def c8y_notification(self, request: web.Request) -> web.Response:
        """As the push gateway: the alarm is loaded for its text (the body) and source (``sourceId``), the
        sound is ``default`` unless given; the options of ``POST /v1/push`` may be given beside the title."""
        principal = await self._admin(request)
        body = await parse(request, C8yNotification)
        message = body.message
        now = self.clock.time()
        alarm_id = message.body.alarmId
        text, data = "", {"alarmId": alarm_id}
        if principal.tenant is not None and self.load_alarm is not None:
            try:
                alarm = await self.load_alarm(principal.tenant, alarm_id)
            except C8yError as exc:
                log.warning("tenant %s: cannot load alarm %s: %s", principal.tenant, alarm_id, exc)
                raise ApiError(503, "unavailable", f"cannot load alarm {alarm_id}: {exc.message}") from None
            if alarm is None:
                reason = f"message.body.alarmId: the tenant has no alarm {alarm_id}"
                raise ApiError(400, "invalid_body", reason)
            text = str(alarm.get("text") or "")
            source = alarm.get("source")
            if isinstance(source, dict) and source.get("id") is not None:
                data["sourceId"] = str(source["id"])
        n = self.notification(
            c8y_audience(body), message.title, text, data, "info", now, now + DEFAULT_EXPIRY_S
        )
        options = message.options()
        if options.sound is None:  # the gateway's templates: aps.sound "default"
            options = dataclasses.replace(options, sound="default")
        n.options, n.texts, n.tenant = options, message.texts(message.title, text), principal.tenant
        self.submit(n, now)
        return web.Response(status=204)

    def notification(
        self,
        audience: Audience,
        title: str,
        text: str,
        data: dict[str, str],
        severity: str,
        now: float,
        expires: float,
    ) -> Notification:
        nid = uuid.uuid4().hex
        return Notification(
            nid=nid,
            alert_id=nid,
            episode=nid,
            rule="api:push",
            origin="api",
            state="firing",
            severity=severity,
            title=title,
            body=text,
            labels={},
            audience=audience,
            created=now,
            expires=expires,
            data=data,
        )

    def submit(self, n: Notification, at: float) -> None:
        delay = at - self.clock.time()
        if delay > 0:
            loop = asyncio.get_running_loop()

            def fire() -> None:
                self._timers.discard(handle)
                self._start(n)

            handle = loop.call_later(delay, fire)
            self._timers.add(handle)
        else:
            self._start(n)

    def _start(self, n: Notification) -> None:
        task = asyncio.create_task(self._send(n), name=f"push-{n.nid}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, n: Notification) -> int:
        try:
            count = await self.pipeline.submit(n, self.clock.time())
            log.info("push %s handed %d deliveries to the providers", n.nid, count)
            return count
        except Exception:
            log.exception("push %s failed", n.nid)
            return 0

    async def close(self) -> None:
        for handle in self._timers:
            handle.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
