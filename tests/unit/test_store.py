import random
import sqlite3
from pathlib import Path

import pytest
import sqlite_utils

from registrations import tagexpr
from registrations.model import Audience, Registration
from registrations.sqlite_store import MIGRATIONS, SqliteRegistrationStore


def test_upsert_is_idempotent_and_durable(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    s = SqliteRegistrationStore(path)
    first = s.upsert(Registration("fcm", "tok1", user_id="ann", tags=("home", "ops")), 10.0)
    again = s.upsert(Registration("fcm", "tok1", user_id="bob", tags=("home",)), 20.0)
    assert again.id == first.id and again.created == 10.0 and again.updated == 20.0
    assert s.count() == 1
    s.close()
    s = SqliteRegistrationStore(path)  # migrations are not run twice
    got = s.get("fcm", "tok1")
    assert got is not None and got.user_id == "bob" and got.tags == ("home",)
    assert s.remove("fcm", "tok1") and not s.remove("fcm", "tok1")
    assert s.count() == 0


def test_resolve_by_tags_or_users_in_batches_active_only(tmp_path: Path) -> None:
    s = SqliteRegistrationStore(tmp_path / "r.db")
    for i in range(25):
        s.upsert(
            Registration("apns", f"t{i}", user_id=f"u{i % 3}", tags=("even",) if i % 2 == 0 else ("odd",)), 1
        )
    s.upsert(Registration("apns", "dead", tags=("even",), state="invalid"), 1)
    batches = list(s.resolve(Audience(tags=("even",)), batch_size=5))
    assert [len(b) for b in batches] == [5, 5, 3]
    assert {r.token for b in batches for r in b} == {f"t{i}" for i in range(0, 25, 2)}
    mixed = {r.token for b in s.resolve(Audience(tags=("odd",), users=("u0",))) for r in b}
    assert mixed == {f"t{i}" for i in range(25) if i % 2 == 1 or i % 3 == 0}
    assert list(s.resolve(Audience())) == []
    v = s.version
    s.upsert(Registration("apns", "t0"), 2)
    assert s.version > v


def random_expression(rng: random.Random, tags: list[str], depth: int = 0) -> str:
    roll = rng.random()
    if depth > 3 or roll < 0.35:
        return rng.choice(tags)
    if roll < 0.5:
        return "!" + random_expression(rng, tags, depth + 1)
    op = " && " if roll < 0.75 else " || "
    return "(" + op.join(random_expression(rng, tags, depth + 1) for _ in range(rng.randint(2, 3))) + ")"


def test_tag_expressions_in_sql_agree_with_the_reference_evaluation(tmp_path: Path) -> None:
    """Random expressions over random tag sets: the compiled, index-driven plans yield exactly the matches,
    each once, in batches, whatever the batch size."""
    rng = random.Random(4711)
    names = ["a", "b", "c", "severity:critical", "deviceId:all"]
    s = SqliteRegistrationStore(tmp_path / "r.db")
    regs = [
        Registration("log", f"t{i}", user_id=f"u{i % 7}", tags=tuple(t for t in names if rng.random() < 0.4))
        for i in range(120)
    ]
    s.upsert_many(regs, 1.0)
    for _ in range(150):
        text = random_expression(rng, names)
        node = tagexpr.parse(text)
        expected = {r.token for r in regs if tagexpr.evaluate(node, set(r.tags))}
        got = [
            r.token
            for b in s.resolve(Audience(expression=text), batch_size=rng.choice([1, 7, 1000]))
            for r in b
        ]
        assert len(got) == len(set(got)), text
        assert set(got) == expected, text
        listed, cursor = s.query(Audience(expression=text), limit=7)
        while cursor is not None:
            more, cursor = s.query(Audience(expression=text), after=cursor, limit=7)
            listed += more
        assert [r.token for r in listed] == [r.token for r in regs if r.token in expected], (
            text
        )  # pages, in order
        users = ("u1", "u3")
        mixed = [
            r.token for b in s.resolve(Audience(expression=text, users=users, tokens=("t2",)), 5) for r in b
        ]
        assert len(mixed) == len(set(mixed)), text
        assert set(mixed) == expected | {r.token for r in regs if r.user_id in users} | {"t2"}, text


def test_filters_narrow_and_alone_select_everyone_passing(tmp_path: Path) -> None:
    s = SqliteRegistrationStore(tmp_path / "r.db")
    s.upsert(Registration("apns", "a1", app="com.x", tags=("t",), channels=("alarms",)), 1)
    s.upsert(Registration("fcm", "f1", app="com.x", tags=("t",), channels=("news",)), 1)
    s.upsert(Registration("fcm", "f2", app="com.y", tags=("t",), channels=("alarms", "news")), 1)
    s.upsert(Registration("fcm", "f3", app="com.y", tags=("t",), state="suspect"), 1)

    def tokens(a: Audience) -> set[str]:
        return {r.token for b in s.resolve(a) for r in b}

    assert tokens(Audience(tags=("t",))) == {"a1", "f1", "f2"}  # active only
    assert tokens(Audience(tags=("t",), platforms=("fcm",))) == {"f1", "f2"}
    assert tokens(Audience(tags=("t",), apps=("com.x",))) == {"a1", "f1"}
    assert tokens(Audience(channels=("alarms",))) == {"a1", "f2"}
    assert tokens(Audience(apps=("com.y",), channels=("news",))) == {"f2"}
    assert tokens(Audience()) == set()
    page, cursor = s.query(Audience(apps=("com.y",)), limit=1)
    assert [r.token for r in page] == ["f2"] and cursor is not None  # in registration order
    rest, end = s.query(Audience(apps=("com.y",)), after=cursor, limit=10)
    assert [r.token for r in rest] == ["f3"] and end is None
    assert [r.token for r in s.query(Audience(), states=("suspect",))[0]] == ["f3"]
    assert [r.token for r in s.query(Audience(channels=("ne",)))[0]] == []  # whole channel names only


def test_full_model_round_trips_and_state_since_moves_only_on_change(tmp_path: Path) -> None:
    s = SqliteRegistrationStore(tmp_path / "r.db")
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
    s.upsert(reg, 10.0)
    got = s.get("apns", "ab" * 32)
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
    s.upsert(got, 20.0)
    again = s.upsert(Registration("apns", "ab" * 32, user_id="bob"), 30.0)  # re-registered by another user
    stored = s.get("apns", "ab" * 32)
    assert stored is not None and stored.user_id == "bob" and stored.state == "active"
    assert stored.state_since == 30.0 and stored.created == 10.0 and stored.last_success == 5.0
    assert again.id == reg.id


def test_a_failed_batch_leaves_nothing_behind(tmp_path: Path) -> None:
    s = SqliteRegistrationStore(tmp_path / "r.db")
    bad = Registration("log", "b", tags=("x",))
    bad.provider = None  # type: ignore[assignment]  # violates NOT NULL in the middle of the batch
    with pytest.raises(sqlite3.IntegrityError):
        s.upsert_many([Registration("log", "a", tags=("x",)), bad], 1.0)
    assert s.count() == 0
    assert s.db.execute("SELECT count(*) FROM registration_tags").fetchone()[0] == 0


def test_migration_2_upgrades_a_version_1_database(tmp_path: Path) -> None:
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
    assert s.schema_version == len(MIGRATIONS)
    got = s.get("log", "old")
    assert got is not None and got.channels == () and got.state_since == 2.0
    assert [r.token for b in s.resolve(Audience(tags=("x",))) for r in b] == ["old", "two"]
    assert [r.token for b in s.resolve(Audience(expression="x && y")) for r in b] == ["two"]
    assert s.get("log", "two").tags == ("x", "y")  # type: ignore[union-attr]
    assert s.remove(None, "old") and s.count() == 1
