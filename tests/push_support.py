"""Helpers for the push tests: notifications, registrations, and providers pointed at the fakes."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from registrations.model import Audience, Registration
from service.notify.model import Delivery, Notification
from service.notify.options import PushOptions
from service.push_config import ApnsAppConfig, ApnsConfig, FcmConfig
from tests.fakes.apns import FakeAPNs
from tests.fakes.fcm import FakeFCM
from tests.fakes.keys import ApnsKey, service_account

BUNDLE = "com.example.tocsin"


def notification(nid: str = "n1", ttl: float = 600.0, **options: Any) -> Notification:
    now = time.time()
    data = options.pop("data", {})
    title = options.pop("title", "Door open")
    body = options.pop("body", "The garage door is open")
    return Notification(
        nid=nid,
        alert_id="a1",
        episode="e1",
        rule="garage",
        state="firing",
        severity="warning",
        title=title,
        body=body,
        labels={},
        audience=Audience(tags=("home",)),
        created=now,
        expires=now + ttl,
        data=data,
        options=PushOptions(**options),
    )


def delivery(n: Notification, provider: str, token: str, **reg: Any) -> Delivery:
    return Delivery(n, Registration(provider, token, **reg))


def apns_config(fake: FakeAPNs, apps: dict[str, ApnsAppConfig], **kw: Any) -> ApnsConfig:
    return ApnsConfig(
        apps=apps,
        production_url=f"https://localhost:{fake.port}",
        sandbox_url=kw.pop("sandbox_url", f"https://localhost:{fake.port}"),
        ca_file=fake.cert_path,
        **kw,
    )


def token_app(key: ApnsKey, path: Path | None = None) -> ApnsAppConfig:
    if path is not None:
        path.write_text(key.p8)
        return ApnsAppConfig(team_id=key.team_id, key_id=key.key_id, private_key_path=path)
    return ApnsAppConfig(team_id=key.team_id, key_id=key.key_id, private_key=SecretStr(key.p8))


def trusted_key(fake: FakeAPNs, topics: set[str] | None = None) -> ApnsKey:
    key = ApnsKey.generate()
    fake.add_key(key.key_id, key.team_id, key.public_pem, topics)
    return key


def fcm_account(fake: FakeFCM, project: str = "tocsin-test") -> dict[str, str]:
    info, public = service_account(project, f"{fake.url}/token")
    fake.add_account(info["private_key_id"], info["client_email"], project, public)
    return info


def fcm_config(fake: FakeFCM, info: dict[str, str] | None = None, **kw: Any) -> FcmConfig:
    if info is not None and "credentials_path" not in kw:
        kw["credentials"] = SecretStr(json.dumps(info))
    kw.setdefault("ca_file", fake.ca_file)  # None for a plain-HTTP fake
    return FcmConfig(send_url=fake.url, **kw)
