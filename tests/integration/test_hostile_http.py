"""Hostile requests to a running service: each is a 4xx with a reason, never a 500 (issue 14)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.integration.conftest import APNS, Api, reg

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
