"""The HTTP server (aiohttp): health for liveness and readiness probes, and Prometheus metrics."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any, Protocol

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from registrations.auth import Authenticator, AuthError, Principal
from registrations.problem import problem
from service import __version__
from service.metrics import Metrics


class HealthSource(Protocol):
    def health(self) -> dict[str, object]: ...

    @property
    def ready(self) -> bool: ...

    def cluster_state(self) -> dict[str, object]: ...


METRICS_KEY: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)
HEALTH_KEY: web.AppKey[HealthSource] = web.AppKey("health", HealthSource)
OPENAPI_KEY: web.AppKey[bytes] = web.AppKey("openapi", bytes)


async def health(request: web.Request) -> web.Response:
    """Liveness: 200 while the process serves requests; the body says what is degraded."""
    return web.json_response(request.app[HEALTH_KEY].health())


async def ready(request: web.Request) -> web.Response:
    """Readiness: 503 until the service can receive events (broker connected) and while a supervised task is
    down; the body is the health document, whose ``down`` names each such task and its error."""
    source = request.app[HEALTH_KEY]
    return web.json_response(source.health(), status=200 if source.ready else 503)


async def cluster(request: web.Request) -> web.Response:
    """Members and their ranks, the leader, the term, the lease age and the ledger."""
    return web.json_response(request.app[HEALTH_KEY].cluster_state())


async def metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS_KEY].render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def index(request: web.Request) -> web.Response:
    """What is here: the console, the API's documentation, and every route by path with its methods."""
    routes: dict[str, set[str]] = {}
    for route in request.app.router.routes():
        if route.resource is not None and route.method not in ("HEAD", "OPTIONS", "*"):
            routes.setdefault(route.resource.canonical, set()).add(route.method)
    return web.json_response(
        {
            "service": "tocsin",
            "version": __version__,
            "console": "/ui/",
            "docs": "/docs",
            "openapi": "/openapi.json",
            "health": "/health",
            "metrics": "/metrics",
            "endpoints": [{"path": p, "methods": sorted(m)} for p, m in sorted(routes.items())],
        }
    )


log = logging.getLogger("tocsin.http")
_CODES = {404: "not_found", 405: "method_not_allowed", 408: "body_timeout", 413: "body_too_large"}


def problems(metrics_: Metrics) -> Middleware:
    """aiohttp's own refusals (no such route, wrong method, body over the limit) and any unexpected error as
    problem documents too, so that every error answer has one shape."""

    @web.middleware
    async def shape(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            text = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
            return problem(
                exc.status, _CODES.get(exc.status, "http_error"), text or exc.reason, headers=headers
            )
        except Exception:
            metrics_.internal_errors.inc("http")
            log.exception("%s %s failed", request.method, request.path)
            return problem(500, "internal_error", "an unexpected error; the service log has the details")

    return shape


def build_app(
    health_source: HealthSource,
    metrics_: Metrics,
    routes: Sequence[web.RouteDef] = (),
    openapi: dict[str, Any] | None = None,
) -> web.Application:
    """``routes``: the API routes of the other parts (registrations, push), wired by the service."""
    app = web.Application(client_max_size=1024 * 1024, middlewares=[problems(metrics_)])
    app[HEALTH_KEY] = health_source
    app[METRICS_KEY] = metrics_
    app.router.add_get("/", index)
    app.router.add_get("/health", health)
    app.router.add_get("/health/ready", ready)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/cluster", cluster)
    if openapi is not None:
        app[OPENAPI_KEY] = json.dumps(openapi, indent=1).encode()
        app.router.add_get("/openapi.json", openapi_document)
    app.router.add_routes(routes)
    return app


async def openapi_document(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI_KEY], content_type="application/json")


# Operator routes: acknowledging alerts, silences, delivery reports and the cluster's state need an admin key
# (or, with no keys configured, a caller on the loopback interface), like the registration and push APIs.
# On Cumulocity a tenant's users reach the alerts and silences of their own tenant: its admins all of them,
# its other users (the app on the phone) only acknowledging; its admins also the delivery reports of their
# tenant's notifications. The cluster stays deployment-wide.
ADMIN_PREFIXES = ("/v1/alerts", "/v1/silences", "/v1/notifications", "/v1/cluster")
TENANT_PREFIXES = ("/v1/alerts", "/v1/silences", "/v1/notifications")
PRINCIPAL_KEY: web.RequestKey[Principal] = web.RequestKey("principal", Principal)


def principal_of(request: web.Request) -> Principal:
    """The caller the operator guard let through (it runs before every operator route)."""
    return request[PRINCIPAL_KEY]


def _acknowledging(request: web.Request) -> bool:
    return (
        request.method == "POST" and request.path.startswith("/v1/alerts/") and request.path.endswith("/ack")
    )


def admin_only(auth: Authenticator, prefixes: tuple[str, ...] = ADMIN_PREFIXES) -> Middleware:
    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(prefixes):
            try:
                principal = await auth.authenticate(request)
            except AuthError as exc:
                error = "unauthorized" if exc.status == 401 else "forbidden"
                return problem(exc.status, error, exc.message)
            tenant_route = request.path.startswith(TENANT_PREFIXES)
            if principal.tenant is not None and not tenant_route:
                message = "this route is for the deployment's operators, not for a tenant's users"
            elif principal.admin or (principal.tenant is not None and _acknowledging(request)):
                message = ""
            else:
                message = "this route needs an admin key"
            if message:
                return problem(403, "forbidden", message)
            request[PRINCIPAL_KEY] = principal
        return await handler(request)

    return guard
