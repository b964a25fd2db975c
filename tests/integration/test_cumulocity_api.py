"""The Cumulocity push gateway's API (specs/cumulocity.md §6) as its clients call it: 204 on success, 400 with
{"message"} on errors, tags userId:<id with @ as _at_> and bundleId:<id> added, delete by bare token."""

from __future__ import annotations

import base64
from typing import Any

from tests.integration.conftest import ADMIN, APNS, APNS2, APP, FCM, OTHER, Api
from tests.support import wait_until

BUNDLE = "com.example.alarms"
# The gateway's own error field (message) and the platform's (error, info), in an RFC 9457 problem document
C8Y_ERROR = {"type", "title", "status", "detail", "error", "message", "info"}


def c8y_error(answer: Any, status: int, message: str | None = None) -> bool:
    return (
        set(answer) >= C8Y_ERROR
        and answer["status"] == status
        and answer["error"].startswith("pushgateway/")
        and answer["detail"] == answer["message"]
        and (message is None or answer["message"] == message)
    )


def c8y(
    token: str = APNS, platform: str = "IOS", user: str = "ann@example.com", **extra: Any
) -> dict[str, Any]:
    return {
        "userId": user,
        "bundleId": BUNDLE,
        "tags": ["severity:critical", "deviceId:all"],
        "device": {"deviceName": "Ann's iPhone", "deviceToken": token, "platform": platform},
        **extra,
    }


async def test_register_list_by_tag_and_user_and_unregister(api: Api) -> None:
    basic = {"Authorization": "Basic " + base64.b64encode(f"tenant/ann:{APP}".encode()).decode()}
    async with api.http.post(f"{api.base}/registrations", json=c8y(), headers=basic) as r:
        assert r.status == 204, await r.text()
    assert (await api.call("POST", "/registrations", c8y(FCM, "Android", user="bob"), key=APP))[0] == 204
    assert (await api.call("POST", "/registrations", c8y(APNS2, user="bob"), key=APP))[0] == 204
    stored = await api.service.store.get("apns", APNS)
    assert stored is not None and stored.user_id == "ann@example.com" and stored.app == BUNDLE
    assert set(stored.tags) == {
        "severity:critical",
        "deviceId:all",
        "userId:ann_at_example.com",
        f"bundleId:{BUNDLE}",
    }
    status, listed = await api.call("GET", "/registrations?tag=userId:bob")
    assert status == 200 and {d["device"]["deviceToken"] for d in listed} == {FCM, APNS2}
    android = next(d for d in listed if d["device"]["platform"] == "Android")
    assert android["userId"] == "bob" and android["bundleId"] == BUNDLE
    status, everyone = await api.call("GET", "/registrations")
    assert status == 200 and len(everyone) == 4  # with the console seed
    status, anns = await api.call("GET", "/registrations/ann@example.com")
    assert status == 200 and [d["device"]["deviceToken"] for d in anns] == [APNS]
    assert (await api.call("GET", "/registrations/nobody"))[1] == []
    assert (await api.call("DELETE", f"/registrations/{APNS.upper()}", key=APP))[0] == 204
    status, body = await api.call("DELETE", f"/registrations/{APNS}", key=APP)
    assert status == 400 and c8y_error(body, 400, "The device token is not yet registered."), body
    assert await api.service.store.get("apns", APNS) is None


async def test_errors_are_400_401_403_with_a_message(api: Api) -> None:
    before = await api.service.store.count()
    cases: list[tuple[Any, str]] = [
        (c8y(platform="Windows"), "device.platform"),
        (c8y(token="nothex"), "64 hexadecimal"),
        ({"userId": "ann", "bundleId": BUNDLE}, "device: Field required"),
        (c8y(tags="severity:critical"), "tags"),
        (c8y(user="ann smith"), "must be 1-120 characters"),
    ]
    for body, expected in cases:
        status, answer = await api.call("POST", "/registrations", body, key=APP)
        assert status == 400 and c8y_error(answer, 400) and expected in answer["message"], answer
        assert answer["error"] == "pushgateway/invalid_body", answer
    assert await api.service.store.count() == before
    status, answer = await api.call("POST", "/registrations", c8y(), key=None)
    assert status == 401 and c8y_error(answer, 401), answer
    status, answer = await api.call("POST", "/registrations", c8y(), key=OTHER)  # another app's key
    assert status == 403 and c8y_error(answer, 403), answer
    assert (await api.call("GET", "/registrations", key=APP))[0] == 403
    status, answer = await api.call("GET", "/registrations?tag=a%20%26%26")
    assert status == 400 and "position 5" in answer["message"]
    assert api.rejected("c8y_register", 400) == len(cases)


async def test_notification_to_users_tokens_and_tags(api: Api) -> None:
    await api.call(
        "POST",
        "/v1/registrations",
        {
            "provider": "log",
            "token": "ann-phone",
            "user_id": "ann",
            "tags": ["severity:critical", "deviceId:all"],
        },
    )
    await api.call(
        "POST",
        "/v1/registrations",
        {
            "provider": "log",
            "token": "bob-phone",
            "user_id": "bob",
            "tags": ["severity:major", "deviceId:4711"],
        },
    )
    message = {"title": "New CRITICAL alarm!", "body": {"alarmId": "12345"}}
    status, _ = await api.call(
        "POST", "/notification", {"receiver": {"userIds": ["ann"]}, "message": message}
    )
    assert status == 204
    await wait_until(lambda: api.printed.count() == 1, 5, "the notification to ann")
    line = api.printed.lines()[0]
    assert line["to"] == "ann-phone" and line["title"] == "New CRITICAL alarm!"
    tags = ["deviceId:all && (severity:all || severity:critical)", "deviceId:4711 && severity:major"]
    assert (await api.call("POST", "/notification", {"tags": tags, "message": message}))[0] == 204
    await wait_until(lambda: api.printed.count() == 3, 5, "the notifications by tag")
    assert {ln["to"] for ln in api.printed.lines()[1:]} == {"ann-phone", "bob-phone"}
    body = {
        "receiver": {"deviceTokens": ["bob-phone", "ann-phone"]},
        "tags": ["severity:major"],
        "message": message,
    }
    assert (await api.call("POST", "/notification", body))[0] == 204  # receivers filtered by tags
    await wait_until(lambda: api.printed.count() == 4, 5, "the filtered notification")
    assert api.printed.lines()[3]["to"] == "bob-phone"
    status, answer = await api.call("POST", "/notification", {"message": {"title": "no alarm"}})
    assert status == 400 and c8y_error(answer, 400, "message.body: Field required"), answer
    assert answer["field"] == "message.body", answer
    status, answer = await api.call("POST", "/notification", {"message": {"body": {"alarmId": "1"}}})
    assert status == 400 and "message.title" in answer["message"]
    assert (await api.call("POST", "/notification", {"message": message}, key=APP))[0] == 403
    assert (await api.call("POST", "/notification", {"tags": ["(a"], "message": message}))[0] == 400
    assert ADMIN  # the admin key sent every accepted request above
