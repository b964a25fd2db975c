"""/openapi.json is kept true: every route of the running app is in it, and everything in it is a route."""

from __future__ import annotations

import re

from tests.integration.conftest import Api

METHODS = {"get", "post", "put", "patch", "delete"}


def shape(path: str) -> str:
    """Path parameters by position, not name: /a/{x} and /a/{y} are one route shape."""
    return re.sub(r"\{[^}]+\}", "{}", path)


async def test_every_route_is_documented_and_every_documented_path_is_a_route(api: Api) -> None:
    async with api.http.get(api.base + "/openapi.json") as r:
        assert r.status == 200 and r.content_type == "application/json"
        doc = await r.json()
    assert doc["openapi"].startswith("3.")
    documented = {
        (method.upper(), shape(path))
        for path, item in doc["paths"].items()
        for method in item
        if method in METHODS
    }
    app = api.service.http_app
    assert app is not None
    routed = {
        (route.method, shape(route.resource.canonical))
        for route in app.router.routes()
        if route.method in {m.upper() for m in METHODS} and route.resource is not None
    }
    assert routed - documented == set(), "routes missing from /openapi.json"
    assert documented - routed == set(), "documented paths that are no route"
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in METHODS:
                assert op.get("responses"), f"{method} {path} documents no responses"
                for ref in re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', str(op).replace("'", '"')):
                    assert ref in doc["components"]["schemas"], f"{method} {path}: unknown schema {ref}"


async def test_documented_request_schemas_reject_what_the_api_rejects(api: Api) -> None:
    """The request schemas are generated from the validating models: forbidding extras shows in both."""
    async with api.http.get(api.base + "/openapi.json") as r:
        schemas = (await r.json())["components"]["schemas"]
    for name in ("RegistrationIn", "RegistrationPatch", "PushIn"):
        assert schemas[name]["additionalProperties"] is False, name
    for name in ("C8yRegistration", "C8yNotification"):  # a newer alarm app may send more
        assert schemas[name].get("additionalProperties", True) is not False, name
    assert set(schemas["RegistrationIn"]["required"]) == {"provider"}  # webpush: subscription, not token
    status, body = await api.call("POST", "/v1/registrations", {"provider": "apns"})
    assert status == 400 and body["details"] == [{"field": "token", "reason": "Field required"}]
