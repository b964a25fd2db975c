from pathlib import Path

from registrations.model import Audience, Registration
from registrations.sqlite_store import SqliteRegistrationStore


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
