"""tocsin as a multi-tenant Cumulocity microservice, end to end against the double and the fake providers."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

from tests.c8y_support import c8y_rig
from tests.fakes.keys import apns_token, random_id
from tests.support import wait_until

FCM_TOKEN = "fcm:" + "b" * 60


async def test_an_alarm_reaches_its_own_tenants_phones_and_nobody_elses(tmp_path: Path) -> None:
    async with c8y_rig(tmp_path) as rig:
        t1, t2 = rig.c8y.add_tenant("t1"), rig.c8y.add_tenant("t2")
        alice = t1.add_user("alice", roles=["ROLE_TOCSIN_READ"])
        bob = t2.add_user("bob", roles=["ROLE_TOCSIN_READ"])
        pump, press = t1.add_device("Pump 7"), t2.add_device("Press 2")
        service = await rig.start()
        await rig.following(service, "t1", "t2")
        alice_ios, alice_android, bob_ios = apns_token(), "fcm-" + random_id(60), apns_token()
        assert await rig.register(service, alice, alice_ios) == 204
        assert await rig.register(service, alice, alice_android, platform="Android") == 204
        assert await rig.register(service, bob, bob_ios) == 204

        alarm = t1.create_alarm(pump, "c8y_TemperatureAlarm", "Temperature too high", severity="CRITICAL")
        await wait_until(lambda: bool(rig.apns_for(alice_ios) and rig.fcm_for(alice_android)), 10, "pushes")
        ios = rig.apns_for(alice_ios)[0]
        assert ios["aps"]["alert"]["title"] == "New CRITICAL alarm!"
        assert ios["alarmId"] == alarm["id"] and ios["sourceId"] == pump
        android = rig.fcm_for(alice_android)[0]
        assert android["data"]["alarmId"] == alarm["id"]

        t2.create_alarm(press, "c8y_PressureAlarm", "Pressure low", severity="MAJOR")
        await wait_until(lambda: bool(rig.apns_for(bob_ios)), 10, "bob's push")
        assert len(rig.apns_for(alice_ios)) == 1 and len(rig.fcm_for(alice_android)) == 1
        assert [p["alarmId"] for p in rig.apns_for(bob_ios)] == [t2.alarms[next(iter(t2.alarms))]["id"]]

        # registrations live in each tenant's own inventory
        kinds = {t.id: [m for m in t.managed_objects.values() if m.get("type") == "tocsin_Registration"]
                 for t in (t1, t2)}  # fmt: skip
        assert len(kinds["t1"]) == 2 and len(kinds["t2"]) == 1
        await wait_until(  # the frames' acknowledgements race the pushes they led to
            lambda: rig.c8y.tenant("t1").unacked() == 0 and rig.c8y.tenant("t2").unacked() == 0,
            10,
            "every frame to be acknowledged",
        )

        # the tenant's setting severityThreshold (the manifest's default: MAJOR) holds back lesser alarms
        runtime = service.cumulocity
        assert runtime is not None
        t1.create_alarm(pump, "c8y_Drift", "a little off", severity="MINOR")
        await wait_until(lambda: runtime.frames.get("below_threshold") == 1, 10, "the minor alarm")
        assert len(rig.apns_for(alice_ios)) == 1


async def test_a_restart_in_the_middle_loses_no_alarm_and_repeats_none(tmp_path: Path) -> None:
    async with c8y_rig(tmp_path) as rig:
        t1 = rig.c8y.add_tenant("t1")
        alice = t1.add_user("alice", roles=["ROLE_TOCSIN_READ"])
        device = t1.add_device("Pump 1")
        first = await rig.start()
        await rig.following(first, "t1")
        phone = apns_token()
        assert await rig.register(first, alice, phone) == 204
        total, stop_after = 60, 20

        async def raise_alarms() -> None:
            for i in range(total):
                t1.create_alarm(device, f"c8y_Alarm{i}", f"alarm {i}")
                await asyncio.sleep(0.01)  # a steady stream, not synchronisation

        producer = asyncio.create_task(raise_alarms())
        await wait_until(lambda: len(rig.apns_for(phone)) >= stop_after, 20, f"{stop_after} pushes")
        await rig.stop(first)  # mid-stream: alarms keep coming while tocsin is away
        await producer
        second = await rig.start()
        await wait_until(lambda: len(rig.apns_for(phone)) >= total, 20, "every alarm's push")
        await wait_until(lambda: t1.backlog() == 0, 10, "every frame acknowledged")
        ids = [p["alarmId"] for p in rig.apns_for(phone)]
        assert sorted(ids) == sorted(a["id"] for a in t1.alarms.values())  # none lost
        assert len(ids) == len(set(ids)) == total  # none repeated
        assert second.cumulocity is not None


async def test_redelivered_and_out_of_order_frames_are_handled_once(tmp_path: Path) -> None:
    async with c8y_rig(tmp_path, redeliver_after_s=0.05) as rig:
        t1 = rig.c8y.add_tenant("t1")
        alice = t1.add_user("alice", roles=["ROLE_TOCSIN_READ"])
        device = t1.add_device("Pump 1")
        service = await rig.start()
        await rig.following(service, "t1")
        phone = apns_token()
        assert await rig.register(service, alice, phone) == 204
        rig.c8y.lose_acks = 3  # the next three acknowledgements get lost: the frame comes again, and again
        alarm = t1.create_alarm(device, "c8y_DoorAlarm", "door open")
        await wait_until(lambda: t1.backlog() == 0, 10, "the frame acknowledged in the end")
        t1.update_alarm(alarm["id"], status="CLEARED")
        await wait_until(lambda: len(rig.apns_for(phone)) == 2, 10, "the resolve notice")
        titles = [p["aps"]["alert"]["title"] for p in rig.apns_for(phone)]
        assert titles == ["New MAJOR alarm!", "Alarm cleared"]
        assert service.cumulocity is not None
        assert service.cumulocity.frames.get("duplicate") >= 1


async def test_a_tenant_that_unsubscribes_stops_receiving(tmp_path: Path) -> None:
    async with c8y_rig(tmp_path) as rig:
        t1, t2 = rig.c8y.add_tenant("t1"), rig.c8y.add_tenant("t2")
        alice, bob = (
            t1.add_user("alice", roles=["ROLE_TOCSIN_READ"]),
            t2.add_user("bob", roles=["ROLE_TOCSIN_READ"]),
        )
        d1, d2 = t1.add_device("a"), t2.add_device("b")
        service = await rig.start()
        await rig.following(service, "t1", "t2")
        supervised = service.supervisor.states()  # each tenant's stream runs under the supervisor
        assert {"cumulocity-alarms-t1", "cumulocity-alarms-t2", "cumulocity-subscriptions"} <= set(supervised)
        p1, p2 = apns_token(), apns_token()
        assert await rig.register(service, alice, p1) == 204 and await rig.register(service, bob, p2) == 204
        rig.c8y.unsubscribe("t1")
        await wait_until(lambda: "t1" not in service.stores, 10, "t1 to be dropped")
        gone = lambda: "cumulocity-alarms-t1" not in service.supervisor.states()  # noqa: E731
        await wait_until(gone, 10, "t1's stream to stop")  # stopped: gone, not down
        assert service.supervisor.down == {}
        assert rig.c8y.consumers("t1") == 0
        t1.create_alarm(d1, "c8y_A", "after unsubscribing")
        t2.create_alarm(d2, "c8y_B", "still subscribed")
        await wait_until(lambda: bool(rig.apns_for(p2)), 10, "t2's push")
        assert rig.apns_for(p1) == []
        status, _ = await rig.call(service, "GET", "/registrations/alice", alice)
        assert status == 403  # the tenant's users are not served any more
        rig.c8y.subscribe("t1")  # and back, with a new service user
        await rig.following(service, "t1")
        again = t1.create_alarm(d1, "c8y_C", "subscribed again")
        await wait_until(
            lambda: again["id"] in {p["alarmId"] for p in rig.apns_for(p1)}, 10, "t1's push again"
        )


async def test_bad_credentials_and_missing_roles_are_refused(tmp_path: Path) -> None:
    async with c8y_rig(tmp_path) as rig:
        t1, t2 = rig.c8y.add_tenant("t1"), rig.c8y.add_tenant("t2", subscribed=False)
        alice = t1.add_user("alice", roles=["ROLE_TOCSIN_READ"])
        admin = t1.add_user("admin", roles=["ROLE_TOCSIN_ADMIN"])
        nobody = t1.add_user("nobody", roles=["ROLE_ALARM_READ"])
        carol = t2.add_user("carol", roles=["ROLE_TOCSIN_ADMIN"])
        service = await rig.start()
        await rig.following(service, "t1")
        token = apns_token()

        wrong = {"Authorization": "Basic " + base64.b64encode(b"t1/alice:wrong").decode()}
        status, body = await rig.call(service, "GET", "/registrations", headers=wrong)
        assert status == 401 and "did not accept" in body["message"]
        assert (await rig.call(service, "GET", "/registrations"))[0] == 401  # no credentials at all
        status, body = await rig.call(service, "GET", "/registrations", nobody)
        assert status == 403 and "ROLE_TOCSIN_READ" in body["message"]
        status, body = await rig.call(service, "GET", "/registrations", carol)
        assert status == 403 and "not subscribed" in body["message"]
        status, body = await rig.call(service, "GET", "/registrations", alice)
        assert status == 403  # listing is for the tenant's admins
        assert await rig.register(service, nobody, token) == 403

        # a user registers its own phones only; an admin registers for users that exist in the tenant
        body = {
            "userId": "admin",
            "bundleId": "b",
            "tags": [],
            "device": {"deviceToken": token, "platform": "IOS"},
        }
        status, _ = await rig.call(service, "POST", "/registrations", alice, json=body)
        assert status == 403
        status, answer = await rig.call(
            service, "POST", "/registrations", admin, json={**body, "userId": "ghost"}
        )
        assert status == 400 and "ghost" in answer["message"]
        assert (await rig.call(service, "POST", "/registrations", admin, json={**body, "userId": "alice"}))[
            0
        ] == 204
        status, listed = await rig.call(service, "GET", "/registrations", admin)
        assert status == 200 and [r["userId"] for r in listed] == ["alice"]

        # the other credential forms: Bearer and the browser's cookie with its XSRF token
        jwt = rig.c8y.bearer_token("t1", "admin")
        bearer = {"Authorization": f"Bearer {jwt}"}
        assert (await rig.call(service, "GET", "/registrations", headers=bearer))[0] == 200
        cookie = {"Cookie": f"authorization={jwt}", "X-XSRF-TOKEN": rig.c8y.xsrf_token(jwt)}
        assert (await rig.call(service, "GET", "/registrations", headers=cookie))[0] == 200
        forged = {"Cookie": f"authorization={jwt}", "X-XSRF-TOKEN": "forged"}
        assert (await rig.call(service, "GET", "/registrations", headers=forged))[0] == 401
        # operator routes: tenant users see their tenant's alerts; deployment-wide ones are not theirs
        assert (await rig.call(service, "GET", "/v1/alerts", admin))[0] == 200
        assert (await rig.call(service, "GET", "/v1/alerts", alice))[0] == 403
        assert (await rig.call(service, "GET", "/v1/cluster", admin))[0] == 403
        assert jwt not in json.dumps(service.health()) and alice.password not in json.dumps(service.health())


async def test_acknowledging_from_the_phone_acknowledges_the_alarm_and_clearing_sends_the_resolve_notice(
    tmp_path: Path,
) -> None:
    async with c8y_rig(tmp_path) as rig:
        t1, t2 = rig.c8y.add_tenant("t1"), rig.c8y.add_tenant("t2")
        alice = t1.add_user("alice", roles=["ROLE_TOCSIN_READ"])
        bob = t2.add_user("bob", roles=["ROLE_TOCSIN_ADMIN"])
        device = t1.add_device("Boiler")
        service = await rig.start()
        await rig.following(service, "t1", "t2")
        phone = apns_token()
        assert await rig.register(service, alice, phone) == 204
        alarm = t1.create_alarm(device, "c8y_Overheat", "too hot", severity="CRITICAL")
        await wait_until(lambda: bool(rig.apns_for(phone)), 10, "the push")

        status, alerts = await rig.call(service, "GET", "/v1/alerts", bob)
        assert status == 403 or alerts["alerts"] == []  # bob's tenant has none of them
        noise = service.noise
        (alert_id,) = [n.alert_id for n in noise.open_alerts().values() if n.tenant == "t1"]
        assert (await rig.call(service, "POST", f"/v1/alerts/{alert_id}/ack", bob))[0] == 404
        status, answer = await rig.call(service, "POST", f"/v1/alerts/{alert_id}/ack", alice, json={})
        assert status == 200 and answer["by"] == "alice"
        assert answer["origin"] == {"acknowledged": True, "alarm": alarm["id"]}
        assert t1.alarms[alarm["id"]]["status"] == "ACKNOWLEDGED"

        t1.update_alarm(alarm["id"], status="CLEARED")
        await wait_until(lambda: len(rig.apns_for(phone)) == 2, 10, "the resolve notice")
        assert rig.apns_for(phone)[1]["aps"]["alert"]["title"] == "Alarm cleared"


async def test_push_gateway_notification_loads_the_alarm_text_and_takes_the_push_options(
    tmp_path: Path,
) -> None:
    """``POST /notification`` as the gateway: the alarm's text is the body, its source the sourceId, the sound
    ``default``; the options of ``POST /v1/push`` beside the title reach APNs and FCM."""
    async with c8y_rig(tmp_path) as rig:
        t1, t2 = rig.c8y.add_tenant("t1"), rig.c8y.add_tenant("t2")
        alice = t1.add_user("alice", roles=["ROLE_TOCSIN_READ"])
        ops = t1.add_user("ops", roles=["ROLE_TOCSIN_ADMIN"])
        pump, press = t1.add_device("Pump 7"), t2.add_device("Press 2")
        service = await rig.start()
        await rig.following(service, "t1", "t2")
        ios, android = apns_token(), "fcm-" + random_id(60)
        assert await rig.register(service, alice, ios) == 204
        assert await rig.register(service, alice, android, platform="Android") == 204
        runtime = service.cumulocity
        assert runtime is not None
        alarm = t1.create_alarm(pump, "c8y_Pressure", "Pressure low on pump 7", severity="MINOR")
        await wait_until(lambda: runtime.frames.get("below_threshold") == 1, 10, "the minor alarm")
        message = {
            "title": "New MINOR alarm!",
            "body": {"alarmId": alarm["id"]},
            "badge": 2,
            "priority": "high",
            "collapse_key": f"alarm-{alarm['id']}",
            "thread_id": "pump-7",
            "category": "ALARM",
            "interruption_level": "time-sensitive",
            "mutable_content": True,
        }
        body = {"receiver": {"userIds": ["alice"]}, "message": message}
        status, answer = await rig.call(service, "POST", "/notification", ops, json=body)
        assert status == 204, answer
        await wait_until(lambda: bool(rig.apns_for(ios) and rig.fcm_for(android)), 10, "the pushes")
        [received] = [r for r in rig.apns.received if r.token == ios]
        assert received.headers["apns-priority"] == "10"
        assert received.headers["apns-collapse-id"] == f"alarm-{alarm['id']}"
        assert received.payload == {
            "aps": {
                "alert": {"title": "New MINOR alarm!", "body": "Pressure low on pump 7"},
                "sound": "default",
                "badge": 2,
                "thread-id": "pump-7",
                "category": "ALARM",
                "mutable-content": 1,
                "interruption-level": "time-sensitive",
            },
            "alarmId": alarm["id"],
            "sourceId": pump,
        }
        [m] = rig.fcm_for(android)
        assert m["notification"] == {"title": "New MINOR alarm!", "body": "Pressure low on pump 7"}
        assert {"alarmId": alarm["id"], "sourceId": pump}.items() <= m["data"].items()
        assert m["android"]["priority"] == "HIGH" and m["android"]["collapse_key"] == f"alarm-{alarm['id']}"
        assert m["android"]["notification"]["sound"] == "default"

        message = {"title": "Still low", "body": {"alarmId": alarm["id"]}, "sound": "siren.caf"}
        body = {"receiver": {"deviceTokens": [ios]}, "message": message}
        assert (await rig.call(service, "POST", "/notification", ops, json=body))[0] == 204
        await wait_until(lambda: len(rig.apns_for(ios)) == 2, 10, "the second push")
        assert rig.apns_for(ios)[1]["aps"]["sound"] == "siren.caf"

        other = t2.create_alarm(press, "c8y_Pressure", "t2's own", severity="MINOR")
        for alarm_id in ("999999", other["id"]):  # none, and another tenant's
            message = {"title": "x", "body": {"alarmId": alarm_id}}
            status, answer = await rig.call(service, "POST", "/notification", ops, json={"message": message})
            assert status == 400 and answer["error"] == "pushgateway/invalid_body", answer
            assert answer["message"] == f"message.body.alarmId: the tenant has no alarm {alarm_id}", answer
        assert len(rig.apns_for(ios)) == 2 and len(rig.fcm_for(android)) == 1
