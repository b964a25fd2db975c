"""The one shape of every error answer: an RFC 9457 problem document (``application/problem+json``).

``type`` is ``about:blank`` (the status says it all), ``title`` the status phrase, ``status`` the code,
``detail`` what is wrong; ``field`` names the field at fault when there is one, and ``details`` lists every
field's problem. Two more members keep earlier clients working: ``error`` (a stable code, such as
``invalid_body``) and ``message`` (the same text as ``detail``). On the Cumulocity-compatible routes the
body also carries ``info``, as the platform's own error bodies do (``error``, ``message``, ``info``), so that
its clients read it as they read the platform's.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, Literal

from aiohttp import web

PROBLEM_JSON = "application/problem+json"
C8Y_INFO = "https://cumulocity.com/api/core/"  # where the platform's error bodies point
Style = Literal["native", "c8y"]


def problem_body(
    status: int,
    error: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
    style: Style = "native",
    **extra: Any,
) -> dict[str, Any]:
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": message,
        "error": error,
        "message": message,
    }
    if details:
        body["field"] = str(details[0].get("field", ""))
        body["details"] = details
    if style == "c8y":  # the platform's "<domain>/<type>" and its documentation link
        body["error"], body["info"] = f"pushgateway/{error}", C8Y_INFO
    body.update(extra)
    return body


def problem(
    status: int,
    error: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
    style: Style = "native",
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    return web.json_response(
        problem_body(status, error, message, details, style, **extra),
        status=status,
        content_type=PROBLEM_JSON,
        headers=headers,
    )


# The OpenAPI schema of every 4xx and 5xx body (service/http/openapi.py, registrations/openapi.py)
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details; error and message are kept for earlier clients",
    "required": ["type", "title", "status", "detail", "error", "message"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "error": {"type": "string", "description": "a stable code: invalid_body, not_found, ..."},
        "message": {"type": "string", "description": "the same text as detail"},
        "field": {"type": "string", "description": "the field at fault, when there is one"},
        "info": {"type": "string", "description": "Cumulocity-compatible routes only, as the platform's"},
        "position": {"type": "integer", "description": "1-based position of a tag expression error"},
        "details": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "reason": {"type": "string"}},
            },
        },
    },
}
