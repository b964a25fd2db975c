"""Replaying recorded events through a rule set on simulated time (``tocsin rules test``).

A recording is JSON Lines, one event a line::

    {"time": 1700000000, "topic": "home/front/doorbell", "payload": {"event": "ring"}}
    {"time": "2024-05-01T10:00:05Z", "topic": "servers/web1/cpu", "payload": {"usage": 97}, "id": "e2"}

``time`` is epoch seconds or ISO-8601; ``source`` (default ``mqtt``), ``id``, ``device`` and ``attributes``
are optional. Without an ``id`` the event gets the id the MQTT source would give it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from rules.engine import EngineState, RuleEngine, Transition
from rules.event import Event, EventIdentity, device_of


class RecordingError(ValueError):
    def __init__(self, file: str, line: int, reason: str) -> None:
        self.file, self.line, self.reason = file, line, reason
        super().__init__(f"{file}:{line}: {reason}")


def _time(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    raise ValueError(f"'time' must be epoch seconds or ISO-8601, not {value!r}")


def event_from_record(record: Any, identity: EventIdentity | None = None) -> Event:
    if not isinstance(record, dict):
        raise ValueError("each line must be a JSON object")
    topic = record.get("topic")
    if not isinstance(topic, str) or not topic:
        raise ValueError("'topic' is required (text)")
    if "time" not in record:
        raise ValueError("'time' is required")
    t = _time(record["time"])
    payload = record.get("payload")
    raw = json.dumps(payload, sort_keys=True).encode() if not isinstance(payload, str) else payload.encode()
    eid = record.get("id")
    attributes = record.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise ValueError("'attributes' must be an object")
    return Event(
        str(eid) if eid is not None else (identity or EventIdentity())(topic, raw, payload, t),
        str(record.get("source") or "mqtt"),
        topic,
        str(record["device"]) if record.get("device") is not None else device_of(payload),
        t,
        payload,
        {str(k): str(v) for k, v in attributes.items()},
    )


def read_events(path: Path, id_field: str | None = None) -> list[Event]:
    """All events of a recording, sorted by time; raises RecordingError naming the line. ``id_field``: the
    payload field that is an event's identity (``mqtt.event_id_field``), as the live service reads it."""
    events: list[Event] = []
    identity = EventIdentity(id_field)
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                events.append(event_from_record(json.loads(line), identity))
            except (ValueError, json.JSONDecodeError) as exc:
                raise RecordingError(str(path), number, str(exc)) from None
    events.sort(key=lambda e: e.time)  # stable: same-time events keep their order
    return events


@dataclass(slots=True)
class Replay:
    """Feeds events in time order and fires timers in between, exactly as the running service does."""

    engine: RuleEngine
    state: EngineState

    def run(self, events: Iterable[Event], until: float | None = None) -> Iterator[Transition]:
        last = None
        for event in events:
            self.state, fired = self.engine.tick(self.state, event.time)
            yield from fired
            self.state, produced = self.engine.evaluate(event, self.state, event.time)
            yield from produced
            last = event.time
        end = until if until is not None else last
        if end is not None:
            self.state, fired = self.engine.tick(self.state, end)
            yield from fired
