"""The durable outbox: one row per (notification, registration), committed before the first send.

Rows start ``pending`` and end ``delivered`` or ``failed`` (with the reason). New rows are buffered and
committed in one transaction by the first worker about to send any of them (``written``); final states are
buffered and committed at the next loop turn or every 2,000 rows. After a crash every row still pending is
sent again: those never sent, those waiting for a retry, and those in flight whose answer never came or
whose answer came in the last moments before the crash. The notification key (collapse id / tag) makes such
a repeat replace the first on the phone. The same rows are the delivery report, kept for a set time.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from registrations.model import Audience
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
    return json.dumps(
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
        },
        separators=(",", ":"),
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
    def __init__(self, path: Path | str) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.path = str(path)
        self._checkpointer: sqlite3.Connection | None = None
        if str(path) != ":memory:":
            self.db.execute("PRAGMA journal_mode=WAL")
            # Checkpoints (which fsync) run in a worker thread via checkpoint(), not on the event loop,
            # where they stalled the event path for tens of milliseconds.
            self.db.execute("PRAGMA wal_autocheckpoint=0")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=5000")
        self._migrate()
        self._notifications: list[tuple[str, str, float, float]] = []
        self._rows: list[tuple[str, str, str, str, float]] = []
        self._finals: list[tuple[str, str | None, int, float, str, str]] = []
        self._known: dict[str, None] = {}
        self._flush_scheduled = False

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

    def written(self) -> None:
        """Commit buffered new rows: called before a send, so no delivery leaves without its row."""
        if self._rows or self._notifications:
            self.flush()

    def finish(self, delivery: Delivery, state: str, reason: str | None, now: float) -> None:
        n, reg = delivery.notification, delivery.registration
        self._finals.append((state, reason, delivery.attempt, now, n.nid, reg.id))
        if len(self._finals) >= FLUSH_ROWS:
            self.flush()
        elif not self._flush_scheduled:
            try:
                # Final states wait up to FINALS_DELAY_S, so that one transaction carries many; new rows
                # still commit before any send (written()). A crash in that window only resends deliveries
                # whose answer was not yet recorded, which their collapse key hides on the phone.
                asyncio.get_running_loop().call_later(FINALS_DELAY_S, self._scheduled_flush)
                self._flush_scheduled = True
            except RuntimeError:  # no loop (tools, tests): write at once
                self.flush()

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        self.flush()

    def flush(self) -> None:
        notifications, rows, finals = self._notifications, self._rows, self._finals
        if not (notifications or rows or finals):
            return
        self._notifications, self._rows, self._finals = [], [], []
        db = self.db
        db.execute("BEGIN")
        try:
            db.executemany("INSERT OR IGNORE INTO outbox_notifications VALUES (?, ?, ?, ?)", notifications)
            db.executemany(
                "INSERT OR IGNORE INTO outbox (nid, registration_id, provider, token, state, updated)"
                " VALUES (?, ?, ?, ?, 'pending', ?)",
                rows,
            )
            db.executemany(
                "UPDATE outbox SET state = ?, reason = ?, attempts = ?, updated = ?"
                " WHERE nid = ? AND registration_id = ?",
                finals,
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            self._notifications, self._rows, self._finals = notifications, rows, finals
            raise

    def next_badge(self, registration_id: str, start: int = 0) -> int:
        """Increment and return the registration's badge count (for ``badge_increment``); a registration with
        no count here yet starts from ``start``, the count its app registered with."""
        row = self.db.execute(
            "INSERT INTO badges VALUES (?, ?) ON CONFLICT(registration_id) DO UPDATE SET count = count + 1"
            " RETURNING count",
            [registration_id, max(0, start) + 1],
        ).fetchone()
        return int(row[0])

    def reset_badge(self, registration_id: str) -> None:
        """The app was opened and cleared its badge."""
        self.db.execute("DELETE FROM badges WHERE registration_id = ?", [registration_id])

    # -- reads ----------------------------------------------------------------------------------------------
    def pending(self) -> Iterator[tuple[Notification, str, str, int]]:
        """(notification, provider, token, attempts) of every row still pending, oldest notification first."""
        self.flush()
        decoded: dict[str, Notification] = {}
        rows = self.db.execute(
            "SELECT o.nid, o.provider, o.token, o.attempts, n.body FROM outbox o"
            " JOIN outbox_notifications n ON n.nid = o.nid WHERE o.state = 'pending' ORDER BY n.created"
        )
        for nid, provider, token, attempts, body in rows:
            n = decoded.get(nid)
            if n is None:
                n = decoded[nid] = decode(body)
                self._known[nid] = None
            yield n, provider, token, attempts

    def report(self, nid: str) -> dict[str, Any] | None:
        self.flush()
        head = self.db.execute(
            "SELECT created, expires FROM outbox_notifications WHERE nid = ?", [nid]
        ).fetchone()
        if head is None:
            return None
        platforms: dict[str, dict[str, Any]] = {}
        total: dict[str, Any] = {"targeted": 0, "delivered": 0, "pending": 0, "failed": {}}
        rows = self.db.execute(
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
                else:
                    bucket[state] += count
        return {"id": nid, "created": head[0], "expires": head[1], **total, "platforms": platforms}

    def purge(self, before: float) -> int:
        """Forget notifications created before ``before`` that have nothing pending any more."""
        self.flush()
        old = [
            r[0]
            for r in self.db.execute(
                "SELECT nid FROM outbox_notifications n WHERE created < ? AND NOT EXISTS"
                " (SELECT 1 FROM outbox o WHERE o.nid = n.nid AND o.state = 'pending')",
                [before],
            )
        ]
        if old:
            self.db.execute("BEGIN")
            self.db.executemany("DELETE FROM outbox WHERE nid = ?", [(n,) for n in old])
            self.db.executemany("DELETE FROM outbox_notifications WHERE nid = ?", [(n,) for n in old])
            self.db.execute("COMMIT")
        return len(old)

    def checkpoint(self) -> None:
        """Copy the WAL into the database file; blocking, so call it from a worker thread."""
        if self.path == ":memory:":
            return
        if self._checkpointer is None:
            self._checkpointer = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._checkpointer.execute("PRAGMA busy_timeout=5000")
        self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
        self.flush()
        self.db.close()
