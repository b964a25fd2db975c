"""The registry's part of the OpenAPI document: its paths, and request schemas generated from the models
that validate the requests, so the document cannot drift from what the code accepts."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from registrations.model import PROVIDERS
from registrations.problem import PROBLEM_JSON, PROBLEM_SCHEMA
from registrations.schemas import C8yRegistration, RegistrationIn, RegistrationPatch

REF = "#/components/schemas/{model}"


def schemas(*models: type[BaseModel]) -> dict[str, Any]:
    """Component schemas for ``models`` (and the models they use)."""
    out: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template=REF)
        out.update(schema.pop("$defs", {}))
        out[model.__name__] = schema
    return out


def body(model: type[BaseModel]) -> dict[str, Any]:
    ref = {"$ref": REF.format(model=model.__name__)}
    return {"required": True, "content": {"application/json": {"schema": ref}}}


def answer(description: str, schema: str | None = None) -> dict[str, Any]:
    """A response; the error schemas are problem documents (registrations/problem.py)."""
    out: dict[str, Any] = {"description": description}
    if schema:
        media = PROBLEM_JSON if schema in ("Error", "C8yError") else "application/json"
        out["content"] = {media: {"schema": {"$ref": REF.format(model=schema)}}}
    return out


NATIVE_ERRORS = {
    "400": answer("Bad input: what is wrong, per field", "Error"),
    "401": answer("No or unknown API key", "Error"),
    "403": answer("The key may not do this", "Error"),
}
C8Y_ERRORS = {
    "400": answer("Bad input or unknown token", "C8yError"),
    "401": answer("No or unknown API key", "C8yError"),
    "403": answer("The app key may not do this", "C8yError"),
}
TOKEN_PARAMS = [
    {"name": "provider", "in": "path", "required": True, "schema": {"enum": list(PROVIDERS)}},
    {"name": "token", "in": "path", "required": True, "schema": {"type": "string"}},
]


def _q(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "query", "description": description, "schema": schema or {"type": "string"}}


PATHS: dict[str, Any] = {
    "/v1/registrations": {
        "post": {
            "summary": "Register a push token (idempotent: the same provider and token updates it)",
            "requestBody": body(RegistrationIn),
            "responses": {
                "201": answer("Registered", "Registration"),
                "200": answer("Was registered: updated", "Registration"),
                "413": answer("Body larger than 64 KiB", "Error"),
                **NATIVE_ERRORS,
            },
        },
        "get": {
            "summary": "List registrations, a page at a time (admin)",
            "parameters": [
                _q("user_id", "repeatable"),
                _q("app", "repeatable"),
                _q("provider", "repeatable"),
                _q("token", "repeatable"),
                _q("channel", "repeatable; any of"),
                _q("state", "repeatable: active, suspect, invalid"),
                _q("tags", "tag expression, e.g. severity:critical && (deviceId:all || deviceId:4711)"),
                _q("limit", "1-1000, default 100", {"type": "integer", "minimum": 1, "maximum": 1000}),
                _q("after", "the `next` of the previous page"),
            ],
            "responses": {"200": answer("A page", "RegistrationPage"), **NATIVE_ERRORS},
        },
    },
    "/v1/registrations/{provider}/{token}": {
        "parameters": TOKEN_PARAMS,
        "get": {
            "summary": "One registration (admin)",
            "responses": {
                "200": answer("The registration", "Registration"),
                "404": answer("Not registered", "Error"),
                **NATIVE_ERRORS,
            },
        },
        "patch": {
            "summary": "Change some fields of a registration",
            "requestBody": body(RegistrationPatch),
            "responses": {
                "200": answer("Updated", "Registration"),
                "404": answer("Not registered", "Error"),
                **NATIVE_ERRORS,
            },
        },
        "delete": {
            "summary": "Unregister",
            "responses": {
                "204": answer("Unregistered"),
                "404": answer("Not registered", "Error"),
                **NATIVE_ERRORS,
            },
        },
    },
    "/registrations": {
        "post": {
            "summary": "Cumulocity push gateway: register a device (adds tags userId:<id> and bundleId:<id>)",
            "requestBody": body(C8yRegistration),
            "responses": {"204": answer("Registered"), **C8Y_ERRORS},
        },
        "get": {
            "summary": "Cumulocity: registrations, optionally with a tag (admin; at most 10,000)",
            "parameters": [_q("tag", "a tag or tag expression")],
            "responses": {"200": answer("Registrations", "C8yRegistrationList"), **C8Y_ERRORS},
        },
    },
    # One template for both (OpenAPI forbids two that differ only in a parameter's name): GET takes a user
    # id, DELETE a device token, as in the gateway's API.
    "/registrations/{id}": {
        "get": {
            "summary": "Cumulocity push gateway: a user's registrations (admin); id is the user id",
            "parameters": [
                {
                    "name": "id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string"},
                    "description": "the Cumulocity user id",
                }
            ],
            "responses": {"200": answer("Registrations", "C8yRegistrationList"), **C8Y_ERRORS},
        },
        "delete": {
            "summary": "Cumulocity push gateway: unregister a device token; id is the device token",
            "parameters": [
                {
                    "name": "id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string"},
                    "description": "the device token",
                }
            ],
            "responses": {"204": answer("Unregistered"), **C8Y_ERRORS},
        },
    },
}

_ISO = {"type": ["string", "null"], "format": "date-time"}
_TEXT = {"type": ["string", "null"]}
_LIST = {"type": "array", "items": {"type": "string"}}
SCHEMAS: dict[str, Any] = {
    **schemas(RegistrationIn, RegistrationPatch, C8yRegistration),
    "Registration": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "provider": {"enum": list(PROVIDERS)},
            "token": {"type": "string", "description": "device token; webhook: URL; webpush: endpoint"},
            "app": _TEXT,
            "environment": {"enum": ["production", "sandbox"]},
            "user_id": _TEXT,
            "device_name": _TEXT,
            "tags": _LIST,
            "channels": _LIST,
            "locale": _TEXT,
            "timezone": _TEXT,
            "quiet_hours": _TEXT,
            "badge": {"type": ["integer", "null"]},
            "state": {"enum": ["active", "suspect", "invalid"]},
            "state_since": _ISO,
            "created": _ISO,
            "updated": _ISO,
            "last_success": _ISO,
            "p256dh": {"type": ["string", "null"], "description": "webpush: the subscription's public key"},
        },
    },
    "RegistrationPage": {
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": {"$ref": REF.format(model="Registration")}},
            "next": {"type": ["string", "null"], "description": "pass as `after` for the next page"},
        },
    },
    # What the gateway routes answer: a registration made through the native API may have no user, app or
    # device name, so those may be null here (the request schema C8yRegistration requires them).
    "C8yRegistrationOut": {
        "type": "object",
        "required": ["userId", "bundleId", "tags", "device"],
        "properties": {
            "userId": _TEXT,
            "bundleId": _TEXT,
            "tags": _LIST,
            "device": {
                "type": "object",
                "required": ["deviceName", "deviceToken", "platform"],
                "properties": {
                    "deviceName": _TEXT,
                    "deviceToken": {"type": "string"},
                    "platform": {
                        "type": "string",
                        "description": "IOS or Android; a provider the gateway has no platform for (log)"
                        " shows its own name",
                    },
                },
            },
        },
    },
    "C8yRegistrationList": {"type": "array", "items": {"$ref": REF.format(model="C8yRegistrationOut")}},
    "Error": PROBLEM_SCHEMA,
    "C8yError": {**PROBLEM_SCHEMA, "required": [*PROBLEM_SCHEMA["required"], "info"]},
}
SECURITY_SCHEMES = {
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    "bearer": {"type": "http", "scheme": "bearer"},
    "basic": {
        "type": "http",
        "scheme": "basic",
        "description": "the API key as password (Cumulocity clients)",
    },
}
