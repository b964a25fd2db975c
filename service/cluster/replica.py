"""Replicated records: the state every instance must share (registrations, silences, acks, noise state).

Each write is a ``Record`` (kind, key, value or tombstone, hybrid logical clock, origin). Concurrent writes to
the same (kind, key) resolve last-writer-wins by ``(hlc, origin)``: the higher HLC wins, and on equal HLCs the
higher origin id (every instance compares the same way, so all converge). A tombstone is a record whose value
is ``None``; it wins like any write and is kept so that a late, older write cannot resurrect the object.

The wire (see ``service/cluster/README.md``): records go out QoS 1, not retained, on ``state/stream``; a
write counts (the HTTP answer may be 2xx) only once it is durable locally and the broker has echoed it back
(``Replicator.write`` waits for the echo with a deadline and raises ``ReplicaUnavailable``, answered 503). A
(re)joining instance catches up from the members' snapshots (``state/req`` / ``state/snap/<id>``), merged
with the same rule; merging is idempotent, commutative and associative, so the order of answers is irrelevant.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.cluster.records import RecordError

JsonValue = Any
MAX_KEY = 512
MAX_VALUE_BYTES = 64 * 1024
MAX_UNCONFIRMED = 10_000
LOGICAL_BITS = 16  # an HLC is (wall ms << 16) | logical counter, one sortable int


class HybridClock:
    """Hybrid logical clock (Kulkarni et al.): monotonic, close to wall time, ahead of every clock it saw."""

    def __init__(self, wall_ms: Callable[[], int]) -> None:
        self._wall_ms = wall_ms
        self.last = 0

    def now(self) -> int:
        self.last = max(self.last + 1, self._wall_ms() << LOGICAL_BITS)
        return self.last

    def observe(self, hlc: int) -> None:
        """Seen a remote clock: the next local stamp is after it."""
        self.last = max(self.last, hlc)


@dataclass(frozen=True, slots=True)
class Record:
    kind: str
    key: str
    value: JsonValue  # None: a tombstone
    hlc: int
    origin: str

    @property
    def version(self) -> tuple[int, str]:
        return (self.hlc, self.origin)


def encode(r: Record) -> bytes:
    return json.dumps(
        {"kind": r.kind, "key": r.key, "value": r.value, "hlc": r.hlc, "origin": r.origin},
        separators=(",", ":"),
        sort_keys=True,
    ).encode()


def decode(raw: bytes | dict[str, Any]) -> Record:
    try:
        data = json.loads(raw) if isinstance(raw, bytes) else raw
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordError(f"state record not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RecordError("state record not a JSON object")
    kind, key, hlc, origin = data.get("kind"), data.get("key"), data.get("hlc"), data.get("origin")
    if not isinstance(kind, str) or not kind or len(kind) > 64:
        raise RecordError(f"bad state record kind {kind!r}")
    if not isinstance(key, str) or not key or len(key) > MAX_KEY:
        raise RecordError("bad state record key")
    if not isinstance(hlc, int) or isinstance(hlc, bool) or hlc <= 0:
        raise RecordError(f"bad state record hlc {hlc!r}")
    if not isinstance(origin, str) or not origin:
        raise RecordError("bad state record origin")
    return Record(kind, key, data.get("value"), hlc, origin)


class ReplicaStore:
    """The merged records, durable in an append-only JSON-lines file (compacted on load).

    ``apply`` is the only way in; it returns whether the record won (then the local stores should take it).
    Bounded: at most ``max_records`` keys; beyond that a new key is refused (counted in ``refused``).
    """

    def __init__(self, path: Path | None, max_records: int = 1_000_000) -> None:
        self.path, self.max_records = path, max_records
        self.records: dict[tuple[str, str], Record] = {}
        self.refused = 0
        if path is not None and path.exists():
            for line in path.read_bytes().splitlines():
                if line.strip():
                    try:
                        self.apply(decode(line))
                    except RecordError:
                        self.refused += 1  # a torn last line after a crash
            self._rewrite()

    def apply(self, r: Record) -> bool:
        slot = (r.kind, r.key)
        old = self.records.get(slot)
        if old is not None and old.version >= r.version:
            return False
        if old is None and len(self.records) >= self.max_records:
            self.refused += 1
            return False
        self.records[slot] = r
        return True

    def would_win(self, r: Record) -> bool:
        old = self.records.get((r.kind, r.key))
        return old.version < r.version if old is not None else len(self.records) < self.max_records

    def get(self, kind: str, key: str) -> JsonValue:
        r = self.records.get((kind, key))
        return None if r is None else r.value

    def live(self, kind: str) -> dict[str, JsonValue]:
        return {k: r.value for (kd, k), r in self.records.items() if kd == kind and r.value is not None}

    def snapshot(self) -> list[Record]:
        return [self.records[s] for s in sorted(self.records)]

    def dump(self) -> bytes:
        """Canonical bytes of the whole state: equal on two instances iff their states are equal."""
        return b"\n".join(encode(r) for r in self.snapshot())

    def persist_sync(self, records: Iterable[Record]) -> None:
        """Append and fsync (run in a thread: it blocks)."""
        if self.path is None:
            return
        with self.path.open("ab") as f:
            for r in records:
                f.write(encode(r) + b"\n")
            f.flush()
            os.fsync(f.fileno())

    def _rewrite(self) -> None:
        assert self.path is not None
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(b"".join(encode(r) + b"\n" for r in self.snapshot()))
        os.replace(tmp, self.path)


class ReplicaUnavailable(RuntimeError):
    """The broker did not echo a write in time: the write is not confirmed (answer 503)."""


Publish = Callable[[bytes], Awaitable[None]]
Apply = Callable[[Record], None]
Applier = Callable[[Record], Awaitable[None]]


class Replicator:
    """Writes go out through ``publish``; records coming back (``receive``) merge and reach ``on_apply``."""

    def __init__(
        self,
        origin: str,
        store: ReplicaStore,
        clock: HybridClock,
        publish: Publish,
        on_apply: Apply | None = None,
        echo_timeout_s: float = 2.0,
    ) -> None:
        self.origin, self.store, self.clock, self.publish = origin, store, clock, publish
        self.on_apply = on_apply
        # Per kind: how a winning record reaches the local store (registrations, silences, ...).
        self.appliers: dict[str, Applier] = {}
        self.echo_timeout_s = echo_timeout_s
        self._waiting: dict[tuple[str, str, int], asyncio.Future[None]] = {}
        # Durable here but not yet echoed (answered 503): republished on the next connection, so the cluster
        # converges on them even though the caller was told the write did not count.
        self.unconfirmed: dict[tuple[str, str, int], Record] = {}
        self.bad_records = 0

    async def write(self, kind: str, key: str, value: JsonValue) -> Record:
        """Durable locally, applied, and echoed by the broker; else ``ReplicaUnavailable``."""
        raw_value = json.dumps(value, separators=(",", ":"))
        if len(raw_value) > MAX_VALUE_BYTES:
            raise ValueError(f"state value too large ({len(raw_value)} > {MAX_VALUE_BYTES} bytes)")
        r = Record(kind, key, value, self.clock.now(), self.origin)
        decode(encode(r))  # the same checks a receiver makes
        await asyncio.to_thread(self.store.persist_sync, [r])
        await self._merge(r)
        slot = (kind, key, r.hlc)
        echo: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[slot] = echo
        if len(self.unconfirmed) < MAX_UNCONFIRMED:
            self.unconfirmed[slot] = r
        try:
            await asyncio.wait_for(self.publish(encode(r)), self.echo_timeout_s)
            await asyncio.wait_for(asyncio.shield(echo), self.echo_timeout_s)
        except Exception as exc:  # the transport's errors (aiomqtt.MqttError, OSError, timeout) all mean 503
            raise ReplicaUnavailable(f"{kind} {key}: not echoed by the broker ({exc!r})") from None
        finally:
            self._waiting.pop(slot, None)
        return r

    async def republish(self) -> None:
        """Send the writes that were never echoed again (on a new connection)."""
        for r in list(self.unconfirmed.values()):
            await self.publish(encode(r))

    async def delete(self, kind: str, key: str) -> Record:
        return await self.write(kind, key, None)

    async def receive(self, raw: bytes) -> None:
        """A record from ``state/stream`` (ours echoed, or another instance's)."""
        try:
            r = decode(raw)
        except RecordError:
            self.bad_records += 1
            return
        self.clock.observe(r.hlc)
        if r.origin == self.origin:
            self.unconfirmed.pop((r.kind, r.key, r.hlc), None)
            fut = self._waiting.get((r.kind, r.key, r.hlc))
            if fut is not None and not fut.done():
                fut.set_result(None)
            return  # already persisted and merged before publishing
        if self.store.would_win(r):
            # On disk before it takes effect: a record that later loses costs nothing (loading merges again).
            await asyncio.to_thread(self.store.persist_sync, [r])
            await self._merge(r)

    async def merge_snapshot(self, records: Iterable[Record]) -> int:
        """Catch up from another member's snapshot; returns how many records won."""
        candidates = [r for r in records if self.store.would_win(r)]
        await asyncio.to_thread(self.store.persist_sync, candidates)
        won = 0
        for r in candidates:
            self.clock.observe(r.hlc)
            won += await self._merge(r)
        return won

    async def _merge(self, r: Record) -> bool:
        if not self.store.apply(r):
            return False
        if self.on_apply is not None:
            self.on_apply(r)
        applier = self.appliers.get(r.kind)
        if applier is not None:
            await applier(r)
        return True
