"""The notify stages: each a decision plus at most one side effect, with the clock passed in.

Later stages (mute, throttle, group, render per locale) slot in between dedup and target.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

from registrations.model import Audience, Registration
from registrations.store import RegistrationStore
from service.notify.model import Notification


class NotificationLog:
    """Which notification keys were already handed on, and when; entries expire after ``window`` seconds.

    In memory for now: the cluster ledger and the durable outbox make it survive a restart.
    """

    def __init__(self, window: float) -> None:
        self.window = window
        self._seen: OrderedDict[str, float] = OrderedDict()

    def seen(self, nid: str, now: float) -> bool:
        self._expire(now)
        return nid in self._seen

    def record(self, nid: str, now: float) -> None:
        self._seen[nid] = now
        self._seen.move_to_end(nid)

    def _expire(self, now: float) -> None:
        seen, limit = self._seen, now - self.window
        while seen:
            at = next(iter(seen.values()))
            if at >= limit:
                break
            seen.popitem(last=False)

    def __len__(self) -> int:
        return len(self._seen)


class DedupStage:
    """Drops a notification whose key was already sent: QoS 1 redelivery, a coalesced repeat."""

    name = "dedup"

    def __init__(self, log: NotificationLog) -> None:
        self.log = log

    def admit(self, n: Notification, now: float) -> bool:
        if self.log.seen(n.nid, now):
            return False
        self.log.record(n.nid, now)
        return True


class TargetStage:
    """Audience → registrations. Resolved audiences are cached until the store changes."""

    name = "target"

    def __init__(self, store: RegistrationStore, cache_size: int = 1024) -> None:
        self.store = store
        self._cache: dict[Audience, list[Registration]] = {}
        self._version = -1
        self._cache_size = cache_size

    def batches(self, audience: Audience) -> Iterator[list[Registration]]:
        if self.store.version != self._version:
            self._cache.clear()
            self._version = self.store.version
        cached = self._cache.get(audience)
        if cached is not None:
            yield cached
            return
        collected: list[Registration] = []
        small = True
        for batch in self.store.resolve(audience):
            if small:
                collected.extend(batch)
                small = len(collected) <= 1000
            yield batch
        if small and len(self._cache) < self._cache_size:
            self._cache[audience] = collected
