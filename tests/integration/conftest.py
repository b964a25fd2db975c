"""Fixtures for the HTTP API tests: a running service with admin and app keys, and a small client."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from service.app import Service
from tests.conftest import Printed, acknowledgeable_examples, service_config, start_service
from tests.support import Mosquitto, wait_until

ADMIN = "admin-key-0123456789abcdef"
APP = "app-key-alarms-0123456789"
OTHER = "app-key-other-0123456789ab"
KEYS = json.dumps(
    [
        {"name": "ops", "role": "admin", "api_key": ADMIN},
        {"name": "alarms", "role": "app", "app": "com.example.alarms", "api_key": APP},
        {"name": "other", "role": "app", "app": "com.example.other", "api_key": OTHER},
    ]
)
APNS = "a1" * 32
APNS2 = "b2" * 32
FCM = "cXk3:APA91b" + "Z" * 60


class Api:
    def __init__(self, service: Service, printed: Printed, http: aiohttp.ClientSession) -> None:
        self.service, self.printed, self.http = service, printed, http
        self.base = f"http://127.0.0.1:{service.http_port}"

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        key: str | None = ADMIN,
        raw: bytes | None = None,
        **kw: Any,
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        async with self.http.request(method, self.base + path, data=data, headers=headers, **kw) as r:
            text = await r.text()
            return r.status, json.loads(text) if text else None

    def rejected(self, route: str, status: int) -> float:
        return self.service.metrics.api_rejected.get(route, str(status))


@pytest.fixture
async def api(tmp_path: Path, broker: Mosquitto) -> AsyncIterator[Api]:
    async with running_api(tmp_path, broker) as found:
        yield found


@contextlib.asynccontextmanager
async def running_api(tmp_path: Path, broker: Mosquitto, **overrides: str) -> AsyncIterator[Api]:
    """A service with the test keys; ``overrides``: more TOCSIN_* settings (a store's URL, say)."""
    rules = acknowledgeable_examples(tmp_path)
    config = service_config(
        tmp_path, broker.port, TOCSIN_API__KEYS=KEYS, TOCSIN_RULES__PATHS=f"[{rules}]", **overrides
    )
    service, printed = await start_service(config)
    try:
        # Stopping a service whose MQTT connect is in flight can hang in aiomqtt: let it connect first.
        await wait_until(lambda: service.source.is_connected, 10, "the service to connect")
        async with aiohttp.ClientSession() as http:
            yield Api(service, printed, http)
    finally:
        await service.__aexit__(None, None, None)


def reg(token: str = APNS, provider: str = "apns", **fields: Any) -> dict[str, Any]:
    return {"provider": provider, "token": token, "app": "com.example.alarms", **fields}
