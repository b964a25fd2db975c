"""HTTP routes for alerts and silences: list open alerts, acknowledge one (stops its repeats and escalation),
create, list and delete silences."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web

from rules.durations import parse_duration
from service.clock import Clock
from service.notify.noise import NoiseControl, Silence

NOISE_KEY: web.AppKey[NoiseControl] = web.AppKey("noise", NoiseControl)
CLOCK_KEY: web.AppKey[Clock] = web.AppKey("clock", Clock)


class BadRequest(ValueError):
    pass


def _time(value: Any, field: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    raise BadRequest(f"{field}: give epoch seconds or an ISO-8601 time, not {value!r}")


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise BadRequest("the body is not JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def _bad(exc: Exception) -> web.Response:
    return web.json_response({"error": str(exc)}, status=400)


async def list_alerts(request: web.Request) -> web.Response:
    noise = request.app[NOISE_KEY]
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
        }
        for n in noise.open_alerts().values()
    ]
    return web.json_response({"alerts": alerts})


async def ack_alert(request: web.Request) -> web.Response:
    noise, clock = request.app[NOISE_KEY], request.app[CLOCK_KEY]
    try:
        body = await _body(request)
    except BadRequest as exc:
        return _bad(exc)
    ack = noise.ack(
        request.match_info["id"], str(body.get("by") or ""), str(body.get("comment") or ""), clock.time()
    )
    if ack is None:
        return web.json_response({"error": "no open alert with this id"}, status=404)
    return web.json_response(
        {
            "alert_id": ack.alert_id,
            "episode": ack.episode,
            "by": ack.by,
            "comment": ack.comment,
            "time": ack.time,
        }
    )


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
        raise BadRequest("give 'end' or 'duration'")
    if end <= start:
        raise BadRequest("end must be after start")
    try:
        return Silence(
            dict(matchers), start, end, str(body.get("comment") or ""), str(body.get("created_by") or "")
        )
    except Exception as exc:  # a bad regular expression
        raise BadRequest(f"matchers: {exc}") from None


async def create_silence(request: web.Request) -> web.Response:
    noise, clock = request.app[NOISE_KEY], request.app[CLOCK_KEY]
    try:
        silence = silence_from(await _body(request), clock.time())
    except BadRequest as exc:
        return _bad(exc)
    noise.silences.add(silence)
    return web.json_response(silence.to_json(), status=201)


async def list_silences(request: web.Request) -> web.Response:
    noise, clock = request.app[NOISE_KEY], request.app[CLOCK_KEY]
    return web.json_response({"silences": [s.to_json() for s in noise.silences.list(clock.time())]})


async def delete_silence(request: web.Request) -> web.Response:
    if request.app[NOISE_KEY].silences.remove(request.match_info["id"]):
        return web.Response(status=204)
    return web.json_response({"error": "no silence with this id"}, status=404)


def add_alert_routes(app: web.Application, noise: NoiseControl, clock: Clock) -> None:
    app[NOISE_KEY] = noise
    app[CLOCK_KEY] = clock
    app.router.add_get("/v1/alerts", list_alerts)
    app.router.add_post("/v1/alerts/{id}/ack", ack_alert)
    app.router.add_get("/v1/silences", list_silences)
    app.router.add_post("/v1/silences", create_silence)
    app.router.add_delete("/v1/silences/{id}", delete_silence)
