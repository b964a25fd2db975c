"""Dropping redelivered and out-of-order alarm frames by the alarm's last handled version."""

from pathlib import Path
from typing import Any

from service.cumulocity.inbox import Inbox, verdict, version_of


def alarm(count: int, updated: str, status: str = "ACTIVE", **more: Any) -> dict[str, Any]:
    return {"id": "7", "status": status, "severity": "MAJOR", "count": count, "lastUpdated": updated, **more}


V1 = alarm(1, "2026-11-23T10:00:00.000Z")
V2 = alarm(2, "2026-11-23T10:00:01.000Z")
V3 = alarm(2, "2026-11-23T10:00:02.000Z", status="CLEARED")


def test_versions_in_order_are_new_and_repeats_or_older_ones_are_not() -> None:
    assert verdict(None, version_of(V1)) == "new"
    assert verdict(version_of(V1), version_of(V2)) == "new"
    assert verdict(version_of(V2), version_of(V2)) == "duplicate"
    assert verdict(version_of(V3), version_of(V2)) == "stale"  # 1, 2, 3, then 2 again
    # two real changes within the same millisecond still differ
    same_ms = alarm(2, "2026-11-23T10:00:01.000Z", status="ACKNOWLEDGED")
    assert verdict(version_of(V2), version_of(same_ms)) == "new"
    # without lastUpdated (older platforms) only exact repeats are dropped
    bare = {k: v for k, v in V2.items() if k != "lastUpdated"}
    assert verdict(version_of(bare), version_of(bare)) == "duplicate"
    assert verdict(version_of(bare), version_of({**bare, "count": 3})) == "new"


def test_the_inbox_remembers_per_tenant_across_a_restart(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path / "c8y.db")
    sequence = [V1, V2, V3, V2, alarm(3, "2026-11-23T10:00:03.000Z")]
    handled = []
    for frame in sequence:
        if inbox.check("t1", frame) == "new":
            inbox.record("t1", frame, 0.0)
            handled.append(frame["count"])
    assert handled == [1, 2, 2, 3]  # V3 (the clear) counted once, the late V2 dropped
    assert inbox.check("t2", V1) == "new"  # another tenant's alarm 7 is another alarm
    inbox.close()
    again = Inbox(tmp_path / "c8y.db")
    assert again.check("t1", V3) == "stale" and again.check("t1", sequence[-1]) == "duplicate"
    assert again.purge(before=1.0) == 1 and again.check("t1", V1) == "new"
