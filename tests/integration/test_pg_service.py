"""Two services on one PostgreSQL database (``store.url``), a real Mosquitto, the log provider: a phone
registered through one instance is in the other's next push, whose audience it had cached before; and the
database going away is a 503 and a degraded health, not a crash, until it is back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import Printed, service_config, start_service
from tests.integration.conftest import ADMIN, KEYS
from tests.pg_support import PostgresServer
from tests.support import Mosquitto, wait_until


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A server of this test's own, which it stops and starts (the port stays); durable, as a real one is:
    what it acknowledged survives it stopping as a crash would."""
    server = PostgresServer(durable=True)
    server.start()
    yield server
    server.stop()


async def call(
    http: aiohttp.ClientSession, port: int | None, method: str, path: str, body: object = None
) -> tuple[int, object]:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    async with http.request(method, f"http://127.0.0.1:{port}{path}", json=body, headers=headers) as r:
        text = await r.text()
        return r.status, json.loads(text) if text else None


def pushed_to(printed: Printed, title: str) -> set[str]:
    return {line["to"] for line in printed.lines() if line["title"] == title}


async def test_a_registration_through_one_instance_reaches_the_others_next_push(
    tmp_path: Path, broker: Mosquitto, postgres: PostgresServer
) -> None:
    url = postgres.create_database()
    a, printed_a = await start_service(
        service_config(tmp_path / "a", broker.port, TOCSIN_API__KEYS=KEYS, TOCSIN_STORE__URL=url)
    )
    b, _ = await start_service(
        service_config(tmp_path / "b", broker.port, TOCSIN_API__KEYS=KEYS, TOCSIN_STORE__URL=url)
    )
    try:
        async with aiohttp.ClientSession() as http:
            reg = {"provider": "log", "token": "phone-a", "tags": ["ops"]}
            assert (await call(http, a.http_port, "POST", "/v1/registrations", reg))[0] == 201
            push = {"audience": {"tags": "ops"}, "title": "first"}
            status, answer = await call(http, a.http_port, "POST", "/v1/push", push)
            assert status == 202, answer
            # the console seed (tags home, ops) is one row shared by both instances
            await wait_until(lambda: pushed_to(printed_a, "first") == {"phone-a", "console"}, 10, "first")
            reg = {"provider": "log", "token": "phone-b", "tags": ["ops"]}
            assert (await call(http, b.http_port, "POST", "/v1/registrations", reg))[0] == 201
            push["title"] = "second"
            assert (await call(http, a.http_port, "POST", "/v1/push", push))[0] == 202
            await wait_until(
                lambda: pushed_to(printed_a, "second") == {"phone-a", "phone-b", "console"}, 10, "second"
            )
            status, page = await call(http, a.http_port, "GET", "/v1/registrations?tags=ops")
            assert status == 200 and isinstance(page, dict)
            assert [r["token"] for r in page["items"]] == ["console", "phone-a", "phone-b"]
            assert (await call(http, a.http_port, "DELETE", "/v1/registrations/log/phone-b"))[0] == 204
            assert (await call(http, b.http_port, "GET", "/v1/registrations/log/phone-b"))[0] == 404
    finally:
        await b.__aexit__(None, None, None)
        await a.__aexit__(None, None, None)


async def test_the_database_going_away_is_a_503_and_degraded_health_until_it_is_back(
    tmp_path: Path, broker: Mosquitto, own_postgres: PostgresServer
) -> None:
    url = own_postgres.create_database()
    config = service_config(tmp_path, broker.port, TOCSIN_API__KEYS=KEYS, TOCSIN_STORE__URL=url)
    service, _ = await start_service(config)
    port = service.http_port
    try:
        async with aiohttp.ClientSession() as http:
            reg = {"provider": "log", "token": "before", "tags": ["ops"]}
            assert (await call(http, port, "POST", "/v1/registrations", reg))[0] == 201
            status, health = await call(http, port, "GET", "/health")
            assert isinstance(health, dict) and health["store"] == {"kind": "postgresql", "error": None}
            own_postgres.stop_server()
            status, body = await call(
                http, port, "POST", "/v1/registrations", {"provider": "log", "token": "during"}
            )
            assert status == 503 and isinstance(body, dict) and body["error"] == "store_unavailable", body
            assert "PostgreSQL is unavailable" in body["message"]
            status, health = await call(http, port, "GET", "/health")
            assert isinstance(health, dict) and health["status"] == "degraded" and health["store"]["error"]
            own_postgres.start()
            reg = {"provider": "log", "token": "after", "tags": ["ops"]}

            async def registered() -> bool:  # the pool's connections died with the server: new ones
                return (await call(http, port, "POST", "/v1/registrations", reg))[0] == 201

            for _ in range(20):
                if await registered():
                    break
            else:
                raise AssertionError("registering never worked again after the database came back")
            status, health = await call(http, port, "GET", "/health")
            assert isinstance(health, dict) and health["store"]["error"] is None
            status, page = await call(http, port, "GET", "/v1/registrations?tags=ops")
            assert isinstance(page, dict)
            assert [r["token"] for r in page["items"]] == ["console", "before", "after"]
    finally:
        await service.__aexit__(None, None, None)
