"""The normalised event every source produces, and its stable id."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

# Messages on one topic within this many seconds are matched across instances by their order (see
# ``EventIdentity``); each message is an event of its own.
COALESCE_WINDOW_S = 2.0
MAX_RUNS = 100_000  # identical (topic, payload) pairs tracked per window
NO_ATTRIBUTES: Mapping[str, str] = MappingProxyType({})


@dataclass(slots=True)
class Event:
    """Treated as immutable; not frozen, because a frozen init costs a third of the time on the hot path."""

    id: str
    source: str
    topic: str
    device: str | None
    time: float
    payload: Any
    attributes: Mapping[str, str] = field(default_factory=lambda: NO_ATTRIBUTES)  # shared: most have none


def short_hash(*parts: str) -> str:
    """A 16-hex-digit digest: stable across processes and machines (unlike ``hash()``)."""
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).hexdigest()


class EventIdentity:
    """The id every instance computes for the same published message; the same rule live and in replay.

    With ``id_field`` set (``mqtt.event_id_field``), a payload's own value of that field is the event's
    identity: a second message with the same value on the same topic is a duplicate and is dropped (and
    logged at debug, and counted). Without it (the default), every message is an event of its own: two rings
    with the same payload a second apart are two events. Such an id is the topic, the payload, the
    ``COALESCE_WINDOW_S`` window and how many identical messages came before it in that window, which every
    instance subscribed to the topic sees in the same order.
    """

    def __init__(self, id_field: str | None = None) -> None:
        self.id_field = id_field
        self._window = -1
        self._runs: dict[bytes, int] = {}

    def __call__(self, topic: str, raw: bytes, payload: Any, time: float) -> str:
        field_name = self.id_field
        if field_name is not None and isinstance(payload, dict):
            value = payload.get(field_name)
            if isinstance(value, str | int) and not isinstance(value, bool):
                return short_hash(topic, "id", str(value))
        window = int(time // COALESCE_WINDOW_S)
        if window != self._window:
            self._window, self._runs = window, {}
        h = hashlib.blake2b(raw, digest_size=8, key=topic.encode()[:64])
        h.update(str(window).encode())
        digest = h.digest()
        runs = self._runs
        before = runs.get(digest, 0)
        if before == 0 and len(runs) >= MAX_RUNS:
            runs.clear()
        runs[digest] = before + 1
        if before:
            h.update(b"#%d" % before)
        return h.hexdigest()


def device_of(payload: Any) -> str | None:
    if isinstance(payload, dict):
        for name in ("device", "deviceId", "source"):
            value = payload.get(name)
            if isinstance(value, str | int) and not isinstance(value, bool):
                return str(value)
    return None
