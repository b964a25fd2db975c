"""The rule engine on simulated time: nothing here waits."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from rules.engine import EngineState, RuleEngine, Transition, alert_id
from rules.event import Event
from rules.loader import EXAMPLES_DIR, load_rules


def engine() -> RuleEngine:
    return RuleEngine(load_rules([EXAMPLES_DIR]))


def ev(topic: str, payload: object, t: float, eid: str | None = None) -> Event:
    return Event(eid or f"{topic}@{t}", "mqtt", topic, None, t, payload)


def run(
    e: RuleEngine, events: list[Event], until: float, state: EngineState | None = None
) -> list[Transition]:
    """Feed events in time order, firing timers in between, as the service does."""
    state = state or EngineState()
    out: list[Transition] = []
    for event in events:
        state, fired = e.tick(state, event.time)
        out += fired
        state, produced = e.evaluate(event, state, event.time)
        out += produced
    state, fired = e.tick(state, until)
    return out + fired


def test_doorbell_fires_once_per_event_with_labels() -> None:
    out = run(engine(), [ev("home/front/doorbell", {"event": "ring"}, 0, "e1")], 0)
    assert [(t.rule, t.state, t.labels, t.episode, t.body) for t in out] == [
        ("doorbell", "firing", {"room": "front"}, "e1", "Someone is at the front door.")
    ]
    assert out[0].alert_id == alert_id("doorbell", {"room": "front"})


def test_threshold_fires_after_for_at_its_deadline_and_clears_with_hysteresis() -> None:
    cpu = "servers/web1/cpu"
    events = [
        ev(cpu, {"usage": 95}, 0, "start"),
        ev(cpu, {"usage": 96}, 60),
        ev(cpu, {"usage": 85}, 200),
        ev(cpu, {"usage": 79}, 300),
    ]
    out = run(engine(), events, 400)
    assert [(t.state, t.time, t.episode) for t in out] == [
        ("firing", 120, "start"),
        ("resolved", 300, "start"),
    ]
    assert out[0].title == "web1: CPU hot"
    assert "CPU back to 79" in out[1].body


def test_threshold_dip_during_for_cancels_pending() -> None:
    cpu = "servers/web1/cpu"
    out = run(
        engine(), [ev(cpu, {"usage": 95}, 0), ev(cpu, {"usage": 50}, 60), ev(cpu, {"usage": 95}, 100)], 200
    )
    assert out == []  # the second pending period (from t=100) has not lasted 2 minutes by t=200
    out = run(
        engine(), [ev(cpu, {"usage": 95}, 0), ev(cpu, {"usage": 50}, 60), ev(cpu, {"usage": 95}, 100)], 220
    )
    assert [(t.state, t.time) for t in out] == [("firing", 220)]


def test_threshold_value_that_is_not_a_number_is_counted_not_fatal() -> None:
    e, state = engine(), EngineState()
    state, out = e.evaluate(ev("servers/a/cpu", {"usage": "high"}, 0), state, 0)
    assert out == [] and state.value_errors == 1


def test_absence_fires_after_silence_and_resolves_when_back() -> None:
    events = [ev("devices/pump/status", "ok", 0, "last-before"), ev("devices/pump/status", "ok", 400, "back")]
    out = run(engine(), events, 500)
    assert [(t.state, t.time, t.labels, t.episode) for t in out] == [
        ("firing", 300, {"device": "pump"}, "last-before"),
        ("resolved", 400, {"device": "pump"}, "last-before"),
    ]


def test_absence_timer_moves_with_each_event() -> None:
    events = [ev("devices/pump/status", "ok", t) for t in (0, 200, 400)]
    assert run(engine(), events, 650) == []


def test_same_events_give_same_ids_on_every_instance() -> None:
    events = [ev("servers/a/cpu", {"usage": 99}, 0, "x"), ev("devices/d/s", 1, 5, "y")]
    a, b = run(engine(), events, 1000), run(engine(), events, 1000)
    assert [(t.alert_id, t.episode, t.state) for t in a] == [(t.alert_id, t.episode, t.state) for t in b]


@settings(max_examples=60, deadline=None)
@given(
    samples=st.lists(st.tuples(st.integers(0, 20), st.integers(50, 100)), min_size=1, max_size=30),
    ticks=st.lists(st.integers(0, 600), max_size=20),
)
def test_timer_ticks_in_between_do_not_change_transitions(samples, ticks) -> None:
    """However often the clock ticks between events, the transitions are the same."""
    t, events = 0.0, []
    for gap, usage in samples:
        t += gap * 10
        events.append(ev("servers/h/cpu", {"usage": usage}, t))
    until = t + 1000
    plain = run(engine(), events, until)
    e, state, ticked = engine(), EngineState(), []
    tick_times = sorted(ticks)
    for event in events:
        while tick_times and tick_times[0] < event.time:
            state, fired = e.tick(state, tick_times.pop(0))
            ticked += fired
        state, fired = e.tick(state, event.time)
        ticked += fired
        state, produced = e.evaluate(event, state, event.time)
        ticked += produced
    state, fired = e.tick(state, until)
    ticked += fired
    assert [(x.state, x.time, x.episode) for x in ticked] == [(x.state, x.time, x.episode) for x in plain]


def test_example_rules_load(tmp_path: Path) -> None:
    rs = load_rules([EXAMPLES_DIR])
    assert {r.id for r in rs.rules} == {"doorbell", "cpu-hot", "device-missing"}
    assert rs.subscriptions() == ["devices/+/#", "home/+/doorbell", "servers/+/cpu"]
