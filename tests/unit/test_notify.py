"""Notify stages and the dispatcher's handling of each provider outcome."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from registrations.model import Audience, Registration
from registrations.pg_store import PgRegistrationStore
from registrations.sqlite_store import SqliteRegistrationStore
from registrations.store import RegistrationStore
from service.clock import ManualClock
from service.metrics import Metrics
from service.notify.dispatch import Dispatcher, backoff_delay, retry_delay
from service.notify.model import Delivery, Notification
from service.notify.stages import DedupStage, NotificationLog, TargetStage
from service.providers.base import ConfigError, Delivered, Outcome, Retry, TokenInvalid, TokenSuspect
from tests.pg_support import PostgresServer
from tests.support import wait_until


def note(nid: str = "n1", expires: float = 10_000) -> Notification:
    return Notification(nid, "a", "e", "r", "firing", "info", "T", "B", {}, Audience(tags=("x",)), 0, expires)


def test_dedup_admits_a_key_once_within_the_window() -> None:
    d = DedupStage(NotificationLog(window=60))
    assert d.admit(note("k"), 0)
    assert not d.admit(note("k"), 30)
    assert d.admit(note("other"), 30)
    assert d.admit(note("k"), 100)  # remembered for 60 s only
    assert len(d.log) == 1  # the others expired


async def test_target_cache_follows_store_changes(registry_store: RegistrationStore) -> None:
    store = registry_store
    await store.upsert(Registration("log", "a", tags=("x",)), 0)
    target = TargetStage(store)

    async def tokens() -> list[str]:
        return [r.token async for b in target.batches(Audience(tags=("x",))) for r in b]

    assert await tokens() == ["a"]
    await store.upsert(Registration("log", "b", tags=("x",)), 0)
    assert sorted(await tokens()) == ["a", "b"]
    await store.remove("log", "a")
    assert await tokens() == ["b"]


async def test_target_cache_follows_another_instances_writes_to_a_shared_store(
    postgres: PostgresServer,
) -> None:
    url = postgres.create_database()
    mine, theirs = PgRegistrationStore(url, pool_size=2), PgRegistrationStore(url, pool_size=2)
    await mine.open()
    await theirs.open()
    await mine.upsert(Registration("log", "a", tags=("x",)), 0)
    target = TargetStage(mine)

    async def tokens() -> list[str]:
        return [r.token async for b in target.batches(Audience(tags=("x",))) for r in b]

    assert await tokens() == ["a"]
    await theirs.upsert(Registration("log", "b", tags=("x",)), 0)  # through the other instance
    assert sorted(await tokens()) == ["a", "b"]
    await mine.close()
    await theirs.close()


class ScriptedProvider:
    name = "log"

    def __init__(self, outcomes: list[Outcome]) -> None:
        self.outcomes, self.calls = outcomes, 0

    @property
    def degraded(self) -> str | None:
        return None

    def credential_for(self, registration: Registration) -> str:
        return ""

    async def send(self, delivery: Delivery) -> Outcome:
        self.calls += 1
        return self.outcomes.pop(0) if self.outcomes else Delivered()

    async def close(self) -> None:
        return None


async def dispatch(tmp_path: Path, outcomes: list[Outcome], n: Notification | None = None):
    store = SqliteRegistrationStore(tmp_path / "r.db")
    reg = await store.upsert(Registration("log", "tok", tags=("x",)), 0)
    provider, metrics = ScriptedProvider(outcomes), Metrics()
    d = Dispatcher({"log": provider}, store, metrics, ManualClock(0), max_attempts=3, workers=1)
    d.start()
    await d.submit(Delivery(n or note(), reg))
    return d, provider, metrics, store


async def test_retry_after_is_honoured_then_delivered(tmp_path: Path) -> None:
    d, p, m, _ = await dispatch(tmp_path, [Retry("busy", after=0.01), Retry("busy", after=0.01)])
    await wait_until(lambda: m.notifications.get("log", "delivered") == 1, 5, "delivery after retries")
    assert p.calls == 3 and m.notifications.get("log", "retry") == 2
    await d.stop()


async def test_retries_stop_at_max_attempts_and_at_expiry(tmp_path: Path) -> None:
    d, p, m, _ = await dispatch(tmp_path, [Retry("busy", after=0.0)] * 5)
    await wait_until(lambda: m.notifications.get("log", "gave_up") == 1, 5, "giving up")
    assert p.calls == 3
    await d.stop()
    d, p, m, _ = await dispatch(tmp_path, [Retry("busy", after=30.0)], note(expires=10))
    await wait_until(lambda: m.notifications.get("log", "gave_up") == 1, 5, "giving up at expiry")
    assert p.calls == 1
    await d.stop()


async def test_token_outcomes_update_the_registration(tmp_path: Path) -> None:
    d, _, m, store = await dispatch(tmp_path, [TokenInvalid("Unregistered")])
    await wait_until(lambda: m.notifications.get("log", "token_invalid") == 1, 5, "outcome")
    await d.drain()
    assert (got := await store.get("log", "tok")) is not None and got.state == "invalid"
    await d.stop()
    d, _, m, store = await dispatch(tmp_path, [TokenSuspect("BadDeviceToken")])
    await wait_until(lambda: m.notifications.get("log", "token_suspect") == 1, 5, "outcome")
    await d.drain()
    assert (got := await store.get("log", "tok")) is not None and got.state == "suspect"
    await d.stop()


async def test_config_error_is_reported(tmp_path: Path) -> None:
    d, _, _m, _ = await dispatch(tmp_path, [ConfigError("InvalidProviderToken")])
    await wait_until(lambda: "log" in d.config_errors, 5, "config error recorded")
    assert d.config_errors["log"] == "InvalidProviderToken"
    await d.stop()


async def test_unknown_provider_is_counted_not_fatal(tmp_path: Path) -> None:
    store = SqliteRegistrationStore(tmp_path / "r.db")
    metrics = Metrics()
    d = Dispatcher({}, store, metrics, ManualClock(0), workers=1)
    d.start()
    await d.submit(Delivery(note(), Registration("apns", "x")))
    await asyncio.wait_for(d.drain(), 5)
    assert metrics.notifications.get("apns", "no_provider") == 1
    await d.stop()


def test_backoff_grows_and_is_capped() -> None:
    rng = random.Random(1)
    assert all(0 <= backoff_delay(1, rng=rng) <= 0.5 for _ in range(50))
    assert all(0 <= backoff_delay(30, cap=10, rng=rng) <= 10 for _ in range(50))


def test_retry_after_is_the_earliest_moment_and_jittered_over_as_long_again() -> None:
    rng = random.Random(7)
    delays = [retry_delay(1, 2.0, base=0.5, cap=60, rng=rng) for _ in range(200)]
    assert all(2.0 <= d <= 4.0 for d in delays) and max(delays) - min(delays) > 1.5
    assert len({round(d, 3) for d in delays}) > 150  # not the same millisecond
    assert all(0 <= retry_delay(1, 0.0, base=0.5, rng=rng) <= 0.5 for _ in range(50))  # "now": backoff window
    assert all(300 <= retry_delay(3, 300.0, cap=60, rng=rng) <= 360 for _ in range(50))  # capped spread
