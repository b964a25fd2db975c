"""Open alerts and pending timers on disk (SQLite in the data directory), written behind the event path and
at shutdown, read at start."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

from rules.engine import EngineState
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
        """Replaces what is stored with ``state`` in one transaction."""
        rows = [
            (aid, json.dumps(dump_alert(a), separators=(",", ":"), default=str))
            for aid, a in state.alerts.items()
        ]
        db = self._db
        db.execute("BEGIN")
        try:
            db.execute("DELETE FROM alerts")
            db.executemany("INSERT INTO alerts VALUES (?, ?)", rows)
            db.execute("DELETE FROM state_values")
            db.executemany("INSERT INTO state_values VALUES (?, ?)", list(state.values.items()))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('format', ?)", (str(FORMAT),))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

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
