"""The operator's web console at ``/ui/`` and the JSON it reads under ``/ui/api/``.

The page (static HTML, JS and CSS in ``service/http/static/``, no build step) calls the native API where it
has what the page shows (``/v1/registrations``, ``/v1/silences``, ``/v1/alerts/{id}/ack``,
``/v1/notifications/{id}``, ``/v1/cluster``) and these routes for views that join several parts: alerts in
every state, silences active and expired with a preview, recent notifications, rules, the chart, and a
server-sent event stream (``GET /ui/api/stream``) that says when alerts or notifications changed.

Every ``/ui/api/`` route needs what the operator routes need: an admin key (Bearer, X-API-Key or Basic), or
on Cumulocity the platform user's credentials (an admin role). The static files need none.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from registrations import jsonbody
from registrations.auth import AuthError, Principal
from registrations.http import ApiError, read_body
from registrations.model import PROVIDERS
from registrations.problem import problem
from rules.durations import parse_duration
from rules.engine import RuleEngine
from rules.event import Event
from rules.replay import event_from_record
from service.notify.model import Notification
from service.notify.noise import Silence
from service.outbox import decode

if TYPE_CHECKING:
    from service.app import Service

STATIC = Path(__file__).parent / "static"
STATIC_FILES = frozenset({"console.js", "console.css", "docs.js"})
SAMPLE_S = 1.0  # how often the console's sampler looks at alerts and counters
CHART_MINUTES = 60
MAX_TEST_EVENTS = 10_000


@dataclass(slots=True)
class ReloadRecord:
    time: float
    outcome: str  # loaded, refused
    rules: int
    errors: list[str] = field(default_factory=list)


class Sampler:
    """Once a second: which alerts resolved since the last look (the engine forgets them), a version number
    that changes when alerts or notifications changed (for the stream), and per-minute counts of finished
    deliveries and suppressions by outcome (the chart), all bounded."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.resolved: deque[dict[str, Any]] = deque(maxlen=200)
        self.version = 0
        self._last_alerts: dict[str, dict[str, Any]] = {}
        self._last_digest = ""
        self._counts: dict[str, float] = {}
        self.minutes: deque[tuple[int, dict[str, float]]] = deque(maxlen=CHART_MINUTES)
        self.changed = asyncio.Event()

    def totals(self) -> dict[str, float]:
        m = self.service.metrics
        out: dict[str, float] = {}
        for (_, outcome), v in m.notifications.values.items():
            out[outcome] = out.get(outcome, 0.0) + v
        suppressed = m.suppressed.total()
        if suppressed:
            out["suppressed"] = suppressed
        return out

    def sample(self, now: float) -> None:
        alerts = {a["id"]: a for a in open_alerts(self.service)}
        for aid, a in self._last_alerts.items():
            if aid not in alerts and a["state"] == "firing":
                self.resolved.append({**a, "state": "resolved", "resolved_at": now})
        self._last_alerts = alerts
        totals = self.totals()
        minute = int(now // 60)
        delta = {k: v - self._counts.get(k, 0.0) for k, v in totals.items() if v != self._counts.get(k, 0.0)}
        self._counts = totals
        if not self.minutes or self.minutes[-1][0] != minute:
            self.minutes.append((minute, {}))
        bucket = self.minutes[-1][1]
        for k, v in delta.items():
            bucket[k] = bucket.get(k, 0.0) + v
        digest = json.dumps(
            [sorted(alerts), [a["acknowledged"] for a in alerts.values()], totals, len(self.resolved)],
            default=str,
        )
        if digest != self._last_digest:
            self._last_digest = digest
            self.version += 1
            self.changed.set()
            self.changed = asyncio.Event()

    def chart(self, now: float) -> dict[str, Any]:
        minute = int(now // 60)
        by_minute = dict(self.minutes)
        series = [by_minute.get(m, {}) for m in range(minute - CHART_MINUTES + 1, minute + 1)]
        outcomes = sorted({k for s in series for k in s})
        return {
            "minute_start": (minute - CHART_MINUTES + 1) * 60,
            "outcomes": outcomes,
            "series": {o: [int(s.get(o, 0)) for s in series] for o in outcomes},
        }

    async def run(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # a view must never stop the service
                self.sample(self.service.clock.time())
            await asyncio.sleep(SAMPLE_S)


def _alert_json(n: Notification, state: str, acked: bool, service: Service) -> dict[str, Any]:
    silence = service.noise.silences.silencing(n, service.clock.time())
    return {
        "id": n.alert_id,
        "episode": n.episode,
        "rule": n.rule,
        "state": state,
        "severity": n.severity,
        "labels": dict(n.labels),
        "since": n.created,
        "title": n.title,
        "acknowledged": acked,
        "tenant": n.tenant,
        "silenced_by": silence.id if silence is not None else None,
    }


def open_alerts(service: Service) -> list[dict[str, Any]]:
    """Firing alerts (what noise control holds open: acknowledgeable) and pending ones (the engine's)."""
    noise = service.noise
    out = [_alert_json(n, "firing", noise.acks.acked(n), service) for n in noise.open_alerts().values()]
    rules = {c.id: c for c in service.ruleset.rules}
    for aid, a in service.state.alerts.items():
        if a.status != "pending" or aid in noise.open_alerts():
            continue
        c = rules.get(a.rule)
        out.append(
            {
                "id": aid,
                "episode": a.episode,
                "rule": a.rule,
                "state": "pending",
                "severity": c.rule.severity if c is not None else "info",
                "labels": dict(a.labels),
                "since": a.since,
                "title": c.rule.description if c is not None and c.rule.description else a.rule,
                "acknowledged": False,
                "tenant": a.labels.get("tenant"),
                "silenced_by": None,
                "fires_at": a.deadline,
            }
        )
    return out


class Console:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.sampler = Sampler(service)

    # -- wiring ---------------------------------------------------------------------------------------------
    def add_to(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/ui", self.redirect)
        r.add_get("/ui/", self.page)
        r.add_get("/ui/static/{name}", self.static)
        r.add_get("/docs", self.docs)
        r.add_get("/ui/api/me", self.guarded(self.me))
        r.add_get("/ui/api/alerts", self.guarded(self.alerts))
        r.add_get("/ui/api/silences", self.guarded(self.silences))
        r.add_post("/ui/api/silences/preview", self.guarded(self.preview))
        r.add_get("/ui/api/notifications", self.guarded(self.notifications))
        r.add_post("/ui/api/registrations/{provider}/{token}/disable", self.guarded(self.disable))
        r.add_get("/ui/api/rules", self.guarded(self.rules))
        r.add_post("/ui/api/rules/test", self.guarded(self.test_rules))
        r.add_get("/ui/api/chart", self.guarded(self.chart))
        r.add_get("/ui/api/stream", self.guarded(self.stream))
        app.cleanup_ctx.append(self._sampling)

    async def _sampling(self, app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(self.sampler.run(), name="console-sampler")
        yield
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    def guarded(self, handler: Callable[[web.Request, Principal], Any]) -> Callable[[web.Request], Any]:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            try:
                principal = await self.service.auth.authenticate(request)
            except AuthError as exc:
                return problem(exc.status, "unauthorized" if exc.status == 401 else "forbidden", exc.message)
            if not principal.admin:
                return problem(403, "forbidden", "the console needs an admin key or an admin role")
            result: web.StreamResponse = await handler(request, principal)
            return result

        return wrapped

    async def redirect(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/ui/")

    async def page(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def docs(self, request: web.Request) -> web.StreamResponse:
        """The OpenAPI document as a page to browse (rendered in the browser from /openapi.json)."""
        return web.FileResponse(STATIC / "docs.html", headers={"Cache-Control": "no-cache"})

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in STATIC_FILES:  # only the console's own files: no path from the request reaches disk
            return problem(404, "not_found", f"no file {name}")
        return web.FileResponse(STATIC / name, headers={"Cache-Control": "no-cache"})

    # -- views ----------------------------------------------------------------------------------------------
    async def me(self, request: web.Request, principal: Principal) -> web.Response:
        s = self.service
        return web.json_response(
            {
                "name": principal.name,
                "user": principal.user,
                "tenant": principal.tenant,
                "instance": s.config.instance.id,
                "version": s.health().get("version"),
                "providers": list(PROVIDERS),
            }
        )

    async def alerts(self, request: web.Request, principal: Principal) -> web.Response:
        alerts = open_alerts(self.service) + list(reversed(self.sampler.resolved))
        acks = self.service.noise.acks
        for a in alerts:
            ack = acks._acks.get(a["id"])
            if a["acknowledged"] and ack is not None:
                a["ack"] = {"by": ack.by, "comment": ack.comment, "time": ack.time}
        state = request.query.get("state")
        if state:
            alerts = [a for a in alerts if a["state"] == state]
        return web.json_response({"alerts": alerts, "version": self.sampler.version})

    async def silences(self, request: web.Request, principal: Principal) -> web.Response:
        silences, now = self.service.noise.silences, self.service.clock.time()
        active = [s.to_json() for s in silences.list(now)]
        expired = [{**s.to_json(), "expired_at": at} for s, at in reversed(silences.expired)]
        return web.json_response({"active": active, "expired": expired})

    async def preview(self, request: web.Request, principal: Principal) -> web.Response:
        """Which open alerts a silence with these matchers would mute now."""
        try:
            body = jsonbody.loads(await read_body(request))
            matchers = body["matchers"]
            if not isinstance(matchers, dict) or not matchers:
                raise ValueError("matchers: give an object of label (or rule, severity) to value")
            now = self.service.clock.time()  # a preview: what it would mute now
            probe = Silence({str(k): str(v) for k, v in matchers.items()}, now - 1.0, now + 86400.0)
        except ApiError as exc:  # too large, too slow
            return exc.response("native")
        except (ValueError, KeyError, TypeError) as exc:
            return problem(400, "invalid_body", str(exc) or "give {'matchers': {...}}")
        except Exception as exc:  # a bad regular expression
            return problem(400, "invalid_body", f"matchers: {exc}")
        muted = [
            _alert_json(n, "firing", self.service.noise.acks.acked(n), self.service)
            for n in self.service.noise.open_alerts().values()
            if probe.matches(n)
        ]
        return web.json_response({"alerts": muted})

    async def notifications(self, request: web.Request, principal: Principal) -> web.Response:
        """The latest notifications with their delivery totals, and the latest suppressions."""
        try:
            limit = max(1, min(500, int(request.query.get("limit", "50"))))
        except ValueError:
            return problem(
                400,
                "invalid_query",
                "limit: a whole number from 1 to 500",
                [{"field": "limit", "reason": "a whole number from 1 to 500"}],
            )
        outbox = self.service.outbox
        await outbox.settle()
        rows = outbox.recent(limit)
        items = []
        for nid, body in rows:
            n = decode(body)
            report = outbox.report(nid) or {}
            items.append(
                {
                    "id": nid,
                    "created": n.created,
                    "rule": n.rule,
                    "state": n.state,
                    "severity": n.severity,
                    "title": n.title,
                    "targeted": report.get("targeted", 0),
                    "delivered": report.get("delivered", 0),
                    "pending": report.get("pending", 0),
                    "failed": report.get("failed", {}),
                }
            )
        held = [s.to_json() for s in reversed(self.service.explainer.recent)][:limit]
        return web.json_response({"notifications": items, "suppressed": held})

    async def disable(self, request: web.Request, principal: Principal) -> web.Response:
        provider, token = request.match_info["provider"], request.match_info["token"]
        registry = self.service.stores.registry(None)
        found = await registry.store.get(provider, token) if registry is not None else None
        if registry is None or found is None:
            return problem(404, "not_found", f"no registration {provider}/{token}")
        now = self.service.clock.time()
        saved = await registry.writer.upsert(replace(found, state="invalid", state_since=now))
        return web.json_response({"provider": saved.provider, "token": saved.token, "state": saved.state})

    async def rules(self, request: web.Request, principal: Principal) -> web.Response:
        s = self.service
        matches: dict[str, dict[str, int]] = {}
        for (rule, state), v in s.metrics.rule_matches.values.items():
            matches.setdefault(rule, {})[state] = int(v)
        rules = [
            {
                "id": c.id,
                "kind": c.kind,
                "role": c.role,
                "topic": c.rule.topic,
                "severity": c.rule.severity,
                "description": c.rule.description,
                "last_fired": s.pipeline.last_fired.get(c.id),
                "transitions": matches.get(c.id, {}),
            }
            for c in s.ruleset.rules
            if c.role == "main"
        ]
        reload = s.last_reload
        return web.json_response(
            {
                "rules": rules,
                "paths": [str(p) for p in s.rule_paths()],
                "last_reload": None
                if reload is None
                else {
                    "time": reload.time,
                    "outcome": reload.outcome,
                    "rules": reload.rules,
                    "errors": reload.errors,
                },
            }
        )

    async def test_rules(self, request: web.Request, principal: Principal) -> web.Response:
        """Pasted events (JSON Lines, as for ``tocsin rules test``) through the loaded rules, on simulated
        time, with what the noise stages held back and why. ``rule`` limits it to one rule."""
        from service.cli.rules import explained

        try:
            body = jsonbody.loads(await read_body(request, 1024 * 1024))
            lines = str(body.get("events", "")).splitlines()
            until = parse_duration(body["until"]) if body.get("until") else 0.0
        except ApiError as exc:  # too large, too slow
            return exc.response("native")
        except (ValueError, TypeError, AttributeError) as exc:
            return problem(400, "invalid_body", f"give {{'events': 'JSON Lines', 'until'?: '10m'}}: {exc}")
        events: list[Event] = []
        for number, line in enumerate(lines, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if len(events) >= MAX_TEST_EVENTS:
                return problem(400, "invalid_body", f"at most {MAX_TEST_EVENTS} events")
            try:
                events.append(event_from_record(json.loads(line)))
            except ValueError as exc:
                return problem(
                    400,
                    "invalid_body",
                    f"events line {number}: {exc}",
                    [{"field": "events", "reason": str(exc)}],
                )
        events.sort(key=lambda e: e.time)
        ruleset = self.service.ruleset
        only = body.get("rule")
        if only:
            from rules.engine import RuleSet
            from rules.topics import TopicIndex

            picked = tuple(c for c in ruleset.rules if c.id == only)
            if not picked:
                return problem(
                    400,
                    "invalid_body",
                    f"rule: no loaded rule {only!r}",
                    [{"field": "rule", "reason": "not loaded"}],
                )
            index: TopicIndex[Any] = TopicIndex()
            for c in picked:
                index.add(c.filter, c)
            ruleset = RuleSet(picked, index)
        end = events[-1].time + until if events else None
        out = [record for record in explained(RuleEngine(ruleset), events, end)]
        return web.json_response({"events": len(events), "results": out})

    async def chart(self, request: web.Request, principal: Principal) -> web.Response:
        return web.json_response(self.sampler.chart(self.service.clock.time()))

    async def stream(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        """Server-sent events: ``changed`` (data: the version) whenever alerts, acknowledgements or counters
        changed, and a comment every 15 s so proxies keep the connection."""
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        seen = -1
        try:
            while True:
                if self.sampler.version != seen:
                    seen = self.sampler.version
                    await response.write(f"event: changed\ndata: {seen}\n\n".encode())
                waiter = self.sampler.changed
                try:
                    async with asyncio.timeout(15):
                        await waiter.wait()
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
        except ConnectionResetError:
            pass
        return response


def _op(summary: str, extra: dict[str, Any] | None = None, public: bool = False) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {"description": "OK"}}
    if not public:
        responses.update(
            {"401": {"description": "No or a wrong key"}, "403": {"description": "Not an admin"}}
        )
    op: dict[str, Any] = {"summary": summary, "responses": {**responses, **(extra or {})}}
    if public:
        op["security"] = []
    return op


_BAD = {"400": {"description": "Bad body or query (application/problem+json)"}}
_REG = [
    {"name": "provider", "in": "path", "required": True, "schema": {"type": "string"}},
    {"name": "token", "in": "path", "required": True, "schema": {"type": "string"}},
]
# The console's paths, for /openapi.json (service/http/openapi.py merges them in).
CONSOLE_PATHS: dict[str, Any] = {
    "/ui": {"get": _op("Redirects to /ui/", {"302": {"description": "To /ui/"}}, public=True)},
    "/ui/": {"get": _op("The web console (HTML; signs in with an API key)", public=True)},
    "/ui/static/{name}": {
        "get": {
            **_op(
                "The console's script and style sheet", {"404": {"description": "No such file"}}, public=True
            ),
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
        }
    },
    "/docs": {"get": _op("This API documented as a page to browse", public=True)},
    "/ui/api/me": {"get": _op("Who is signed in, and this instance")},
    "/ui/api/alerts": {
        "get": {
            **_op("Alerts in every state: firing, pending, recently resolved (state= filters)"),
            "parameters": [
                {"name": "state", "in": "query", "schema": {"enum": ["firing", "pending", "resolved"]}}
            ],
        }
    },
    "/ui/api/silences": {"get": _op("Silences: active, and recently expired with when")},
    "/ui/api/silences/preview": {"post": _op("The firing alerts that these matchers would mute now", _BAD)},
    "/ui/api/notifications": {
        "get": {
            **_op("The latest notifications with delivery totals, and the latest suppressions", _BAD),
            "parameters": [{"name": "limit", "in": "query", "schema": {"type": "integer", "maximum": 500}}],
        }
    },
    "/ui/api/registrations/{provider}/{token}/disable": {
        "post": {
            **_op("Disable a registration (state invalid)", {"404": {"description": "Unknown"}}),
            "parameters": _REG,
        }
    },
    "/ui/api/rules": {
        "get": _op("Loaded rules with last fired and transitions; the last reload and its errors")
    },
    "/ui/api/rules/test": {
        "post": _op("Replay pasted events (JSON Lines) through the loaded rules: sent and held back", _BAD)
    },
    "/ui/api/chart": {"get": _op("Notifications per minute by outcome, the last hour")},
    "/ui/api/stream": {
        "get": _op("Server-sent events: 'changed' when alerts or counters changed (text/event-stream)")
    },
}
