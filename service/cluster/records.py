"""What instances say to each other over MQTT: presence records and the leader stream's records."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

Kind = Literal["hb", "claim", "intent", "sent", "stepdown"]
KINDS: tuple[str, ...] = ("hb", "claim", "intent", "sent", "stepdown")


@dataclass(frozen=True, slots=True)
class Presence:
    """Retained on ``members/<id>``; the instance's last will deletes it."""

    id: str
    priority: int
    boot_id: str
    version: str

    @property
    def rank(self) -> tuple[int, str]:
        """Lower is better: priority first, then id (every instance sorts the same way)."""
        return (self.priority, self.id)


@dataclass(frozen=True, slots=True)
class StreamRecord:
    """One record of ``leader/stream``. ``term`` fences: records of an older term are ignored."""

    kind: Kind
    term: int
    sender: str
    seq: int = 0
    priority: int = 0  # claims carry the claimant's rank
    nid: str = ""  # intent and sent carry the notification key
    boot_id: str = ""


class RecordError(ValueError):
    pass


def encode_presence(p: Presence) -> bytes:
    return json.dumps(asdict(p), separators=(",", ":")).encode()


def decode_presence(raw: bytes) -> Presence | None:
    """None for an empty payload (a deleted retained message: the member left)."""
    if not raw:
        return None
    data = _object(raw)
    try:
        return Presence(str(data["id"]), int(data["priority"]), str(data["boot_id"]), str(data["version"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise RecordError(f"bad presence record: {exc!r}") from None


def encode_record(r: StreamRecord) -> bytes:
    data = {k: v for k, v in asdict(r).items() if v not in ("", 0) or k in ("term", "kind", "sender")}
    return json.dumps(data, separators=(",", ":")).encode()


def decode_record(raw: bytes) -> StreamRecord:
    data = _object(raw)
    kind = data.get("kind")
    if kind not in KINDS:
        raise RecordError(f"unknown stream record kind {kind!r}")
    try:
        return StreamRecord(
            kind=kind,
            term=int(data["term"]),
            sender=str(data["sender"]),
            seq=int(data.get("seq", 0)),
            priority=int(data.get("priority", 0)),
            nid=str(data.get("nid", "")),
            boot_id=str(data.get("boot_id", "")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise RecordError(f"bad {kind} record: {exc!r}") from None


def _object(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RecordError("not a JSON object")
    return data


SnapshotEntry = tuple[str, str, int, float]
SNAPSHOT_CHUNK = 2000


def encode_snapshot(sender: str, entries: Sequence[SnapshotEntry]) -> bytes:
    return json.dumps({"sender": sender, "entries": entries}, separators=(",", ":")).encode()


def decode_snapshot(raw: bytes) -> list[SnapshotEntry]:
    data = _object(raw)
    out: list[SnapshotEntry] = []
    try:
        for key, state, term, at in data["entries"]:
            if state not in ("intent", "sent"):
                raise RecordError(f"bad ledger state {state!r}")
            out.append((str(key), str(state), int(term), float(at)))
    except (KeyError, TypeError, ValueError) as exc:
        raise RecordError(f"bad ledger snapshot: {exc!r}") from None
    return out
