"""tocsin as a Cumulocity microservice against the double, with the fake APNs and FCM as its providers."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from service.app import Service
from service.config import load_config
from service.cumulocity.env import PlatformEnv
from tests.fakes.apns import FakeAPNs
from tests.fakes.cumulocity import FakeCumulocity, FakeUser
from tests.fakes.fcm import FakeFCM
from tests.fakes.keys import ApnsKey, service_account
from tests.push_support import BUNDLE
from tests.support import free_port, wait_until

PACKAGE = "com.example.alarms"
WATCH_ALL = ["severity:all", "status:all", "deviceId:all", "type:all"]


def basic(user: FakeUser) -> dict[str, str]:
    raw = f"{user.tenant}/{user.name}:{user.password}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


@dataclass
class C8yRig:
    c8y: FakeCumulocity
    apns: FakeAPNs
    fcm: FakeFCM
    config_path: Path
    http: aiohttp.ClientSession
    services: list[Service] = field(default_factory=list)

    @property
    def platform(self) -> PlatformEnv:
        found = PlatformEnv.from_environ(self.c8y.environment())
        assert found is not None
        return found

    async def start(self, **cumulocity: Any) -> Service:
        """A service on the rig's configuration (the same data directory every time)."""
        doc = yaml.safe_load(self.config_path.read_text())
        doc["cumulocity"].update(cumulocity)
        config = load_config(self._write(doc), {})
        service = Service(config, platform=self.platform)
        await service.__aenter__()
        self.services.append(service)
        return service

    async def start_pod(self, name: str, *, rules: Path | None = None, **cumulocity: Any) -> Service:
        """A replica (a pod) named ``name`` on an empty data directory of its own, with its own HTTP port and
        instance id (its consumer name): as the platform starts a pod, with nothing from an earlier one."""
        doc = yaml.safe_load(self.config_path.read_text())
        doc["cumulocity"].update(cumulocity)
        pod = self.config_path.parent / "pods" / f"{name}-{len(self.services)}"
        if pod.exists():
            raise ValueError(f"{pod} exists")
        doc.update(data_dir=str(pod / "data"), http={"port": free_port()}, instance={"id": name})
        if rules is not None:
            doc["rules"] = {"paths": [str(rules)]}
        pod.mkdir(parents=True)
        path = pod / "tocsin.yaml"
        path.write_text(yaml.safe_dump(doc))
        service = Service(load_config(path, {}), platform=self.platform)
        await service.__aenter__()
        self.services.append(service)
        return service

    def _write(self, doc: dict[str, Any]) -> Path:
        self.config_path.write_text(yaml.safe_dump(doc))
        return self.config_path

    async def following(self, service: Service, *tenants: str) -> None:
        """Until the service serves these tenants and consumes their alarms (the platform keeps a
        subscriber's backlog only from its first connection on)."""
        await wait_until(
            lambda: all(t in service.stores and self.c8y.consumers(t) >= 1 for t in tenants),
            10,
            f"tocsin to follow tenants {', '.join(tenants)}",
        )

    async def stop(self, service: Service) -> None:
        self.services.remove(service)
        await service.__aexit__(None, None, None)

    async def call(
        self, service: Service, method: str, path: str, user: FakeUser | None = None, **kw: Any
    ) -> tuple[int, Any]:
        headers = {**(basic(user) if user is not None else {}), **kw.pop("headers", {})}
        url = f"http://127.0.0.1:{service.http_port}{path}"
        async with self.http.request(method, url, headers=headers, **kw) as resp:
            text = await resp.text()
            return resp.status, (json.loads(text) if text and text[0] in "[{" else text)

    async def register(
        self,
        service: Service,
        user: FakeUser,
        token: str,
        platform: str = "IOS",
        tags: list[str] | None = None,
    ) -> int:
        """What the alarm app does after getting a push token: the push gateway's registration call."""
        body = {
            "userId": user.name,
            "bundleId": BUNDLE if platform == "IOS" else PACKAGE,
            "tags": WATCH_ALL if tags is None else tags,
            "device": {"deviceName": f"{user.name}'s phone", "deviceToken": token, "platform": platform},
        }
        status, _ = await self.call(service, "POST", "/registrations", user, json=body)
        return status

    def apns_for(self, token: str) -> list[dict[str, Any]]:
        return [r.payload for r in self.apns.received if r.token == token]

    def fcm_for(self, token: str) -> list[dict[str, Any]]:
        return [s.message for s in self.fcm.sent if s.token == token]


@asynccontextmanager
async def c8y_rig(tmp_path: Path, **fake: Any) -> AsyncIterator[C8yRig]:
    c8y = FakeCumulocity(**fake)
    apns = await FakeAPNs(tmp_path / "apns").start()
    fcm = await FakeFCM(cert_dir=tmp_path / "fcm").start()
    key = ApnsKey.generate()
    apns.add_key(key.key_id, key.team_id, key.public_pem, None)
    info, public = service_account("tocsin-test", f"{fcm.url}/token")
    fcm.add_account(info["private_key_id"], info["client_email"], "tocsin-test", public)
    await c8y.start()
    doc = {
        "data_dir": str(tmp_path / "data"),
        "http": {"port": free_port()},
        "providers": {
            "apns": {
                "apps": {BUNDLE: {"team_id": key.team_id, "key_id": key.key_id, "private_key": key.p8}},
                "production_url": f"https://localhost:{apns.port}",
                "ca_file": str(apns.cert_path),
            },
            "fcm": {"send_url": fcm.url, "credentials": json.dumps(info), "ca_file": str(fcm.ca_file)},
        },
        "registrations": {"seed": []},
        "cumulocity": {"poll_s": 0.2, "auth_cache_s": 0},
    }
    path = tmp_path / "tocsin.yaml"
    path.write_text(yaml.safe_dump(doc))
    async with aiohttp.ClientSession() as http:
        rig = C8yRig(c8y, apns, fcm, path, http)
        try:
            yield rig
        finally:
            for service in list(rig.services):
                await rig.stop(service)
            await c8y.stop()
            await fcm.stop()
            await apns.stop()
