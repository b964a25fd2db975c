"""The default store: SQLite through sqlite-utils, in WAL mode, with versioned migrations run at open."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import sqlite_utils

from registrations.model import Audience, Registration

_COLUMNS = (
    "id",
    "provider",
    "token",
    "user_id",
    "app",
    "environment",
    "device_name",
    "tags",
    "locale",
    "timezone",
    "state",
    "created",
    "updated",
)


def _m1_registrations(db: sqlite_utils.Database) -> None:
    db["registrations"].create(  # type: ignore[union-attr]
        {
            "id": str,
            "provider": str,
            "token": str,
            "user_id": str,
            "app": str,
            "environment": str,
            "device_name": str,
            "tags": str,
            "locale": str,
            "timezone": str,
            "state": str,
            "created": float,
            "updated": float,
        },
        pk="id",
        not_null={"provider", "token", "state", "environment"},
    )
    db.execute("CREATE UNIQUE INDEX idx_registrations_token ON registrations(provider, token)")
    db.execute("CREATE INDEX idx_registrations_user ON registrations(user_id)")
    db["registration_tags"].create({"registration_id": str, "tag": str}, pk=("tag", "registration_id"))  # type: ignore[union-attr]
    db.execute("CREATE INDEX idx_registration_tags_reg ON registration_tags(registration_id)")


# Append only: each entry runs once per database, in order, inside a transaction.
MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_m1_registrations]


class SqliteRegistrationStore:
    def __init__(self, path: Path | str) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db = sqlite_utils.Database(conn)
        if str(path) != ":memory:":
            self.db.enable_wal()
        self.db.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable at each commit's checkpoint
        self._version = 0
        self.migrate()

    def migrate(self) -> None:
        db = self.db
        db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied REAL)")
        done = {row[0] for row in db.execute("SELECT version FROM schema_migrations").fetchall()}
        for number, migration in enumerate(MIGRATIONS, start=1):
            if number in done:
                continue
            with db.conn:
                db.execute("BEGIN")
                migration(db)
                db.execute("INSERT INTO schema_migrations VALUES (?, julianday('now'))", [number])

    @property
    def version(self) -> int:
        return self._version

    def upsert(self, registration: Registration, now: float) -> Registration:
        db = self.db
        existing = self.get(registration.provider, registration.token)
        if existing is not None:
            registration.id, registration.created = existing.id, existing.created
        else:
            registration.created = now
        registration.updated = now
        row = {c: getattr(registration, c) for c in _COLUMNS}
        row["tags"] = json.dumps(list(registration.tags))
        with db.conn:
            db.execute("BEGIN")
            db["registrations"].upsert(row, pk="id")  # type: ignore[union-attr]
            db.execute("DELETE FROM registration_tags WHERE registration_id = ?", [registration.id])
            db.conn.executemany(
                "INSERT INTO registration_tags (registration_id, tag) VALUES (?, ?)",
                [(registration.id, t) for t in dict.fromkeys(registration.tags)],
            )
        self._version += 1
        return registration

    def remove(self, provider: str, token: str) -> bool:
        found = self.get(provider, token)
        if found is None:
            return False
        with self.db.conn:
            self.db.execute("BEGIN")
            self.db.execute("DELETE FROM registration_tags WHERE registration_id = ?", [found.id])
            self.db.execute("DELETE FROM registrations WHERE id = ?", [found.id])
        self._version += 1
        return True

    def get(self, provider: str, token: str) -> Registration | None:
        cur = self.db.execute(
            f"SELECT {', '.join(_COLUMNS)} FROM registrations WHERE provider = ? AND token = ?",
            [provider, token],
        )
        row = cur.fetchone()
        return _from_row(row) if row else None

    def count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM registrations").fetchone()[0])

    def resolve(self, audience: Audience, batch_size: int = 1000) -> Iterator[list[Registration]]:
        clauses: list[str] = []
        params: list[object] = []
        if audience.tags:
            marks = ", ".join("?" * len(audience.tags))
            clauses.append(f"id IN (SELECT registration_id FROM registration_tags WHERE tag IN ({marks}))")
            params.extend(audience.tags)
        if audience.users:
            clauses.append(f"user_id IN ({', '.join('?' * len(audience.users))})")
            params.extend(audience.users)
        if not clauses:
            return
        where = f"state = 'active' AND ({' OR '.join(clauses)})"
        last = ""
        query = (
            f"SELECT {', '.join(_COLUMNS)} FROM registrations WHERE {where} AND id > ? ORDER BY id LIMIT ?"
        )
        while True:  # keyset paging: each batch is a fresh, bounded query
            rows = self.db.execute(
                query,
                [*params, last, batch_size],
            ).fetchall()
            if not rows:
                return
            yield [_from_row(r) for r in rows]
            last = rows[-1][0]

    def close(self) -> None:
        self.db.conn.close()


def _from_row(row: tuple[object, ...]) -> Registration:
    d = dict(zip(_COLUMNS, row, strict=True))
    d["tags"] = tuple(json.loads(str(d["tags"] or "[]")))
    return Registration(**d)  # type: ignore[arg-type]
