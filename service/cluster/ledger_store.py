"""The ledger on local disk, so that a restart of the whole cluster does not report again what was sent."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from service.cluster.ledger import Ledger, LedgerState


class LedgerStore:
    def __init__(self, path: Path) -> None:
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

    def load_into(self, ledger: Ledger, now: float) -> int:
        self.conn.execute("DELETE FROM ledger WHERE at < ?", (now - ledger.retention_s,))
        rows = self.conn.execute("SELECT key, state, term, at FROM ledger ORDER BY at").fetchall()
        for key, state, term, at in rows:
            ledger.record(key, state, term, at)
        return len(rows)

    def close(self) -> None:
        self.conn.close()
