"""The default store: SQLite through sqlite-utils, in WAL mode, with versioned migrations run at open.

Writes commit with ``synchronous=FULL``: once ``upsert_many`` returns, the registrations survive a power cut.
Throughput comes from committing many registrations in one transaction (see ``writer.BatchWriter``).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import sqlite_utils

from registrations import audience_sql
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
    "channels",
    "quiet_hours",
    "badge",
    "last_success",
    "state_since",
)
_SELECT = ", ".join(f"r.{c}" for c in _COLUMNS)
_INSERT = f"INSERT INTO registrations ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
_UPDATE = f"UPDATE registrations SET {', '.join(f'{c} = ?' for c in _COLUMNS[1:])} WHERE id = ?"


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


def _m2_full_model(db: sqlite_utils.Database) -> None:
    """Channels, quiet hours, badge, last success and since when the state holds; lookups by bare token
    (the Cumulocity API deletes by token alone) and by app."""
    table = db["registrations"]
    table.add_column("channels", str)  # type: ignore[union-attr]
    table.add_column("quiet_hours", str)  # type: ignore[union-attr]
    table.add_column("badge", int)  # type: ignore[union-attr]
    table.add_column("last_success", float)  # type: ignore[union-attr]
    table.add_column("state_since", float)  # type: ignore[union-attr]
    db.execute("UPDATE registrations SET channels = '[]', state_since = updated")
    db.execute("CREATE INDEX idx_registrations_bare_token ON registrations(token)")
    db.execute("CREATE INDEX idx_registrations_app ON registrations(app)")


# Append only: each entry runs once per database, in order, inside a transaction.
MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_m1_registrations, _m2_full_model]


class SqliteRegistrationStore:
    def __init__(self, path: Path | str) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db = sqlite_utils.Database(conn)
        if str(path) != ":memory:":
            self.db.enable_wal()
        self.db.execute("PRAGMA synchronous=FULL")  # an acknowledged registration survives a power cut
        self.db.execute("PRAGMA busy_timeout=5000")
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
    def schema_version(self) -> int:
        return int(self.db.execute("SELECT max(version) FROM schema_migrations").fetchone()[0])

    @property
    def version(self) -> int:
        return self._version

    # -- writes ---------------------------------------------------------------------------------------------
    def upsert(self, registration: Registration, now: float) -> Registration:
        return self.upsert_many([registration], now)[0]

    def upsert_many(self, registrations: Sequence[Registration], now: float) -> list[Registration]:
        """Insert or update by (provider, token), all in one transaction: all are stored or none.

        Re-registering keeps the id and creation time; a token registered by another user moves to that user.
        """
        conn = self.db.conn
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            for reg in registrations:
                self._upsert_one(conn, reg, now)
        self._version += 1
        return list(registrations)

    def _upsert_one(self, conn: sqlite3.Connection, reg: Registration, now: float) -> None:
        found = conn.execute(
            "SELECT id, created, state, state_since, last_success, tags FROM registrations "
            "WHERE provider = ? AND token = ?",
            (reg.provider, reg.token),
        ).fetchone()
        tags = json.dumps(list(dict.fromkeys(reg.tags)))
        reg.updated = now
        if found is not None:
            reg.id, reg.created = found[0], found[1]
            reg.state_since = found[3] if found[2] == reg.state and found[3] is not None else now
            if reg.last_success is None:
                reg.last_success = found[4]
        else:
            reg.created, reg.state_since = now, now
        row = [getattr(reg, c) for c in _COLUMNS]
        row[_COLUMNS.index("tags")] = tags
        row[_COLUMNS.index("channels")] = json.dumps(list(dict.fromkeys(reg.channels)))
        if found is None:
            conn.execute(_INSERT, row)
        else:
            conn.execute(_UPDATE, [*row[1:], reg.id])
            if found[5] == tags:
                return
            conn.execute("DELETE FROM registration_tags WHERE registration_id = ?", (reg.id,))
        conn.executemany(
            "INSERT INTO registration_tags (registration_id, tag) VALUES (?, ?)",
            [(reg.id, t) for t in dict.fromkeys(reg.tags)],
        )

    def remove(self, provider: str | None, token: str) -> bool:
        """Delete the registration of ``token`` (for any provider when ``provider`` is None)."""
        conn = self.db.conn
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM registrations WHERE token = ? AND (? IS NULL OR provider = ?)",
                    (token, provider, provider),
                )
            ]
            for rid in ids:
                conn.execute("DELETE FROM registration_tags WHERE registration_id = ?", (rid,))
                conn.execute("DELETE FROM registrations WHERE id = ?", (rid,))
        if ids:
            self._version += 1
        return bool(ids)

    # -- reads ----------------------------------------------------------------------------------------------
    def get(self, provider: str, token: str) -> Registration | None:
        row = self.db.execute(
            f"SELECT {_SELECT} FROM registrations r WHERE provider = ? AND token = ?", [provider, token]
        ).fetchone()
        return _from_row(row) if row else None

    def by_token(self, token: str) -> list[Registration]:
        rows = self.db.execute(f"SELECT {_SELECT} FROM registrations r WHERE token = ?", [token]).fetchall()
        return [_from_row(r) for r in rows]

    def count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM registrations").fetchone()[0])

    def query(
        self, where: Audience, states: Iterable[str] = (), after: str = "", limit: int = 100
    ) -> list[Registration]:
        """One page, ordered by id, of the registrations matching ``where`` (everyone if it is empty)."""
        params: list[object] = []
        sql = audience_sql.predicate(where, params, states=tuple(states))
        rows = self.db.execute(
            f"SELECT {_SELECT} FROM registrations r WHERE {sql} AND r.id > ? ORDER BY r.id LIMIT ?",
            [*params, after, limit],
        ).fetchall()
        return [_from_row(r) for r in rows]

    def resolve(self, audience: Audience, batch_size: int = 1000) -> Iterator[list[Registration]]:
        """Active registrations in the audience, in batches of fresh bounded queries (keyset paging)."""
        for plan in audience_sql.plans(audience, self._tag_rows):
            last = ""
            query = f"SELECT {_SELECT} {plan.sql} AND {plan.key} > ? ORDER BY {plan.key} LIMIT ?"
            while True:
                rows = self.db.execute(query, [*plan.params, last, batch_size]).fetchall()
                if not rows:
                    break
                yield [_from_row(r) for r in rows]
                if len(rows) < batch_size:
                    break
                last = rows[-1][0]

    def _tag_rows(self, tag: str, cap: int) -> int:
        """How many registrations carry ``tag``, counting no further than ``cap`` (a bounded estimate)."""
        return int(
            self.db.execute(
                "SELECT count(*) FROM (SELECT 1 FROM registration_tags WHERE tag = ? LIMIT ?)", [tag, cap]
            ).fetchone()[0]
        )

    def close(self) -> None:
        self.db.conn.close()


def _from_row(row: tuple[object, ...]) -> Registration:
    d = dict(zip(_COLUMNS, row, strict=True))
    d["tags"] = tuple(json.loads(str(d["tags"] or "[]")))
    d["channels"] = tuple(json.loads(str(d["channels"] or "[]")))
    return Registration(**d)  # type: ignore[arg-type]
