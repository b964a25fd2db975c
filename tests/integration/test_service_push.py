"""The service wired by its configuration: providers from settings, health, metrics and the report."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import yaml

from service.app import Service
from service.config import load_config
from tests.conftest import publish
from tests.fakes.apns import FakeAPNs
from tests.fakes.fcm import FakeFCM
from tests.fakes.keys import ApnsKey, apns_token, service_account
from tests.push_support import BUNDLE
from tests.support import Mosquitto, free_port, wait_until


async def test_revoked_key_degrades_health_and_is_explained_in_metrics(
    tmp_path: Path, broker: Mosquitto
) -> None:
    apns = await FakeAPNs(tmp_path / "apns").start()
    key = ApnsKey.generate()  # not trusted by the fake: as if revoked
    key_file = tmp_path / "AuthKey.p8"
    key_file.write_text(key.p8)
    token = apns_token()
    doc = {
        "data_dir": str(tmp_path / "data"),
        "mqtt": {"port": broker.port, "embedded_broker": "never"},
        "http": {"port": free_port()},
        "providers": {
            "apns": {
                "apps": {
                    BUNDLE: {"team_id": key.team_id, "key_id": key.key_id, "private_key_path": str(key_file)}
                },
                "production_url": f"https://localhost:{apns.port}",
                "ca_file": str(apns.cert_path),
            }
        },
        "registrations": {"seed": [{"provider": "apns", "token": token, "tags": ["home"]}]},
    }
    (tmp_path / "tocsin.yaml").write_text(yaml.safe_dump(doc))
    config = load_config(tmp_path / "tocsin.yaml", {})
    service = Service(config)
    await service.__aenter__()
    try:
        await wait_until(lambda: service.source.is_connected, 10, "the MQTT connection")
        await publish(broker.port, ("home/hall/doorbell", json.dumps({"event": "ring"})))
        await wait_until(lambda: service.dispatcher.parked_count == 1, 10, "the delivery to be parked")
        base = f"http://127.0.0.1:{service.http_port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/health") as resp:
                health = await resp.json()
            async with http.get(f"{base}/metrics") as resp:
                metrics = await resp.text()
            nid = next(iter(service.outbox.db.execute("SELECT nid FROM outbox_notifications")))[0]
            async with http.get(f"{base}/v1/notifications/{nid}") as resp:
                report = await resp.json()
            async with http.get(f"{base}/v1/notifications/nope") as resp:
                assert resp.status == 404
        assert health["status"] == "degraded"
        assert health["providers"]["apns"]["degraded"] == f"{BUNDLE}: APNs 403 InvalidProviderToken"
        assert key.p8 not in json.dumps(health)
        assert f'tocsin_provider_config_errors_total{{credential="{BUNDLE}",provider="apns"}} 1.0' in metrics
        assert "tocsin_deliveries_parked 1.0" in metrics
        assert report["pending"] == 1 and report["platforms"]["apns"]["targeted"] == 1
    finally:
        await service.__aexit__(None, None, None)
        await apns.stop()


async def test_fcm_token_endpoint_untrusted_degrades_health_naming_the_cause(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """The service account's token_uri is the fake's HTTPS endpoint, whose private CA is not configured:
    no token, every send retried, and /health says so (it said ok before)."""
    fcm = await FakeFCM(cert_dir=tmp_path / "fcm").start()
    info, public = service_account("tocsin-test", f"{fcm.url}/token")
    fcm.add_account(info["private_key_id"], info["client_email"], "tocsin-test", public)
    doc = {
        "data_dir": str(tmp_path / "data"),
        "mqtt": {"port": broker.port, "embedded_broker": "never"},
        "http": {"port": free_port()},
        "providers": {"fcm": {"credentials": json.dumps(info), "send_url": fcm.url}},  # no ca_file
        "registrations": {"seed": [{"provider": "fcm", "token": "fcm-" + "t" * 40, "tags": ["home"]}]},
    }
    (tmp_path / "tocsin.yaml").write_text(yaml.safe_dump(doc))
    service = Service(load_config(tmp_path / "tocsin.yaml", {}))
    await service.__aenter__()
    try:
        await wait_until(lambda: service.source.is_connected, 10, "the MQTT connection")
        await publish(broker.port, ("home/hall/doorbell", json.dumps({"event": "ring"})))
        await wait_until(lambda: service.providers["fcm"].degraded is not None, 10, "the token failure")
        url = f"http://127.0.0.1:{service.http_port}/health"
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            health = await resp.json()
        assert health["status"] == "degraded"
        assert health["providers"]["fcm"]["degraded"].startswith(
            f"no access token from {fcm.url}/token: its TLS certificate is not trusted"
        )
        assert fcm.tokens_issued == 0 and fcm.accepted == 0
        assert info["private_key"] not in json.dumps(health)
    finally:
        await service.__aexit__(None, None, None)
        await fcm.stop()
