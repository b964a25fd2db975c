"""Registrations in PostgreSQL, shared by every instance (psycopg 3, an asyncio connection pool).

The layout is the SQLite store's: an integer key ``rid``, tags and channels as space-separated text, and a
``registration_tags (tag, rid)`` index table, so ``audience_sql`` plans the same index-driven keyset queries
for both (never OFFSET). A write is one statement (so one round trip and one commit): every row of a
batch is upserted by ``INSERT ... SELECT FROM unnest(...) ON CONFLICT``, its tag rows follow from the stored
tags, and the ``registry_version`` row is bumped, so that an instance's cached audiences notice another
instance's write.

Migrations are versioned SQL, applied in order under an advisory lock (instances starting together apply
each once), at start and by ``tocsin db upgrade``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from registrations import audience_sql, tagexpr
from registrations.model import PROVIDERS, Audience, Registration
from registrations.sqlite_store import _COLUMNS, _from_row
from registrations.store import StoreUnavailable

# Append only: each runs once per database, in order, in a transaction of its own.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE registrations (
        rid bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id text NOT NULL UNIQUE,
        provider text NOT NULL,
        token text NOT NULL,
        user_id text,
        app text,
        environment text NOT NULL,
        device_name text,
        tags text NOT NULL DEFAULT '',
        locale text,
        timezone text,
        state text NOT NULL,
        created double precision,
        updated double precision,
        channels text NOT NULL DEFAULT '',
        quiet_hours text,
        badge integer,
        last_success double precision,
        state_since double precision,
        UNIQUE (provider, token)
    );
    CREATE INDEX registrations_user ON registrations (user_id);
    CREATE INDEX registrations_app ON registrations (app);
    CREATE TABLE registration_tags (tag text NOT NULL, rid bigint NOT NULL, PRIMARY KEY (tag, rid));
    CREATE INDEX registration_tags_rid ON registration_tags (rid);
    CREATE TABLE registry_version (one boolean PRIMARY KEY DEFAULT true CHECK (one), version bigint NOT NULL);
    INSERT INTO registry_version VALUES (true, 0);
    """,
    # Web Push subscriptions: the browser's public key and auth secret beside the endpoint (the token).
    """
    ALTER TABLE registrations ADD COLUMN p256dh text;
    ALTER TABLE registrations ADD COLUMN auth text;
    """,
]
_LOCK = 0x746F6373696E  # "tocsin": the advisory lock that migrations run under
_SELECT = "r.rid, " + ", ".join(f"r.{c}" for c in _COLUMNS)
_TYPES = {"created": "float8", "updated": "float8", "badge": "int4", "last_success": "float8"}
_TYPES["state_since"] = "float8"
_UNNEST = ", ".join(f"%s::{_TYPES.get(c, 'text')}[]" for c in _COLUMNS)
_KEPT = {"id", "created", "provider", "token"}  # an update keeps the id and creation time
_SET = ", ".join(
    f"{c} = excluded.{c}" for c in _COLUMNS if c not in _KEPT and c not in ("last_success", "state_since")
)
# One statement a batch: the upsert; the tag rows following the stored tags (whoever wrote last, whatever
# this instance thought they were: the rows to drop and the rows to add are disjoint); the version bump.
_UPSERT = f"""
    WITH up AS (
        INSERT INTO registrations AS r ({", ".join(_COLUMNS)})
        SELECT * FROM unnest({_UNNEST}) AS u({", ".join(_COLUMNS)})  -- in order: rids follow it
        ON CONFLICT (provider, token) DO UPDATE SET {_SET},
            last_success = coalesce(excluded.last_success, r.last_success),
            state_since = CASE WHEN r.state = excluded.state AND r.state_since IS NOT NULL
                               THEN r.state_since ELSE excluded.state_since END
        RETURNING r.rid, r.provider, r.token, r.id, r.created, r.last_success, r.state_since, r.tags
    ), dropped AS (  -- driven by the rid index whatever the statistics say (a join could scan the table)
        DELETE FROM registration_tags t
        WHERE t.rid = ANY(ARRAY(SELECT rid FROM up))
          AND NOT EXISTS (
              SELECT 1 FROM up WHERE up.rid = t.rid AND t.tag = ANY(string_to_array(up.tags, ' '))
          )
    ), added AS (
        INSERT INTO registration_tags (tag, rid)
        SELECT unnest(string_to_array(up.tags, ' ')), up.rid FROM up
        ON CONFLICT DO NOTHING
    ), bumped AS (
        UPDATE registry_version SET version = version + 1
    )
    SELECT rid, provider, token, id, created, last_success, state_since FROM up
"""
_BUMP = "UPDATE registry_version SET version = version + 1"


class SchemaTooNew(Exception):
    """The database was migrated by a newer tocsin than this one."""


class PgRegistrationStore:
    def __init__(
        self, url: str, password: str | None = None, pool_size: int = 10, wait_s: float = 5.0
    ) -> None:
        """``wait_s``: how long a call waits for a connection before it fails (StoreUnavailable)."""
        self.wait_s = wait_s
        self.error: str | None = None  # why the last call failed to reach the database; None: it did not
        kwargs: dict[str, Any] = {"autocommit": True}
        if password is not None:
            kwargs["password"] = password
        self._url, self._kwargs = url, kwargs
        self.pool: AsyncConnectionPool[AsyncConnection[TupleRow]] = AsyncConnectionPool(
            url, kwargs=kwargs, min_size=1, max_size=pool_size, open=False, name="tocsin-registrations"
        )

    @contextlib.asynccontextmanager
    async def _conn(self) -> AsyncIterator[AsyncConnection[TupleRow]]:
        """A pooled connection; the database being unreachable is ``StoreUnavailable`` (the API's 503) and
        what health reports until a call succeeds again."""
        try:
            async with self.pool.connection(timeout=self.wait_s) as conn:
                yield conn
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:  # the pool's timeout, a lost link
            self.error = str(exc).strip() or exc.__class__.__name__
            raise StoreUnavailable(f"PostgreSQL is unavailable: {self.error}") from None
        self.error = None

    async def open(self, timeout: float = 30.0) -> None:
        """Connect and bring the schema up to date."""
        try:  # one attempt first: a wrong password or host fails now, not after the pool's retries
            probe = await AsyncConnection.connect(self._url, **self._kwargs)
            await probe.close()
            await self.pool.open(wait=True, timeout=timeout)
        except Exception as exc:  # libpq's message names the server and user, never the password
            raise StoreUnavailable(f"cannot connect to PostgreSQL: {str(exc).strip()}") from None
        await self.migrate()

    async def migrate(self) -> int:
        """Apply the migrations not applied yet; returns the schema version."""
        async with self.pool.connection() as conn:
            for number, sql in enumerate(MIGRATIONS, start=1):
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
                    await conn.execute(  # under the lock: two CREATE IF NOT EXISTS at once can collide
                        "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, "
                        "applied timestamptz NOT NULL DEFAULT now())"
                    )
                    cur = await conn.execute("SELECT 1 FROM schema_migrations WHERE version = %s", (number,))
                    if await cur.fetchone() is None:
                        await conn.execute(sql)
                        await conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (number,))
            cur = await conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations")
            row = await cur.fetchone()
        version = int(row[0]) if row else 0
        if version > len(MIGRATIONS):
            raise SchemaTooNew(
                f"the database's schema is at version {version}, newer than this tocsin knows "
                f"({len(MIGRATIONS)}): upgrade tocsin"
            )
        return version

    async def schema_version(self) -> int:
        return int((await self._one("SELECT coalesce(max(version), 0) FROM schema_migrations", ()))[0])

    async def version(self) -> int:
        return int((await self._one("SELECT version FROM registry_version", ()))[0])

    # -- writes ---------------------------------------------------------------------------------------------
    async def upsert(self, registration: Registration, now: float) -> Registration:
        return (await self.upsert_many([registration], now))[0]

    async def upsert_many(self, registrations: Sequence[Registration], now: float) -> list[Registration]:
        """Insert or update by (provider, token), all in one transaction: all are stored or none.

        Re-registering keeps the id and creation time; a token registered by another user moves to that
        user. A token twice in one batch: the later wins, as if written one after the other."""
        rounds: list[list[Registration]] = []
        seen: dict[tuple[str, str], int] = {}
        for reg in registrations:
            key = (reg.provider, reg.token)
            n = seen[key] = seen.get(key, -1) + 1
            if n == len(rounds):
                rounds.append([])
            rounds[n].append(reg)
        async with self._conn() as conn:
            if len(rounds) == 1:  # one statement: atomic as it is
                await self._upsert_round(conn, rounds[0], now)
            else:
                async with conn.transaction():
                    for batch in rounds:
                        await self._upsert_round(conn, batch, now)
        return list(registrations)

    async def _upsert_round(
        self, conn: AsyncConnection[TupleRow], regs: list[Registration], now: float
    ) -> None:
        for reg in regs:
            reg.updated = reg.created = reg.state_since = now  # what a new row gets; an update keeps its own
        columns: list[list[object]] = [[] for _ in _COLUMNS]
        for reg in regs:
            for i, c in enumerate(_COLUMNS):
                value = getattr(reg, c)
                columns[i].append(" ".join(dict.fromkeys(value)) if c in ("tags", "channels") else value)
        cur = await conn.execute(_UPSERT, columns)
        by_key = {(reg.provider, reg.token): reg for reg in regs}
        for _rid, provider, token, id_, created, last_success, state_since in await cur.fetchall():
            reg = by_key[(provider, token)]
            reg.id, reg.created, reg.last_success, reg.state_since = id_, created, last_success, state_since
            reg.tags = tuple(dict.fromkeys(reg.tags))

    async def remove(self, provider: str | None, token: str) -> bool:
        """Delete the registration of ``token`` (for any provider when ``provider`` is None)."""
        providers = [provider] if provider else list(PROVIDERS)
        async with self._conn() as conn, conn.transaction():
            cur = await conn.execute(
                "DELETE FROM registrations WHERE provider = ANY(%s) AND token = %s RETURNING rid",
                (providers, token),
            )
            rids = [r[0] for r in await cur.fetchall()]
            if rids:
                await conn.execute("DELETE FROM registration_tags WHERE rid = ANY(%s)", (rids,))
                await conn.execute(_BUMP)
        return bool(rids)

    # -- reads ----------------------------------------------------------------------------------------------
    async def _one(self, sql: str, params: Sequence[object]) -> tuple[Any, ...]:
        async with self._conn() as conn:
            cur = await conn.execute(sql, params)
            row = await cur.fetchone()
        if row is None:
            raise StoreUnavailable("the registrations schema is incomplete (run tocsin db upgrade)")
        return row

    async def _all(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        async with self._conn() as conn:
            cur = await conn.execute(sql, params)
            return await cur.fetchall()

    async def _page(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        """One keyset page of an audience: driven by the tag index, each match's row looked up by ``rid``
        (a nested loop). The planner's estimates ignore how early LIMIT stops, and a merge join would read
        ``registrations`` from its first row on every page; so the other joins are off for this statement,
        and it is planned for its own values each time. One round trip (a pipeline)."""
        async with self._conn() as conn, conn.pipeline(), conn.transaction():
            await conn.execute("SET LOCAL enable_mergejoin = off")
            await conn.execute("SET LOCAL enable_hashjoin = off")
            # Never prepared: a generic plan cannot know the tag's or the cursor's selectivity.
            cur = await conn.execute(sql, params, prepare=False)
            rows = await cur.fetchall()
        return rows

    async def get(self, provider: str, token: str) -> Registration | None:
        rows = await self._all(
            f"SELECT {_SELECT} FROM registrations r WHERE provider = %s AND token = %s", (provider, token)
        )
        return _from_row(rows[0]) if rows else None

    async def app_of(self, provider: str, token: str) -> tuple[bool, str | None]:
        rows = await self._all(
            "SELECT app FROM registrations WHERE provider = %s AND token = %s", (provider, token)
        )
        return (False, None) if not rows else (True, rows[0][0])

    async def by_token(self, token: str) -> list[Registration]:
        rows = await self._all(
            f"SELECT {_SELECT} FROM registrations r WHERE provider = ANY(%s) AND token = %s ORDER BY r.rid",
            (list(PROVIDERS), token),
        )
        return [_from_row(r) for r in rows]

    async def count(self) -> int:
        return int((await self._one("SELECT count(*) FROM registrations", ()))[0])

    async def _tag_rows(self, tags: Iterable[str], cap: int) -> dict[str, int]:
        """How many registrations carry each tag, counting no further than ``cap`` (bounded estimates)."""
        out: dict[str, int] = {}
        for tag in dict.fromkeys(tags):
            row = await self._one(
                "SELECT count(*) FROM (SELECT 1 FROM registration_tags WHERE tag = %s LIMIT %s) t", (tag, cap)
            )
            out[tag] = int(row[0])
        return out

    async def _estimates(self, audience: Audience, *, listing: bool) -> dict[str, int]:
        """The tag counts ``audience_sql`` may ask for when it picks the rarest driving tag (it plans
        synchronously, so they are read first, and only when there is a choice)."""
        if listing:
            plain = audience.expression and not (audience.tags or audience.users or audience.tokens)
            node = tagexpr.parse(audience.expression) if plain and audience.expression else None
        else:
            node = audience_sql.tag_node(audience)
        options = tagexpr.driver_options(node) if node is not None else []
        if len(options) < 2:
            return {}
        return await self._tag_rows((t for option in options for t in option), audience_sql.ESTIMATE_CAP)

    async def query(
        self, where: Audience, states: Iterable[str] = (), after: str = "", limit: int = 100
    ) -> tuple[list[Registration], str | None]:
        start = int(after) if after.isascii() and after.isdigit() and len(after) <= 18 else 0
        counts = await self._estimates(where, listing=True)
        plan = audience_sql.page_plan(where, tuple(states), lambda tag, _cap: counts.get(tag, 0))
        if plan is None:
            params: list[object] = []
            sql = audience_sql.predicate(where, params, states=tuple(states))
            plan = audience_sql.Plan(f"FROM registrations r WHERE {sql}", tuple(params), "r.rid")
        rows = await self._page(
            audience_sql.postgresql(
                f"SELECT {_SELECT} {plan.sql} AND {plan.key} > ? ORDER BY {plan.key} LIMIT ?"
            ),
            (*plan.params, start, limit),
        )
        return [_from_row(r) for r in rows], str(rows[-1][0]) if len(rows) == limit else None

    async def resolve(self, audience: Audience, batch_size: int = 1000) -> AsyncIterator[list[Registration]]:
        """Active registrations in the audience, in batches of fresh bounded queries (keyset paging)."""
        counts = await self._estimates(audience, listing=False)
        for plan in audience_sql.plans(audience, lambda tag, _cap: counts.get(tag, 0)):
            last = 0
            query = audience_sql.postgresql(
                f"SELECT {_SELECT} {plan.sql} AND {plan.key} > ? ORDER BY {plan.key} LIMIT ?"
            )
            while True:
                rows = await self._page(query, (*plan.params, last, batch_size))
                if not rows:
                    break
                yield [_from_row(r) for r in rows]
                if len(rows) < batch_size:
                    break
                last = rows[-1][0]

    async def close(self) -> None:
        await self.pool.close()
