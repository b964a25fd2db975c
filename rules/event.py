"""The normalised event every source produces, and its stable id."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Payload fields a device may use to give its event an identity of its own.
ID_FIELDS = ("id", "eid", "seq", "sequence")
# Identical payloads on one topic within this many seconds are the same event (B.6.4 of the spec).
COALESCE_WINDOW_S = 2.0


@dataclass(slots=True)
class Event:
    """Treated as immutable; not frozen, because a frozen init costs a third of the time on the hot path."""

    id: str
    source: str
    topic: str
    device: str | None
    time: float
    payload: Any
    attributes: Mapping[str, str] = field(default_factory=dict)


def short_hash(*parts: str) -> str:
    """A 16-hex-digit digest: stable across processes and machines (unlike ``hash()``)."""
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).hexdigest()


def event_id(topic: str, raw: bytes, payload: Any, time: float) -> str:
    """The id every instance computes for the same published message.

    A device-supplied id or sequence wins; otherwise the topic, the payload and the coalescing window.
    """
    if isinstance(payload, dict):
        for name in ID_FIELDS:
            value = payload.get(name)
            if isinstance(value, str | int) and not isinstance(value, bool):
                return short_hash(topic, "id", str(value))
    h = hashlib.blake2b(raw, digest_size=8, key=topic.encode()[:64])
    h.update(str(int(time // COALESCE_WINDOW_S)).encode())
    return h.hexdigest()


def device_of(payload: Any) -> str | None:
    if isinstance(payload, dict):
        for name in ("device", "deviceId", "source"):
            value = payload.get(name)
            if isinstance(value, str | int) and not isinstance(value, bool):
                return str(value)
    return None
