"""Which version of each platform alarm was already handled, so that redelivered frames are dropped.

Notifications 2.0 delivers at least once: an unacknowledged frame comes again after a reconnect or a minute,
possibly after newer ones (1, 2, 3, 2, 4), and the frame itself carries no sequence number. So for each
alarm (tenant, id) this keeps the last handled version: its ``lastUpdated`` time and a fingerprint of what
rules look at (status, severity, count, time, text). A frame is handled when it differs from that version
and is not older than it. The decision is pure (``verdict``); ``Inbox`` keeps the versions in SQLite so that
they survive a restart.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, NamedTuple

Verdict = Literal["new", "duplicate", "stale"]


class Version(NamedTuple):
    last_updated: float | None  # epoch seconds; None when the platform did not send lastUpdated
    fingerprint: str


def _epoch(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def version_of(alarm: Mapping[str, Any]) -> Version:
    parts = (alarm.get(k) for k in ("status", "severity", "count", "time", "text", "lastUpdated"))
    return Version(_epoch(alarm.get("lastUpdated")), "\x1f".join("" if p is None else str(p) for p in parts))


def verdict(seen: Version | None, frame: Version) -> Verdict:
    if seen is None:
        return "new"
    if frame.fingerprint == seen.fingerprint:
        return "duplicate"
    if (
        frame.last_updated is not None
        and seen.last_updated is not None
        and frame.last_updated < seen.last_updated
    ):
        return "stale"
    return "new"


class Inbox:
    def __init__(self, path: Path | str) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        if str(path) != ":memory:":
            self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS alarm_versions (tenant TEXT NOT NULL, alarm_id TEXT NOT NULL,"
            " last_updated REAL, fingerprint TEXT NOT NULL, seen REAL NOT NULL,"
            " PRIMARY KEY (tenant, alarm_id)) WITHOUT ROWID"
        )

    def seen(self, tenant: str, alarm_id: str) -> Version | None:
        row = self.db.execute(
            "SELECT last_updated, fingerprint FROM alarm_versions WHERE tenant = ? AND alarm_id = ?",
            [tenant, alarm_id],
        ).fetchone()
        return None if row is None else Version(row[0], row[1])

    def check(self, tenant: str, alarm: Mapping[str, Any]) -> Verdict:
        alarm_id = alarm.get("id")
        if alarm_id is None:
            return "new"
        return verdict(self.seen(tenant, str(alarm_id)), version_of(alarm))

    def record(self, tenant: str, alarm: Mapping[str, Any], now: float) -> None:
        """The alarm in this version was handled (committed when this returns)."""
        alarm_id = alarm.get("id")
        if alarm_id is None:
            return
        v = version_of(alarm)
        self.db.execute(
            "INSERT INTO alarm_versions VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant, alarm_id) DO UPDATE SET"
            " last_updated = excluded.last_updated, fingerprint = excluded.fingerprint, seen = excluded.seen",
            [tenant, str(alarm_id), v.last_updated, v.fingerprint, now],
        )

    def purge(self, before: float) -> int:
        return self.db.execute("DELETE FROM alarm_versions WHERE seen < ?", [before]).rowcount

    def close(self) -> None:
        self.db.close()
