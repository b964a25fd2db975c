"""The default store: SQLite through sqlite-utils, in WAL mode, with versioned migrations run at open.

Writes commit with ``synchronous=FULL``: once ``upsert_many`` returns, the registrations survive a power cut.
Throughput comes from committing many registrations in one transaction (see ``writer.BatchWriter``).

``SqliteRegistrationDb`` is the synchronous engine (also the in-memory copy of a Cumulocity tenant's
inventory); ``SqliteRegistrationStore`` is the asynchronous ``RegistrationStore`` over it: its writes run in
one writer thread on a connection of their own, its reads on the loop's connection (in WAL mode a reader never
waits for the writer, and the pages a read needs are cached).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import sqlite_utils

from registrations import audience_sql
from registrations.model import PROVIDERS, Audience, Registration

# In the order of Registration's fields, so a row builds one positionally (resolving makes 100,000s).
_COLUMNS = (
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
    "id",
    "created",
    "updated",
    "channels",
    "quiet_hours",
    "badge",
    "last_success",
    "state_since",
    "p256dh",
    "auth",
)
_PROVIDERS = ", ".join("?" * len(PROVIDERS))  # provider IN (...) AND token = ?: the unique index serves
_TAGS, _CHANNELS = _COLUMNS.index("tags"), _COLUMNS.index("channels")
_SELECT = "r.rid, " + ", ".join(f"r.{c}" for c in _COLUMNS)
_INSERT = f"INSERT INTO registrations ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
_UPDATE = f"UPDATE registrations SET {', '.join(f'{c} = ?' for c in _COLUMNS)} WHERE rid = ?"


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
    """The full model (channels, quiet hours, badge, last success, since when the state holds) and a layout
    for resolving at a million registrations: an integer key ``rid`` that the tag index (WITHOUT ROWID,
    ``(tag, rid)``) refers to, so a tag's registrations are read in table order; tags and channels as
    space-separated text (neither may contain a space), cheaper to read than JSON."""
    db.execute(
        """CREATE TABLE registrations_v2 (
            rid INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            provider TEXT NOT NULL,
            token TEXT NOT NULL,
            user_id TEXT,
            app TEXT,
            environment TEXT NOT NULL,
            device_name TEXT,
            tags TEXT NOT NULL DEFAULT '',
            locale TEXT,
            timezone TEXT,
            state TEXT NOT NULL,
            created REAL,
            updated REAL,
            channels TEXT NOT NULL DEFAULT '',
            quiet_hours TEXT,
            badge INTEGER,
            last_success REAL,
            state_since REAL
        )"""
    )
    db.execute(
        """INSERT INTO registrations_v2 (id, provider, token, user_id, app, environment, device_name, tags,
               locale, timezone, state, created, updated, state_since)
           SELECT id, provider, token, user_id, app, environment, device_name,
               coalesce((SELECT group_concat(value, ' ') FROM json_each(coalesce(tags, '[]'))), ''),
               locale, timezone, state, created, updated, updated
           FROM registrations ORDER BY rowid"""
    )
    db.execute(
        "CREATE TABLE tags_v2 (tag TEXT NOT NULL, rid INTEGER NOT NULL, PRIMARY KEY (tag, rid)) WITHOUT ROWID"
    )
    db.execute(
        "INSERT INTO tags_v2 SELECT t.tag, r.rid "
        "FROM registration_tags t JOIN registrations_v2 r ON r.id = t.registration_id"
    )
    db.execute("DROP TABLE registration_tags")
    db.execute("DROP TABLE registrations")
    db.execute("ALTER TABLE registrations_v2 RENAME TO registrations")
    db.execute("ALTER TABLE tags_v2 RENAME TO registration_tags")
    db.execute("CREATE UNIQUE INDEX idx_registrations_token ON registrations(provider, token)")
    db.execute("CREATE INDEX idx_registrations_user ON registrations(user_id)")
    db.execute("CREATE INDEX idx_registrations_app ON registrations(app)")
    db.execute("CREATE INDEX idx_registration_tags_rid ON registration_tags(rid)")


def _m3_push_subscription(db: sqlite_utils.Database) -> None:
    """A Web Push subscription's keys (its endpoint is the token)."""
    db.execute("ALTER TABLE registrations ADD COLUMN p256dh TEXT")
    db.execute("ALTER TABLE registrations ADD COLUMN auth TEXT")


# Append only: each entry runs once per database, in order, inside a transaction.
MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _m1_registrations,
    _m2_full_model,
    _m3_push_subscription,
]


class SqliteRegistrationDb:
    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self._writer: sqlite3.Connection | None = None
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite_utils.Database(_connect(self.path))
        if str(path) != ":memory:":
            self.db.enable_wal()
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
        return self._upsert_many(self.db.conn, registrations, now)

    def upsert_many_in_thread(self, registrations: Sequence[Registration], now: float) -> list[Registration]:
        """``upsert_many`` on a connection of its own, for the one writer thread."""
        return self._upsert_many(self._writer_conn(), registrations, now)

    def remove_in_thread(self, provider: str | None, token: str) -> bool:
        """``remove`` on the writer thread's connection."""
        return self._remove(self._writer_conn(), provider, token)

    def _writer_conn(self) -> sqlite3.Connection:
        if self.path == ":memory:":
            return self.db.conn
        if self._writer is None:
            self._writer = _connect(self.path)
        return self._writer

    def _upsert_many(
        self, conn: sqlite3.Connection, registrations: Sequence[Registration], now: float
    ) -> list[Registration]:
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            for reg in registrations:
                self._upsert_one(conn, reg, now)
        self._version += 1
        return list(registrations)

    def _upsert_one(self, conn: sqlite3.Connection, reg: Registration, now: float) -> None:
        found = conn.execute(
            "SELECT rid, id, created, state, state_since, last_success, tags FROM registrations "
            "WHERE provider = ? AND token = ?",
            (reg.provider, reg.token),
        ).fetchone()
        tags = list(dict.fromkeys(reg.tags))
        reg.updated = now
        if found is not None:
            reg.id, reg.created = found[1], found[2]
            reg.state_since = found[4] if found[3] == reg.state and found[4] is not None else now
            if reg.last_success is None:
                reg.last_success = found[5]
        else:
            reg.created, reg.state_since = now, now
        row = [getattr(reg, c) for c in _COLUMNS]
        row[_TAGS] = " ".join(tags)
        row[_CHANNELS] = " ".join(dict.fromkeys(reg.channels))
        if found is None:
            rid = conn.execute(_INSERT, row).lastrowid
        else:
            rid = found[0]
            conn.execute(_UPDATE, [*row, rid])
            if found[6] == row[_TAGS]:
                return
            conn.execute("DELETE FROM registration_tags WHERE rid = ?", (rid,))
        conn.executemany("INSERT INTO registration_tags (tag, rid) VALUES (?, ?)", [(t, rid) for t in tags])

    def remove(self, provider: str | None, token: str) -> bool:
        """Delete the registration of ``token`` (for any provider when ``provider`` is None)."""
        return self._remove(self.db.conn, provider, token)

    def _remove(self, conn: sqlite3.Connection, provider: str | None, token: str) -> bool:
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            providers = (provider,) if provider else PROVIDERS
            ids = conn.execute(
                f"SELECT rid FROM registrations WHERE provider IN ({', '.join('?' * len(providers))}) "
                "AND token = ?",
                (*providers, token),
            ).fetchall()
            for (rid,) in ids:
                conn.execute("DELETE FROM registration_tags WHERE rid = ?", (rid,))
                conn.execute("DELETE FROM registrations WHERE rid = ?", (rid,))
        if ids:
            self._version += 1
        return bool(ids)

    # -- reads ----------------------------------------------------------------------------------------------
    def get(self, provider: str, token: str) -> Registration | None:
        row = self.db.execute(
            f"SELECT {_SELECT} FROM registrations r WHERE provider = ? AND token = ?", [provider, token]
        ).fetchone()
        return _from_row(row) if row else None

    def app_of(self, provider: str, token: str) -> tuple[bool, str | None]:
        """Whether the token is registered, and to which app: what authorising a registration needs."""
        row = self.db.execute(
            "SELECT app FROM registrations WHERE provider = ? AND token = ?", (provider, token)
        ).fetchone()
        return (False, None) if row is None else (True, row[0])

    def by_token(self, token: str) -> list[Registration]:
        rows = self.db.execute(
            f"SELECT {_SELECT} FROM registrations r WHERE provider IN ({_PROVIDERS}) AND token = ?",
            [*PROVIDERS, token],
        ).fetchall()
        return [_from_row(r) for r in rows]

    def count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM registrations").fetchone()[0])

    def query(
        self, where: Audience, states: Iterable[str] = (), after: str = "", limit: int = 100
    ) -> tuple[list[Registration], str | None]:
        """One page of the registrations matching ``where`` (everyone if it is empty), and the cursor of the
        next page (None on the last)."""
        start = int(after) if after.isascii() and after.isdigit() and len(after) <= 18 else 0
        plan = audience_sql.page_plan(where, tuple(states), self._tag_rows)
        if plan is None:
            params: list[object] = []
            sql = audience_sql.predicate(where, params, states=tuple(states))
            plan = audience_sql.Plan(f"FROM registrations r WHERE {sql}", tuple(params), "r.rid")
        rows = self.db.execute(
            f"SELECT {_SELECT} {plan.sql} AND {plan.key} > ? ORDER BY {plan.key} LIMIT ?",
            [*plan.params, start, limit],
        ).fetchall()
        return [_from_row(r) for r in rows], str(rows[-1][0]) if len(rows) == limit else None

    def resolve(self, audience: Audience, batch_size: int = 1000) -> Iterator[list[Registration]]:
        """Active registrations in the audience, in batches of fresh bounded queries (keyset paging)."""
        for plan in audience_sql.plans(audience, self._tag_rows):
            last = 0
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
        if self._writer is not None:
            self._writer.close()
        self.db.conn.close()


class SqliteRegistrationStore:
    """The asynchronous store over a SQLite file: writes in the one writer thread, reads on the loop."""

    def __init__(self, path: Path | str) -> None:
        self.db = SqliteRegistrationDb(path)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="registry-writer")

    @property
    def path(self) -> str:
        return self.db.path

    async def version(self) -> int:
        return self.db.version

    async def upsert(self, registration: Registration, now: float) -> Registration:
        return (await self.upsert_many([registration], now))[0]

    async def upsert_many(self, registrations: Sequence[Registration], now: float) -> list[Registration]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.db.upsert_many_in_thread, registrations, now)

    async def remove(self, provider: str | None, token: str) -> bool:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.db.remove_in_thread, provider, token)

    async def get(self, provider: str, token: str) -> Registration | None:
        return self.db.get(provider, token)

    async def app_of(self, provider: str, token: str) -> tuple[bool, str | None]:
        return self.db.app_of(provider, token)

    async def by_token(self, token: str) -> list[Registration]:
        return self.db.by_token(token)

    async def count(self) -> int:
        return self.db.count()

    async def query(
        self, where: Audience, states: Iterable[str] = (), after: str = "", limit: int = 100
    ) -> tuple[list[Registration], str | None]:
        return self.db.query(where, states, after, limit)

    async def resolve(self, audience: Audience, batch_size: int = 1000) -> AsyncIterator[list[Registration]]:
        for batch in self.db.resolve(audience, batch_size):
            yield batch
            await asyncio.sleep(0)  # a large audience's batches take turns with the rest of the loop

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)
        self.db.close()


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA synchronous=FULL")  # an acknowledged registration survives a power cut
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("PRAGMA cache_size=-32768")  # 32 MiB of pages: the hot index pages of a million
    return conn


def _from_row(row: tuple[Any, ...]) -> Registration:
    """``row`` is (rid, *_COLUMNS); unpacked by name, as this runs for every registration resolved."""
    (_, provider, token, user_id, app, environment, device_name, tags, locale, timezone, state, id_, created,
     updated, channels, quiet_hours, badge, last_success, state_since, p256dh, auth) = row  # fmt: skip
    return Registration(
        provider,
        token,
        user_id,
        app,
        environment,
        device_name,
        tuple(tags.split()) if tags else (),
        locale,
        timezone,
        state,
        id_,
        created,
        updated,
        tuple(channels.split()) if channels else (),
        quiet_hours,
        badge,
        last_success,
        state_since,
        p256dh,
        auth,
    )
