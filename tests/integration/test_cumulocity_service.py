"""tocsin as a multi-tenant Cumulocity microservice, end to end against the double and the fake providers."""

from __future__ import annotations

from pathlib import Path

from tests.c8y_support import WATCH_ALL, c8y_rig
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
        await wait_until(lambda: {"t1", "t2"} <= set(service.stores.tenants()), 10, "both tenants")
        alice_ios, alice_android, bob_ios = apns_token(), "fcm-" + random_id(60), apns_token()
        assert await rig.register(service, alice, alice_ios) == 204
        assert await rig.register(service, alice, alice_android, platform="Android") == 204
        assert await rig.register(service, bob, bob_ios) == 204

        alarm = t1.create_alarm(pump, "c8y_TemperatureAlarm", "Temperature too high", severity="CRITICAL")
        await wait_until(lambda: rig.apns_for(alice_ios) and rig.fcm_for(alice_android), 10, "alice's pushes")
        ios = rig.apns_for(alice_ios)[0]
        assert ios["aps"]["alert"]["title"] == "New CRITICAL alarm!"
        assert ios["alarmId"] == alarm["id"] and ios["sourceId"] == pump
        android = rig.fcm_for(alice_android)[0]
        assert android["data"]["alarmId"] == alarm["id"]

        t2.create_alarm(press, "c8y_PressureAlarm", "Pressure low", severity="MINOR")
        await wait_until(lambda: rig.apns_for(bob_ios), 10, "bob's push")
        assert len(rig.apns_for(alice_ios)) == 1 and len(rig.fcm_for(alice_android)) == 1
        assert [p["alarmId"] for p in rig.apns_for(bob_ios)] == [t2.alarms[next(iter(t2.alarms))]["id"]]

        # registrations live in each tenant's own inventory
        kinds = {t.id: [m for m in t.managed_objects.values() if m.get("type") == "tocsin_Registration"]
                 for t in (t1, t2)}  # fmt: skip
        assert len(kinds["t1"]) == 2 and len(kinds["t2"]) == 1
        assert rig.c8y.tenant("t1").unacked() == 0 and rig.c8y.tenant("t2").unacked() == 0
