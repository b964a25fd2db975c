"""The registration APIs of a running service over real HTTP: native /v1, the Cumulocity push gateway's, and
sending. Each bad-input class gets a 4xx JSON answer, leaves nothing written, and is counted."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from registrations.model import Audience
from tests.conftest import open_registry
from tests.integration.conftest import ADMIN, APNS, APNS2, APP, FCM, OTHER, Api, reg, running_api
from tests.support import Mosquitto, wait_until


@pytest.fixture
async def api(tmp_path: Path, broker: Mosquitto, store_url: str | None) -> AsyncIterator[Api]:
    """Every test here runs on both stores: SQLite, and PostgreSQL (``store.url``)."""
    overrides = {} if store_url is None else {"TOCSIN_STORE__URL": store_url}
    async with running_api(tmp_path, broker, **overrides) as found:
        yield found


async def test_register_update_move_list_and_unregister(api: Api) -> None:
    status, first = await api.call(
        "POST",
        "/v1/registrations",
        reg(
            user_id="ann",
            tags=["severity:critical"],
            channels=["alarms"],
            locale="de-DE",
            timezone="Europe/Berlin",
            quiet_hours="22:00-07:00",
            badge=2,
            environment="sandbox",
            device_name="Ann's iPhone",
        ),
    )
    assert status == 201, first
    assert first["state"] == "active" and first["created"].endswith("Z") and first["badge"] == 2
    status, again = await api.call("POST", "/v1/registrations", reg(user_id="bob", tags=["x"]))
    assert status == 200 and again["id"] == first["id"] and again["created"] == first["created"]
    assert again["user_id"] == "bob" and again["tags"] == ["x"]  # the token moved to bob
    assert await api.service.store.count() == 2  # with the console seed
    status, got = await api.call("GET", f"/v1/registrations/apns/{APNS.upper()}")
    assert status == 200 and got["user_id"] == "bob"
    status, patched = await api.call("PATCH", f"/v1/registrations/apns/{APNS}", {"badge": 7, "tags": ["y"]})
    assert (
        status == 200 and patched["badge"] == 7 and patched["tags"] == ["y"] and patched["user_id"] == "bob"
    )
    for i in range(5):
        await api.call("POST", "/v1/registrations", reg(f"{i:064x}", user_id="cat", tags=["many"]))
    status, page = await api.call("GET", "/v1/registrations?user_id=cat&limit=2")
    assert status == 200 and len(page["items"]) == 2 and page["next"]
    seen = [r["token"] for r in page["items"]]
    while page["next"]:
        status, page = await api.call("GET", f"/v1/registrations?user_id=cat&limit=2&after={page['next']}")
        seen += [r["token"] for r in page["items"]]
    assert sorted(seen) == [f"{i:064x}" for i in range(5)]
    status, page = await api.call("GET", "/v1/registrations?tags=many%20%26%26%20!y&provider=apns&limit=10")
    assert status == 200 and len(page["items"]) == 5
    status, page = await api.call("GET", "/v1/registrations?app=com.example.alarms&state=invalid")
    assert status == 200 and page == {"items": [], "next": None}
    assert (await api.call("DELETE", f"/v1/registrations/apns/{APNS}"))[0] == 204
    assert (await api.call("DELETE", f"/v1/registrations/apns/{APNS}"))[0] == 404
    assert (await api.call("GET", f"/v1/registrations/apns/{APNS}"))[0] == 404


async def test_acknowledged_registrations_are_committed_and_group_committed(api: Api, tmp_path: Path) -> None:
    results = await asyncio.gather(
        *(api.call("POST", "/v1/registrations", reg(f"{i:064x}", tags=["g"])) for i in range(60))
    )
    assert all(status == 201 for status, _ in results)
    assert api.service.writer.batches < 60  # several requests shared one transaction
    # a second connection (another instance's, for PostgreSQL) sees them all
    other = await open_registry(api.service.config.store.url, api.service.config.store_path)
    try:
        assert sum([len(b) async for b in other.resolve(Audience(tags=("g",)))]) == 60
    finally:
        await other.close()


async def test_keys_app_keys_only_touch_their_own_app(api: Api) -> None:
    assert (await api.call("GET", "/v1/registrations", key=None))[0] == 401
    status, body = await api.call("GET", "/v1/registrations", key="not-a-key-at-all-000")
    assert status == 401 and body["error"] == "unauthorized" and "not-a-key" not in json.dumps(body)
    status, mine = await api.call("POST", "/v1/registrations", {"provider": "fcm", "token": FCM}, key=APP)
    assert status == 201 and mine["app"] == "com.example.alarms"  # defaults to the key's app
    status, body = await api.call("POST", "/v1/registrations", reg(app="com.example.other"), key=APP)
    assert status == 403 and body["error"] == "forbidden"
    assert (await api.call("POST", "/v1/registrations", {"provider": "fcm", "token": FCM}, key=OTHER))[
        0
    ] == 403
    assert (await api.call("DELETE", f"/v1/registrations/fcm/{FCM}", key=OTHER))[0] == 403
    assert (await api.call("PATCH", f"/v1/registrations/fcm/{FCM}", {"badge": 1}, key=APP))[0] == 200
    assert (await api.call("GET", "/v1/registrations", key=APP))[0] == 403
    assert (await api.call("GET", f"/v1/registrations/fcm/{FCM}", key=APP))[0] == 403
    assert (await api.call("POST", "/v1/push", {"audience": {"users": ["x"]}, "title": "t"}, key=APP))[
        0
    ] == 403
    basic = base64.b64encode(f"alarms:{APP}".encode()).decode()
    async with api.http.delete(
        f"{api.base}/v1/registrations/fcm/{FCM}", headers={"Authorization": f"Basic {basic}"}
    ) as r:
        assert r.status == 204
    async with api.http.get(f"{api.base}/v1/registrations", headers={"X-API-Key": ADMIN}) as r:
        assert r.status == 200
    assert api.rejected("register", 403) == 2 and api.rejected("list", 401) == 2


BAD_BODIES = [
    (reg(colour="red"), "colour", "unknown field"),
    (reg(badge="3"), "badge", "valid integer"),
    (reg(tags="a"), "tags", "valid array"),
    (reg(token="a1" * 31), "token", "64 hexadecimal"),
    (reg(token="zz" * 32), "token", "64 hexadecimal"),
    (reg(provider="fcm", token="short:x"), "token", "FCM registration token"),
    (reg(provider="fcm", token="has spaces " * 5), "token", "FCM registration token"),
    (reg(provider="pigeon"), "provider", "unknown provider 'pigeon': one of log, apns, fcm, webhook"),
    (reg(tags=["bad tag"]), "tags", "must be 1-120 characters"),
    (reg(timezone="Mars/Olympus"), "timezone", "IANA"),
    (reg(quiet_hours="22-7"), "quiet_hours", "HH:MM-HH:MM"),
    ({"token": APNS}, "provider", "Field required"),
    ([1, 2], "(body)", "object"),
]


@pytest.mark.parametrize(("body", "field", "reason"), BAD_BODIES)
async def test_bad_bodies_are_400_with_the_field_and_write_nothing(
    api: Api, body: Any, field: str, reason: str
) -> None:
    before = await api.service.store.count()
    status, answer = await api.call("POST", "/v1/registrations", body)
    assert status == 400, answer
    assert answer["error"] == "invalid_body"
    assert any(d["field"] == field and reason in d["reason"] for d in answer["details"]), answer
    assert answer["field"] == answer["details"][0]["field"], answer  # the field at fault, first named
    assert await api.service.store.count() == before
    assert api.rejected("register", 400) == 1


async def test_malformed_json_oversized_bodies_and_bad_parameters(api: Api) -> None:
    status, body = await api.call("POST", "/v1/registrations", raw=b'{"provider": "apns",')
    assert status == 400 and "not valid JSON" in body["message"]
    status, body = await api.call("POST", "/v1/registrations", raw=b"{" + b" " * 70_000 + b"}")
    assert status == 413 and body["error"] == "body_too_large"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(20):
            yield b" " * 5000

    headers = {"Authorization": f"Bearer {ADMIN}"}
    async with api.http.post(api.base + "/v1/registrations", data=chunks(), headers=headers) as r:
        assert r.status == 413 and (await r.json())["error"] == "body_too_large"
    status, body = await api.call("GET", "/v1/registrations?tags=severity:critical%20%26%26%20(a%20||")
    assert status == 400 and body["error"] == "bad_tag_expression" and body["position"] == 27
    assert "position 27" in body["message"]
    status, body = await api.call("GET", "/v1/registrations?colour=red")
    assert status == 400 and body["error"] == "unknown_parameter"
    assert (await api.call("GET", "/v1/registrations?limit=0"))[0] == 400
    assert (await api.call("GET", "/v1/registrations?state=sleepy"))[0] == 400
    status, body = await api.call("GET", "/v1/registrations/apns/nothex")
    assert status == 400 and body["error"] == "invalid_token"
    status, body = await api.call("PATCH", f"/v1/registrations/apns/{APNS}", {"badge": 1})
    assert status == 404
    await api.call("POST", "/v1/registrations", reg())
    status, body = await api.call("PATCH", f"/v1/registrations/apns/{APNS}", {"token": APNS2})
    assert status == 400 and body["details"][0] == {"field": "token", "reason": "unknown field"}
    assert await api.service.store.count() == 2
    async with api.http.get(api.base + "/metrics") as r:
        text = await r.text()
    assert 'tocsin_api_rejected_total{route="register",status="413"} 2.0' in text
    assert 'tocsin_api_rejected_total{route="list",status="400"} 4.0' in text


async def test_push_to_a_tag_expression_now_and_scheduled(api: Api) -> None:
    for token, tags in (
        (APNS, ["severity:critical", "deviceId:all"]),
        (APNS2, ["severity:major", "deviceId:all"]),
    ):
        await api.call("POST", "/v1/registrations", reg(token, tags=tags))
    audience = {"tags": "severity:critical && (deviceId:all || deviceId:4711)"}
    status, body = await api.call(
        "POST", "/v1/push", {"audience": audience, "title": "Hot", "body": "CPU 99"}
    )
    assert status == 202 and len(body["id"]) == 32 and body["scheduled_for"] is None
    # No APNs provider is configured in this test: the delivery is counted, not printed.
    await wait_until(lambda: api.service.metrics.notifications.get("apns", "no_provider") == 1, 5, "delivery")
    status, body = await api.call(
        "POST",
        "/v1/push",
        {
            "audience": {"users": ["console"]},
            "title": "Later",
            "data": {"k": "v"},
            "schedule_at": _iso_in(0.3),
        },
    )
    assert status == 202 and body["scheduled_for"]
    assert api.printed.count() == 0
    await wait_until(lambda: api.printed.count() == 1, 5, "the scheduled push")
    line = api.printed.lines()[0]
    assert line["nid"] == body["id"] and line["to"] == "console" and line["title"] == "Later"
    status, err = await api.call(
        "POST",
        "/v1/push",
        {"audience": {"users": ["x"]}, "title": "t", "schedule_at": _iso_in(60), "expires_at": _iso_in(30)},
    )
    assert status == 400 and err["details"][0]["field"] == "expires_at"
    status, err = await api.call("POST", "/v1/push", {"audience": {"tags": "a &&& b"}, "title": "t"})
    assert status == 400 and err["position"] == 5
    status, err = await api.call("POST", "/v1/push", {"audience": {}, "title": "t"})
    assert status == 400 and "name someone" in err["message"]
    status, err = await api.call(
        "POST", "/v1/push", {"audience": {"users": ["x"]}, "title": "t", "schedule_at": "2030-01-01T00:00:00"}
    )
    assert status == 400 and "time zone" in err["message"]


def _iso_in(seconds: float) -> str:
    import datetime as dt

    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)).isoformat()
