from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from registrations.pg_store import PgRegistrationStore
from registrations.sqlite_store import SqliteRegistrationStore
from registrations.store import RegistrationStore
from service.app import Service
from service.config import Config, load_config
from service.providers.log import LogProvider, LogProviderConfig
from tests.pg_support import PostgresServer
from tests.support import Mosquitto, free_port, wait_until


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    m = Mosquitto(tmp_path / "broker")
    m.start()
    yield m
    m.stop()


@pytest.fixture
def persistent_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    m = Mosquitto(tmp_path / "broker-persistent", persistence=True)
    m.start()
    yield m
    m.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One private PostgreSQL server for the whole run; each test that needs it gets a database of its own."""
    server = PostgresServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    """Each registry test runs twice: on SQLite (None) and on a fresh PostgreSQL database (its URL)."""
    if request.param == "sqlite":
        return None
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database()


async def open_registry(url: str | None, path: Path) -> RegistrationStore:
    if url is None:
        return SqliteRegistrationStore(path)
    store = PgRegistrationStore(url, pool_size=4)
    await store.open()
    return store


@pytest.fixture
async def registry_store(store_url: str | None, tmp_path: Path) -> AsyncIterator[RegistrationStore]:
    store = await open_registry(store_url, tmp_path / "registrations.db")
    yield store
    await store.close()


EXAMPLE_RULES = Path(__file__).resolve().parents[1] / "rules" / "examples" / "home.yaml"


def acknowledgeable_examples(tmp_path: Path) -> Path:
    """The example rules, with a doorbell that rings again every hour until acknowledged: an event rule's
    alert is open (listed, acknowledgeable) only while such a follow-up is pending."""
    rules = tmp_path / "example-rules.yaml"
    text = EXAMPLE_RULES.read_text().replace(
        "    severity: info\n", "    severity: info\n    repeat: 1h\n", 1
    )
    rules.write_text(text)
    return rules


def service_config(tmp_path: Path, broker_port: int, **overrides: Any) -> Config:
    env = {
        "TOCSIN_DATA_DIR": str(tmp_path / "data"),
        "TOCSIN_MQTT__PORT": str(broker_port),
        "TOCSIN_MQTT__EMBEDDED_BROKER": "never",
        "TOCSIN_MQTT__RECONNECT_MIN_S": "0.05",
        "TOCSIN_MQTT__RECONNECT_MAX_S": "0.5",
        "TOCSIN_HTTP__PORT": "0",
        "TOCSIN_INSTANCE__ID": f"test-{free_port()}",
        "TOCSIN_PROVIDERS__LOG__FORMAT": "json",
    }
    env.update({k: str(v) for k, v in overrides.items()})
    return load_config(None, env)


class Printed:
    """What the log provider printed, one JSON object a line."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines() if line]

    def count(self) -> int:
        return self.stream.getvalue().count("\n")


class RunningService:
    def __init__(self, service: Service, printed: Printed, broker_port: int) -> None:
        self.service, self.printed, self.broker_port = service, printed, broker_port

    async def wait_connected(self, timeout: float = 10.0) -> None:
        await wait_until(lambda: self.service.source.is_connected, timeout, "the service to connect")


async def start_service(config: Config) -> tuple[Service, Printed]:
    printed = Printed()
    service = Service(
        config, providers={"log": LogProvider(config.providers.get(LogProviderConfig), stream=printed.stream)}
    )
    await service.__aenter__()
    return service, printed


@pytest.fixture
async def running(tmp_path: Path, broker: Mosquitto) -> AsyncIterator[RunningService]:
    service, printed = await start_service(service_config(tmp_path, broker.port))
    rs = RunningService(service, printed, broker.port)
    try:
        await rs.wait_connected()
        yield rs
    finally:
        await service.__aexit__(None, None, None)


async def publish(port: int, *messages: tuple[str, bytes | str], qos: int = 1) -> None:
    async with aiomqtt.Client("127.0.0.1", port) as client:
        for topic, payload in messages:
            await client.publish(topic, payload, qos=qos)
