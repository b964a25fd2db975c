"""The engine's state as plain JSON-able data, so that pending ``for`` timers and open alerts survive a
restart."""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Container, Iterable
from typing import Any

from rules.engine import AlertState, EngineState
from rules.event import Event

FORMAT = 1


def _event(e: Event | None) -> dict[str, Any] | None:
    if e is None:
        return None
    return {
        "id": e.id,
        "source": e.source,
        "topic": e.topic,
        "device": e.device,
        "time": e.time,
        "payload": e.payload,
        "attributes": dict(e.attributes),
    }


def _event_from(d: dict[str, Any] | None) -> Event | None:
    if d is None:
        return None
    return Event(d["id"], d["source"], d["topic"], d["device"], d["time"], d["payload"], d["attributes"])


def dump_alert(a: AlertState) -> dict[str, Any]:
    return {
        "rule": a.rule,
        "labels": a.labels,
        "status": a.status,
        "episode": a.episode,
        "since": a.since,
        "deadline": a.deadline,
        "last_event": _event(a.last_event),
        "last_value": a.last_value,
    }


def load_alert(d: dict[str, Any]) -> AlertState:
    return AlertState(
        d["rule"],
        dict(d["labels"]),
        d["status"],
        d["episode"],
        d["since"],
        d["deadline"],
        _event_from(d["last_event"]),
        d["last_value"],
    )


def restore(
    alerts: Iterable[tuple[str, dict[str, Any]]] | dict[str, dict[str, Any]],
    values: dict[str, str],
    rules: Container[str] | None = None,
) -> EngineState:
    """An engine state from stored alerts and change-rule values; alerts of rules not in ``rules`` are
    dropped. Timers come back from the alerts' deadlines (a deadline that passed while the service was down
    fires at the next tick, with the time of the deadline). Each rule's tracked alerts are ordered by when
    they were last seen, so the limit forgets the same devices it would have before the restart."""
    state = EngineState()
    seen: list[tuple[float, str, str]] = []
    for aid, d in alerts.items() if isinstance(alerts, dict) else alerts:
        try:
            alert = load_alert(d)
        except (KeyError, TypeError, ValueError, IndexError):
            state.value_errors += 1  # a damaged or foreign record: skipped, counted
            continue
        if rules is not None and alert.rule not in rules:
            continue
        state.alerts[aid] = alert
        last = alert.last_event.time if alert.last_event is not None else alert.since
        seen.append((last if isinstance(last, int | float) else 0.0, alert.rule, aid))
        if alert.deadline is not None:
            state.timers.append((alert.deadline, aid))
    heapq.heapify(state.timers)
    state.values = dict(values)
    if values:  # a value's rule is not stored: the rule that sees the device again adopts it
        state.tracked[""] = OrderedDict.fromkeys(aid for aid in values if aid not in state.alerts)
    seen.sort()
    for _, rule, aid in seen:
        tracked = state.tracked.get(rule)
        if tracked is None:
            tracked = state.tracked[rule] = OrderedDict()
        tracked[aid] = None
    return state
