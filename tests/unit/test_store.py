import asyncio
import random
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
import sqlite_utils

from registrations import tagexpr
from registrations.model import Audience, Registration
from registrations.pg_store import MIGRATIONS as PG_MIGRATIONS
from registrations.pg_store import PgRegistrationStore, SchemaTooNew
from registrations.sqlite_store import MIGRATIONS, SqliteRegistrationStore
from registrations.store import RegistrationStore
from tests.conftest import open_registry
from tests.pg_support import PostgresServer

# Every test taking ``registry_store`` or ``store_url`` runs on SQLite and on PostgreSQL (tests/conftest.py).


async def collect(it: AsyncIterator[list[Registration]]) -> list[list[Registration]]:
    return [batch async for batch in it]


async def tokens_of(it: AsyncIterator[list[Registration]]) -> list[str]:
    return [r.token async for b in it for r in b]


async def test_upsert_is_idempotent_and_durable(store_url: str | None, tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    s = await open_registry(store_url, path)
    first = await s.upsert(Registration("fcm", "tok1", user_id="ann", tags=("home", "ops")), 10.0)
    again = await s.upsert(Registration("fcm", "tok1", user_id="bob", tags=("home",)), 20.0)
    assert again.id == first.id and again.created == 10.0 and again.updated == 20.0
    assert await s.count() == 1
    await s.close()
    s = await open_registry(store_url, path)  # migrations are not run twice
    got = await s.get("fcm", "tok1")
    assert got is not None and got.user_id == "bob" and got.tags == ("home",)
    assert await tokens_of(s.resolve(Audience(tags=("ops",)))) == []  # the dropped tag's index row is gone
    assert await tokens_of(s.resolve(Audience(tags=("home",)))) == ["tok1"]
    assert await s.remove("fcm", "tok1") and not await s.remove("fcm", "tok1")
    assert await s.count() == 0
    assert await tokens_of(s.resolve(Audience(tags=("home",)))) == []
    await s.close()


async def test_resolve_by_tags_or_users_in_batches_active_only(registry_store: RegistrationStore) -> None:
    s = registry_store
    for i in range(25):
        await s.upsert(
            Registration("apns", f"t{i}", user_id=f"u{i % 3}", tags=("even",) if i % 2 == 0 else ("odd",)), 1
        )
    await s.upsert(Registration("apns", "dead", tags=("even",), state="invalid"), 1)
    batches = await collect(s.resolve(Audience(tags=("even",)), batch_size=5))
    assert [len(b) for b in batches] == [5, 5, 3]
    assert {r.token for b in batches for r in b} == {f"t{i}" for i in range(0, 25, 2)}
    mixed = set(await tokens_of(s.resolve(Audience(tags=("odd",), users=("u0",)))))
    assert mixed == {f"t{i}" for i in range(25) if i % 2 == 1 or i % 3 == 0}
    assert await collect(s.resolve(Audience())) == []
    v = await s.version()
    await s.upsert(Registration("apns", "t0"), 2)
    assert await s.version() != v
    v = await s.version()
    assert await s.remove(None, "t0")
    assert await s.version() != v


async def test_a_token_twice_in_one_batch_is_written_as_one_after_the_other(
    registry_store: RegistrationStore,
) -> None:
    s = registry_store
    a = Registration("log", "same", user_id="ann", tags=("x",))
    b = Registration("log", "same", user_id="bob", tags=("y",))
    await s.upsert_many([a, b], 5.0)
    got = await s.get("log", "same")
    assert got is not None and got.user_id == "bob" and got.tags == ("y",) and got.id == a.id == b.id
    assert await tokens_of(s.resolve(Audience(tags=("x",)))) == []


def random_expression(rng: random.Random, tags: list[str], depth: int = 0) -> str:
    roll = rng.random()
    if depth > 3 or roll < 0.35:
        return rng.choice(tags)
    if roll < 0.5:
        return "!" + random_expression(rng, tags, depth + 1)
    op = " && " if roll < 0.75 else " || "
    return "(" + op.join(random_expression(rng, tags, depth + 1) for _ in range(rng.randint(2, 3))) + ")"


async def test_tag_expressions_in_sql_agree_with_the_reference_evaluation(
    registry_store: RegistrationStore,
) -> None:
    """Random expressions over random tag sets: the compiled, index-driven plans yield exactly the matches,
    each once, in batches, whatever the batch size."""
    rng = random.Random(4711)
    names = ["a", "b", "c", "severity:critical", "deviceId:all"]
    s = registry_store
    regs = [
        Registration("log", f"t{i}", user_id=f"u{i % 7}", tags=tuple(t for t in names if rng.random() < 0.4))
        for i in range(120)
    ]
    await s.upsert_many(regs, 1.0)
    # A query is a network round trip on PostgreSQL: fewer expressions there, the same first ones.
    for _ in range(150 if isinstance(s, SqliteRegistrationStore) else 50):
        text = random_expression(rng, names)
        node = tagexpr.parse(text)
        expected = {r.token for r in regs if tagexpr.evaluate(node, set(r.tags))}
        got = await tokens_of(s.resolve(Audience(expression=text), batch_size=rng.choice([1, 7, 1000])))
        assert len(got) == len(set(got)), text
        assert set(got) == expected, text
        listed, cursor = await s.query(Audience(expression=text), limit=7)
        while cursor is not None:
            more, cursor = await s.query(Audience(expression=text), after=cursor, limit=7)
            listed += more
        assert [r.token for r in listed] == [r.token for r in regs if r.token in expected], (
            text
        )  # pages, in order
        users = ("u1", "u3")
        mixed = await tokens_of(s.resolve(Audience(expression=text, users=users, tokens=("t2",)), 5))
        assert len(mixed) == len(set(mixed)), text
        assert set(mixed) == expected | {r.token for r in regs if r.user_id in users} | {"t2"}, text


async def test_filters_narrow_and_alone_select_everyone_passing(registry_store: RegistrationStore) -> None:
    s = registry_store
    await s.upsert(Registration("apns", "a1", app="com.x", tags=("t",), channels=("alarms",)), 1)
    await s.upsert(Registration("fcm", "f1", app="com.x", tags=("t",), channels=("news",)), 1)
    await s.upsert(Registration("fcm", "f2", app="com.y", tags=("t",), channels=("alarms", "news")), 1)
    await s.upsert(Registration("fcm", "f3", app="com.y", tags=("t",), state="suspect"), 1)

    async def tokens(a: Audience) -> set[str]:
        return set(await tokens_of(s.resolve(a)))

    assert await tokens(Audience(tags=("t",))) == {"a1", "f1", "f2"}  # active only
    assert await tokens(Audience(tags=("t",), platforms=("fcm",))) == {"f1", "f2"}
    assert await tokens(Audience(tags=("t",), apps=("com.x",))) == {"a1", "f1"}
    assert await tokens(Audience(channels=("alarms",))) == {"a1", "f2"}
    assert await tokens(Audience(apps=("com.y",), channels=("news",))) == {"f2"}
    assert await tokens(Audience()) == set()
    page, cursor = await s.query(Audience(apps=("com.y",)), limit=1)
    assert [r.token for r in page] == ["f2"] and cursor is not None  # in registration order
    rest, end = await s.query(Audience(apps=("com.y",)), after=cursor, limit=10)
    assert [r.token for r in rest] == ["f3"] and end is None
    assert [r.token for r in (await s.query(Audience(), states=("suspect",)))[0]] == ["f3"]
    assert [r.token for r in (await s.query(Audience(channels=("ne",))))[0]] == []  # whole names only
    assert (await s.app_of("fcm", "f2")) == (True, "com.y") and (await s.app_of("fcm", "zz")) == (False, None)
    assert [r.provider for r in await s.by_token("f1")] == ["fcm"]


async def test_full_model_round_trips_and_state_since_moves_only_on_change(
    registry_store: RegistrationStore,
) -> None:
    s = registry_store
    reg = Registration(
        "apns",
        "ab" * 32,
        user_id="ann",
        app="com.example.alarms",
        environment="sandbox",
        device_name="Ann's phone",
        tags=("severity:critical",),
        channels=("alarms",),
        locale="de-DE",
        timezone="Europe/Berlin",
        quiet_hours="22:00-07:00",
        badge=3,
        last_success=5.0,
    )
    await s.upsert(reg, 10.0)
    got = await s.get("apns", "ab" * 32)
    assert got is not None
    assert (got.channels, got.quiet_hours, got.badge, got.last_success) == (
        ("alarms",),
        "22:00-07:00",
        3,
        5.0,
    )
    assert (got.environment, got.device_name, got.locale, got.timezone) == (
        "sandbox",
        "Ann's phone",
        "de-DE",
        "Europe/Berlin",
    )
    assert got.state == "active" and got.state_since == 10.0
    got.state = "invalid"
    await s.upsert(got, 20.0)
    again = await s.upsert(Registration("apns", "ab" * 32, user_id="bob"), 30.0)  # re-registered by another
    stored = await s.get("apns", "ab" * 32)
    assert stored is not None and stored.user_id == "bob" and stored.state == "active"
    assert stored.state_since == 30.0 and stored.created == 10.0 and stored.last_success == 5.0
    assert again.id == reg.id


async def test_a_failed_batch_leaves_nothing_behind(registry_store: RegistrationStore) -> None:
    s = registry_store
    await s.upsert(Registration("log", "kept", tags=("x",)), 1.0)
    before = await s.version()
    bad = Registration("log", "b", tags=("x",))
    bad.environment = None  # type: ignore[assignment]  # violates NOT NULL in the middle of the batch
    with pytest.raises((sqlite3.IntegrityError, psycopg.errors.NotNullViolation)):
        await s.upsert_many([Registration("log", "a", tags=("x",)), bad], 1.0)
    assert await s.count() == 1
    assert await tokens_of(s.resolve(Audience(tags=("x",)))) == ["kept"]
    assert await s.version() == before


async def test_migration_2_upgrades_a_version_1_database(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite_utils.Database(path)
    db.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied REAL)")
    MIGRATIONS[0](db)
    db.execute("INSERT INTO schema_migrations VALUES (1, 0)")
    db["registrations"].insert(  # type: ignore[union-attr]
        {
            "id": "r1",
            "provider": "log",
            "token": "old",
            "environment": "production",
            "tags": '["x"]',
            "state": "active",
            "created": 1.0,
            "updated": 2.0,
        }
    )
    db.execute("INSERT INTO registration_tags VALUES ('r1', 'x')")
    db["registrations"].insert(  # type: ignore[union-attr]
        {
            "id": "r2",
            "provider": "log",
            "token": "two",
            "environment": "production",
            "tags": '["x", "y"]',
            "state": "active",
            "created": 1.0,
            "updated": 2.0,
        }
    )
    db.execute("INSERT INTO registration_tags VALUES ('r2', 'x'), ('r2', 'y')")
    db.conn.commit()
    db.conn.close()
    s = SqliteRegistrationStore(path)
    assert s.db.schema_version == len(MIGRATIONS)
    got = await s.get("log", "old")
    assert got is not None and got.channels == () and got.state_since == 2.0
    assert await tokens_of(s.resolve(Audience(tags=("x",)))) == ["old", "two"]
    assert await tokens_of(s.resolve(Audience(expression="x && y"))) == ["two"]
    assert (await s.get("log", "two")).tags == ("x", "y")  # type: ignore[union-attr]
    assert await s.remove(None, "old") and await s.count() == 1
    await s.close()


async def test_postgresql_migrations_run_once_and_a_newer_schema_is_refused(postgres: PostgresServer) -> None:
    url = postgres.create_database()
    first, second = PgRegistrationStore(url, pool_size=2), PgRegistrationStore(url, pool_size=2)
    await asyncio.gather(first.open(), second.open())  # two instances starting together: each applied once
    assert await first.schema_version() == len(PG_MIGRATIONS)
    await first.upsert(Registration("log", "a"), 1.0)
    assert await second.count() == 1 and await second.version() == await first.version()
    async with first.pool.connection() as conn:
        await conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (len(PG_MIGRATIONS) + 1,))
    with pytest.raises(SchemaTooNew, match="newer than this tocsin"):
        await second.migrate()
    await first.close()
    await second.close()


async def test_a_web_push_subscription_keeps_its_keys_on_both_stores(
    store_url: str | None, tmp_path: Path
) -> None:
    s = await open_registry(store_url, tmp_path / "r.db")
    endpoint = "https://fcm.googleapis.com/fcm/send/abc"
    await s.upsert(Registration("webpush", endpoint, p256dh="BPk" + "a" * 84, auth="c" * 22), 10.0)
    await s.upsert_many(
        [Registration("webpush", endpoint + "2", p256dh="BQx" + "b" * 84, auth="d" * 22)], 11.0
    )
    got = [await s.get("webpush", endpoint), await s.get("webpush", endpoint + "2")]
    assert [(g.p256dh, g.auth) for g in got if g is not None] == [
        ("BPk" + "a" * 84, "c" * 22),
        ("BQx" + "b" * 84, "d" * 22),
    ]
    await s.close()
