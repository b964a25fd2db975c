"""``GET /v1/notifications/{id}``: the delivery report of one notification, from the outbox (on Cumulocity,
a tenant's admins get the reports of their tenant's notifications)."""

from __future__ import annotations

from aiohttp import web

from registrations.problem import problem
from service.http.server import principal_of
from service.notify.explain import Explainer
from service.outbox import Outbox

OUTBOX_KEY: web.AppKey[Outbox] = web.AppKey("outbox", Outbox)
EXPLAINER_KEY: web.AppKey[Explainer] = web.AppKey("explainer", Explainer)


async def notification_report(request: web.Request) -> web.Response:
    nid = request.match_info["id"]
    outbox = request.app[OUTBOX_KEY]
    await outbox.settle()
    report = outbox.report(nid)
    explainer = request.app.get(EXPLAINER_KEY)
    held = [s.to_json() for s in explainer.of(nid)] if explainer is not None else []
    tenant = principal_of(request).tenant
    if tenant is not None and (report is None or outbox.tenant_of(nid) != tenant):
        # a tenant's admin sees the reports of the tenant's own notifications, and nobody else's
        report, held = None, []
    if report is None and held:  # held back before any delivery was written: only why
        report = {"id": nid, "targeted": 0, "delivered": 0, "pending": 0, "failed": {}, "platforms": {}}
    if report is not None:
        report["suppressed"] = held  # each with its stage and reason (and registration, per recipient)
    if report is None:
        return problem(404, "not_found", f"no notification {nid} (unknown, or older than the retention)")
    return web.json_response(report)


def add_report_routes(app: web.Application, outbox: Outbox, explainer: Explainer | None = None) -> None:
    app[OUTBOX_KEY] = outbox
    if explainer is not None:
        app[EXPLAINER_KEY] = explainer
    app.router.add_get("/v1/notifications/{id}", notification_report)
