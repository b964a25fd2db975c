"""The OpenAPI document served at ``/openapi.json``: the service's own paths plus each module's fragment.

tests/integration/test_openapi.py checks it against the routes the running app really has, both ways.
"""

from __future__ import annotations

from typing import Any

from registrations import openapi as reg
from service import __version__
from service.http.console import CONSOLE_PATHS
from service.http.events import EventsIn
from service.http.push import C8yNotification, PushIn
from service.http.webpush import PATHS as WEBPUSH_PATHS

_PLAIN = {"200": {"description": "OK"}}
_TASK = {
    "type": "object",
    "properties": {
        "state": {"enum": ["running", "restarting", "failed"]},
        "restarts": {"type": "integer"},
        "error": {"type": ["string", "null"], "description": "the last crash, one line"},
        "last_crash": {"type": ["number", "null"], "description": "epoch seconds"},
    },
}
_HEALTH = {
    "type": "object",
    "properties": {
        "status": {"enum": ["ok", "degraded"]},
        "down": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "description": "supervised tasks that crashed and wait to restart, or gave up: name -> error",
        },
        "tasks": {"type": "object", "additionalProperties": _TASK, "description": "every supervised task"},
        "store": {
            "type": "object",
            "properties": {
                "kind": {"enum": ["sqlite", "postgresql"]},
                "error": {"type": ["string", "null"], "description": "why the database cannot be reached"},
            },
        },
    },
}
SERVICE_PATHS: dict[str, Any] = {
    "/": {
        "get": {
            "summary": "Index: name, version, the console, the docs and every route",
            "security": [],
            "responses": _PLAIN,
        }
    },
    "/health": {
        "get": {
            "summary": "Liveness; the body says what is degraded and the state of each supervised task",
            "security": [],
            "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": _HEALTH}}}},
        }
    },
    "/health/ready": {
        "get": {
            "summary": "Readiness: 503 until events can be received, and while a supervised task is down",
            "security": [],
            "responses": {
                "200": {"description": "Ready", "content": {"application/json": {"schema": _HEALTH}}},
                "503": {
                    "description": "Not ready: broker not connected, or the tasks in `down` crashed",
                    "content": {"application/json": {"schema": _HEALTH}},
                },
            },
        }
    },
    "/metrics": {"get": {"summary": "Prometheus metrics (text format)", "security": [], "responses": _PLAIN}},
    "/openapi.json": {"get": {"summary": "This document", "security": [], "responses": _PLAIN}},
}
PUSH_PATHS: dict[str, Any] = {
    "/v1/events": {
        "post": {
            "summary": "Ingest events over HTTP (one, or {events: [...]} up to 1,000): answered once durable",
            "requestBody": reg.body(EventsIn),
            "responses": {
                "202": {
                    "description": "Durable: the events and what they caused are committed",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "accepted": {"type": "integer"},
                                    "ids": {"type": "array", "items": {"type": "string"}},
                                },
                            }
                        }
                    },
                },
                "413": reg.answer("Body larger than 64 KiB", "Error"),
                "503": reg.answer("Not written: send the events again", "Error"),
                **reg.NATIVE_ERRORS,
            },
        }
    },
    "/v1/push": {
        "post": {
            "summary": "Send a notification to an audience, now or at schedule_at (admin)",
            "requestBody": reg.body(PushIn),
            "responses": {
                "202": {
                    "description": "Accepted: id of the notification; fan-out runs in the background",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "id": {"type": "string"},
                                    "scheduled_for": {"type": ["string", "null"], "format": "date-time"},
                                    "expires": {"type": "string", "format": "date-time"},
                                },
                            }
                        }
                    },
                },
                "413": reg.answer("Body larger than 64 KiB", "Error"),
                **reg.NATIVE_ERRORS,
            },
        }
    },
    "/notification": {
        "post": {
            "summary": "Cumulocity: notify receivers, or registrations matching any of tags (admin)",
            "requestBody": reg.body(C8yNotification),
            "responses": {"204": {"description": "Accepted"}, **reg.C8Y_ERRORS},
        }
    },
}


def _admin(summary: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"summary": summary, "responses": {**_PLAIN, **reg.NATIVE_ERRORS, **(extra or {})}}


_ID = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
_TOO_BIG = {"413": reg.answer("Body larger than 64 KiB", "Error")}
OPERATOR_PATHS: dict[str, Any] = {
    "/v1/cluster": {"get": _admin("Members and ranks, role, leader, term, lease age, ledger (admin)")},
    "/v1/alerts": {"get": _admin("Alerts that fired and are open (admin)")},
    "/v1/alerts/{id}/ack": {
        "post": {
            **_admin(
                "Acknowledge an alert: stops repeats and escalation (admin)",
                {"404": reg.answer("No open alert with this id", "Error"), **_TOO_BIG},
            ),
            "parameters": _ID,
        }
    },
    "/v1/silences": {
        "get": _admin("Silences in force (admin)"),
        "post": _admin(
            "Create a silence: matchers, start, end or duration, comment (admin)",
            {"201": {"description": "Made"}, **_TOO_BIG},
        ),
    },
    "/v1/silences/{id}": {
        "delete": {
            **_admin("Remove a silence (admin)", {"404": reg.answer("No silence with this id", "Error")}),
            "parameters": _ID,
        }
    },
    "/v1/notifications/{id}": {
        "get": {
            **_admin(
                "Delivery report: targeted, delivered, pending, failed by reason, per platform (on Cumulocity"
                " also for a tenant's admins: their own tenant's notifications)",
                {"404": reg.answer("Unknown notification, or older than the retention", "Error")},
            ),
            "parameters": _ID,
        }
    },
}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "tocsin", "version": __version__},
        "paths": {
            **SERVICE_PATHS,
            **reg.PATHS,
            **PUSH_PATHS,
            **OPERATOR_PATHS,
            **CONSOLE_PATHS,
            **WEBPUSH_PATHS,
        },
        "components": {
            "schemas": {**reg.SCHEMAS, **reg.schemas(PushIn, C8yNotification), **reg.schemas(EventsIn)},
            "securitySchemes": reg.SECURITY_SCHEMES,
        },
        "security": [{"apiKey": []}, {"bearer": []}, {"basic": []}],
    }
