"""The outbox on its own: rows, finals, pending after a reopen, reports and retention."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from registrations.model import Registration
from service.notify.model import Delivery
from service.outbox import Outbox, decode, encode
from tests.push_support import notification


def test_notification_survives_encoding() -> None:
    n = notification("x", push_type="voip", loc_args=("a",), data={"k": "v"}, custom={"n": 1})
    assert decode(encode(n)) == n


def test_pending_rows_survive_a_reopen_and_finals_do_not(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    n = notification("nid-1")
    ds = [Delivery(n, Registration("fcm" if i % 2 else "apns", f"t{i}")) for i in range(4)]
    for d in ds:
        box.add(d, 1.0)
    box.flush()
    box.finish(ds[0], "delivered", None, 2.0)
    box.finish(ds[1], "failed", "token_invalid", 2.0)
    box.db.close()  # a crash: no flush of anything buffered after this point
    box = Outbox(tmp_path / "o.db")
    pending = list(box.pending())
    assert sorted(t for _, _, t, _ in pending) == ["t2", "t3"]
    assert pending[0][0] == n
    report = box.report("nid-1")
    assert report is not None
    assert (report["targeted"], report["delivered"], report["pending"]) == (4, 1, 2)
    assert report["failed"] == {"token_invalid": 1}
    assert report["platforms"]["fcm"] == {
        "targeted": 2,
        "delivered": 0,
        "pending": 1,
        "failed": {"token_invalid": 1},
    }
    box.close()


def test_purge_keeps_pending_and_recent(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    old, recent = notification("old"), notification("recent")
    d_old, d_pending = Delivery(old, Registration("apns", "a")), Delivery(old, Registration("apns", "b"))
    d_recent = Delivery(recent, Registration("apns", "c"))
    for d in (d_old, d_recent):
        box.add(d, 1.0)
    box.finish(d_old, "delivered", None, 2.0)
    box.finish(d_recent, "delivered", None, 2.0)
    assert box.purge(before=old.created - 1) == 0
    box.add(d_pending, 3.0)
    assert box.purge(before=recent.created + 1) == 1  # "old" stays: it still has a pending row
    assert box.report("recent") is None and box.report("old") is not None
    box.finish(d_pending, "failed", "gave_up", 4.0)
    assert box.purge(before=recent.created + 1) == 1
    assert box.report("old") is None
    box.close()


def test_the_stored_body_has_a_version_and_rows_from_version_1_keep_decoding() -> None:
    import json

    n = notification(sound="bell.caf", category="DOOR", priority="normal", collapse_key="bell-hall")
    stored = json.loads(encode(n))
    assert stored["v"] == 2 and "sound" not in stored and stored["options"]["collapse_key"] == "bell-hall"
    assert decode(encode(n)) == n
    old = {k: v for k, v in stored.items() if k != "v"}
    old["options"] = {"badge": 3}
    old.update(sound="bell.caf", category="DOOR", priority="normal", collapse_key=None)
    decoded = decode(json.dumps(old))
    o = decoded.options
    assert (o.sound, o.category, o.priority, o.collapse_key, o.badge) == (
        "bell.caf",
        "DOOR",
        "normal",
        None,
        3,
    )


def test_a_checkpoint_after_close_opens_nothing(tmp_path: Path) -> None:
    """The checkpoint runs in a worker thread: one that comes after close() (shutdown) must not reopen the
    database, and close() waits for one under way rather than closing its connection beneath it."""

    box = Outbox(tmp_path / "o.db")
    box.checkpoint()
    box.close()
    box.checkpoint()
    assert box._checkpointer is None


async def test_a_send_waits_for_the_commit_that_took_its_row(tmp_path: Path) -> None:
    """A commit under way may hold the delivery's row (taken when it started): ``written()`` returns only
    once that commit is done, so no delivery leaves before its row is durable."""
    import asyncio
    import threading

    box = Outbox(tmp_path / "o.db")
    box.journal.start()
    gate = threading.Event()
    run = box.journal._run

    def slow(statements: Any) -> None:
        gate.wait(10)
        run(statements)

    box.journal._run = slow  # type: ignore[method-assign]
    box.add(Delivery(notification("nid-1"), Registration("log", "t1")), 1.0)
    commit = asyncio.create_task(box.journal.commit())  # takes the row, then waits at the gate
    await asyncio.sleep(0)
    assert box.journal.committing and not box.unwritten
    written = asyncio.create_task(box.written())
    await asyncio.sleep(0.05)
    assert not written.done()  # the row is not durable yet
    gate.set()
    await asyncio.wait_for(written, 10)
    await commit
    assert box.report("nid-1") is not None
    box.close()
