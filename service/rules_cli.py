"""``tocsin rules check PATH`` and ``tocsin rules test PATH --events FILE.jsonl``."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rules.durations import parse_duration
from rules.engine import EngineState, RuleEngine, Transition
from rules.loader import RuleLoadError, load_rules
from rules.replay import RecordingError, Replay, read_events


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


def _audience(t: Transition) -> str:
    parts = [f"users={','.join(t.audience_users)}"] if t.audience_users else []
    if t.audience_tags:
        parts.append(f"tags={','.join(t.audience_tags)}")
    if t.audience_channels:
        parts.append(f"channels={','.join(t.audience_channels)}")
    return " ".join(parts)


def transition_record(t: Transition) -> dict[str, Any]:
    return {
        "time": _stamp(t.time),
        "state": t.state,
        "rule": t.rule,
        "severity": t.severity,
        "labels": dict(t.labels),
        "alert_id": t.alert_id,
        "episode": t.episode,
        "audience": {
            "users": list(t.audience_users),
            "tags": list(t.audience_tags),
            "channels": list(t.audience_channels),
        },
        "title": t.title,
        "body": t.body,
    }


def cmd_rules_test(args: argparse.Namespace) -> int:
    try:
        ruleset = load_rules([Path(p) for p in args.paths])
    except RuleLoadError as exc:
        print(f"rules are not valid:\n{exc}", file=sys.stderr)
        return 2
    try:
        events = read_events(Path(args.events))
        extra = parse_duration(args.until) if args.until else 0.0
    except RecordingError as exc:
        print(f"recording is not valid: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"cannot read the recording: {exc}", file=sys.stderr)
        return 2
    until = events[-1].time + extra if events else None
    count = 0
    for t in Replay(RuleEngine(ruleset), EngineState()).run(events, until):
        count += 1
        if args.json:
            print(json.dumps(transition_record(t), ensure_ascii=False))
        else:
            text = f"{t.title} — {t.body}" if t.body else t.title
            print(f"{_stamp(t.time)} {t.state.upper()} {t.rule} ({t.severity}) to {_audience(t)}: {text}")
    print(f"{len(events)} events, {count} notifications", file=sys.stderr)
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
    test.set_defaults(func=cmd_rules_test)
