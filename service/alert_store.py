"""Open alerts and pending timers on disk (SQLite in the data directory), written behind the event path and
at shutdown, read at start."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

from rules.engine import AlertState, EngineState
from rules.state_codec import FORMAT, dump_alert

log = logging.getLogger("tocsin.alerts")


class AlertStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # Saved from the event loop every persist_s: with the default FULL each save waited for an fsync
        # (20-45 ms here), stalling every event behind it. NORMAL in WAL mode still survives a crash of the
        # process; the state is written behind anyway.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS alerts (id TEXT PRIMARY KEY, data TEXT NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS state_values (id TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS silences (id TEXT PRIMARY KEY, data TEXT NOT NULL)")
        # What the last save wrote, per alert: None until the first save, which rewrites everything.
        self._saved: dict[str, tuple[Any, ...]] | None = None
        self._saved_values: dict[str, str] | None = None

    def save_silences(self, silences: list[dict[str, Any]]) -> None:
        db = self._db
        db.execute("BEGIN")
        try:
            db.execute("DELETE FROM silences")
            db.executemany("INSERT INTO silences VALUES (?, ?)", [(s["id"], json.dumps(s)) for s in silences])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def load_silences(self) -> list[dict[str, Any]]:
        out = []
        for (data,) in self._db.execute("SELECT data FROM silences"):
            try:
                out.append(json.loads(data))
            except ValueError:
                log.warning("skipping a damaged stored silence")
        return out

    def save(self, state: EngineState) -> None:
        """Makes what is stored equal to ``state``, in one transaction. Only alerts and values that changed
        since the last save are written: rewriting every open alert each second stalled the event loop for
        longer and longer as alerts piled up (100 ms and more with a few thousand open)."""
        alerts, values = state.alerts, state.values
        signatures = {aid: _signature(a) for aid, a in alerts.items()}
        first = self._saved is None
        saved = self._saved or {}
        changed = [aid for aid, sig in signatures.items() if first or saved.get(aid) != sig]
        gone = [(aid,) for aid in saved if aid not in signatures]
        rows = [
            (aid, json.dumps(dump_alert(alerts[aid]), separators=(",", ":"), default=str)) for aid in changed
        ]
        old_values = self._saved_values or {}
        new_values = [(k, v) for k, v in values.items() if first or old_values.get(k) != v]
        gone_values = [(k,) for k in old_values if k not in values]
        db = self._db
        db.execute("BEGIN")
        try:
            if first:
                db.execute("DELETE FROM alerts")
                db.execute("DELETE FROM state_values")
            db.executemany("DELETE FROM alerts WHERE id = ?", gone)
            db.executemany("INSERT OR REPLACE INTO alerts VALUES (?, ?)", rows)
            db.executemany("DELETE FROM state_values WHERE id = ?", gone_values)
            db.executemany("INSERT OR REPLACE INTO state_values VALUES (?, ?)", new_values)
            db.execute("INSERT OR REPLACE INTO meta VALUES ('format', ?)", (str(FORMAT),))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._saved, self._saved_values = signatures, dict(values)

    def load(self) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        """What was stored; rows that do not read as JSON objects are skipped (and logged)."""
        alerts: dict[str, dict[str, Any]] = {}
        for aid, data in self._db.execute("SELECT id, data FROM alerts"):
            try:
                record = json.loads(data)
            except ValueError:
                record = None
            if isinstance(record, dict):
                alerts[aid] = record
            else:
                log.warning("skipping a damaged stored alert %s", aid)
        values = dict(self._db.execute("SELECT id, value FROM state_values").fetchall())
        return alerts, values

    def close(self) -> None:
        self._db.close()


def _signature(a: AlertState) -> tuple[Any, ...]:
    """What a stored alert holds, compared instead of its JSON (the engine changes alerts in place)."""
    event = a.last_event
    return (a.rule, a.status, a.episode, a.since, a.deadline, a.last_value, event.id if event else None)
