"""``GET /v1/webpush/vapid-public-key``: the VAPID public key a page subscribes with (no key needed: it is
public, and a page asks for it before it has registered anything)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from registrations.problem import problem
from service.providers import vapid
from service.providers.webpush import WebPushConfig

ROUTE = "/v1/webpush/vapid-public-key"

PATHS: dict[str, Any] = {
    ROUTE: {
        "get": {
            "summary": "The VAPID public key for PushManager.subscribe({applicationServerKey})",
            "security": [],
            "responses": {
                "200": {
                    "description": "The key: the uncompressed P-256 point, unpadded URL-safe base64",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["public_key"],
                                "properties": {"public_key": {"type": "string"}},
                            }
                        }
                    },
                },
                "404": {"description": "Web Push is not configured (providers.webpush)"},
            },
        }
    }
}


def add_webpush_routes(app: web.Application, config: WebPushConfig) -> None:
    public: str | None = None
    if config.vapid_private_key_path is not None:
        try:
            public = vapid.public_key_b64(vapid.load(config.vapid_private_key_path))
        except ValueError:
            public = None  # the provider reports the problem (degraded) with the path

    async def public_key(request: web.Request) -> web.Response:
        if public is None:
            return problem(404, "not_found", "Web Push is not configured (providers.webpush)")
        return web.json_response({"public_key": public}, headers={"Cache-Control": "public, max-age=300"})

    app.router.add_get(ROUTE, public_key)
