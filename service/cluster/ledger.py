"""The send ledger (``intent`` before a push, ``sent`` after it) and the follower's buffer of what would be
sent, diffed by a new leader to send exactly what the old one did not.

A fix to the first proposal (B.6.4 item 4 ignores every record of an older term): ledger records are facts
about the world, so they are kept whatever their term. A deposed leader's ``sent`` that arrives after the new
term's claim (different publishers are not ordered against each other) still proves the push happened;
dropping it would make the new leader send it again. Only leadership records are fenced by term.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

from service.cluster.records import StreamRecord

T = TypeVar("T")
LedgerState = Literal["intent", "sent"]
Ambiguous = Literal["resend", "skip"]


@dataclass(slots=True)
class LedgerEntry:
    nid: str
    state: LedgerState
    term: int
    at: float


class Ledger:
    """What the leaders said about each notification key, kept for ``retention_s``."""

    def __init__(
        self, retention_s: float, on_record: Callable[[str, LedgerState, int, float], None] | None = None
    ):
        self.retention_s = retention_s
        self._entries: OrderedDict[str, LedgerEntry] = OrderedDict()
        self.on_record = on_record  # persistence, when wanted

    def apply(self, record: StreamRecord, now: float) -> None:
        if record.kind not in ("intent", "sent") or not record.nid:
            return
        self.record(record.nid, record.kind, record.term, now)

    def record(self, nid: str, state: LedgerState, term: int, now: float) -> None:
        entry = self._entries.get(nid)
        if entry is not None and entry.state == "sent":
            return  # sent is final
        self._entries[nid] = LedgerEntry(nid, state, term, now)
        self._entries.move_to_end(nid)
        self.expire(now)
        if self.on_record is not None:
            self.on_record(nid, state, term, now)

    def status(self, nid: str) -> LedgerState | None:
        entry = self._entries.get(nid)
        return entry.state if entry else None

    def expire(self, now: float) -> None:
        limit = now - self.retention_s
        while self._entries:
            first = next(iter(self._entries.values()))
            if first.at >= limit:
                break
            self._entries.popitem(last=False)

    def merge(self, nid: str, state: LedgerState, term: int, at: float) -> None:
        """Take in another member's record (a snapshot for a late joiner): ``sent`` wins, nothing is lost."""
        entry = self._entries.get(nid)
        if entry is not None and (entry.state == "sent" or state == "intent"):
            return
        self._entries[nid] = LedgerEntry(nid, state, term, at)
        if self.on_record is not None:
            self.on_record(nid, state, term, at)

    def entries(self) -> Iterator[LedgerEntry]:
        return iter(list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(slots=True)
class Buffered(Generic[T]):
    nid: str
    item: T
    at: float
    on_ambiguous: Ambiguous = "resend"
    seq: int = 0


class FollowerBuffer(Generic[T]):
    """Every transition this instance computed in the last ``window_s``, whatever its role at the time.

    Kept whole rather than emptied at a takeover: a leader can be deposed with sends still queued (they are
    then dropped there) and lead again later; what it needs then is everything recent, and the ledger says
    which of it was sent.
    """

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._items: OrderedDict[str, Buffered[T]] = OrderedDict()
        self.last_seq = 0

    def add(self, nid: str, item: T, now: float, on_ambiguous: Ambiguous = "resend") -> None:
        if nid not in self._items:
            self.last_seq += 1
            self._items[nid] = Buffered(nid, item, now, on_ambiguous, self.last_seq)
        self.expire(now)

    def since(self, seq: int) -> list[Buffered[T]]:
        """The items added after ``seq`` (0: all), oldest first."""
        if seq <= 0:
            return list(self._items.values())
        return [b for b in self._items.values() if b.seq > seq]

    def confirm(self, nid: str) -> None:
        self._items.pop(nid, None)

    def expire(self, now: float) -> None:
        limit = now - self.window_s
        while self._items:
            first = next(iter(self._items.values()))
            if first.at >= limit:
                break
            self._items.popitem(last=False)

    def drain(self) -> list[Buffered[T]]:
        items = list(self._items.values())
        self._items.clear()
        return items

    def __len__(self) -> int:
        return len(self._items)


@dataclass(slots=True)
class CatchUp(Generic[T]):
    send: list[Buffered[T]] = field(default_factory=list)  # no record: never sent
    resend_ambiguous: list[Buffered[T]] = field(default_factory=list)  # intent without sent, rule says resend
    skipped_ambiguous: list[Buffered[T]] = field(default_factory=list)  # intent without sent, rule says skip
    already_sent: int = 0


def catch_up(buffered: list[Buffered[T]], ledger: Ledger) -> CatchUp[T]:
    """The new leader's diff: send what the ledger does not show as sent; an intent without sent is
    ambiguous (the old leader may have pushed it) and each rule says whether to resend it."""
    result: CatchUp[T] = CatchUp()
    for b in buffered:
        state = ledger.status(b.nid)
        if state == "sent":
            result.already_sent += 1
        elif state == "intent":
            (result.resend_ambiguous if b.on_ambiguous == "resend" else result.skipped_ambiguous).append(b)
        else:
            result.send.append(b)
    return result
