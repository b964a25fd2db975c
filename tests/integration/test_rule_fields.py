"""What a rule says reaches the phone: rule fields, per-locale text and priority in the bytes the fake APNs
and fake FCM receive, through the real service and a real Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from pathlib import Path

import aiohttp
import yaml

from registrations.model import Registration
from service.app import Service
from service.cli import main
from service.config import load_config
from tests.conftest import publish
from tests.fakes.apns import FakeAPNs, Received
from tests.fakes.fcm import FakeFCM
from tests.fakes.keys import ApnsKey, apns_token
from tests.push_support import BUNDLE, fcm_account
from tests.support import Mosquitto, free_port, wait_until

DE_AT, FR_FR, PLAIN = apns_token(), apns_token(), apns_token()
FCM_DE = "cXk3:APA91b" + "D" * 60
FCM_PLAIN = "cXk3:APA91b" + "P" * 60

RULES = """
rules:
  - id: bell
    topic: home/{room}/doorbell
    severity: warning
    priority: normal
    title: 'Ring at {{ room }}'
    body: 'Someone is at the door'
    locales:
      de: {title: 'Es klingelt: {{ room }}', body: 'Jemand ist an der Tür'}
      fr-FR: {title: 'On sonne: {{ room }}'}
    sound: bell.caf
    category: DOORBELL
    collapse_key: 'bell-{{ room }}'
    audience: {tags: [home]}
"""


async def _service(tmp_path: Path, broker: Mosquitto, apns: FakeAPNs, fcm: FakeFCM) -> Service:
    key = ApnsKey.generate()
    apns.add_key(key.key_id, key.team_id, key.public_pem, None)
    key_file = tmp_path / "AuthKey.p8"
    key_file.write_text(key.p8)
    info = fcm_account(fcm)
    (tmp_path / "rules.yaml").write_text(RULES)

    doc = {
        "data_dir": str(tmp_path / "data"),
        "mqtt": {"port": broker.port, "embedded_broker": "never"},
        "http": {"port": free_port()},
        "rules": {"paths": [str(tmp_path / "rules.yaml")]},
        "providers": {
            "apns": {
                "apps": {
                    BUNDLE: {"team_id": key.team_id, "key_id": key.key_id, "private_key_path": str(key_file)}
                },
                "production_url": f"https://localhost:{apns.port}",
                "ca_file": str(apns.cert_path),
            },
            "fcm": {"credentials": json.dumps(info), "send_url": fcm.url, "ca_file": str(fcm.ca_file)},
        },
        "registrations": {"seed": []},
    }
    (tmp_path / "tocsin.yaml").write_text(yaml.safe_dump(doc))
    service = Service(load_config(tmp_path / "tocsin.yaml", {}))
    await service.__aenter__()
    store = service.stores.store(None)
    assert store is not None
    for provider, token, app, locale in (
        ("apns", DE_AT, BUNDLE, "de-AT"),
        ("apns", FR_FR, BUNDLE, "fr-FR"),
        ("apns", PLAIN, BUNDLE, None),
        ("fcm", FCM_DE, "com.example", "de"),
        ("fcm", FCM_PLAIN, "com.example", "en"),
    ):
        store.upsert(Registration(provider, token, app=app, tags=("home",), locale=locale), time.time())
    return service


async def test_doorbell_rule_fields_reach_apns_and_fcm(tmp_path: Path, broker: Mosquitto) -> None:
    apns = await FakeAPNs(tmp_path / "apns").start()
    fcm = await FakeFCM(cert_dir=tmp_path / "fcm").start()
    service = await _service(tmp_path, broker, apns, fcm)
    try:
        await wait_until(lambda: service.source.is_connected, 10, "the MQTT connection")
        await publish(broker.port, ("home/hall/doorbell", json.dumps({"event": "ring"})))
        await wait_until(lambda: len(apns.received) == 3 and len(fcm.sent) == 2, 10, "five pushes")
        got: dict[str, Received] = {r.token: r for r in apns.received}
        for r in got.values():
            assert r.headers["apns-priority"] == "5"  # priority: normal
            assert r.headers["apns-collapse-id"] == "bell-hall"
            assert r.payload["aps"]["sound"] == "bell.caf"
            assert r.payload["aps"]["category"] == "DOORBELL"
        assert got[DE_AT].payload["aps"]["alert"] == {
            "title": "Es klingelt: hall",
            "body": "Jemand ist an der Tür",
        }
        assert got[FR_FR].payload["aps"]["alert"] == {
            "title": "On sonne: hall",
            "body": "Someone is at the door",
        }
        assert got[PLAIN].payload["aps"]["alert"] == {
            "title": "Ring at hall",
            "body": "Someone is at the door",
        }
        sent = {s.token: s.message for s in fcm.sent}
        for m in sent.values():
            assert m["android"]["priority"] == "NORMAL"
            assert m["android"]["collapse_key"] == "bell-hall"
            assert m["android"]["notification"]["sound"] == "bell.caf"
            assert m["apns"] == {  # for iOS apps reached through FCM
                "headers": {"apns-priority": "5", "apns-collapse-id": "bell-hall"},
                "payload": {"aps": {"sound": "bell.caf", "category": "DOORBELL"}},
            }
            assert m["webpush"] == {"headers": {"Urgency": "normal"}, "notification": {"tag": "bell-hall"}}
        assert sent[FCM_DE]["notification"] == {"title": "Es klingelt: hall", "body": "Jemand ist an der Tür"}
        assert sent[FCM_PLAIN]["notification"] == {"title": "Ring at hall", "body": "Someone is at the door"}
    finally:
        await service.__aexit__(None, None, None)
        await apns.stop()
        await fcm.stop()


async def test_push_api_options_reach_apns_and_fcm(tmp_path: Path, broker: Mosquitto) -> None:
    apns = await FakeAPNs(tmp_path / "apns").start()
    fcm = await FakeFCM(cert_dir=tmp_path / "fcm").start()
    service = await _service(tmp_path, broker, apns, fcm)
    body = {
        "audience": {"tags": "home"},
        "title": "Water leak",
        "body": "Basement sensor is wet",
        "locales": {"de": {"title": "Wasserschaden"}},
        "sound": "leak.caf",
        "badge": 4,
        "priority": "normal",
        "collapse_key": "leak-basement",
        "content_available": True,
        "mutable_content": True,
        "interruption_level": "time-sensitive",
        "thread_id": "leaks",
        "category": "LEAK",
    }
    try:
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{service.http_port}/v1/push"
            async with http.post(url, json={**body, "collapse_key": "x" * 65}) as bad:
                assert bad.status == 400
            async with http.post(url, json=body) as ok:
                assert ok.status == 202, await ok.text()
        await wait_until(lambda: len(apns.received) == 3 and len(fcm.sent) == 2, 10, "five pushes")
        got = {r.token: r for r in apns.received}
        for r in got.values():
            assert (r.headers["apns-priority"], r.headers["apns-collapse-id"]) == ("5", "leak-basement")
            assert r.headers["apns-push-type"] == "alert"
            aps = r.payload["aps"]
            assert {k: v for k, v in aps.items() if k != "alert"} == {
                "sound": "leak.caf",
                "badge": 4,
                "category": "LEAK",
                "thread-id": "leaks",
                "content-available": 1,
                "mutable-content": 1,
                "interruption-level": "time-sensitive",
            }
        assert got[DE_AT].payload["aps"]["alert"] == {
            "title": "Wasserschaden",
            "body": "Basement sensor is wet",
        }
        assert got[PLAIN].payload["aps"]["alert"] == {"title": "Water leak", "body": "Basement sensor is wet"}
        sent = {s.token: s.message for s in fcm.sent}
        assert sent[FCM_DE]["notification"]["title"] == "Wasserschaden"
        for m in sent.values():
            assert (m["android"]["priority"], m["android"]["collapse_key"]) == ("NORMAL", "leak-basement")
            assert m["apns"]["headers"] == {"apns-priority": "5", "apns-collapse-id": "leak-basement"}
            assert m["apns"]["payload"]["aps"] == {  # for iOS apps reached through FCM: the same aps keys
                "sound": "leak.caf",
                "badge": 4,
                "category": "LEAK",
                "thread-id": "leaks",
                "content-available": 1,
                "mutable-content": 1,
                "interruption-level": "time-sensitive",
            }
    finally:
        await service.__aexit__(None, None, None)
        await apns.stop()
        await fcm.stop()


async def _cli(*args: str) -> tuple[int, str, str]:
    """``tocsin`` in this process (a thread, so the service on this loop answers it)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = await asyncio.to_thread(main, list(args))
    return code, out.getvalue(), err.getvalue()


async def test_tocsin_push_flags_reach_apns_and_fcm(tmp_path: Path, broker: Mosquitto) -> None:
    apns = await FakeAPNs(tmp_path / "apns").start()
    fcm = await FakeFCM(cert_dir=tmp_path / "fcm").start()
    service = await _service(tmp_path, broker, apns, fcm)
    url = ("--url", f"http://127.0.0.1:{service.http_port}")
    try:
        code, out, err = await _cli(
            "push", *url, "--tags", "home", "--title", "Water leak", "--body", "Basement sensor is wet",
            "--locale-title", "de=Wasserschaden", "--locale-body", "de=Der Keller ist nass",
            "--locale-title", "fr-FR=Fuite d'eau",
            "--sound", "leak.caf", "--badge", "4", "--priority", "normal", "--collapse-key", "leak-basement",
            "--content-available", "--mutable-content", "--interruption-level", "time-sensitive",
            "--thread-id", "leaks", "--category", "LEAK", "--data", "sensor=basement", "--data", "level=3",
            "--severity", "major",
        )  # fmt: skip
        assert code == 0, err
        assert out.startswith("accepted: notification ")
        await wait_until(lambda: len(apns.received) == 3 and len(fcm.sent) == 2, 10, "five pushes")
        got = {r.token: r for r in apns.received}
        for r in got.values():
            assert (r.headers["apns-priority"], r.headers["apns-collapse-id"]) == ("5", "leak-basement")
            assert r.headers["apns-push-type"] == "alert"
            assert {k: v for k, v in r.payload.items() if k != "aps"} == {"sensor": "basement", "level": "3"}
            assert {k: v for k, v in r.payload["aps"].items() if k != "alert"} == {
                "sound": "leak.caf",
                "badge": 4,
                "category": "LEAK",
                "thread-id": "leaks",
                "content-available": 1,
                "mutable-content": 1,
                "interruption-level": "time-sensitive",
            }
        assert got[DE_AT].payload["aps"]["alert"] == {"title": "Wasserschaden", "body": "Der Keller ist nass"}
        assert got[FR_FR].payload["aps"]["alert"] == {
            "title": "Fuite d'eau",
            "body": "Basement sensor is wet",
        }
        assert got[PLAIN].payload["aps"]["alert"] == {"title": "Water leak", "body": "Basement sensor is wet"}
        sent = {s.token: s.message for s in fcm.sent}
        assert sent[FCM_DE]["notification"] == {"title": "Wasserschaden", "body": "Der Keller ist nass"}
        for m in sent.values():
            assert (m["android"]["priority"], m["android"]["collapse_key"]) == ("NORMAL", "leak-basement")
            assert m["android"]["notification"]["sound"] == "leak.caf"
            assert {"sensor": "basement", "level": "3"}.items() <= m["data"].items()
            assert m["apns"]["headers"] == {"apns-priority": "5", "apns-collapse-id": "leak-basement"}
            assert m["apns"]["payload"]["aps"]["thread-id"] == "leaks"
            assert m["webpush"] == {
                "headers": {"Urgency": "normal"},
                "notification": {"tag": "leak-basement"},
            }

        apns.received.clear()
        fcm.sent.clear()
        code, _, err = await _cli(
            "push", *url, "--tags", "home", "--title", "sync", "--push-type", "background", "--data", "sync=1"
        )
        assert code == 0, err
        await wait_until(lambda: len(apns.received) == 3 and len(fcm.sent) == 2, 10, "five background pushes")
        for r in apns.received:
            assert (r.headers["apns-push-type"], r.headers["apns-priority"]) == ("background", "5")
            assert r.payload == {"aps": {"content-available": 1}, "sync": "1"}
        for m in (s.message for s in fcm.sent):
            assert "notification" not in m and m["android"]["priority"] == "NORMAL"
            assert m["apns"] == {
                "headers": {"apns-priority": "5", "apns-push-type": "background"},
                "payload": {"aps": {"content-available": 1}},
            }

        code, _, err = await _cli("push", *url, "--tags", "home", "--data", "novalue")
        assert code == 1 and "--data: expected KEY=VALUE, got 'novalue'" in err
        code, _, err = await _cli("push", *url, "--tags", "home", "--collapse-key", "ü" * 33)
        assert code == 1 and "collapse_key" in err and "64 bytes" in err
    finally:
        await service.__aexit__(None, None, None)
        await apns.stop()
        await fcm.stop()
