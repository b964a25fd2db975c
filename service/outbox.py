"""The durable outbox: one row per (notification, registration), committed before the first send.

Rows start ``pending`` and end ``delivered``, ``failed`` (with the reason) or, in a cluster,
``handed_over`` (to the leader, by an instance that no longer leads: service/cluster/leader_jobs.py). New
rows are buffered and committed in one transaction by the first worker about to send any of them
(``written``); final states are buffered and committed at the next loop turn or every 2,000 rows. After a
crash every row still pending is sent again: those never sent, those waiting for a retry, and those in flight
whose answer never came or whose answer came in the last moments before the crash. The notification key
(collapse id / tag) makes such a repeat replace the first on the phone. The same rows are the delivery
report, kept for a set time.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from registrations.model import Audience
from service.journal import Journal, Statement
from service.jsontext import dumps
from service.notify.model import Delivery, Notification, describe
from service.notify.options import PushOptions


def _m1(db: sqlite3.Connection) -> None:
    db.execute(
        "CREATE TABLE outbox_notifications (nid TEXT PRIMARY KEY, body TEXT NOT NULL,"
        " created REAL NOT NULL, expires REAL NOT NULL)"
    )
    db.execute(
        "CREATE TABLE outbox (nid TEXT NOT NULL, registration_id TEXT NOT NULL, provider TEXT NOT NULL,"
        " token TEXT NOT NULL, state TEXT NOT NULL, reason TEXT, attempts INTEGER NOT NULL DEFAULT 0,"
        " updated REAL NOT NULL, PRIMARY KEY (nid, registration_id)) WITHOUT ROWID"
    )
    db.execute("CREATE INDEX idx_outbox_pending ON outbox(state) WHERE state = 'pending'")
    db.execute("CREATE INDEX idx_outbox_notifications_created ON outbox_notifications(created)")


def _m2_badges(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE badges (registration_id TEXT PRIMARY KEY, count INTEGER NOT NULL) WITHOUT ROWID")


# Append only, like the registry's: each runs once per database, in order, in a transaction.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_m1, _m2_badges]
FLUSH_ROWS = 2000
FINALS_DELAY_S = 0.05


# The stored notification's layout. 1 (no "v"): sound, category, priority and collapse_key beside the options.
BODY_VERSION = 2
_V1_OPTIONS = ("sound", "category", "priority", "collapse_key")


def encode(n: Notification) -> str:
    return dumps(
        {
            "v": BODY_VERSION,
            **describe(n),
            "audience": {"tags": list(n.audience.tags), "users": list(n.audience.users)},
            "created": n.created,
            "expires": n.expires,
            "data": dict(n.data),
            "options": n.options.to_dict(),
            "texts": {k: list(v) for k, v in n.texts.items()},
            "on_ambiguous": n.on_ambiguous,
            "origin": n.origin,
            "channels": list(n.audience.channels),
            "tenant": n.tenant,
        }
    )


def decode(text: str) -> Notification:
    d: dict[str, Any] = json.loads(text)
    if d.pop("v", 1) == 1:  # rows written before version 2 keep decoding: their push fields join the options
        legacy = {k: d.pop(k) for k in _V1_OPTIONS if k in d}
        legacy = {k: v for k, v in legacy.items() if v is not None}
        d["options"] = {**legacy, **d["options"]}
    aud = d.pop("audience")
    channels = tuple(d.pop("channels", ()))  # rows written before these fields existed lack them
    d["audience"] = Audience(tags=tuple(aud["tags"]), users=tuple(aud["users"]), channels=channels)
    d["options"] = PushOptions.from_dict(d["options"])
    d["texts"] = {k: (v[0], v[1]) for k, v in d.get("texts", {}).items()}
    return Notification(**d)


class Outbox:
    """The rows live in the journal's database; writes are buffered here and committed by the journal.

    ``Outbox(path)`` makes a journal of its own that writes in place (tools, benchmarks, tests); the
    service passes its shared journal, so that a batch's rows commit with the rest of the batch.
    """

    def __init__(self, journal: Journal | Path | str) -> None:
        self.journal = journal if isinstance(journal, Journal) else Journal(journal)
        self._owns_journal = not isinstance(journal, Journal)
        self.path = self.journal.path
        self.db = self.journal.db  # set-up and reads; writes go through the journal
        self._checkpointer: sqlite3.Connection | None = None
        self._checkpoint_lock = threading.Lock()
        self._closed = False
        self._read_db: sqlite3.Connection | None = None
        if self.path != ":memory:":
            # Checkpoints (which fsync) run in a worker thread via checkpoint(), not on the event loop,
            # where they stalled the event path for tens of milliseconds.
            self.db.execute("PRAGMA wal_autocheckpoint=0")
        self._migrate()
        self._notifications: list[tuple[str, str, float, float]] = []
        self._rows: list[tuple[str, str, str, str, float]] = []
        self._finals: list[tuple[str, str | None, int, float, str, str]] = []
        self._badges: list[tuple[str, int]] = []
        self._badge_counts: dict[str, int] = {}
        self._known: dict[str, None] = {}
        self._flush_scheduled = False
        self.journal.register("outbox", self._collect)

    def _migrate(self) -> None:
        db = self.db
        db.execute("CREATE TABLE IF NOT EXISTS outbox_migrations (version INTEGER PRIMARY KEY)")
        done = {row[0] for row in db.execute("SELECT version FROM outbox_migrations")}
        for number, migration in enumerate(MIGRATIONS, start=1):
            if number not in done:
                db.execute("BEGIN")
                migration(db)
                db.execute("INSERT INTO outbox_migrations VALUES (?)", [number])
                db.execute("COMMIT")

    # -- writes ---------------------------------------------------------------------------------------------
    def add(self, delivery: Delivery, now: float) -> None:
        n, reg = delivery.notification, delivery.registration
        if n.nid not in self._known:
            if len(self._known) > 10_000:
                self._known.clear()
            self._known[n.nid] = None
            self._notifications.append((n.nid, encode(n), n.created, n.expires))
        self._rows.append((n.nid, reg.id, reg.provider, reg.token, now))

    @property
    def unwritten(self) -> bool:
        return bool(self._rows or self._notifications)

    async def written(self) -> None:
        """Commit buffered new rows: awaited before a send, so no delivery leaves without its row.

        Also while a commit is under way: it may hold this delivery's rows (taken from the buffer when it
        started), and a send before it finished could repeat after a crash with no row to show for it."""
        if self._rows or self._notifications or self.journal.committing:
            await self.journal.commit()

    def finish(self, delivery: Delivery, state: str, reason: str | None, now: float) -> None:
        n, reg = delivery.notification, delivery.registration
        self._finals.append((state, reason, delivery.attempt, now, n.nid, reg.id))
        if self._flush_scheduled:
            return
        try:
            # Final states wait up to FINALS_DELAY_S (or the next commit of the event path), so that one
            # transaction carries many. A crash in that window only resends deliveries whose answer was not
            # yet recorded, which their collapse key hides on the phone.
            asyncio.get_running_loop().call_later(FINALS_DELAY_S, self._scheduled_flush)
            self._flush_scheduled = True
        except RuntimeError:  # no loop (tools, tests): write at once
            self.flush()

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        if self._finals or self._rows or self._notifications or self._badges:
            self.journal.submit([])

    def _collect(self) -> list[Statement]:
        notifications, rows, finals, badges = self._notifications, self._rows, self._finals, self._badges
        if not (notifications or rows or finals or badges):
            return []
        self._notifications, self._rows, self._finals, self._badges = [], [], [], []
        return [
            Statement("INSERT OR IGNORE INTO outbox_notifications VALUES (?, ?, ?, ?)", notifications),
            Statement(
                "INSERT OR IGNORE INTO outbox (nid, registration_id, provider, token, state, updated)"
                " VALUES (?, ?, ?, ?, 'pending', ?)",
                rows,
            ),
            Statement(
                "UPDATE outbox SET state = ?, reason = ?, attempts = ?, updated = ?"
                " WHERE nid = ? AND registration_id = ?",
                finals,
            ),
            Statement(
                "INSERT INTO badges VALUES (?, ?)"
                " ON CONFLICT(registration_id) DO UPDATE SET count = excluded.count",
                badges,
            ),
        ]

    def flush(self) -> None:
        """Write what is buffered now, in place: only where the journal's writer is not running."""
        if self.journal.started:
            raise RuntimeError("Outbox.flush() while the journal's writer runs: await outbox.settle()")
        self.journal.commit_now()

    async def settle(self) -> None:
        """Everything buffered so far is committed (before a report is read, say)."""
        await self.journal.commit()

    def next_badge(self, registration_id: str, start: int = 0) -> int:
        """Increment and return the registration's badge count (for ``badge_increment``); a registration with
        no count here yet starts from ``start``, the count its app registered with."""
        count = self._badge_counts.get(registration_id)
        if count is None:
            row = self._reader.execute(
                "SELECT count FROM badges WHERE registration_id = ?", [registration_id]
            )
            found = row.fetchone()
            count = int(found[0]) if found else max(0, start)
            if len(self._badge_counts) > 100_000:
                self._badge_counts.clear()
        count += 1
        self._badge_counts[registration_id] = count
        self._badges.append((registration_id, count))
        return count

    def reset_badge(self, registration_id: str) -> None:
        """The app was opened and cleared its badge."""
        self._badge_counts[registration_id] = 0
        self._badges.append((registration_id, 0))

    # -- reads ----------------------------------------------------------------------------------------------
    @property
    def _reader(self) -> sqlite3.Connection:
        """Reads use a connection of their own, never the writer thread's; standalone, buffered rows are
        written first, so that what was just added reads back."""
        if not self.journal.started:
            self.journal.commit_now()
            return self.db
        if self._read_db is None:
            self._read_db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._read_db.execute("PRAGMA busy_timeout=5000")
        return self._read_db

    def pending(self) -> Iterator[tuple[Notification, str, str, int]]:
        """(notification, provider, token, attempts) of every row still pending, oldest notification first."""
        decoded: dict[str, Notification] = {}
        rows = self._reader.execute(
            "SELECT o.nid, o.provider, o.token, o.attempts, n.body FROM outbox o"
            " JOIN outbox_notifications n ON n.nid = o.nid WHERE o.state = 'pending' ORDER BY n.created"
        )
        for nid, provider, token, attempts, body in rows:
            n = decoded.get(nid)
            if n is None:
                n = decoded[nid] = decode(body)
                self._known[nid] = None
            yield n, provider, token, attempts

    def recent(self, limit: int) -> list[tuple[str, str]]:
        """(nid, stored body) of the latest notifications, newest first."""
        return self._reader.execute(
            "SELECT nid, body FROM outbox_notifications ORDER BY created DESC LIMIT ?", [limit]
        ).fetchall()

    def tenant_of(self, nid: str) -> str | None:
        """The Cumulocity tenant of a stored notification (None: the deployment's own, or unknown)."""
        row = self._reader.execute("SELECT body FROM outbox_notifications WHERE nid = ?", [nid]).fetchone()
        if row is None:
            return None
        try:
            tenant = json.loads(row[0]).get("tenant")
        except (ValueError, AttributeError):
            return None
        return tenant if isinstance(tenant, str) else None

    def report(self, nid: str) -> dict[str, Any] | None:
        """What is committed of a notification's deliveries (``await settle()`` first for the latest)."""
        db = self._reader
        head = db.execute("SELECT created, expires FROM outbox_notifications WHERE nid = ?", [nid]).fetchone()
        if head is None:
            return None
        platforms: dict[str, dict[str, Any]] = {}
        total: dict[str, Any] = {"targeted": 0, "delivered": 0, "pending": 0, "failed": {}}
        rows = db.execute(
            "SELECT provider, state, reason, count(*) FROM outbox WHERE nid = ?"
            " GROUP BY provider, state, reason",
            [nid],
        )
        for provider, state, reason, count in rows:
            p = platforms.setdefault(provider, {"targeted": 0, "delivered": 0, "pending": 0, "failed": {}})
            for bucket in (p, total):
                bucket["targeted"] += count
                if state == "failed":
                    key = reason or "unknown"
                    bucket["failed"][key] = bucket["failed"].get(key, 0) + count
                elif state == "handed_over":  # to the cluster's leader, which reports its own row
                    bucket["handed_over"] = bucket.get("handed_over", 0) + count
                else:
                    bucket[state] += count
        return {"id": nid, "created": head[0], "expires": head[1], **total, "platforms": platforms}

    def purge(self, before: float) -> int:
        """Forget notifications created before ``before`` that have nothing pending any more."""
        old = [
            r[0]
            for r in self._reader.execute(
                "SELECT nid FROM outbox_notifications n WHERE created < ? AND NOT EXISTS"
                " (SELECT 1 FROM outbox o WHERE o.nid = n.nid AND o.state = 'pending')",
                [before],
            )
        ]
        if old:
            keys = [(n,) for n in old]
            self.journal.submit(
                [
                    Statement("DELETE FROM outbox WHERE nid = ?", keys),
                    Statement("DELETE FROM outbox_notifications WHERE nid = ?", keys),
                ]
            )
        return len(old)

    def checkpoint(self) -> None:
        """Copy the WAL into the database file; blocking, so call it from a worker thread."""
        if self.path == ":memory:":
            return
        # Held while the connection is used: close() from the loop must not close it under a running
        # checkpoint (a connection closed from another thread mid-statement crashed the process).
        with self._checkpoint_lock:
            if self._closed:
                return
            if self._checkpointer is None:
                self._checkpointer = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                self._checkpointer.execute("PRAGMA busy_timeout=5000")
            self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        """Closes its connections; the journal (when it is the outbox's own) writes what is left."""
        with self._checkpoint_lock:
            self._closed = True
            if self._checkpointer is not None:
                self._checkpointer.close()
            self._checkpointer = None
        if self._read_db is not None:
            self._read_db.close()
        self._read_db = None
        if self._owns_journal:
            self.journal.close()
