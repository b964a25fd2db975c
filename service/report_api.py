"""``GET /v1/notifications/{id}``: the delivery report of one notification, from the outbox."""

from __future__ import annotations

from aiohttp import web

from service.outbox import Outbox

OUTBOX_KEY: web.AppKey[Outbox] = web.AppKey("outbox", Outbox)


async def notification_report(request: web.Request) -> web.Response:
    nid = request.match_info["id"]
    outbox = request.app[OUTBOX_KEY]
    await outbox.settle()
    report = outbox.report(nid)
    if report is None:
        return web.json_response(
            {
                "error": "not_found",
                "message": f"no notification {nid} (unknown, or older than the retention)",
            },
            status=404,
        )
    return web.json_response(report)


def add_report_routes(app: web.Application, outbox: Outbox) -> None:
    app[OUTBOX_KEY] = outbox
    app.router.add_get("/v1/notifications/{id}", notification_report)
