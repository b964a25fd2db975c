"""The cluster ledger on disk goes through the journal: buffered on the loop, committed by the writer."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from service.cluster.ledger import Ledger
from service.cluster.ledger_store import LedgerStore
from service.journal import Journal
from tests.support import wait_until


def rows(path: Path) -> list[tuple[str, str, int]]:
    with sqlite3.connect(path) as db:
        return sorted(db.execute("SELECT key, state, term FROM ledger").fetchall())


async def test_records_are_committed_by_the_journal_writer_and_restored(tmp_path: Path) -> None:
    path = tmp_path / "tocsin.db"
    journal = Journal(path)
    store = LedgerStore(journal)
    journal.start()
    store.save("n1", "intent", 1, 100.0)
    store.save("n1", "sent", 1, 100.5)
    store.save("n1", "intent", 2, 101.0)  # a later intent never replaces 'sent'
    store.save("n2", "intent", 1, 100.0)
    assert rows(path) == []  # buffered, not written on the loop
    await wait_until(lambda: rows(path) == [("n1", "sent", 1), ("n2", "intent", 1)], 5, "ledger committed")
    journal.close()

    again = Journal(path)
    ledger = Ledger(retention_s=3600)
    assert LedgerStore(again).load_into(ledger, now=200.0) == 2
    again.close()


async def test_a_sent_record_on_disk_is_final(tmp_path: Path) -> None:
    path = tmp_path / "tocsin.db"
    journal = Journal(path)
    store = LedgerStore(journal)
    journal.start()
    store.save("n1", "sent", 1, 100.0)
    await journal.commit()
    store.save("n1", "intent", 2, 101.0)
    await journal.commit()
    assert rows(path) == [("n1", "sent", 1)]
    journal.close()


def test_the_ledger_of_earlier_versions_is_imported_once(tmp_path: Path) -> None:
    legacy = tmp_path / "cluster.db"
    with sqlite3.connect(legacy) as old:
        old.execute("CREATE TABLE ledger (key TEXT PRIMARY KEY, state TEXT, term INTEGER, at REAL)")
        old.execute("INSERT INTO ledger VALUES ('old', 'sent', 3, 50.0)")
    old.close()
    journal = Journal(tmp_path / "tocsin.db")
    LedgerStore(journal, legacy=legacy)
    assert not legacy.exists() and (tmp_path / "cluster.db.imported").exists()
    journal.close()
    assert rows(tmp_path / "tocsin.db") == [("old", "sent", 3)]


async def test_records_past_retention_are_pruned_as_new_ones_are_written(tmp_path: Path) -> None:
    path = tmp_path / "tocsin.db"
    journal = Journal(path)
    store = LedgerStore(journal, retention_s=100.0)
    store.PRUNE_EVERY = 10
    journal.start()
    for i in range(5):
        store.save(f"old-{i}", "sent", 1, 0.0)
    await journal.commit()
    for i in range(10):
        store.save(f"new-{i}", "sent", 1, 500.0)
    await journal.commit()
    assert [k for k, _, _ in rows(path)] == [f"new-{i}" for i in range(10)]
    journal.close()
