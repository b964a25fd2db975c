"""The ledger on local disk, so that a restart of the whole cluster does not report again what was sent."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from service.cluster.ledger import Ledger, LedgerState


class LedgerStore:
    PRUNE_EVERY = 1000  # writes between two deletions of records past retention

    def __init__(self, path: Path, retention_s: float | None = None) -> None:
        """``retention_s``: records older than this are deleted as new ones come (None: only at load)."""
        self.retention_s = retention_s
        self._writes = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS ledger"
            " (key TEXT PRIMARY KEY, state TEXT NOT NULL, term INTEGER NOT NULL, at REAL NOT NULL)"
        )

    def save(self, key: str, state: LedgerState, term: int, at: float) -> None:
        # 'sent' is final: an 'intent' never overwrites it.
        self.conn.execute(
            "INSERT INTO ledger VALUES (?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET state = excluded.state,"
            " term = excluded.term, at = excluded.at WHERE ledger.state != 'sent'",
            (key, state, term, at),
        )
        self._writes += 1
        if self.retention_s is not None and self._writes >= self.PRUNE_EVERY:
            self._writes = 0
            self.conn.execute("DELETE FROM ledger WHERE at < ?", (at - self.retention_s,))

    def __len__(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM ledger").fetchone()[0])

    def load_into(self, ledger: Ledger, now: float) -> int:
        self.conn.execute("DELETE FROM ledger WHERE at < ?", (now - ledger.retention_s,))
        rows = self.conn.execute("SELECT key, state, term, at FROM ledger ORDER BY at").fetchall()
        for key, state, term, at in rows:
            ledger.record(key, state, term, at)
        return len(rows)

    def close(self) -> None:
        self.conn.close()
