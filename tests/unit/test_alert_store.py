"""Open alerts, timers and state values on disk, and what happens to damaged rows."""

from __future__ import annotations

from pathlib import Path

from rules.engine import AlertState, EngineState
from rules.event import Event
from rules.state_codec import restore
from service.alert_store import AlertStore


def test_alert_store_round_trip_and_damaged_rows_are_skipped(tmp_path: Path) -> None:
    store = AlertStore(tmp_path / "a" / "alerts.db")
    state = EngineState()
    state.alerts["x"] = AlertState(
        "r", {"h": "1"}, "pending", "ep", 1.0, 9.0, Event("ep", "mqtt", "t", None, 1, {})
    )
    state.values["y"] = "running"
    store.save(state)
    store._db.execute("INSERT INTO alerts VALUES ('bad', 'not json'), ('odd', '{\"rule\": 1}')")
    alerts, values = store.load()
    restored = restore(alerts, values, {"r"})
    assert list(restored.alerts) == ["x"] and restored.timers == [(9.0, "x")] and restored.value_errors == 1
    assert restored.values == {"y": "running"}
    store.close()
