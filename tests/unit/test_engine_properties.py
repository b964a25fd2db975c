"""Property tests: the engine gives the same transitions for the same events however time is chunked —
extra timer ticks in between, replay in pieces, or the state saved and restored (a restart) along the way."""

from __future__ import annotations

import itertools
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from rules.engine import EngineState, RuleEngine, Transition, compile_rules
from rules.event import Event
from rules.loader import parse_rule_text
from rules.replay import Replay
from rules.state_codec import dump_alert, restore

RULES = """rules:
  - id: hot
    topic: s/{host}/cpu
    threshold: {above: 90, clear: 80, for: 30s, keep_firing_for: 20s}
    title: "{{ host }} {{ value }}"
    audience: {tags: [t]}
  - id: gone
    topic: s/{host}/cpu
    absent:
      for: 50s
      availability: {topic: "s/{host}/status", online: [online], offline: [offline]}
    title: "{{ host }} gone"
    audience: {tags: [t]}
  - id: crash
    topic: s/{host}/proc
    change: {from: [running], to: [crashed]}
    title: "{{ host }} crashed"
    audience: {tags: [t]}
  - id: alarm
    topic: s/{host}/sr
    alarm: {smartrest: true, severity: [CRITICAL, MAJOR]}
    title: "{{ type }}"
    audience: {tags: [t]}
"""
rules, errors = parse_rule_text(RULES, "p.yaml")
assert errors == []
RULESET = compile_rules(rules)

_host = st.sampled_from(["a", "b"])
_event = st.one_of(
    st.tuples(st.just("cpu"), _host, st.integers(60, 100)),
    st.tuples(st.just("status"), _host, st.sampled_from(["online", "offline"])),
    st.tuples(st.just("proc"), _host, st.sampled_from(["running", "crashed", "stopped"])),
    st.tuples(
        st.just("sr"), _host, st.sampled_from(["301,x", "302,y", "304,x", "305,x,MINOR", "306,x", "306,y"])
    ),
)
_events = st.lists(st.tuples(st.integers(0, 40), _event), min_size=1, max_size=40)


def build(spec: list[tuple[int, tuple[str, str, object]]]) -> list[Event]:
    t, out = 0.0, []
    for i, (gap, (kind, host, value)) in enumerate(spec):
        t += gap
        out.append(Event(f"e{i}", "mqtt", f"s/{host}/{kind}", None, t, value))
    return out


def key(ts: list[Transition]) -> list[tuple[str, str, str, float, str]]:
    return [(x.rule, x.alert_id, x.state, x.time, x.episode) for x in ts]


def plain(events: list[Event], until: float) -> list[Transition]:
    return list(Replay(RuleEngine(RULESET), EngineState()).run(events, until))


@settings(max_examples=80, deadline=None)
@given(spec=_events, ticks=st.lists(st.floats(0, 1500, allow_nan=False), max_size=25))
def test_extra_ticks_in_between_change_nothing(spec: list[Any], ticks: list[float]) -> None:
    events = build(spec)
    until = events[-1].time + 200
    engine, state, got = RuleEngine(RULESET), EngineState(), []
    pending = sorted(ticks)
    for e in events:
        while pending and pending[0] < e.time:
            state, fired = engine.tick(state, pending.pop(0))
            got += fired
        state, fired = engine.tick(state, e.time)
        got += fired
        state, out = engine.evaluate(e, state, e.time)
        got += out
    state, fired = engine.tick(state, until)
    got += fired
    assert key(got) == key(plain(events, until))


@settings(max_examples=80, deadline=None)
@given(spec=_events, cuts=st.lists(st.integers(0, 40), max_size=5))
def test_replay_in_pieces_with_restarts_in_between_changes_nothing(spec: list[Any], cuts: list[int]) -> None:
    """Each piece runs on a new engine whose state went through JSON, as after a restart of the service."""
    events = build(spec)
    until = events[-1].time + 200
    bounds = sorted({min(c, len(events)) for c in cuts} | {0, len(events)})
    state, got = EngineState(), []
    for start, end in itertools.pairwise(bounds):
        replay = Replay(RuleEngine(RULESET), state)
        got += list(replay.run(events[start:end], None))
        stored = json.loads(json.dumps({aid: dump_alert(a) for aid, a in replay.state.alerts.items()}))
        state = restore(stored, dict(replay.state.values), {r.id for r in RULESET.rules})
    got += list(Replay(RuleEngine(RULESET), state).run([], until))
    assert key(got) == key(plain(events, until))
