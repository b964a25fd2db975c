"""Stateless pods and replicas against the Cumulocity double: what must survive is kept in the tenant.

Every pod here starts on an empty data directory of its own (``C8yRig.start_pod``), as the platform starts
one; whatever one pod knew has to come from the tenant (its sources' managed objects) to the next.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from service.app import Service
from service.cumulocity.tenant_state import FRAGMENT
from service.notify.model import notification_key
from tests.c8y_support import C8yRig, c8y_rig
from tests.fakes.cumulocity import FakeUser
from tests.fakes.keys import apns_token
from tests.support import wait_until, wait_until_async

ESCALATING = """rules:
  - id: c8y-escalating
    alarm: {status: [ACTIVE]}
    title: "New {{ alarm.severity }} alarm!"
    body: "{{ alarm.text }}"
    resolved: {title: "Alarm cleared", body: "{{ type }} cleared"}
    audience: {tags: [ops]}
    escalate:
      - {after: 1s, audience: {tags: [boss]}}
      - {after: 2500ms, audience: {tags: [ceo]}}
"""


def titles(rig: C8yRig, phone: str) -> list[str]:
    return [p["aps"]["alert"]["title"] for p in rig.apns_for(phone)]


def alarm_ids(rig: C8yRig, phone: str) -> list[str]:
    return [str(p["alarmId"]) for p in rig.apns_for(phone)]


async def test_a_pod_restarted_with_an_empty_disk_resumes_where_the_last_one_stopped(tmp_path: Path) -> None:
    async with c8y_rig(tmp_path) as rig:
        t1 = rig.c8y.add_tenant("t1")
        alice = t1.add_user("alice", roles=["ROLE_TOCSIN_READ"])
        pump, valve = t1.add_device("Pump 1"), t1.add_device("Valve 2")
        first = await rig.start_pod("pod1")
        await rig.following(first, "t1")
        phone = apns_token()
        assert await rig.register(first, alice, phone) == 204
        door = t1.create_alarm(valve, "c8y_DoorAlarm", "door open")  # open before the restart
        await wait_until(lambda: len(rig.apns_for(phone)) == 1, 10, "the door alarm's push")
        # the alert is kept on the source's managed object, not in the pod
        await wait_until(lambda: t1.backlog() == 0, 10, "the frame acknowledged")
        kept = t1.managed_objects[valve][FRAGMENT]
        assert [a["labels"]["type"] for a in kept["alerts"].values()] == ["c8y_DoorAlarm"]
        assert door["id"] in kept["versions"]

        total, stop_after = 40, 10

        async def raise_alarms() -> None:
            for i in range(total):
                t1.create_alarm(pump, f"c8y_Alarm{i}", f"alarm {i}")
                await asyncio.sleep(0.01)  # a steady stream, not synchronisation

        producer = asyncio.create_task(raise_alarms())
        await wait_until(lambda: len(rig.apns_for(phone)) >= 1 + stop_after, 20, f"{stop_after} pushes")
        await rig.stop(first)  # the pod goes, and its disk with it
        await producer
        second = await rig.start_pod("pod2")  # a new pod: an empty data directory, another name
        await wait_until(lambda: len(rig.apns_for(phone)) >= 1 + total, 20, "every alarm's push")
        await wait_until(lambda: t1.backlog() == 0, 10, "every frame acknowledged")
        # the new pod knows the door alert from the tenant: its resolve notice goes out
        t1.update_alarm(door["id"], status="CLEARED")
        await wait_until(lambda: titles(rig, phone)[-1:] == ["Alarm cleared"], 10, "the resolve notice")
        await wait_until(lambda: t1.backlog() == 0, 10, "the clear acknowledged")
        ids = alarm_ids(rig, phone)
        opened = [a["id"] for a in t1.alarms.values()]
        assert sorted(ids[:-1]) == sorted(opened)  # none lost
        assert len(ids[:-1]) == len(set(ids[:-1])) == total + 1  # none twice
        assert ids[-1] == door["id"]
        assert second.cumulocity is not None
        assert second.cumulocity.state_io.get("restored") >= 1
        assert not (tmp_path / "pods" / "pod2-0" / "data" / "cumulocity.db").exists()


async def _alert_of(rig: C8yRig, service: Service, user: FakeUser, alarm_type: str) -> str:
    status, body = await rig.call(service, "GET", "/v1/alerts", user)
    assert status == 200
    return str(next(a["id"] for a in body["alerts"] if a["labels"].get("type") == alarm_type))


async def test_acknowledgements_and_escalation_steps_survive_a_pod(tmp_path: Path) -> None:
    rules = tmp_path / "escalating.yaml"
    rules.write_text(ESCALATING)
    async with c8y_rig(tmp_path) as rig:
        t1 = rig.c8y.add_tenant("t1")
        alice = t1.add_user("alice", roles=["ROLE_TOCSIN_READ"])
        admin = t1.add_user("admin", roles=["ROLE_TOCSIN_ADMIN"])
        d1, d2 = t1.add_device("Pump 1"), t1.add_device("Pump 2")
        first = await rig.start_pod("pod1", rules=rules, acknowledge_alarms=False)
        await rig.following(first, "t1")
        ops, boss, ceo = apns_token(), apns_token(), apns_token()
        for phone, tag in ((ops, "ops"), (boss, "boss"), (ceo, "ceo")):
            assert await rig.register(first, alice, phone, tags=[tag]) == 204
        acked = t1.create_alarm(d1, "c8y_Acked", "someone is on it")
        loud = t1.create_alarm(d2, "c8y_Loud", "nobody is on it")
        await wait_until(lambda: len(rig.apns_for(ops)) == 2, 10, "both alarms' pushes")
        alert = await _alert_of(rig, first, admin, "c8y_Acked")
        status, _ = await rig.call(first, "POST", f"/v1/alerts/{alert}/ack", admin, json={"comment": "mine"})
        assert status == 200
        # the acknowledgement is kept in the tenant at once (here it does not go to the platform alarm)
        assert t1.managed_objects[d1][FRAGMENT]["acks"][alert]["comment"] == "mine"
        await wait_until(lambda: len(rig.apns_for(boss)) == 1, 10, "the first escalation step")
        await wait_until(
            lambda: t1.managed_objects[d2][FRAGMENT]["escalated"] != {}, 10, "the step kept in the tenant"
        )
        await rig.stop(first)
        second = await rig.start_pod("pod2", rules=rules, acknowledge_alarms=False)
        await wait_until(lambda: len(rig.apns_for(ceo)) == 1, 10, "the second step, from the new pod")
        assert alarm_ids(rig, boss) == [loud["id"]]  # the first step is not sent again
        assert alarm_ids(rig, ceo) == [loud["id"]]  # the acknowledged alert never escalated
        status, body = await rig.call(second, "GET", "/v1/alerts", admin)
        assert {a["labels"]["type"]: a["acknowledged"] for a in body["alerts"]} == {
            "c8y_Acked": True,
            "c8y_Loud": False,
        }
        t1.update_alarm(acked["id"], status="CLEARED")
        await wait_until(lambda: titles(rig, ops)[-1:] == ["Alarm cleared"], 10, "the resolve notice")


async def test_two_replicas_share_a_tenant_each_alarm_once(tmp_path: Path) -> None:
    async with c8y_rig(tmp_path) as rig:
        t1 = rig.c8y.add_tenant("t1")
        alice = t1.add_user("alice", roles=["ROLE_TOCSIN_READ"])
        devices = [t1.add_device(f"Pump {i}") for i in range(8)]
        a = await rig.start_pod("replicaA")
        b = await rig.start_pod("replicaB")
        await wait_until(lambda: rig.c8y.consumers("t1") >= 4, 10, "both replicas' streams")  # 2 each
        phone = apns_token()
        assert await rig.register(a, alice, phone) == 204  # through one replica ...

        async def seen() -> bool:
            store = b.stores.store("t1")
            return store is not None and await store.count() == 1

        await wait_until_async(seen, 5, "... seen by the other at once")
        raised = [t1.create_alarm(d, f"c8y_Type{i % 3}", f"alarm {i}") for i, d in enumerate(devices * 3)]
        await wait_until(lambda: len(rig.apns_for(phone)) >= len(set(x["id"] for x in raised)), 10, "pushes")
        await wait_until(lambda: t1.backlog() == 0, 10, "every frame acknowledged")
        ids = alarm_ids(rig, phone)
        assert sorted(ids) == sorted({x["id"] for x in raised}) and len(ids) == len(set(ids))
        assert a.cumulocity is not None and b.cumulocity is not None
        handled_a, handled_b = a.cumulocity.frames.get("handled"), b.cumulocity.frames.get("handled")
        assert handled_a > 0 and handled_b > 0  # the tenant's sources are split between the replicas
        assert handled_a + handled_b == len(ids)
        # a source's alarms always go to the same replica
        by_source: dict[str, set[str]] = {}
        for service, name in ((a, "replicaA"), (b, "replicaB")):
            for source, st_alerts in service.cumulocity.tenants["t1"].owned.items():  # type: ignore[union-attr]
                if st_alerts:
                    by_source.setdefault(source, set()).add(name)
        assert all(len(names) == 1 for names in by_source.values()) and len(by_source) == len(devices)


async def test_a_killed_replicas_frames_are_handled_by_the_other(tmp_path: Path) -> None:
    async with c8y_rig(tmp_path) as rig:
        t1 = rig.c8y.add_tenant("t1")
        alice = t1.add_user("alice", roles=["ROLE_TOCSIN_READ"])
        devices = [t1.add_device(f"Pump {i}") for i in range(6)]
        a = await rig.start_pod("replicaA")
        b = await rig.start_pod("replicaB")
        await wait_until(lambda: rig.c8y.consumers("t1") >= 4, 10, "both replicas' streams")
        phone = apns_token()
        assert await rig.register(a, alice, phone) == 204
        assert a.cumulocity is not None and b.cumulocity is not None
        # replica A hangs on every frame (its pushes never finish): frames stay in flight, unacknowledged
        hang = asyncio.Event()

        async def stuck(_event: object) -> None:
            await hang.wait()

        a.cumulocity.on_event = stuck
        runtime_b = b.cumulocity
        raised = [t1.create_alarm(d, "c8y_Burst", f"burst on {d}") for d in devices]
        await wait_until(lambda: t1.unacked() > 0, 10, "frames in flight")
        await wait_until(lambda: runtime_b.frames.get("handled") > 0, 10, "B handling its share")
        in_flight = t1.unacked()
        assert in_flight > 0 and len(rig.apns_for(phone)) < len(raised)
        # kill A: its connections drop without a goodbye, nothing of it is stopped cleanly
        for task in (a.cumulocity.tenants["t1"].task, a.cumulocity.tenants["t1"].changes_task):
            assert task is not None
            task.cancel()
        await wait_until(lambda: len(rig.apns_for(phone)) >= len(raised), 15, "B handles A's frames too")
        await wait_until(lambda: t1.backlog() == 0, 10, "every frame acknowledged")
        ids = alarm_ids(rig, phone)
        assert sorted(ids) == sorted(x["id"] for x in raised) and len(ids) == len(set(ids))
        hang.set()


async def test_a_deleted_alarm_resolves_its_alert(tmp_path: Path) -> None:
    async with c8y_rig(tmp_path) as rig:
        t1 = rig.c8y.add_tenant("t1")
        alice = t1.add_user("alice", roles=["ROLE_TOCSIN_READ"])
        admin = t1.add_user("admin", roles=["ROLE_TOCSIN_ADMIN"])
        pump = t1.add_device("Pump 1")
        first = await rig.start_pod("pod1")
        await rig.following(first, "t1")
        phone = apns_token()
        assert await rig.register(first, alice, phone) == 204
        alarm = t1.create_alarm(pump, "c8y_LeakAlarm", "leak")
        await wait_until(lambda: len(rig.apns_for(phone)) == 1, 10, "the push")
        await wait_until(lambda: t1.backlog() == 0, 10, "acknowledged")
        await rig.stop(first)  # and by a pod that never saw the alarm: the DELETE frame carries only the id
        second = await rig.start_pod("pod2")
        await rig.following(second, "t1")
        t1.delete_alarm(alarm["id"])
        await wait_until(lambda: len(rig.apns_for(phone)) == 2, 10, "the resolve notice")
        assert titles(rig, phone) == ["New MAJOR alarm!", "Alarm cleared"]
        assert rig.apns_for(phone)[1]["alarmId"] == alarm["id"]
        runtime = second.cumulocity
        assert runtime is not None
        await wait_until(lambda: runtime.frames.get("deleted") == 1, 5, "counted")
        status, body = await rig.call(second, "GET", "/v1/alerts", admin)
        assert status == 200 and body["alerts"] == []
        t1.delete_alarm("999999")  # nothing to delete: no frame, nothing sent
        assert len(rig.apns_for(phone)) == 2


async def test_a_changed_severity_threshold_is_read_again(tmp_path: Path) -> None:
    async with c8y_rig(tmp_path) as rig:
        t1 = rig.c8y.add_tenant("t1")
        alice = t1.add_user("alice", roles=["ROLE_TOCSIN_READ"])
        pump = t1.add_device("Pump 1")
        service = await rig.start_pod("pod1", options_poll_s=0.1)
        await rig.following(service, "t1")
        phone = apns_token()
        assert await rig.register(service, alice, phone) == 204
        runtime = service.cumulocity
        assert runtime is not None and runtime.tenants["t1"].threshold == "MAJOR"  # the manifest's default
        t1.create_alarm(pump, "c8y_Major1", "major before", severity="MAJOR")
        await wait_until(lambda: len(rig.apns_for(phone)) == 1, 10, "the major alarm's push")
        t1.options[("tocsin", "severityThreshold")] = "CRITICAL"  # the tenant admin changes the setting
        await wait_until(lambda: runtime.tenants["t1"].threshold == "CRITICAL", 5, "the new threshold")
        t1.create_alarm(pump, "c8y_Major2", "major after", severity="MAJOR")
        t1.create_alarm(pump, "c8y_Critical", "critical after", severity="CRITICAL")
        await wait_until(lambda: len(rig.apns_for(phone)) == 2, 10, "the critical alarm's push")
        await wait_until(lambda: runtime.frames.get("below_threshold") == 1, 5, "the major one held back")
        assert [p["aps"]["alert"]["body"] for p in rig.apns_for(phone)][1].startswith("critical after")
        _, health = await rig.call(service, "GET", "/health")
        assert health["cumulocity"]["tenants"]["t1"]["threshold"] == "CRITICAL"


async def test_tenant_admins_see_their_own_delivery_reports(tmp_path: Path) -> None:
    async with c8y_rig(tmp_path) as rig:
        t1, t2 = rig.c8y.add_tenant("t1"), rig.c8y.add_tenant("t2")
        alice = t1.add_user("alice", roles=["ROLE_TOCSIN_READ"])
        admin1 = t1.add_user("admin", roles=["ROLE_TOCSIN_ADMIN"])
        admin2 = t2.add_user("admin", roles=["ROLE_TOCSIN_ADMIN"])
        pump = t1.add_device("Pump 1")
        service = await rig.start_pod("pod1")
        await rig.following(service, "t1", "t2")
        phone = apns_token()
        assert await rig.register(service, alice, phone) == 204
        t1.create_alarm(pump, "c8y_Leak", "leak")
        await wait_until(lambda: len(rig.apns_for(phone)) == 1, 10, "the push")
        _, body = await rig.call(service, "GET", "/v1/alerts", admin1)
        (alert,) = body["alerts"]
        nid = notification_key(alert["id"], alert["episode"], "firing")
        status, report = await rig.call(service, "GET", f"/v1/notifications/{nid}", admin1)
        assert status == 200 and report["targeted"] == 1 and report["platforms"]["apns"]["targeted"] == 1
        status, _ = await rig.call(service, "GET", f"/v1/notifications/{nid}", admin2)
        assert status == 404  # another tenant's notification: not there, for them
        status, _ = await rig.call(service, "GET", f"/v1/notifications/{nid}", alice)
        assert status == 403  # a tenant's users are no admins
