"""``tocsin rules check PATH`` and ``tocsin rules test PATH --events FILE.jsonl``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rules.durations import parse_duration
from rules.engine import EngineState, RuleEngine, Transition
from rules.event import Event
from rules.loader import RuleLoadError, load_rules
from rules.replay import RecordingError, read_events
from service.notify.explain import REASONS
from service.notify.model import Notification
from service.notify.noise import NoiseControl
from service.notify.pipeline import to_notification


def cmd_rules_check(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.paths]
    try:
        ruleset = load_rules(paths)
    except RuleLoadError as exc:
        print(f"rules are not valid:\n{exc}", file=sys.stderr)
        return 2
    kinds: dict[str, int] = {}
    for c in ruleset.rules:
        kinds[c.kind] = kinds.get(c.kind, 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    print(f"ok: {len(ruleset.rules)} rules ({summary or 'none enabled'}) in {', '.join(map(str, paths))}")
    print(f"subscriptions: {', '.join(ruleset.subscriptions()) or '(none)'}")
    return 0


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _audience(r: dict[str, Any]) -> str:
    a = r["audience"]
    parts = [f"users={','.join(a['users'])}"] if a["users"] else []
    if a["tags"]:
        parts.append(f"tags={','.join(a['tags'])}")
    return " ".join(parts)


def notification_record(n: Notification) -> dict[str, Any]:
    return {
        "time": _stamp(n.created),
        "state": n.state,
        "rule": n.rule,
        "severity": n.severity,
        "labels": dict(n.labels),
        "alert_id": n.alert_id,
        "episode": n.episode,
        "audience": {"users": list(n.audience.users), "tags": list(n.audience.tags)},
        "title": n.title,
        "body": n.body,
        "count": n.count,
    }


def explained(engine: RuleEngine, events: list[Event], until: float | None) -> Iterator[dict[str, Any]]:
    """Events through the rules and the rule-driven noise stages (silences, cooldown, grouping, repeats,
    escalation) on simulated time: a record for every notification that would be sent (``"sent": true``)
    and for every one a stage held back (``"sent": false`` with ``stage`` and ``reason``), in order. Quiet
    hours and rate limits depend on each recipient, so they are not applied here."""
    held: list[dict[str, Any]] = []

    def hold(n: Notification, stage: str, detail: str, registration: str | None) -> None:
        reason = REASONS.get(stage, stage) + (f" ({detail})" if detail else "")
        held.append({**notification_record(n), "sent": False, "stage": stage, "reason": reason})

    state, noise = EngineState(), NoiseControl(explain=hold)

    def drain() -> Iterator[dict[str, Any]]:
        yield from held
        held.clear()

    def admit(transitions: list[Transition], now: float) -> Iterator[dict[str, Any]]:
        for t in transitions:
            for n in noise.before_target(to_notification(t, now), now):
                yield {**notification_record(n), "sent": True}
            yield from drain()

    def advance(now: float) -> Iterator[dict[str, Any]]:
        nonlocal state
        while True:
            deadlines = [d for d in (noise.next_deadline(), engine.next_deadline(state)) if d is not None]
            if not deadlines or min(deadlines) > now:
                return
            at = min(deadlines)
            for n in noise.due(at).notifications:
                yield {**notification_record(replace(n, created=at)), "sent": True}
            yield from drain()
            state, fired = engine.tick(state, at)
            yield from admit(fired, at)

    for event in events:
        yield from advance(event.time)
        state, out = engine.evaluate(event, state, event.time)
        yield from admit(out, event.time)
    if until is not None:
        yield from advance(until)


def simulate(engine: RuleEngine, events: list[Event], until: float | None) -> Iterator[Notification]:
    """What ``explained`` would send, as notifications."""
    state, noise = EngineState(), NoiseControl()

    def admit(transitions: list[Transition], now: float) -> Iterator[Notification]:
        for t in transitions:
            yield from noise.before_target(to_notification(t, now), now)

    def advance(now: float) -> Iterator[Notification]:
        nonlocal state
        while True:
            deadlines = [d for d in (noise.next_deadline(), engine.next_deadline(state)) if d is not None]
            if not deadlines or min(deadlines) > now:
                return
            at = min(deadlines)
            for n in noise.due(at).notifications:
                yield replace(n, created=at)
            state, fired = engine.tick(state, at)
            yield from admit(fired, at)

    for event in events:
        yield from advance(event.time)
        state, out = engine.evaluate(event, state, event.time)
        yield from admit(out, event.time)
    if until is not None:
        yield from advance(until)


def cmd_rules_test(args: argparse.Namespace) -> int:
    try:
        ruleset = load_rules([Path(p) for p in args.paths])
    except RuleLoadError as exc:
        print(f"rules are not valid:\n{exc}", file=sys.stderr)
        return 2
    try:
        events = read_events(Path(args.events), args.event_id_field)
        extra = parse_duration(args.until) if args.until else 0.0
    except RecordingError as exc:
        print(f"recording is not valid: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"cannot read the recording: {exc}", file=sys.stderr)
        return 2
    until = events[-1].time + extra if events else None
    count, held = 0, 0
    for r in explained(RuleEngine(ruleset), events, until):
        if not r["sent"]:
            held += 1
            if not args.explain:
                continue
        else:
            count += 1
        if args.json:
            record = r if args.explain else {k: v for k, v in r.items() if k != "sent"}
            print(json.dumps(record, ensure_ascii=False))
            continue
        text = f"{r['title']} — {r['body']}" if r["body"] else r["title"]
        if r["sent"]:
            print(f"{r['time']} {r['state'].upper()} {r['rule']} ({r['severity']}) to {_audience(r)}: {text}")
        else:
            print(
                f"{r['time']} HELD {r['rule']} ({r['severity']}) {r['state']} at {r['stage']}: {r['reason']}"
            )
    summary = f"{len(events)} events, {count} notifications"
    print(summary + (f", {held} held back" if args.explain else ""), file=sys.stderr)
    return 0


def add_rules_commands(sub: Any) -> None:
    """Adds ``rules check`` and ``rules test`` to the ``tocsin`` command's subparsers."""
    rules = sub.add_parser("rules", help="check rule files, or replay recorded events through them")
    rsub = rules.add_subparsers(dest="rules_command", required=True)
    check = rsub.add_parser("check", help="validate rule files (a file or directory is one rule set)")
    check.add_argument("paths", nargs="+", help="rule files or directories")
    check.set_defaults(func=cmd_rules_check)
    test = rsub.add_parser("test", help="replay recorded events on simulated time; print what would be sent")
    test.add_argument("paths", nargs="+", help="rule files or directories")
    test.add_argument("--events", required=True, help="recorded events, JSON Lines")
    test.add_argument("--until", help="keep the clock running this long after the last event (e.g. 10m)")
    test.add_argument("--json", action="store_true", help="one JSON object per notification")
    test.add_argument(
        "--event-id-field",
        metavar="FIELD",
        help="payload field that is an event's own id, as mqtt.event_id_field (default: none; every "
        "record is an event of its own unless it has an 'id')",
    )
    test.add_argument(
        "--explain",
        action="store_true",
        help="also print each notification a stage held back, with the stage and why "
        "(e.g. tocsin rules test rules/ --events day.jsonl --explain)",
    )
    test.set_defaults(func=cmd_rules_test)
