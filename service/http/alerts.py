"""HTTP routes for alerts and silences: list open alerts, acknowledge one (stops its repeats and escalation),
create, list and delete silences.

A Cumulocity tenant's users see only their tenant's alerts and silences (a silence they create always
carries the matcher ``tenant``). Acknowledging an alert also tells the alert's origin (``on_ack``: the
platform sets the Cumulocity alarm to ACKNOWLEDGED)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from aiohttp import web

from registrations import jsonbody
from registrations.auth import Principal
from registrations.http import ApiError, read_body
from registrations.problem import problem
from rules.durations import parse_duration
from service.clock import Clock
from service.cluster.replica import ReplicaUnavailable
from service.cluster.replicated_noise import ReplicatedNoise
from service.cluster.replicated_silences import ReplicatedSilences
from service.http.server import principal_of
from service.notify.model import Notification
from service.notify.noise import Ack, NoiseControl, Silence

log = logging.getLogger("tocsin.alerts")
# Passes an acknowledgement on to where the alert came from; returns what to tell the caller about it.
AckHook = Callable[[Notification, Ack], Awaitable[dict[str, Any] | None]]
NOISE_KEY: web.AppKey[NoiseControl] = web.AppKey("noise", NoiseControl)
CLOCK_KEY: web.AppKey[Clock] = web.AppKey("clock", Clock)
ACK_HOOK_KEY: web.AppKey[AckHook] = web.AppKey("ack_hook", AckHook)  # type: ignore[arg-type]
# In a cluster, silences are written through the replicated layer (service/cluster/replicated_silences.py).
SILENCE_WRITER_KEY: web.AppKey[ReplicatedSilences] = web.AppKey("silence_writer", ReplicatedSilences)
# And acknowledgements through service/cluster/replicated_noise.py: one made anywhere holds on every instance.
NOISE_WRITER_KEY: web.AppKey[ReplicatedNoise] = web.AppKey("noise_writer", ReplicatedNoise)


def _visible(principal: Principal, n: Notification) -> bool:
    return principal.tenant is None or n.tenant == principal.tenant


def _own_silence(principal: Principal, s: Silence) -> bool:
    return principal.tenant is None or s.matchers.get("tenant") == principal.tenant


class BadRequest(ValueError):
    """``message`` reads "field: reason" when one field is at fault (the problem document names it)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
        name, sep, reason = message.partition(": ")
        self.details = [{"field": name, "reason": reason}] if sep and " " not in name else None


MAX_EPOCH_S = 253402300799.0  # 9999-12-31T23:59:59Z


def _time(value: Any, field: str) -> float:
    t: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        t = float(value)
    elif isinstance(value, str):
        with contextlib.suppress(ValueError):
            t = datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    if t is not None and 0 <= t <= MAX_EPOCH_S:  # NaN fails both comparisons
        return t
    raise BadRequest(
        f"{field}: give epoch seconds (from 0 to {MAX_EPOCH_S:.0f}) or an ISO-8601 time, not {value!r}"
    )


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = jsonbody.loads(await read_body(request))
    except ApiError as exc:  # too large, or too slow
        raise BadRequest(exc.message, exc.status) from None
    except jsonbody.BodyError as exc:
        raise BadRequest(f"(body): {exc}") from None
    except ValueError:
        raise BadRequest("the body is not JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def _bad(exc: BadRequest) -> web.Response:
    error = {413: "body_too_large", 408: "body_timeout"}.get(exc.status, "invalid_body")
    answer = problem(exc.status, error, str(exc), exc.details)
    if exc.status == 408:
        answer.force_close()
    return answer


def _not_found(message: str) -> web.Response:
    return problem(404, "not_found", message)


async def list_alerts(request: web.Request) -> web.Response:
    noise, principal = request.app[NOISE_KEY], principal_of(request)
    alerts = [
        {
            "id": n.alert_id,
            "episode": n.episode,
            "rule": n.rule,
            "severity": n.severity,
            "labels": dict(n.labels),
            "since": n.created,
            "title": n.title,
            "acknowledged": noise.acks.acked(n),
            "tenant": n.tenant,
        }
        for n in noise.open_alerts().values()
        if _visible(principal, n)
    ]
    return web.json_response({"alerts": alerts})


async def ack_alert(request: web.Request) -> web.Response:
    noise, clock, principal = request.app[NOISE_KEY], request.app[CLOCK_KEY], principal_of(request)
    try:
        body = await _body(request)
    except BadRequest as exc:
        return _bad(exc)
    n = noise.open_alerts().get(request.match_info["id"])
    if n is None or not _visible(principal, n):
        return _not_found("no open alert with this id")
    by = str(body.get("by") or principal.user or principal.name)
    comment, writer = str(body.get("comment") or ""), request.app.get(NOISE_WRITER_KEY)
    try:
        ack = (
            noise.ack(n.alert_id, by, comment, clock.time())
            if writer is None
            else await writer.ack(n.alert_id, by, comment, clock.time())
        )
    except ReplicaUnavailable as exc:
        log.warning("acknowledgement not confirmed by the cluster: %s", exc)
        return web.json_response(
            {"error": "store_unavailable", "message": f"not confirmed by the cluster: {exc}"}, status=503
        )
    if ack is None:
        return _not_found("no open alert with this id")
    answer: dict[str, Any] = {
        "alert_id": ack.alert_id,
        "episode": ack.episode,
        "by": ack.by,
        "comment": ack.comment,
        "time": ack.time,
    }
    hook = request.app.get(ACK_HOOK_KEY)
    if hook is not None:
        try:
            origin = await hook(n, ack)
        except Exception as exc:  # the acknowledgement stands here; say that the origin did not take it
            log.warning("passing the acknowledgement of alert %s on failed: %s", n.alert_id, exc)
            origin = {"acknowledged": False, "error": str(exc)}
        if origin is not None:
            answer["origin"] = origin
    return web.json_response(answer)


def silence_from(body: dict[str, Any], now: float) -> Silence:
    matchers = body.get("matchers")
    if not isinstance(matchers, dict) or not matchers:
        raise BadRequest("matchers: give an object of label (or rule, severity, alert_id) to value")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in matchers.items()):
        raise BadRequest("matchers: names and values must be text")
    start = _time(body["start"], "start") if "start" in body else now
    if "end" in body:
        end = _time(body["end"], "end")
    elif "duration" in body:
        try:
            end = start + parse_duration(body["duration"])
        except ValueError as exc:
            raise BadRequest(f"duration: {exc}") from None
    else:
        raise BadRequest("duration: give 'end' or 'duration'")
    if end <= start:
        raise BadRequest("end: must be after start")
    try:
        return Silence(
            dict(matchers), start, end, str(body.get("comment") or ""), str(body.get("created_by") or "")
        )
    except Exception as exc:  # a bad regular expression
        raise BadRequest(f"matchers: {exc}") from None


async def create_silence(request: web.Request) -> web.Response:
    noise, clock, principal = request.app[NOISE_KEY], request.app[CLOCK_KEY], principal_of(request)
    try:
        body = await _body(request)
        if principal.tenant is not None:
            matchers = body.get("matchers")
            if isinstance(matchers, dict):
                if matchers.get("tenant", principal.tenant) != principal.tenant:
                    raise BadRequest(f"matchers.tenant: you may only silence tenant {principal.tenant}")
                body["matchers"] = {**matchers, "tenant": principal.tenant}
        silence = silence_from(body, clock.time())
    except BadRequest as exc:
        return _bad(exc)
    writer = request.app.get(SILENCE_WRITER_KEY)
    if writer is None:
        noise.silences.add(silence)
    else:
        try:
            await writer.add(silence)
        except ReplicaUnavailable as exc:
            log.warning("silence not confirmed by the cluster: %s", exc)
            return problem(503, "store_unavailable", f"not confirmed by the cluster: {exc}")
    return web.json_response(silence.to_json(), status=201)


async def list_silences(request: web.Request) -> web.Response:
    noise, clock, principal = request.app[NOISE_KEY], request.app[CLOCK_KEY], principal_of(request)
    found = [s.to_json() for s in noise.silences.list(clock.time()) if _own_silence(principal, s)]
    return web.json_response({"silences": found})


async def delete_silence(request: web.Request) -> web.Response:
    silences, principal = request.app[NOISE_KEY].silences, principal_of(request)
    found = silences.get(request.match_info["id"])
    now = request.app[CLOCK_KEY].time()
    writer = request.app.get(SILENCE_WRITER_KEY)
    if found is not None and _own_silence(principal, found):
        try:
            removed = silences.remove(found.id, now) if writer is None else await writer.remove(found.id)
        except ReplicaUnavailable as exc:
            log.warning("silence deletion not confirmed by the cluster: %s", exc)
            return problem(503, "store_unavailable", f"not confirmed by the cluster: {exc}")
        if removed:
            return web.Response(status=204)
    return _not_found("no silence with this id")


def add_alert_routes(
    app: web.Application,
    noise: NoiseControl,
    clock: Clock,
    on_ack: AckHook | None = None,
    silence_writer: ReplicatedSilences | None = None,
    noise_writer: ReplicatedNoise | None = None,
) -> None:
    app[NOISE_KEY] = noise
    if silence_writer is not None:
        app[SILENCE_WRITER_KEY] = silence_writer
    if noise_writer is not None:
        app[NOISE_WRITER_KEY] = noise_writer
    app[CLOCK_KEY] = clock
    if on_ack is not None:
        app[ACK_HOOK_KEY] = on_ack
    app.router.add_get("/v1/alerts", list_alerts)
    app.router.add_post("/v1/alerts/{id}/ack", ack_alert)
    app.router.add_get("/v1/silences", list_silences)
    app.router.add_post("/v1/silences", create_silence)
    app.router.add_delete("/v1/silences/{id}", delete_silence)
