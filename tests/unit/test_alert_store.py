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
    store.journal.db.execute("INSERT INTO alerts VALUES ('bad', 'not json'), ('odd', '{\"rule\": 1}')")
    alerts, values = store.load()
    restored = restore(alerts, values, {"r"})
    assert list(restored.alerts) == ["x"] and restored.timers == [(9.0, "x")] and restored.value_errors == 1
    assert restored.values == {"y": "running"}
    store.close()


def test_saves_write_only_what_changed_and_still_equal_the_state(tmp_path: Path) -> None:
    store = AlertStore(tmp_path / "alerts.db")
    state = EngineState()
    for i in range(3):
        state.alerts[f"a{i}"] = AlertState(
            "r", {}, "firing", f"e{i}", 1.0, None, Event(f"e{i}", "m", "t", None, 1, {})
        )
    state.values = {"v1": "on", "v2": "off"}
    store.save(state)
    writes: list[str] = []
    store.journal.db.set_trace_callback(
        lambda sql: writes.append(sql) if sql.startswith("INSERT OR REPLACE INTO alerts") else None
    )
    state.alerts["a1"].status, state.alerts["a1"].deadline = (
        "clearing",
        5.0,
    )  # changed in place, as the engine does
    del state.alerts["a2"]
    state.values = {"v1": "off"}
    state.touched |= {"a0", "a1", "a2", "v1", "v2"}  # what the engine names as touched
    store.save(state)
    assert len(writes) == 1  # a1 only; a0 is unchanged
    alerts, values = store.load()
    assert sorted(alerts) == ["a0", "a1"] and alerts["a1"]["status"] == "clearing"
    assert values == {"v1": "off"}
    store.close()
    again = AlertStore(tmp_path / "alerts.db")
    again.save(EngineState())  # a fresh process's first save replaces everything
    assert again.load() == ({}, {})


def test_after_a_restart_the_first_commit_writes_nothing_again_and_drops_what_was_not_restored(
    tmp_path: Path,
) -> None:
    store = AlertStore(tmp_path / "alerts.db")
    state = EngineState()
    for i in range(100):
        state.alerts[f"a{i}"] = AlertState(
            "r", {}, "watching", f"e{i}", 1.0, 9.0, Event(f"e{i}", "m", "t", None, 1, {})
        )
    state.alerts["old"] = AlertState("removed-rule", {}, "firing", "e", 1.0, None, None)
    store.save(state)
    store.close()
    again = AlertStore(tmp_path / "alerts.db")
    restored = again.restore({"r"})
    assert len(restored.alerts) == 100 and len(restored.tracked["r"]) == 100
    writes: list[str] = []
    again.journal.db.set_trace_callback(lambda sql: writes.append(sql.split(" (")[0]))
    again.save(restored)
    assert [w for w in writes if w.startswith(("INSERT", "DELETE"))] == [
        "DELETE FROM alerts WHERE id = 'old'"
    ]
    assert sorted(again.load()[0]) == sorted(f"a{i}" for i in range(100))
    again.close()
