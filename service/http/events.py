"""``POST /v1/events``: the HTTP source, for devices and gateways that speak HTTP rather than MQTT.

The same ``Event`` as an MQTT message on that topic, through the same sink, with the same guarantee: the
answer (202) comes only once the events and everything they caused are durable. A 5xx means nothing was
taken for sure, so the sender sends again; an event with its own ``id`` is then recognised.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, JsonValue, StringConstraints, model_validator

from registrations.auth import Authenticator
from registrations.http import ApiError, RejectCounter, guarded, parse
from rules.event import Event, EventIdentity, device_of
from service.clock import Clock
from service.sources.base import EventSink

MAX_EVENTS = 1000
# A topic as MQTT allows one to be published: no wildcards, no NUL, not empty.
Topic = Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=r"^[^#+\x00]+$")]


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    topic: Topic
    payload: JsonValue = None
    id: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = Field(
        None, description="the event's own id: a repeat of it on the same topic is a duplicate"
    )
    device: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None


class EventsIn(BaseModel):
    """One event, or ``{"events": [...]}`` with up to 1,000."""

    model_config = ConfigDict(extra="forbid")
    events: list[EventIn] = Field(min_length=1, max_length=MAX_EVENTS)

    @model_validator(mode="before")
    @classmethod
    def one_or_many(cls, value: Any) -> Any:
        if isinstance(value, dict) and "events" not in value:
            return {"events": [value]}
        return value


class EventsApi:
    def __init__(
        self,
        sink: EventSink,
        auth: Authenticator,
        clock: Clock,
        on_reject: RejectCounter = lambda r, s: None,
        id_field: str | None = None,
    ) -> None:
        self.sink, self.auth, self.clock, self.on_reject = sink, auth, clock, on_reject
        self.identity = EventIdentity(id_field)

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/events", guarded("events", "native", self.on_reject)(self.post))]

    async def post(self, request: web.Request) -> web.Response:
        principal = await self.auth.authenticate(request)  # an admin key, or an app's key
        body = await parse(request, EventsIn)
        ids = []
        for e in body.events:
            now = self.clock.time()
            raw = json.dumps(e.payload, separators=(",", ":"), sort_keys=True).encode()
            eid = e.id if e.id is not None else self.identity(e.topic, raw, e.payload, now)
            attributes = {"app": principal.app} if principal.app else {}
            event = Event(eid, "http", e.topic, e.device or device_of(e.payload), now, e.payload, attributes)
            await self.sink.handle(event)
            ids.append(eid)
        try:
            await self.sink.commit()
        except Exception as exc:
            raise ApiError(
                503, "not_durable", f"the events could not be written ({exc}); send them again"
            ) from None
        return web.json_response({"accepted": len(ids), "ids": ids}, status=202)
