"""The Cumulocity double against the spec (specs/cumulocity.md §1.4-1.6, §2, §3a, §8): plain aiohttp calls."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.fakes.cumulocity import Credentials, FakeCumulocity, FakeTenant
from tests.support import wait_until

ERROR_TYPE = "application/vnd.com.nsn.cumulocity.error+json"
ALARM_TYPE = "c8y_TemperatureAlarm"


@pytest.fixture
async def c8y() -> AsyncIterator[FakeCumulocity]:
    async with FakeCumulocity(redeliver_after_s=0.3) as fake:
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def h(creds: Credentials, **extra: str) -> dict[str, str]:
    return {"Authorization": creds.basic(), "Accept": "application/json", **extra}


async def call(
    http: aiohttp.ClientSession,
    c8y: FakeCumulocity,
    method: str,
    path: str,
    creds: Credentials | None = None,
    *,
    headers: dict[str, str] | None = None,
    **kw: Any,
) -> tuple[int, Any, str]:
    """(status, decoded JSON body or None, content type)."""
    hdrs = dict(headers or {})
    if creds is not None:
        hdrs.update(h(creds))
    async with http.request(method, c8y.base_url + path, headers=hdrs, **kw) as r:
        raw = await r.read()
        return r.status, (json.loads(raw) if raw else None), r.content_type


def service(t: FakeTenant) -> Credentials:
    assert t.service_user is not None
    return t.service_user


async def assert_error(result: tuple[int, Any, str], status: int) -> None:
    got, body, ctype = result
    assert got == status, body
    assert ctype == ERROR_TYPE
    assert set(body) == {"error", "message", "info"}


# -- authentication ------------------------------------------------------------------------------------------


async def test_credentials_repr_hides_the_password() -> None:
    creds = Credentials("t1", "ann", "s3cret-pass")
    assert "s3cret-pass" not in repr(creds)
    assert creds.basic() == "Basic " + base64.b64encode(b"t1/ann:s3cret-pass").decode()


async def test_basic_auth_forms_and_refusals(c8y: FakeCumulocity, http: aiohttp.ClientSession) -> None:
    t = c8y.add_tenant("t1")
    ann = t.add_user("ann", "pw-ann-123", roles=["ROLE_TOCSIN_READ"])
    status, body, ctype = await call(http, c8y, "GET", "/user/currentUser", ann.credentials)
    assert status == 200 and ctype == "application/vnd.com.nsn.cumulocity.currentuser+json"
    assert body["userName"] == "ann"
    assert [r["name"] for r in body["effectiveRoles"]] == ["ROLE_TOCSIN_READ"]
    assert all(set(r) == {"id", "name", "self"} for r in body["effectiveRoles"])
    await assert_error(await call(http, c8y, "GET", "/user/currentUser"), 401)
    await assert_error(
        await call(http, c8y, "GET", "/user/currentUser", Credentials("t1", "ann", "bad")), 401
    )
    await assert_error(
        await call(http, c8y, "GET", "/user/currentUser", Credentials("t2", "ann", "pw-ann-123")), 401
    )
    no_tenant = {"Authorization": "Basic " + base64.b64encode(b"ann:pw-ann-123").decode()}
    await assert_error(await call(http, c8y, "GET", "/user/currentUser", headers=no_tenant), 401)
    # a removed user is refused at once, even though its credentials were cached
    t.remove_user("ann")
    await assert_error(await call(http, c8y, "GET", "/user/currentUser", ann.credentials), 401)


async def test_bearer_and_cookie_with_xsrf(c8y: FakeCumulocity, http: aiohttp.ClientSession) -> None:
    t = c8y.add_tenant("t1")
    t.add_user("bob", roles=["ROLE_TOCSIN_ADMIN"])
    token = c8y.bearer_token("t1", "bob")
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims["ten"] == "t1" and claims["sub"] == "bob" and claims["exp"] > time.time()
    status, body, _ = await call(
        http, c8y, "GET", "/user/currentUser", headers={"Authorization": f"Bearer {token}"}
    )
    assert status == 200 and body["userName"] == "bob"
    cookie = {"Cookie": f"authorization={token}", "Authorization": "Basic ZHVtbXk="}
    ok = await call(
        http, c8y, "GET", "/user/currentUser", headers={**cookie, "X-XSRF-TOKEN": c8y.xsrf_token(token)}
    )
    assert ok[0] == 200 and ok[1]["userName"] == "bob"
    await assert_error(await call(http, c8y, "GET", "/user/currentUser", headers=cookie), 401)
    await assert_error(
        await call(http, c8y, "GET", "/user/currentUser", headers={**cookie, "X-XSRF-TOKEN": "wrong"}), 401
    )
    expired = c8y.bearer_token("t1", "bob", lifetime_s=-10)
    await assert_error(
        await call(http, c8y, "GET", "/user/currentUser", headers={"Authorization": f"Bearer {expired}"}), 401
    )
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    await assert_error(
        await call(http, c8y, "GET", "/user/currentUser", headers={"Authorization": f"Bearer {forged}"}), 401
    )


async def test_missing_role_is_403(c8y: FakeCumulocity, http: aiohttp.ClientSession) -> None:
    t = c8y.add_tenant("t1")
    reader = t.add_user("reader", roles=["ROLE_ALARM_READ"])
    device = t.add_device("pump")
    body = {
        "source": {"id": device},
        "type": ALARM_TYPE,
        "text": "hot",
        "severity": "MAJOR",
        "time": "2024-05-01T10:00:00.000Z",
    }
    await assert_error(await call(http, c8y, "POST", "/alarm/alarms", reader.credentials, json=body), 403)
    assert (await call(http, c8y, "GET", "/alarm/alarms", reader.credentials))[0] == 200
    await assert_error(await call(http, c8y, "GET", "/inventory/managedObjects", reader.credentials), 403)
    await assert_error(await call(http, c8y, "GET", "/user/t1/users/reader", reader.credentials), 403)
    await assert_error(
        await call(http, c8y, "GET", "/application/currentApplication/subscriptions", reader.credentials), 403
    )


# -- application, subscriptions, users -----------------------------------------------------------------------


async def test_subscriptions_for_the_bootstrap_user_only(
    c8y: FakeCumulocity, http: aiohttp.ClientSession
) -> None:
    c8y.add_tenant("t1")
    c8y.add_tenant("t2")
    c8y.add_tenant("t3", subscribed=False)
    status, body, ctype = await call(
        http, c8y, "GET", "/application/currentApplication/subscriptions", c8y.bootstrap
    )
    assert status == 200 and ctype == "application/vnd.com.nsn.cumulocity.applicationusercollection+json"
    users = {u["tenant"]: u for u in body["users"]}
    assert set(users) == {"t1", "t2"}
    assert users["t1"]["name"] == "service_tocsin"
    assert users["t1"]["password"] == service(c8y.tenant("t1")).password
    await assert_error(
        await call(
            http, c8y, "GET", "/application/currentApplication/subscriptions", service(c8y.tenant("t1"))
        ),
        403,
    )
    # the bootstrap user reads the current application and tenant, nothing of the tenants' data
    status, app, _ = await call(http, c8y, "GET", "/application/currentApplication", c8y.bootstrap)
    assert status == 200 and app["key"] == c8y.app_key and app["name"] == "tocsin"
    status, tenant, ctype = await call(http, c8y, "GET", "/tenant/currentTenant", c8y.bootstrap)
    assert status == 200 and tenant["name"] == "management"
    assert ctype == "application/vnd.com.nsn.cumulocity.currenttenant+json"
    await assert_error(await call(http, c8y, "GET", "/alarm/alarms", c8y.bootstrap), 403)
    # subscribing again makes a fresh password: the old one fails
    old = service(c8y.tenant("t1"))
    c8y.subscribe("t1")
    assert service(c8y.tenant("t1")).password != old.password
    await assert_error(await call(http, c8y, "GET", "/user/currentUser", old), 401)
    assert (await call(http, c8y, "GET", "/user/currentUser", service(c8y.tenant("t1"))))[0] == 200


async def test_service_user_roles_and_user_lookup(c8y: FakeCumulocity, http: aiohttp.ClientSession) -> None:
    t = c8y.add_tenant("t1")
    c8y.add_tenant("t2").add_user("zed")
    t.add_user("ann@example.com")
    manifest = json.loads(open("cumulocity-manifest.json").read())  # noqa: ASYNC230, SIM115
    status, me, _ = await call(http, c8y, "GET", "/user/currentUser", service(t))
    assert {r["name"] for r in me["effectiveRoles"]} == set(manifest["requiredRoles"])
    status, user, ctype = await call(http, c8y, "GET", "/user/t1/users/ann@example.com", service(t))
    assert status == 200 and user["userName"] == "ann@example.com" and "password" not in user
    assert ctype == "application/vnd.com.nsn.cumulocity.user+json"
    await assert_error(await call(http, c8y, "GET", "/user/t1/users/nobody", service(t)), 404)
    await assert_error(await call(http, c8y, "GET", "/user/t2/users/zed", service(t)), 403)
    status, tenant, _ = await call(http, c8y, "GET", "/tenant/currentTenant", service(t))
    assert status == 200 and tenant["name"] == "t1"
    status, option, _ = await call(http, c8y, "GET", "/tenant/options/tocsin/severityThreshold", service(t))
    assert status == 200 and option["value"] == "MAJOR"


async def test_environment(c8y: FakeCumulocity) -> None:
    c8y.add_tenant("t1")
    env = c8y.environment()
    assert env["C8Y_BASEURL"] == c8y.base_url
    assert (
        env["C8Y_BOOTSTRAP_TENANT"] == "management" and env["C8Y_BOOTSTRAP_USER"] == "servicebootstrap_tocsin"
    )
    assert env["C8Y_BOOTSTRAP_PASSWORD"] == c8y.bootstrap.password
    assert env["C8Y_MICROSERVICE_ISOLATION"] == "MULTI_TENANT" and env["APPLICATION_KEY"] == c8y.app_key
    assert env["SERVER_PORT"] == "80" and env["MICROSERVICE_SUBSCRIPTION_ENABLED"] == "true"
    assert "C8Y_TENANT" not in env
    per = c8y.environment("PER_TENANT", "t1")
    assert per["C8Y_TENANT"] == "t1" and per["C8Y_USER"] == "service_tocsin"
    assert per["C8Y_PASSWORD"] == service(c8y.tenant("t1")).password


# -- alarms -------------------------------------------------------------------------------------------------


async def test_alarm_deduplication_by_source_and_type(
    c8y: FakeCumulocity, http: aiohttp.ClientSession
) -> None:
    t = c8y.add_tenant("t1")
    device = t.add_device("Pump 7")
    body = {
        "source": {"id": device},
        "type": ALARM_TYPE,
        "text": "Temperature too high",
        "severity": "MAJOR",
        "time": "2024-05-01T10:00:00.000Z",
        "c8y_Threshold": {"limit": 80},
    }
    status, first, ctype = await call(http, c8y, "POST", "/alarm/alarms", service(t), json=body)
    assert status == 201 and ctype == "application/vnd.com.nsn.cumulocity.alarm+json"
    assert first["count"] == 1 and first["status"] == "ACTIVE" and "firstOccurrenceTime" not in first
    assert first["source"] == {
        "id": device,
        "name": "Pump 7",
        "self": f"{c8y.base_url}/inventory/managedObjects/{device}",
    }
    assert first["c8y_Threshold"] == {"limit": 80}
    again = {**body, "time": "2024-05-01T10:05:00.000Z", "text": "ignored", "severity": "CRITICAL"}
    status, second, _ = await call(http, c8y, "POST", "/alarm/alarms", service(t), json=again)
    assert status == 201 and second["id"] == first["id"] and second["count"] == 2
    assert second["time"] == "2024-05-01T10:05:00.000Z" and second["firstOccurrenceTime"] == body["time"]
    assert second["text"] == "Temperature too high" and second["severity"] == "MAJOR"
    # ACKNOWLEDGED is still de-duplicated; CLEARED never is
    t.update_alarm(first["id"], status="ACKNOWLEDGED")
    assert t.create_alarm(device, ALARM_TYPE, "x")["id"] == first["id"]
    t.update_alarm(first["id"], status="CLEARED")
    fresh = t.create_alarm(device, ALARM_TYPE, "back again")
    assert fresh["id"] != first["id"] and fresh["count"] == 1
    other_type = t.create_alarm(device, "c8y_OtherAlarm", "other")
    assert other_type["id"] not in (first["id"], fresh["id"])
    assert len(t.alarms) == 3


async def test_alarm_validation_and_update_rules(c8y: FakeCumulocity, http: aiohttp.ClientSession) -> None:
    t = c8y.add_tenant("t1")
    device = t.add_device("pump")
    base = {
        "source": {"id": device},
        "type": ALARM_TYPE,
        "text": "t",
        "severity": "MAJOR",
        "time": "2024-05-01T10:00:00.000Z",
    }
    for bad in (
        {**base, "severity": "major"},
        {k: v for k, v in base.items() if k != "time"},
        {**base, "source": {"id": "999999"}},
    ):
        await assert_error(await call(http, c8y, "POST", "/alarm/alarms", service(t), json=bad), 422)
    alarm = t.create_alarm(device, ALARM_TYPE, "hot")
    path = f"/alarm/alarms/{alarm['id']}"
    await assert_error(await call(http, c8y, "PUT", path, service(t), json={"type": "other"}), 422)
    await assert_error(await call(http, c8y, "PUT", path, service(t), json={"status": "DONE"}), 422)
    await assert_error(
        await call(http, c8y, "PUT", "/alarm/alarms/424242", service(t), json={"text": "x"}), 404
    )
    status, updated, _ = await call(
        http, c8y, "PUT", path, service(t), json={"severity": "CRITICAL", "c8y_Note": {"a": 1}}
    )
    assert status == 200 and updated["severity"] == "CRITICAL" and updated["c8y_Note"] == {"a": 1}
    status, got, _ = await call(http, c8y, "GET", path, service(t))
    assert status == 200 and got == updated
    # without Accept, a POST/PUT answers with an empty body
    headers = {"Authorization": service(t).basic()}
    async with http.put(
        c8y.base_url + path, json={"text": "quiet"}, headers=headers, skip_auto_headers=["Accept"]
    ) as r:
        assert r.status == 200 and await r.read() == b""
    assert t.alarms[alarm["id"]]["text"] == "quiet"


async def test_alarm_filters_and_paging(c8y: FakeCumulocity, http: aiohttp.ClientSession) -> None:
    t = c8y.add_tenant("t1")
    d1, d2 = t.add_device("one"), t.add_device("two")
    for i in range(7):
        t.create_alarm(d1, f"type{i}", "x", severity="MAJOR" if i % 2 else "MINOR")
    cleared = t.create_alarm(d2, "typeX", "y", severity="CRITICAL")
    t.update_alarm(cleared["id"], status="CLEARED")
    status, page, ctype = await call(http, c8y, "GET", "/alarm/alarms", service(t))
    assert status == 200 and ctype == "application/vnd.com.nsn.cumulocity.alarmcollection+json"
    assert len(page["alarms"]) == 5 and page["statistics"] == {"currentPage": 1, "pageSize": 5}
    assert page["alarms"][0]["id"] == cleared["id"]  # newest first
    assert "next" in page
    async with http.get(page["next"], headers=h(service(t))) as r:
        second = await r.json(content_type=None)
    assert len(second["alarms"]) == 3 and "next" not in second and "prev" in second
    q = {"source": d1, "severity": "MAJOR,CRITICAL", "withTotalPages": "true", "pageSize": "2"}
    _, majors, _ = await call(http, c8y, "GET", "/alarm/alarms", service(t), params=q)
    assert majors["statistics"]["totalPages"] == 2 and all(a["severity"] == "MAJOR" for a in majors["alarms"])
    _, cl, _ = await call(http, c8y, "GET", "/alarm/alarms", service(t), params={"status": "CLEARED"})
    assert [a["id"] for a in cl["alarms"]] == [cleared["id"]]
    _, typed, _ = await call(
        http, c8y, "GET", "/alarm/alarms", service(t), params={"type": "type1,type2", "pageSize": "2000"}
    )
    assert sorted(a["type"] for a in typed["alarms"]) == ["type1", "type2"]
    await assert_error(
        await call(http, c8y, "GET", "/alarm/alarms", service(t), params={"pageSize": "2001"}), 422
    )
    await assert_error(
        await call(http, c8y, "GET", "/alarm/alarms", service(t), params={"status": "OPEN"}), 422
    )


# -- inventory ----------------------------------------------------------------------------------------------


async def test_inventory_crud_paging_and_tenant_isolation(
    c8y: FakeCumulocity, http: aiohttp.ClientSession
) -> None:
    t1, t2 = c8y.add_tenant("t1"), c8y.add_tenant("t2")
    ids = []
    for i in range(6):
        status, mo, ctype = await call(
            http,
            c8y,
            "POST",
            "/inventory/managedObjects",
            service(t1),
            json={"name": f"r{i}", "type": "tocsin_Registration", "tocsin_Registration": {"i": i}},
        )
        assert status == 201 and ctype == "application/vnd.com.nsn.cumulocity.managedobject+json"
        ids.append(mo["id"])
    await call(
        http, c8y, "POST", "/inventory/managedObjects", service(t1), json={"name": "other", "type": "other"}
    )
    q = {"type": "tocsin_Registration", "withTotalPages": "true"}
    status, page, ctype = await call(http, c8y, "GET", "/inventory/managedObjects", service(t1), params=q)
    assert ctype == "application/vnd.com.nsn.cumulocity.managedobjectcollection+json"
    assert [m["id"] for m in page["managedObjects"]] == ids[:5]
    assert page["statistics"] == {"currentPage": 1, "pageSize": 5, "totalPages": 2} and "next" in page
    _, page2, _ = await call(
        http, c8y, "GET", "/inventory/managedObjects", service(t1), params={**q, "currentPage": "2"}
    )
    assert [m["id"] for m in page2["managedObjects"]] == ids[5:]
    _, frag, _ = await call(
        http,
        c8y,
        "GET",
        "/inventory/managedObjects",
        service(t1),
        params={"fragmentType": "tocsin_Registration", "pageSize": "100"},
    )
    assert len(frag["managedObjects"]) == 6
    # the other tenant sees none of them, by list or by id, and cannot change them
    _, other, _ = await call(
        http, c8y, "GET", "/inventory/managedObjects", service(t2), params={"type": "tocsin_Registration"}
    )
    assert other["managedObjects"] == []
    await assert_error(await call(http, c8y, "GET", f"/inventory/managedObjects/{ids[0]}", service(t2)), 404)
    await assert_error(
        await call(http, c8y, "DELETE", f"/inventory/managedObjects/{ids[0]}", service(t2)), 404
    )
    # update merges fragments (null removes), delete removes
    status, mo, _ = await call(
        http,
        c8y,
        "PUT",
        f"/inventory/managedObjects/{ids[0]}",
        service(t1),
        json={"tocsin_Registration": None, "x": 1},
    )
    assert status == 200 and "tocsin_Registration" not in mo and mo["x"] == 1 and mo["name"] == "r0"
    assert (await call(http, c8y, "DELETE", f"/inventory/managedObjects/{ids[0]}", service(t1)))[0] == 204
    await assert_error(await call(http, c8y, "GET", f"/inventory/managedObjects/{ids[0]}", service(t1)), 404)


# -- Notifications 2.0 -------------------------------------------------------------------------------------


SUBSCRIPTION = {
    "subscription": "tocsinalarms",
    "context": "tenant",
    "subscriptionFilter": {"apis": ["alarms"]},
}


async def n2_setup(
    c8y: FakeCumulocity, http: aiohttp.ClientSession, tenant: str = "t1"
) -> tuple[FakeTenant, str]:
    """A tenant with a device and the alarms subscription; returns (tenant, device id)."""
    t = c8y.add_tenant(tenant)
    device = t.add_device("Pump 7")
    status, _, _ = await call(
        http, c8y, "POST", "/notification2/subscriptions", service(t), json=SUBSCRIPTION
    )
    assert status == 201
    return t, device


async def token(
    c8y: FakeCumulocity, http: aiohttp.ClientSession, t: FakeTenant, subscriber: str = "tocsin", **extra: Any
) -> str:
    body = {"subscriber": subscriber, "subscription": "tocsinalarms", **extra}
    status, doc, _ = await call(http, c8y, "POST", "/notification2/token", service(t), json=body)
    assert status == 200, doc
    return str(doc["token"])


def consumer_url(c8y: FakeCumulocity, tok: str, consumer: str = "") -> str:
    url = c8y.base_url.replace("http://", "ws://") + f"/notification2/consumer/?token={tok}"
    return url + (f"&consumer={consumer}" if consumer else "")


async def frame(
    ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0
) -> tuple[str, str, str, dict[str, Any]]:
    """The next frame, checked to be exactly ``ackId\\n/<tenant>/alarms/<src>\\nACTION\\n\\n<json>``."""
    msg = await ws.receive(timeout=timeout)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    lines = msg.data.split("\n")
    assert len(lines) == 5 and lines[3] == "", msg.data
    ack, desc, action, _, body = lines
    assert ack and " " not in ack
    assert body == json.dumps(json.loads(body), separators=(",", ":"), ensure_ascii=False)
    return ack, desc, action, json.loads(body)


async def test_n2_subscription_validation(c8y: FakeCumulocity, http: aiohttp.ClientSession) -> None:
    t, device = await n2_setup(c8y, http)
    path = "/notification2/subscriptions"
    await assert_error(await call(http, c8y, "POST", path, service(t), json=SUBSCRIPTION), 409)
    for bad in (
        {**SUBSCRIPTION, "subscription": "tocsin_alarms"},
        {**SUBSCRIPTION, "subscription": "tocsin-alarms"},
        {**SUBSCRIPTION, "subscription": ""},
        {**SUBSCRIPTION, "context": "device"},
        {**SUBSCRIPTION, "subscriptionFilter": {"apis": ["measurements"]}},
        {**SUBSCRIPTION, "subscriptionFilter": {"apis": ["*", "alarms"]}},
        {"subscription": "permo", "context": "mo", "subscriptionFilter": {"apis": ["alarms"]}},
    ):
        await assert_error(await call(http, c8y, "POST", path, service(t), json=bad), 422)
    mo_sub = {"subscription": "tocsinalarms", "context": "mo", "source": {"id": "99999"}}
    await assert_error(await call(http, c8y, "POST", path, service(t), json=mo_sub), 404)
    status, created, ctype = await call(
        http, c8y, "POST", path, service(t), json={**mo_sub, "source": {"id": device}}
    )
    assert status == 201 and ctype == "application/vnd.com.nsn.cumulocity.subscription+json"
    assert created["source"]["id"] == device and created["id"]
    status, listed, _ = await call(http, c8y, "GET", path, service(t), params={"context": "tenant"})
    assert status == 200 and [s["subscription"] for s in listed["subscriptions"]] == ["tocsinalarms"]
    nobody = t.add_user("nobody", roles=["ROLE_ALARM_READ"])
    await assert_error(await call(http, c8y, "POST", path, nobody.credentials, json=SUBSCRIPTION), 403)
    await assert_error(await call(http, c8y, "DELETE", path, service(t)), 422)
    assert (await call(http, c8y, "DELETE", f"{path}/{created['id']}", service(t)))[0] == 204
    await assert_error(await call(http, c8y, "DELETE", f"{path}/{created['id']}", service(t)), 404)


async def test_token_claims_are_standard_base64_safe(
    c8y: FakeCumulocity, http: aiohttp.ClientSession
) -> None:
    t, _ = await n2_setup(c8y, http)
    for i in range(30):
        tok = await token(c8y, http, t, subscriber=f"tocsin{i}x" * (i % 4 + 1), expiresInMinutes=30 + i)
        head, payload, _sig = tok.split(".")
        assert "-" not in payload and "_" not in payload
        claims = json.loads(base64.b64decode(payload + "=" * (-len(payload) % 4), validate=True))
        assert json.loads(base64.urlsafe_b64decode(head + "=="))["alg"] == "RS256"
        assert claims["sub"] == f"tocsin{i}x" * (i % 4 + 1) and claims["topic"] == "t1/relnotif/tocsinalarms"
        assert claims["jti"] and abs(claims["exp"] - claims["iat"] - (30 + i) * 60) <= 1
    path = "/notification2/token"
    for bad in (
        {"subscriber": "tocsin", "subscription": "nosuch"},
        {"subscriber": "toc sin", "subscription": "tocsinalarms"},
        {"subscription": "tocsinalarms"},
    ):
        await assert_error(await call(http, c8y, "POST", path, service(t), json=bad), 422)


async def test_frames_create_update_dedup_and_no_op(c8y: FakeCumulocity, http: aiohttp.ClientSession) -> None:
    t, device = await n2_setup(c8y, http)
    t2, device2 = await n2_setup(c8y, http, "t2")
    async with http.ws_connect(consumer_url(c8y, await token(c8y, http, t))) as ws:
        await wait_until(lambda: c8y.consumers("t1") == 1, what="consumer connected")
        t2.create_alarm(device2, ALARM_TYPE, "other tenant")  # never reaches t1's consumer
        alarm = t.create_alarm(device, ALARM_TYPE, "hot", c8y_Extra={"a": 1})
        ack, desc, action, body = await frame(ws)
        assert (desc, action) == (f"/t1/alarms/{device}", "CREATE")
        assert body == alarm
        await ws.send_str(ack)
        t.create_alarm(device, ALARM_TYPE, "again")  # de-duplicated: UPDATE with count 2
        ack, desc, action, body = await frame(ws)
        assert (action, body["id"], body["count"]) == ("UPDATE", alarm["id"], 2)
        await ws.send_str(ack)
        t.update_alarm(alarm["id"], severity="MAJOR")  # no change: no frame
        t.update_alarm(alarm["id"], status="ACKNOWLEDGED")
        ack, _, action, body = await frame(ws)
        assert (action, body["status"], body["severity"]) == ("UPDATE", "ACKNOWLEDGED", "MAJOR")
        await ws.send_str(ack)
        await wait_until(lambda: t.unacked() == 0, what="all frames acknowledged")


async def test_unacked_frames_are_resent_after_the_delay(
    c8y: FakeCumulocity, http: aiohttp.ClientSession
) -> None:
    t, device = await n2_setup(c8y, http)
    async with http.ws_connect(consumer_url(c8y, await token(c8y, http, t))) as ws:
        await wait_until(lambda: c8y.consumers("t1") == 1, what="consumer connected")
        alarm = t.create_alarm(device, ALARM_TYPE, "hot")
        ack, _, _, _ = await frame(ws)
        assert t.unacked() == 1
        await ws.send_str(ack + "\n")  # not exactly the ack id: not an ack
        again, _, action, body = await frame(ws)  # re-sent after redeliver_after_s (0.3 s)
        assert (again, action, body["id"]) == (ack, "CREATE", alarm["id"])
        await ws.send_str(ack)
        await wait_until(lambda: t.unacked() == 0, what="ack taken")
        nxt = t.create_alarm(device, "c8y_Other", "next")
        _, _, _, body = await frame(ws)
        assert body["id"] == nxt["id"]


async def test_backlog_persists_and_unacked_come_first_on_reconnect(http: aiohttp.ClientSession) -> None:
    async with FakeCumulocity(redeliver_after_s=60) as c8y:
        t, device = await n2_setup(c8y, http)
        async with http.ws_connect(consumer_url(c8y, await token(c8y, http, t))) as ws:
            await wait_until(lambda: c8y.consumers("t1") == 1, what="consumer connected")
            first = t.create_alarm(device, "a1", "first")
            ack1, _, _, _ = await frame(ws)  # not acknowledged
        await wait_until(lambda: c8y.consumers("t1") == 0, what="consumer gone")
        second = t.create_alarm(device, "a2", "second")  # queued while nobody is connected
        third = t.create_alarm(device, "a3", "third")
        assert t.backlog() == 3 and t.unacked() == 1
        async with http.ws_connect(consumer_url(c8y, await token(c8y, http, t))) as ws:
            got = [await frame(ws) for _ in range(3)]
            assert [g[3]["id"] for g in got] == [first["id"], second["id"], third["id"]]
            assert got[0][0] == ack1
            for g in got:
                await ws.send_str(g[0])
            await wait_until(lambda: t.backlog() == 0, what="backlog drained")


async def test_one_connection_per_exclusive_token(c8y: FakeCumulocity, http: aiohttp.ClientSession) -> None:
    t, device = await n2_setup(c8y, http)
    tok = await token(c8y, http, t)
    async with http.ws_connect(consumer_url(c8y, tok)) as ws:
        await wait_until(lambda: c8y.consumers("t1") == 1, what="consumer connected")
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(consumer_url(c8y, tok))
        assert refused.value.status == 409
        assert c8y.consumers("t1") == 1
        t.create_alarm(device, ALARM_TYPE, "still delivered to the first")
        assert (await frame(ws))[2] == "CREATE"
    await wait_until(lambda: c8y.consumers("t1") == 0, what="consumer gone")
    async with http.ws_connect(consumer_url(c8y, tok)):
        await wait_until(lambda: c8y.consumers("t1") == 1, what="reconnected")


async def test_bad_expired_and_foreign_tokens_refused_at_handshake(http: aiohttp.ClientSession) -> None:
    async with FakeCumulocity(token_lifetime_s=-1) as expired, FakeCumulocity(token_lifetime_s=1) as short:
        te, _ = await n2_setup(expired, http)
        ts, _ = await n2_setup(short, http)
        for fake, tok in (
            (expired, await token(expired, http, te)),
            (expired, "not-a-jwt"),
            (expired, await token(short, http, ts)),  # signed alike, but not issued by this platform
            (expired, ""),
        ):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(consumer_url(fake, tok))
            assert refused.value.status == 401
        # an open connection is closed when its token expires
        async with http.ws_connect(consumer_url(short, await token(short, http, ts))) as ws:
            msg = await ws.receive(timeout=5)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert short.consumers("t1") == 0


async def test_unsubscribing_the_tenant_closes_and_revokes(
    c8y: FakeCumulocity, http: aiohttp.ClientSession
) -> None:
    t, _ = await n2_setup(c8y, http)
    creds = service(t)
    tok = await token(c8y, http, t)
    async with http.ws_connect(consumer_url(c8y, tok)) as ws:
        await wait_until(lambda: c8y.consumers("t1") == 1, what="consumer connected")
        c8y.unsubscribe("t1")
        msg = await ws.receive(timeout=5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert c8y.consumers("t1") == 0 and t.service_user is None
    await assert_error(await call(http, c8y, "GET", "/user/currentUser", creds), 401)
    await assert_error(await call(http, c8y, "GET", "/alarm/alarms", creds), 401)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(consumer_url(c8y, tok))
    assert refused.value.status == 401
    _, subs, _ = await call(http, c8y, "GET", "/application/currentApplication/subscriptions", c8y.bootstrap)
    assert subs["users"] == []


async def test_unsubscribe_subscriber_drops_the_backlog(
    c8y: FakeCumulocity, http: aiohttp.ClientSession
) -> None:
    t, device = await n2_setup(c8y, http)
    tok = await token(c8y, http, t)
    async with http.ws_connect(consumer_url(c8y, tok)):
        await wait_until(lambda: c8y.consumers("t1") == 1, what="consumer connected")
    t.create_alarm(device, ALARM_TYPE, "waits in the backlog")
    assert t.backlog() == 1
    status, body, _ = await call(
        http, c8y, "POST", "/notification2/unsubscribe", service(t), params={"token": tok}
    )
    assert status == 200 and body == {"result": "DONE"}
    assert t.backlog() == 0
    # by frame: the server closes the socket and forgets the subscriber
    async with http.ws_connect(consumer_url(c8y, tok)) as ws:
        await wait_until(lambda: c8y.consumers("t1") == 1, what="consumer connected")
        t.create_alarm(device, "c8y_Second", "x")
        await frame(ws)
        await ws.send_str("unsubscribe_subscriber")
        msg = await ws.receive(timeout=5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert t.backlog() == 0 and c8y.consumers("t1") == 0


async def test_drop_consumers_fault_injection_and_recording(
    c8y: FakeCumulocity, http: aiohttp.ClientSession
) -> None:
    t, _ = await n2_setup(c8y, http)
    async with http.ws_connect(consumer_url(c8y, await token(c8y, http, t), consumer="replica1")) as ws:
        await wait_until(lambda: c8y.consumers("t1") == 1, what="consumer connected")
        assert c8y.drop_consumers("t2") == 0
        assert c8y.drop_consumers() == 1
        msg = await ws.receive(timeout=5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert c8y.consumers("t1") == 0
    c8y.fail("POST", "/notification2/tok*", 503, times=2)
    body = {"subscriber": "tocsin", "subscription": "tocsinalarms"}
    for _ in range(2):
        await assert_error(await call(http, c8y, "POST", "/notification2/token", service(t), json=body), 503)
    assert (await call(http, c8y, "POST", "/notification2/token", service(t), json=body))[0] == 200
    key = {"X-Cumulocity-Application-Key": c8y.app_key}
    await call(http, c8y, "GET", "/tenant/currentTenant", service(t), headers=key)
    last = c8y.requests[-1]
    assert (last.method, last.path, last.tenant, last.user, last.app_key_sent, last.status) == (
        "GET",
        "/tenant/currentTenant",
        "t1",
        "service_tocsin",
        True,
        200,
    )
    ws_req = next(r for r in c8y.requests if r.path == "/notification2/consumer/")
    assert (
        ws_req.status == 101
        and ws_req.query["token"] == "<redacted>"
        and ws_req.query["consumer"] == "replica1"
    )
    assert not c8y.requests[-2].app_key_sent and c8y.requests[-2].status == 200
    assert [r.status for r in c8y.requests if r.path == "/notification2/token"][-3:] == [503, 503, 200]
    assert all(service(t).password not in repr(r) for r in c8y.requests)


async def test_runs_alone_as_a_process(http: aiohttp.ClientSession) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.fakes.cumulocity", "--tenants", "3", stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        info = json.loads(await asyncio.wait_for(proc.stdout.readline(), 20))
        assert set(info) == {"port", "base_url", "app_key", "environment", "tenants"}
        assert info["environment"]["C8Y_BASEURL"] == info["base_url"] == f"http://127.0.0.1:{info['port']}"
        assert sorted(info["tenants"]) == ["t1", "t2", "t3"]
        t2 = info["tenants"]["t2"]
        admin = {
            "Authorization": Credentials("t2", t2["user"], t2["password"]).basic(),
            "Accept": "application/json",
        }
        async with http.get(info["base_url"] + "/user/currentUser", headers=admin) as r:
            roles = {x["name"] for x in (await r.json(content_type=None))["effectiveRoles"]}
        assert {"ROLE_ALARM_ADMIN", "ROLE_TOCSIN_ADMIN", "ROLE_INVENTORY_ADMIN"} <= roles
        alarm = {
            "source": {"id": t2["device"]},
            "type": ALARM_TYPE,
            "text": "x",
            "severity": "MAJOR",
            "time": "2024-05-01T10:00:00.000Z",
        }
        async with http.post(info["base_url"] + "/alarm/alarms", json=alarm, headers=admin) as r:
            assert r.status == 201
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0


async def test_shared_token_partitions_by_source(c8y: FakeCumulocity, http: aiohttp.ClientSession) -> None:
    t, _ = await n2_setup(c8y, http)
    devices = [t.add_device(f"d{i}") for i in range(8)]
    tok = await token(c8y, http, t, shared=True)
    async with (
        http.ws_connect(consumer_url(c8y, tok, "a")) as a,
        http.ws_connect(consumer_url(c8y, tok, "b")) as b,
    ):
        await wait_until(lambda: c8y.consumers("t1") == 2, what="two shared consumers")
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:  # an exclusive token cannot join them
            await http.ws_connect(consumer_url(c8y, await token(c8y, http, t)))
        assert refused.value.status == 409
        seen: dict[str, list[str]] = {"a": [], "b": []}

        async def read(name: str, ws: aiohttp.ClientWebSocketResponse) -> None:
            while True:
                ack, desc, _, _ = await frame(ws, timeout=30)
                seen[name].append(desc)
                await ws.send_str(ack)

        readers = [asyncio.create_task(read("a", a)), asyncio.create_task(read("b", b))]
        for round_ in range(2):
            for d in devices:
                t.create_alarm(d, f"type{round_}", "x")
        await wait_until(lambda: len(seen["a"]) + len(seen["b"]) == 16, what="all 16 frames")
        await wait_until(lambda: t.backlog() == 0, what="all acknowledged")
        for r in readers:
            r.cancel()
        assert seen["a"] and seen["b"] and not set(seen["a"]) & set(seen["b"])  # one device, one consumer


async def test_non_persistent_subscriber_resumes_at_the_newest(
    c8y: FakeCumulocity, http: aiohttp.ClientSession
) -> None:
    t, device = await n2_setup(c8y, http)
    tok = await token(c8y, http, t, nonPersistent=True)
    async with http.ws_connect(consumer_url(c8y, tok)):
        await wait_until(lambda: c8y.consumers("t1") == 1, what="connected")
    await wait_until(lambda: c8y.consumers("t1") == 0, what="gone")
    t.create_alarm(device, "c8y_Missed", "nobody listens")
    assert t.backlog() == 0
    async with http.ws_connect(consumer_url(c8y, tok)) as ws:
        await wait_until(lambda: c8y.consumers("t1") == 1, what="connected again")
        fresh = t.create_alarm(device, "c8y_Fresh", "now")
        assert (await frame(ws))[3]["id"] == fresh["id"]


async def test_bulk_status_update_count_settings_and_unknown_paths(
    c8y: FakeCumulocity, http: aiohttp.ClientSession
) -> None:
    t = c8y.add_tenant("t1")
    d1, d2 = t.add_device("one"), t.add_device("two")
    for i in range(3):
        t.create_alarm(d1, f"a{i}", "x")
    t.create_alarm(d2, "b", "y")
    clear = {"status": "CLEARED"}
    await assert_error(await call(http, c8y, "PUT", "/alarm/alarms", service(t), json=clear), 422)
    await assert_error(
        await call(http, c8y, "PUT", "/alarm/alarms", service(t), params={"source": d1}, json={"text": "no"}),
        422,
    )
    status, _, _ = await call(
        http, c8y, "PUT", "/alarm/alarms", service(t), params={"source": d1}, json=clear
    )
    assert status == 200
    assert sorted(a["status"] for a in t.alarms.values()) == ["ACTIVE", "CLEARED", "CLEARED", "CLEARED"]
    async with http.get(
        c8y.base_url + "/alarm/alarms/count", params={"resolved": "false"}, headers=h(service(t))
    ) as r:
        assert r.status == 200 and await r.text() == "1"
    status, settings, _ = await call(http, c8y, "GET", "/application/currentApplication/settings", service(t))
    assert status == 200 and settings[0]["key"] == "severityThreshold"
    await assert_error(await call(http, c8y, "GET", "/no/such/path", service(t)), 404)


async def test_deleted_alarms_and_managed_object_changes_are_notified(
    c8y: FakeCumulocity, http: aiohttp.ClientSession
) -> None:
    t, device = await n2_setup(c8y, http)
    regs = {
        "subscription": "tocsinregs",
        "context": "tenant",
        "subscriptionFilter": {"apis": ["managedobjects"], "typeFilter": "tocsin_Registration"},
    }
    status, _, _ = await call(http, c8y, "POST", "/notification2/subscriptions", service(t), json=regs)
    assert status == 201
    body = {"subscriber": "regs", "subscription": "tocsinregs"}
    _, doc, _ = await call(http, c8y, "POST", "/notification2/token", service(t), json=body)
    async with (
        http.ws_connect(consumer_url(c8y, await token(c8y, http, t))) as alarms,
        http.ws_connect(consumer_url(c8y, str(doc["token"]))) as mos,
    ):
        await wait_until(lambda: c8y.consumers("t1") == 2, what="both consumers connected")
        alarm = t.create_alarm(device, ALARM_TYPE, "hot")
        await alarms.send_str((await frame(alarms))[0])
        status, _, _ = await call(http, c8y, "DELETE", "/alarm/alarms", service(t), params={"source": device})
        assert status == 204 and alarm["id"] not in t.alarms
        ack, desc, action, deleted = await frame(alarms)
        assert (desc, action, deleted) == (f"/t1/alarms/{device}", "DELETE", {"id": alarm["id"]})
        await alarms.send_str(ack)
        t.add_device("not a registration")  # another type: not notified on the registrations subscription
        mo = t._create_mo({"type": "tocsin_Registration", "tocsin_Registration": {"token": "x"}}, owner="me")
        ack, desc, action, created = await frame(mos)
        assert (desc, action, created["id"]) == (f"/t1/managedobjects/{mo['id']}", "CREATE", mo["id"])
        await mos.send_str(ack)
        t._delete_mo(str(mo["id"]))
        ack, desc, action, gone = await frame(mos)
        assert (action, gone) == ("DELETE", {"id": mo["id"]})
        await mos.send_str(ack)
        t.create_alarm(device, ALARM_TYPE, "again")  # a new alarm: the deleted one is not de-duplicated
        _, _, action, body = await frame(alarms)
        assert action == "CREATE" and body["id"] != alarm["id"]
