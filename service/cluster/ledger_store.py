"""The ledger on local disk, so that a restart of the whole cluster does not report again what was sent.

Records go through the service's journal (service/journal.py): they are buffered on the event loop and
written by its writer thread in the same transaction as the outbox rows of the batch, never by a commit on
the loop. ``cluster.db``, where earlier versions kept the ledger, is imported once and renamed.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from service.cluster.ledger import Ledger, LedgerState
from service.journal import Journal, Statement

log = logging.getLogger("tocsin.cluster")

TABLE = (
    "CREATE TABLE IF NOT EXISTS ledger"
    " (key TEXT PRIMARY KEY, state TEXT NOT NULL, term INTEGER NOT NULL, at REAL NOT NULL)"
)
# 'sent' is final: an 'intent' never overwrites it.
UPSERT = (
    "INSERT INTO ledger VALUES (?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET state = excluded.state,"
    " term = excluded.term, at = excluded.at WHERE ledger.state != 'sent'"
)


class LedgerStore:
    PRUNE_EVERY = 1000  # records written between two deletions of those past retention

    def __init__(
        self, journal: Journal, legacy: Path | None = None, retention_s: float | None = None
    ) -> None:
        """``retention_s``: records older than this are deleted as new ones come (None: only at load)."""
        self.journal = journal
        self.retention_s = retention_s
        self._writes = 0
        self.journal.db.execute(TABLE)
        if legacy is not None and legacy.exists():
            self._import(legacy)
        # Records since the last commit, one per key (a later 'intent' never replaces a 'sent').
        self._pending: dict[str, tuple[str, LedgerState, int, float]] = {}
        self.journal.register("ledger", self._collect)

    def _import(self, legacy: Path) -> None:
        db = self.journal.db
        if db.execute("SELECT 1 FROM ledger LIMIT 1").fetchone() is None:
            old = sqlite3.connect(legacy)
            try:
                rows = old.execute("SELECT key, state, term, at FROM ledger").fetchall()
            except sqlite3.Error:
                rows = []
            finally:
                old.close()
            db.execute("BEGIN")
            db.executemany(UPSERT, rows)
            db.execute("COMMIT")
            log.info("cluster ledger: %d records imported from %s", len(rows), legacy)
        legacy.rename(legacy.with_name(legacy.name + ".imported"))

    def save(self, key: str, state: LedgerState, term: int, at: float) -> None:
        """Buffer one record and ask the journal for a commit (one per burst, not one per record)."""
        held = self._pending.get(key)
        if held is not None and held[1] == "sent" and state != "sent":
            return
        first = not self._pending
        self._pending[key] = (key, state, term, at)
        if first:
            self.journal.submit([])

    def _collect(self) -> list[Statement]:
        if not self._pending:
            return []
        rows, self._pending = list(self._pending.values()), {}
        out = [Statement(UPSERT, rows)]
        self._writes += len(rows)
        if self.retention_s is not None and self._writes >= self.PRUNE_EVERY:
            self._writes = 0
            newest = max(r[3] for r in rows)
            out.append(Statement("DELETE FROM ledger WHERE at < ?", (newest - self.retention_s,), many=False))
        return out

    def load_into(self, ledger: Ledger, now: float) -> int:
        """At start, before the journal's writer runs: drop expired records, replay the rest."""
        db = self.journal.db
        db.execute("DELETE FROM ledger WHERE at < ?", (now - ledger.retention_s,))
        rows = db.execute("SELECT key, state, term, at FROM ledger ORDER BY at").fetchall()
        for key, state, term, at in rows:
            ledger.record(key, state, term, at)
        return len(rows)
