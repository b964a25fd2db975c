"""The OpenAPI document served at ``/openapi.json``: the service's own paths plus each module's fragment.

tests/integration/test_openapi.py checks it against the routes the running app really has, both ways.
"""

from __future__ import annotations

import copy
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
            "requestBody": {
                "required": False,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {"by": {"type": "string"}, "comment": {"type": "string"}},
                        }
                    }
                },
            },
        }
    },
    "/v1/silences": {
        "get": _admin("Silences in force (admin)"),
        "post": {
            **_admin(
                "Create a silence: matchers, start, end or duration, comment (admin)",
                {"201": {"description": "Made"}, **_TOO_BIG},
            ),
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["matchers"],
                            "properties": {
                                "matchers": {"type": "object", "additionalProperties": {"type": "string"}},
                                "start": {"type": ["number", "string"]},
                                "end": {"type": ["number", "string"]},
                                "duration": {"type": "string", "examples": ["1h"]},
                                "comment": {"type": "string"},
                            },
                        }
                    }
                },
            },
        },
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


_METHODS = ("get", "post", "put", "patch", "delete")
_C8Y = ("/registrations", "/notification")  # the Cumulocity-compatible routes (their errors carry info)
_STORE = ("/v1/registrations", "/registrations", "/notification", "/v1/push", "/v1/events", "/v1/silences")


def _link(path: str, method: str, parameters: dict[str, str]) -> dict[str, Any]:
    pointer = path.replace("~", "~0").replace("/", "~1")
    return {"operationRef": f"#/paths/{pointer}/{method}", "parameters": parameters}


_REG = {"provider": "$response.body#/provider", "token": "$response.body#/token"}
_ONE = "/v1/registrations/{provider}/{token}"
# What one answer names and the next request can use: the stateful fuzzing follows these (OpenAPI links).
LINKS: dict[tuple[str, str, str], dict[str, Any]] = {
    ("/v1/silences", "post", "201"): {
        "DeleteSilence": _link("/v1/silences/{id}", "delete", {"id": "$response.body#/id"})
    },
    ("/v1/push", "post", "202"): {
        "Report": _link("/v1/notifications/{id}", "get", {"id": "$response.body#/id"})
    },
    ("/v1/registrations", "post", "201"): {
        "GetRegistration": _link(_ONE, "get", _REG),
        "PatchRegistration": _link(_ONE, "patch", _REG),
        "DeleteRegistration": _link(_ONE, "delete", _REG),
    },
}


def _complete(paths: dict[str, Any]) -> dict[str, Any]:
    """Every status a route can answer, documented: the body limits of routes that take a body (413, 408),
    the connection cap (429, any route), the store's 503, and a problem document for every 4xx and 5xx."""
    for path, item in paths.items():
        for method in _METHODS:
            op = item.get(method)
            if op is None:
                continue
            responses = op.setdefault("responses", {})
            schema = "C8yError" if path.startswith(_C8Y) else "Error"
            if method in ("post", "patch", "put"):
                responses.setdefault("413", reg.answer("Body larger than the route's limit", schema))
                responses.setdefault(
                    "408", reg.answer("The body did not arrive within http.body_timeout_s", schema)
                )
            if method != "get" and path.startswith(_STORE):
                responses.setdefault(
                    "503", reg.answer("Not confirmed by the store or the cluster: retry", schema)
                )
            responses.setdefault(
                "429", reg.answer("Too many open connections from this address (then closed)", "Error")
            )
            for code, answer in responses.items():
                if code[0] in "45" and "content" not in answer:
                    answer["content"] = reg.answer("", schema)["content"]
                if (path, method, code) in LINKS:
                    answer["links"] = LINKS[path, method, code]
    return paths


def document() -> dict[str, Any]:
    paths = copy.deepcopy(
        {**SERVICE_PATHS, **reg.PATHS, **PUSH_PATHS, **OPERATOR_PATHS, **CONSOLE_PATHS, **WEBPUSH_PATHS}
    )
    return {
        "openapi": "3.1.0",
        "info": {"title": "tocsin", "version": __version__},
        "paths": _complete(paths),
        "components": {
            "schemas": {**reg.SCHEMAS, **reg.schemas(PushIn, C8yNotification), **reg.schemas(EventsIn)},
            "securitySchemes": reg.SECURITY_SCHEMES,
        },
        "security": [{"apiKey": []}, {"bearer": []}, {"basic": []}],
    }
