"""Open alerts, pending timers and silences in the journal's database, committed with the batch of events
that changed them (so an acknowledged event's alert state is as durable as its outbox rows); read at start.

Only what changed is written: the engine names the alerts it touched (``EngineState.touched``), and each
is compared with what was last written. Rewriting every open alert on each commit stalled the event path
for longer and longer as alerts piled up.
"""

from __future__ import annotations

import gc
import json
import logging
import sqlite3
from collections.abc import Callable, Container, Iterator
from pathlib import Path
from typing import Any

import orjson

from rules.engine import AlertState, EngineState
from rules.state_codec import FORMAT, dump_alert, restore
from service.journal import Journal, Statement

log = logging.getLogger("tocsin.alerts")
TABLES = (
    "CREATE TABLE IF NOT EXISTS alerts (id TEXT PRIMARY KEY, data TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS state_values (id TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS silences (id TEXT PRIMARY KEY, data TEXT NOT NULL)",
)


class AlertStore:
    def __init__(self, journal: Journal | Path, legacy: Path | None = None) -> None:
        """``journal``: the service's (or a path, for a store of its own that writes in place).
        ``legacy``: the ``alerts.db`` of earlier versions, imported once when the tables are empty."""
        self._owns_journal = not isinstance(journal, Journal)
        self.journal = journal if isinstance(journal, Journal) else Journal(journal)
        db = self.journal.db
        for sql in TABLES:
            db.execute(sql)
        if legacy is not None and legacy.exists():
            self._import(legacy)
        self._state: Callable[[], EngineState] | None = None
        # What was last written, per alert: None until the first commit, which reconciles everything.
        self._saved: dict[str, int] | None = None
        self._saved_values: dict[str, str] = {}
        self.journal.register("alerts", self._collect)

    def _import(self, legacy: Path) -> None:
        db = self.journal.db
        if db.execute("SELECT 1 FROM alerts UNION ALL SELECT 1 FROM silences LIMIT 1").fetchone():
            return
        old = sqlite3.connect(legacy)
        try:
            db.execute("BEGIN")
            for table in ("alerts", "state_values", "meta", "silences"):
                try:
                    rows = old.execute(f"SELECT * FROM {table}").fetchall()
                except sqlite3.Error:
                    continue
                db.executemany(f"INSERT OR REPLACE INTO {table} VALUES (?, ?)", rows)
            db.execute("COMMIT")
        finally:
            old.close()
        legacy.rename(legacy.with_name(legacy.name + ".imported"))
        log.info("open alerts and silences imported from %s", legacy)

    def track(self, state: Callable[[], EngineState]) -> None:
        """Where the live engine state is: each commit writes what changed in it."""
        self._state = state

    # -- silences -------------------------------------------------------------------------------------------
    def save_silences(self, silences: list[dict[str, Any]]) -> None:
        """Replaces the stored silences; committed with the next commit (asked for now)."""
        self.journal.submit(
            [
                Statement("DELETE FROM silences", many=False),
                Statement("INSERT INTO silences VALUES (?, ?)", [(s["id"], json.dumps(s)) for s in silences]),
            ]
        )

    def load_silences(self) -> list[dict[str, Any]]:
        out = []
        for (data,) in self.journal.db.execute("SELECT data FROM silences"):
            try:
                out.append(json.loads(data))
            except ValueError:
                log.warning("skipping a damaged stored silence")
        return out

    # -- alerts ---------------------------------------------------------------------------------------------
    def _collect(self) -> list[Statement]:
        if self._state is None:
            return []
        return self.changes(self._state())

    def changes(self, state: EngineState) -> list[Statement]:
        """The statements that make what is stored equal to ``state`` (and forget ``state.touched``)."""
        alerts, values = state.alerts, state.values
        first = self._saved is None
        if first:
            ids: set[str] | list[str] = list(alerts)
        elif not state.touched:
            return []
        else:
            ids = state.touched
        saved = self._saved if self._saved is not None else {}
        rows, gone, new_values, gone_values = [], [], [], []
        for aid in ids:
            alert = alerts.get(aid)
            if alert is None:
                if saved.pop(aid, None) is not None:
                    gone.append((aid,))
            else:
                sig = _signature(alert)
                if first or saved.get(aid) != sig:
                    saved[aid] = sig
                    rows.append((aid, json.dumps(dump_alert(alert), separators=(",", ":"), default=str)))
            value = values.get(aid)
            if value is None:
                if self._saved_values.pop(aid, None) is not None:
                    gone_values.append((aid,))
            elif first or self._saved_values.get(aid) != value:
                self._saved_values[aid] = value
                new_values.append((aid, value))
        if first:
            self._saved_values = dict(values)
            new_values = list(values.items())
        state.touched.clear()
        self._saved = saved
        out = [
            Statement("DELETE FROM alerts WHERE id = ?", gone),
            Statement("INSERT OR REPLACE INTO alerts VALUES (?, ?)", rows),
            Statement("DELETE FROM state_values WHERE id = ?", gone_values),
            Statement("INSERT OR REPLACE INTO state_values VALUES (?, ?)", new_values),
        ]
        if first:
            keep = [(aid,) for aid in alerts]
            out[:0] = [
                Statement("CREATE TEMP TABLE IF NOT EXISTS keep_alerts (id TEXT PRIMARY KEY)", many=False),
                Statement("DELETE FROM temp.keep_alerts", many=False),
                Statement("INSERT INTO temp.keep_alerts VALUES (?)", keep),
                Statement("DELETE FROM alerts WHERE id NOT IN (SELECT id FROM temp.keep_alerts)", many=False),
                Statement("DELETE FROM state_values", many=False),
                Statement("INSERT OR REPLACE INTO meta VALUES ('format', ?)", (str(FORMAT),), many=False),
            ]
        return [s for s in out if s.rows or not s.many]

    def save(self, state: EngineState) -> None:
        """Write ``state``'s changes now, in place (tools and tests, without the journal's writer)."""
        statements = self.changes(state)
        if statements:
            self.journal.submit(statements)

    def load(self) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        """What was stored; rows that do not read as JSON objects are skipped (and logged)."""
        return dict(self.rows()), self.values()

    def rows(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """The stored alerts one at a time, so that a restart never holds them all as JSON at once (100,000
        tracked devices took 400 MB that way)."""
        for aid, data in self.journal.db.execute("SELECT id, data FROM alerts"):
            try:
                record = orjson.loads(data)
            except ValueError:  # orjson.JSONDecodeError is one
                record = None
            if isinstance(record, dict):
                yield aid, record
            else:
                log.warning("skipping a damaged stored alert %s", aid)

    def values(self) -> dict[str, str]:
        return dict(self.journal.db.execute("SELECT id, value FROM state_values").fetchall())

    def restore(self, rules: Container[str] | None = None) -> EngineState:
        """The engine state as stored, and the store told that this is what it holds: the first commit
        after a restart then deletes what was not restored instead of writing every alert again (which
        stalled the event loop for seconds with 100,000 devices)."""
        enabled = gc.isenabled()
        gc.disable()  # 100,000s of new objects, none of them garbage: the collector's passes only cost
        try:
            state = restore(self.rows(), self.values(), rules)
        finally:
            if enabled:
                gc.enable()
        self._saved = {aid: _signature(a) for aid, a in state.alerts.items()}
        self._saved_values = dict(state.values)
        db = self.journal.db
        for (aid,) in db.execute("SELECT id FROM alerts"):
            if aid not in state.alerts:  # damaged, or of a rule no longer loaded: the first commit deletes it
                self._saved[aid] = 0
                state.touched.add(aid)
        db.execute("INSERT OR REPLACE INTO meta VALUES ('format', ?)", (str(FORMAT),))
        return state

    def close(self) -> None:
        if self._owns_journal:
            self.journal.close()


def _signature(a: AlertState) -> int:
    """What a stored alert holds, compared instead of its JSON (the engine changes alerts in place): a hash
    rather than the tuple, a fifth of the memory per tracked device."""
    event = a.last_event
    return hash((a.rule, a.status, a.episode, a.since, a.deadline, a.last_value, event.id if event else None))
