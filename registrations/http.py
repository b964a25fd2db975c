"""The registry's HTTP routes: the native API under ``/v1`` and the Cumulocity push gateway's API.

Every refusal is a 4xx with an RFC 9457 problem document saying what is wrong and which field
(registrations/problem.py); the Cumulocity routes add ``info``, as the platform's error bodies have.
Nothing is written unless the whole request is valid; registrations are written through the group-commit
writer.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from registrations import jsonbody, tagexpr
from registrations.auth import Authenticator, AuthError, Principal
from registrations.directory import Registry, StoreDirectory
from registrations.model import STATES, Audience, Registration, check_tag, check_token
from registrations.problem import Style, problem
from registrations.schemas import C8yRegistration, RegistrationIn, RegistrationPatch
from registrations.store import RegistrationStore, StoreUnavailable
from service.providers import plugins

log = logging.getLogger("tocsin.registrations")
MAX_BODY = 64 * 1024
MAX_PAGE = 1000
C8Y_MAX_LIST = 10_000
M = TypeVar("M", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RejectCounter = Callable[[str, int], None]


class ApiError(Exception):
    def __init__(
        self, status: int, error: str, message: str, details: list[dict[str, Any]] | None = None, **extra: Any
    ) -> None:
        self.status, self.error, self.message = status, error, message
        self.details, self.extra = details or [], extra
        super().__init__(message)

    def response(self, style: Style) -> web.Response:
        """The problem document (registrations/problem.py), in the route's style."""
        extra = {k: v for k, v in self.extra.items() if k != "close"}
        answer = problem(self.status, self.error, self.message, self.details, style, **extra)
        if self.extra.get("close"):
            answer.force_close()
        return answer


def guarded(route: str, style: Style, on_reject: RejectCounter) -> Callable[[Handler], Handler]:
    """Turns ApiError/AuthError into JSON answers, counting each refusal by route and status."""

    def wrap(handler: Handler) -> Handler:
        async def run(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except AuthError as exc:
                error = ApiError(
                    exc.status, "unauthorized" if exc.status == 401 else "forbidden", exc.message
                )
            except ApiError as exc:
                error = exc
            except StoreUnavailable as exc:
                log.warning("%s: %s", route, exc)
                error = ApiError(503, "store_unavailable", str(exc))
            on_reject(route, error.status)
            return error.response(style)

        return run

    return wrap


# Seconds a request body may take to arrive (the service sets it from http.body_timeout_s).
BODY_TIMEOUT_KEY: web.AppKey[float] = web.AppKey("body_timeout_s", float)
BODY_TIMEOUT_S = 10.0


async def read_body(request: web.Request, limit: int = MAX_BODY) -> bytes:
    """The body, at most ``limit`` bytes, arrived within the body time-out (else 408, and the connection
    closes: a slow body holds no handler for long)."""
    timeout = request.config_dict.get(BODY_TIMEOUT_KEY, BODY_TIMEOUT_S)
    try:
        async with asyncio.timeout(timeout):
            return await _read_body(request, limit)
    except TimeoutError:
        raise ApiError(
            408, "body_timeout", f"the request body did not arrive within {timeout:g} s", close=True
        ) from None


async def _read_body(request: web.Request, limit: int) -> bytes:
    too_big = ApiError(413, "body_too_large", f"the request body is larger than {limit} bytes")
    if request.content_length is not None:
        if request.content_length > limit:
            raise too_big
        return await request.read()  # bounded by the declared length
    data = bytearray()  # chunked: count as it comes
    async for chunk in request.content.iter_any():
        data += chunk
        if len(data) > limit:
            raise too_big
    return bytes(data)


def problems(exc: ValidationError) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(body)"
        if err["type"] == "extra_forbidden":
            reason = "unknown field"
        elif err["type"] == "json_invalid":
            reason = f"not valid JSON: {err['ctx'].get('error', '')}".rstrip(": ")
        else:
            reason = err["msg"].removeprefix("Value error, ")
        out.append({"field": field, "reason": reason})
    return out


async def parse(request: web.Request, model: type[M]) -> M:
    body = await read_body(request)
    try:
        jsonbody.check(body)
    except jsonbody.BodyError as exc:
        raise ApiError(
            400, "invalid_body", f"(body): {exc}", [{"field": "(body)", "reason": str(exc)}]
        ) from None
    try:
        return model.model_validate_json(body or b"null")
    except ValidationError as exc:
        details = problems(exc)
        message = "; ".join(f"{d['field']}: {d['reason']}" for d in details)
        raise ApiError(400, "invalid_body", message, details) from None


def check_expression(text: str, field: str) -> str:
    try:
        tagexpr.parse(text, tagexpr.MAX_DEPTH)
    except tagexpr.TagExpressionError as exc:
        raise ApiError(
            400,
            "bad_tag_expression",
            f"{field}: {exc}",
            [{"field": field, "reason": str(exc)}],
            position=exc.position,
        ) from None
    return text


def timestamp(t: float | None) -> str | None:
    if t is None:
        return None
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_json(r: Registration) -> dict[str, Any]:
    return {
        "id": r.id,
        "provider": r.provider,
        "token": r.token,
        "app": r.app,
        "environment": r.environment,
        "user_id": r.user_id,
        "device_name": r.device_name,
        "tags": list(r.tags),
        "channels": list(r.channels),
        "locale": r.locale,
        "timezone": r.timezone,
        "quiet_hours": r.quiet_hours,
        "badge": r.badge,
        "state": r.state,
        "state_since": timestamp(r.state_since),
        "created": timestamp(r.created),
        "updated": timestamp(r.updated),
        "last_success": timestamp(r.last_success),
        # A Web Push subscription's public key; its auth secret is never shown.
        "p256dh": r.p256dh,
    }


def c8y_user_tag(user_id: str) -> str:
    """The gateway's tag for a user: ``userId:<id with @ written _at_>``."""
    return "userId:" + user_id.replace("@", "_at_")


def to_c8y(r: Registration) -> dict[str, Any]:
    return {
        "userId": r.user_id,
        "bundleId": r.app,
        "tags": list(r.tags),
        "device": {
            "deviceName": r.device_name,
            "deviceToken": r.token,
            "platform": {p: c for c, p in plugins.c8y_providers().items()}.get(r.provider, r.provider),
        },
    }


_CURSOR = re.compile(r"[0-9]{1,19}")
_LIST_PARAMS = {"user_id", "app", "provider", "tags", "channel", "state", "token", "limit", "after"}


UserExists = Callable[[str, str], Awaitable[bool]]
# (provider, token) -> token, or ValueError: the deployment's own check of where a token makes tocsin post
# (webhook URLs, Web Push endpoints: scheme, credentials, allowed hosts).
TargetCheck = Callable[[str, str], str]


def no_target_check(provider: str, token: str) -> str:
    return token


class RegistrationApi:
    """Each caller reads and writes the registry of its own tenant (API keys: the deployment's own).

    ``user_exists(tenant, user)`` checks a Cumulocity user before the push gateway API registers a device
    for it (the gateway does the same)."""

    def __init__(
        self,
        stores: StoreDirectory,
        auth: Authenticator,
        on_reject: RejectCounter = lambda route, status: None,
        user_exists: UserExists | None = None,
        check_target: TargetCheck = no_target_check,
    ) -> None:
        self.stores, self.auth, self.on_reject = stores, auth, on_reject
        self.user_exists = user_exists
        self.check_target = check_target

    def routes(self) -> list[web.RouteDef]:
        def g(route: str, style: Style, handler: Handler) -> Handler:
            return guarded(route, style, self.on_reject)(handler)

        item = "/v1/registrations/{provider}/{token}"
        return [
            web.post("/v1/registrations", g("register", "native", self.register)),
            web.get("/v1/registrations", g("list", "native", self.list)),
            web.get(item, g("get", "native", self.get)),
            web.patch(item, g("update", "native", self.update)),
            web.delete(item, g("unregister", "native", self.unregister)),
            web.post("/registrations", g("c8y_register", "c8y", self.c8y_register)),
            web.get("/registrations", g("c8y_list", "c8y", self.c8y_list)),
            web.get("/registrations/{userId}", g("c8y_user", "c8y", self.c8y_user)),
            web.delete("/registrations/{deviceToken}", g("c8y_unregister", "c8y", self.c8y_unregister)),
        ]

    async def caller(self, request: web.Request) -> tuple[Principal, Registry]:
        """Who is calling, and the registry of its tenant."""
        principal = await self.auth.authenticate(request)
        registry = self.stores.registry(principal.tenant)
        if registry is None:
            raise AuthError(403, f"tenant {principal.tenant} is not subscribed to this service")
        return principal, registry

    async def admin(self, request: web.Request) -> RegistrationStore:
        principal, registry = await self.caller(request)
        if not principal.admin:
            raise AuthError(403, "this needs an admin key or role; others may only register and unregister")
        return registry.store

    def _may_write(
        self, principal: Principal, app: str | None, user: str | None, current: Registration | None
    ) -> None:
        if not principal.may_write(app, user) or (
            current is not None and not principal.may_write(current.app, current.user_id)
        ):
            if principal.user is not None:
                raise AuthError(403, f"user {principal.user!r} may only change their own registrations")
            raise AuthError(403, f"the key of app {principal.app!r} may only change that app's registrations")

    @staticmethod
    def _own_user(principal: Principal, user_id: str | None) -> str | None:
        """A platform user without the admin role registers devices for themselves only."""
        if principal.user is None or principal.admin:
            return user_id
        if user_id is not None and user_id != principal.user:
            raise AuthError(403, f"user {principal.user!r} may only register devices for themselves")
        return principal.user

    # -- native ---------------------------------------------------------------------------------------------
    async def register(self, request: web.Request) -> web.Response:
        principal, registry = await self.caller(request)
        body = await parse(request, RegistrationIn)
        try:
            self.check_target(body.provider, body.token)
        except ValueError as exc:
            raise ApiError(400, "invalid_token", str(exc), [{"field": "token", "reason": str(exc)}]) from None
        app = body.app if body.app is not None or principal.admin or principal.app is None else principal.app
        user_id = self._own_user(principal, body.user_id)
        current = await registry.store.get(body.provider, body.token)
        self._may_write(principal, app, user_id, current)
        reg = Registration(
            body.provider,
            body.token,
            user_id=user_id,
            app=app,
            environment=body.environment,
            device_name=body.device_name,
            tags=tuple(body.tags),
            locale=body.locale,
            timezone=body.timezone,
            channels=tuple(body.channels),
            quiet_hours=body.quiet_hours,
            badge=body.badge,
        )
        reg.p256dh, reg.auth = body.keys
        saved = await registry.writer.upsert(reg)
        return web.json_response(to_json(saved), status=200 if current is not None else 201)

    def _path_token(self, request: web.Request) -> tuple[str, str]:
        provider, token = request.match_info["provider"], request.match_info["token"]
        try:
            return provider, check_token(provider, token)
        except ValueError as exc:
            raise ApiError(400, "invalid_token", str(exc), [{"field": "token", "reason": str(exc)}]) from None

    @staticmethod
    async def _existing(store: RegistrationStore, provider: str, token: str) -> Registration:
        found = await store.get(provider, token)
        if found is None:
            raise ApiError(404, "not_found", f"no {provider} registration with this token")
        return found

    async def get(self, request: web.Request) -> web.Response:
        store = await self.admin(request)
        return web.json_response(to_json(await self._existing(store, *self._path_token(request))))

    async def update(self, request: web.Request) -> web.Response:
        principal, registry = await self.caller(request)
        provider, token = self._path_token(request)
        patch = await parse(request, RegistrationPatch)
        current = await self._existing(registry.store, provider, token)
        self._may_write(principal, current.app, current.user_id, current)
        for name in patch.model_fields_set:
            value = getattr(patch, name)
            setattr(current, name, tuple(value) if isinstance(value, list) else value)
        current.user_id = self._own_user(principal, current.user_id)
        return web.json_response(to_json(await registry.writer.upsert(current)))

    async def unregister(self, request: web.Request) -> web.Response:
        principal, registry = await self.caller(request)
        provider, token = self._path_token(request)
        current = await self._existing(registry.store, provider, token)
        self._may_write(principal, current.app, current.user_id, current)
        await registry.writer.remove(provider, token)
        return web.Response(status=204)

    async def list(self, request: web.Request) -> web.Response:
        store = await self.admin(request)
        q = request.query
        unknown = sorted(set(q) - _LIST_PARAMS)
        if unknown:
            raise ApiError(
                400,
                "unknown_parameter",
                f"unknown query parameter {unknown[0]!r}; known: {', '.join(sorted(_LIST_PARAMS))}",
                [{"field": u, "reason": "unknown query parameter"} for u in unknown],
            )
        try:
            limit = int(q.get("limit", "100"))
            if not 1 <= limit <= MAX_PAGE:
                raise ValueError
        except ValueError:
            raise ApiError(
                400,
                "invalid_parameter",
                f"limit: a whole number from 1 to {MAX_PAGE}",
                [{"field": "limit", "reason": f"a whole number from 1 to {MAX_PAGE}"}],
            ) from None
        states = tuple(q.getall("state", []))
        for s in states:
            if s not in STATES:
                raise ApiError(
                    400,
                    "invalid_parameter",
                    f"state: one of {', '.join(STATES)}",
                    [{"field": "state", "reason": f"one of {', '.join(STATES)}"}],
                )
        expression = q.get("tags")
        if expression is not None:
            check_expression(expression, "tags")
        where = Audience(
            users=tuple(q.getall("user_id", [])),
            tokens=tuple(q.getall("token", [])),
            expression=expression,
            apps=tuple(q.getall("app", [])),
            platforms=tuple(q.getall("provider", [])),
            channels=tuple(q.getall("channel", [])),
        )
        after = q.get("after", "")
        if after and not (_CURSOR.fullmatch(after) and int(after) < 2**63):
            raise ApiError(
                400,
                "invalid_parameter",
                "after: the 'next' cursor of the previous page (a whole number)",
                [{"field": "after", "reason": "the 'next' cursor of the previous page (a whole number)"}],
            )
        page, following = await store.query(where, states=states, after=after, limit=limit)
        return web.json_response({"items": [to_json(r) for r in page], "next": following})

    # -- Cumulocity push gateway ----------------------------------------------------------------------------
    async def c8y_register(self, request: web.Request) -> web.Response:
        principal, registry = await self.caller(request)
        body = await parse(request, C8yRegistration)
        provider = plugins.c8y_providers().get(body.device.platform)
        if provider is None:
            raise ApiError(
                400, "invalid_body", f"device.platform {body.device.platform!r}: no provider serves it"
            )
        try:
            token = check_token(provider, body.device.deviceToken)
            tags = (*body.tags, check_tag(c8y_user_tag(body.userId)), check_tag(f"bundleId:{body.bundleId}"))
        except ValueError as exc:
            raise ApiError(400, "invalid_body", str(exc)) from None
        self._own_user(principal, body.userId)
        if (
            principal.tenant is not None
            and self.user_exists is not None
            and not await self.user_exists(principal.tenant, body.userId)
        ):
            raise ApiError(
                400, "unknown_user", f"User {body.userId} does not exist in tenant {principal.tenant}."
            )
        current = await registry.store.get(provider, token)
        self._may_write(principal, body.bundleId, body.userId, current)
        reg = Registration(
            provider,
            token,
            user_id=body.userId,
            app=body.bundleId,
            device_name=body.device.deviceName,
            tags=tuple(dict.fromkeys(tags)),
        )
        await registry.writer.upsert(reg)
        return web.Response(status=204)

    async def c8y_list(self, request: web.Request) -> web.Response:
        store = await self.admin(request)
        tag = request.query.get("tag")
        if tag is not None:
            check_expression(tag, "tag")
        page, _ = await store.query(Audience(expression=tag), limit=C8Y_MAX_LIST)
        return web.json_response([to_c8y(r) for r in page])

    async def c8y_user(self, request: web.Request) -> web.Response:
        store = await self.admin(request)
        page, _ = await store.query(Audience(users=(request.match_info["userId"],)), limit=C8Y_MAX_LIST)
        return web.json_response([to_c8y(r) for r in page])

    async def c8y_unregister(self, request: web.Request) -> web.Response:
        principal, registry = await self.caller(request)
        token = request.match_info["deviceToken"]
        store = registry.store
        found = await store.by_token(token) or await store.by_token(token.lower())
        if not found:
            raise ApiError(400, "not_found", "The device token is not yet registered.")
        for reg in found:
            self._may_write(principal, reg.app, reg.user_id, reg)
        for reg in found:
            await registry.writer.remove(reg.provider, reg.token)
        return web.Response(status=204)
