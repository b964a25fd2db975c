"""Hostile requests to a running service: each is a 4xx with a reason, never a 500 (issue 14)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from service.alert_store import AlertStore
from tests.conftest import service_config, start_service
from tests.integration.conftest import ADMIN, APNS, Api, reg
from tests.support import Mosquitto, wait_until

DEEP_PARENS = "(" * 400 + "a" + ")" * 400
DEEP_NOT = "!" * 300 + "a"
MESSAGE = {"title": "t", "body": {"alarmId": "1"}}


@pytest.mark.parametrize("after", ["²", "99999999999999999999", "-1", "1 "])
async def test_a_bad_after_cursor_is_a_400(api: Api, after: str) -> None:
    status, body = await api.call("GET", "/v1/registrations", params={"after": after})
    assert status == 400, body
    assert body["details"][0]["field"] == "after"


@pytest.mark.parametrize("expression", [DEEP_PARENS, DEEP_NOT])
async def test_deeply_nested_tag_expressions_are_a_400_on_every_route(api: Api, expression: str) -> None:
    calls: list[tuple[str, str, Any, dict[str, str]]] = [
        ("GET", "/v1/registrations", None, {"tags": expression}),
        ("GET", "/registrations", None, {"tag": expression}),
        ("POST", "/v1/push", {"audience": {"tags": expression}, "title": "t"}, {}),
        ("POST", "/notification", {"tags": [expression], "message": MESSAGE}, {}),
        (
            "POST",
            "/notification",
            {"receiver": {"userIds": ["ann"]}, "tags": [expression], "message": MESSAGE},
            {},
        ),
    ]
    for method, path, body, params in calls:
        status, answer = await api.call(method, path, body, params=params)
        assert status == 400, (path, answer)
        assert "nests deeper than 32" in answer["message"], (path, answer)


async def test_nesting_at_the_limit_is_accepted(api: Api) -> None:
    expression = "(" * 31 + "!a" + ")" * 31
    status, _ = await api.call("GET", "/v1/registrations", params={"tags": expression})
    assert status == 200
    status, _ = await api.call("POST", "/notification", {"tags": [expression, "b"], "message": MESSAGE})
    assert status == 204


JSON_ROUTES = [
    ("POST", "/v1/registrations"),
    ("PATCH", f"/v1/registrations/apns/{APNS}"),
    ("POST", "/registrations"),
    ("POST", "/v1/push"),
    ("POST", "/notification"),
    ("POST", "/v1/silences"),
    ("POST", "/v1/alerts/some-alert/ack"),
]


@pytest.mark.parametrize(("method", "path"), JSON_ROUTES)
async def test_deeply_nested_bodies_are_refused_on_every_json_route(api: Api, method: str, path: str) -> None:
    await api.call("POST", "/v1/registrations", reg())
    status, body = await api.call(method, path, raw=b"[" * 60_000)
    assert status == 400, body
    assert "nests deeper than 32" in json.dumps(body), body
    status, body = await api.call(method, path, raw=b"[" * 100_000)
    assert status in (400, 413), body


def _strict(text: str) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} in a response")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"matchers": {"rule": "x"}, "start": NaN, "duration": "1h"}', "NaN"),
        (b'{"matchers": {"rule": "x"}, "end": Infinity}', "Infinity"),
        (b'{"matchers": {"rule": "x"}, "duration": 1e309}', "1e309"),
        (b'{"matchers": {"rule": "x"}, "duration": 1e12}', "duration"),
        (b'{"matchers": {"rule": "x"}, "duration": "99999999999d"}', "duration"),
        (b'{"matchers": {"rule": "x"}, "end": 1e300}', "end"),
    ],
)
async def test_non_finite_and_unbounded_silences_are_refused(api: Api, body: bytes, field: str) -> None:
    status, answer = await api.call("POST", "/v1/silences", raw=body)
    assert status == 400, answer
    assert field in json.dumps(answer), answer
    async with api.http.get(api.base + "/v1/silences", headers={"Authorization": "Bearer " + ADMIN}) as r:
        assert _strict(await r.text()) == {"silences": []}


async def test_non_finite_numbers_are_refused_by_the_model_routes(api: Api) -> None:
    status, answer = await api.call("POST", "/v1/registrations", raw=b'{"provider": "apns", "badge": NaN}')
    assert status == 400 and "NaN" in answer["message"], answer


async def test_a_stored_nan_silence_is_refused_at_load_with_a_warning(
    tmp_path: Path, broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "data").mkdir()
    store = AlertStore(tmp_path / "data" / "alerts.db")
    good = {
        "id": "good",
        "matchers": {"rule": "x"},
        "start": 0.0,
        "end": 4e9,
        "comment": "",
        "created_by": "",
    }
    store.save_silences([good, {**good, "id": "bad", "start": float("nan")}])
    store.close()
    caplog.set_level(logging.WARNING)
    service, _ = await start_service(service_config(tmp_path, broker.port))
    try:
        url = f"http://127.0.0.1:{service.http_port}/v1/silences"
        async with aiohttp.ClientSession() as http, http.get(url) as r:
            assert [s["id"] for s in _strict(await r.text())["silences"]] == ["good"]
    finally:
        await service.__aexit__(None, None, None)
    assert any("skipping a damaged stored silence" in m and "finite" in m for m in caplog.messages)


async def test_operator_errors_are_documented_and_carry_a_message(api: Api) -> None:
    async with api.http.get(api.base + "/openapi.json") as r:
        doc = await r.json()
    calls = [
        ("DELETE", "/v1/silences/nope", "/v1/silences/{id}", None),
        ("GET", "/v1/notifications/nope", "/v1/notifications/{id}", None),
        ("POST", "/v1/alerts/nope/ack", "/v1/alerts/{id}/ack", None),
        ("POST", "/v1/silences", "/v1/silences", b'{"matchers": {}}'),
        ("POST", "/v1/alerts/nope/ack", "/v1/alerts/{id}/ack", b"[1]"),
    ]
    required = doc["components"]["schemas"]["Error"]["required"]
    for method, path, template, raw in calls:
        status, body = await api.call(method, path, raw=raw)
        assert str(status) in doc["paths"][template][method.lower()]["responses"], (method, path, status)
        assert all(k in body for k in required) and body["status"] == status, (path, body)
        assert isinstance(body["message"], str) and body["detail"] == body["message"], (path, body)


async def test_gateway_answers_match_the_document_for_native_registrations(api: Api) -> None:
    async with api.http.get(api.base + "/openapi.json") as r:
        schemas = (await r.json())["components"]["schemas"]
    await api.call("POST", "/v1/registrations", {"provider": "apns", "token": APNS})  # no app, user, name
    status, items = await api.call("GET", "/registrations")
    [item] = [i for i in items if i["device"]["deviceToken"] == APNS]
    assert status == 200 and item["bundleId"] is None
    ref = schemas["C8yRegistrationList"]["items"]["$ref"].rsplit("/", 1)[1]
    props = schemas[ref]["properties"]
    for name in ("userId", "bundleId"):
        assert item[name] is None and "null" in props[name]["type"], name
    assert (
        item["device"]["deviceName"] is None and "null" in props["device"]["properties"]["deviceName"]["type"]
    )


async def test_the_cumulocity_api_ignores_fields_a_newer_alarm_app_sends(api: Api) -> None:
    device = {"deviceName": "phone", "deviceToken": APNS, "platform": "IOS", "osVersion": "18.1"}
    body = {
        "userId": "ann",
        "bundleId": "com.example.alarms",
        "tags": [],
        "device": device,
        "appVersion": "9",
    }
    status, answer = await api.call("POST", "/registrations", body)
    assert status == 204, answer
    assert await api.service.store.get("apns", APNS) is not None
    message = {**MESSAGE, "subtitle": "new", "body": {"alarmId": "1", "sourceId": "7"}}
    status, answer = await api.call("POST", "/notification", {"tags": ["a"], "message": message, "ttl": 3})
    assert status == 204, answer
    status, answer = await api.call("POST", "/registrations", {**body, "device": {**device, "platform": "x"}})
    assert status == 400 and answer["field"] == "device.platform", answer  # known fields are still checked


async def test_the_open_alerts_gauge_agrees_with_the_alerts_list(api: Api) -> None:
    await api.call("POST", "/v1/registrations", reg(tags=["home"]))
    for _ in range(3):
        status, _ = await api.call("POST", "/v1/push", {"audience": {"tags": "home"}, "title": "t"})
        assert status == 202
    await wait_until(lambda: api.service.metrics.notifications.total() >= 3, 5, "the pushes delivered")
    status, listed = await api.call("GET", "/v1/alerts")
    async with api.http.get(api.base + "/metrics") as r:
        text = await r.text()
    [gauge] = [line for line in text.splitlines() if line.startswith("tocsin_open_alerts ")]
    assert float(gauge.split()[1]) == len(listed["alerts"]) == 0, (gauge, listed)


async def test_every_error_is_a_problem_document_with_the_field_at_fault(api: Api) -> None:
    """The native, operator, console and Cumulocity-compatible routes, and aiohttp's own refusals."""
    calls = [
        ("POST", "/v1/registrations", {"provider": "apns", "token": "x"}, 400, "token"),
        ("POST", "/v1/silences", {"matchers": {"room": "a"}, "duration": "soon"}, 400, "duration"),
        ("POST", "/registrations", {"userId": "ann", "bundleId": "b"}, 400, "device"),
        ("GET", "/ui/api/notifications?limit=many", None, 400, "limit"),
        ("GET", "/v1/no-such-route", None, 404, None),
        ("DELETE", "/health", None, 405, None),
    ]
    for method, path, body, status, field in calls:
        async with api.http.request(
            method, api.base + path, json=body, headers={"Authorization": f"Bearer {ADMIN}"}
        ) as r:
            assert r.status == status, (path, r.status, await r.text())
            assert r.content_type == "application/problem+json", (path, r.content_type)
            answer = await r.json()
        assert answer["status"] == status and answer["type"] == "about:blank", answer
        assert answer["detail"] == answer["message"] and answer["title"], answer
        assert answer.get("field") == field, (path, answer)
        assert ("info" in answer) == path.startswith("/registrations"), answer
