"""The notify stages: each a decision plus at most one side effect, with the clock passed in.

Later stages (mute, throttle, group, render per locale) slot in between dedup and target.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator

from registrations.directory import StoreDirectory
from registrations.model import Audience, Registration
from registrations.store import RegistrationStore
from service.notify.model import Notification


class NotificationLog:
    """Which notification keys were already handed on, and when; entries expire after ``window`` seconds.

    In memory for now: the cluster ledger and the durable outbox make it survive a restart.
    """

    def __init__(self, window: float, max_entries: int = 100_000) -> None:
        """``max_entries``: at most this many keys are remembered (the oldest go first), whatever the
        window: a flood of distinct notifications must not grow it without bound."""
        self.window, self.max_entries = window, max_entries
        self._seen: OrderedDict[str, float] = OrderedDict()

    def seen(self, nid: str, now: float) -> bool:
        self._expire(now)
        return nid in self._seen

    def record(self, nid: str, now: float) -> None:
        self._seen[nid] = now
        self._seen.move_to_end(nid)
        if len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)

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
    """Audience → registrations, from the store of the notification's tenant (the deployment's own store
    when it has none). Resolved audiences are cached per store until that store changes."""

    name = "target"

    def __init__(self, stores: RegistrationStore | StoreDirectory, cache_size: int = 1024) -> None:
        self.stores = stores if isinstance(stores, StoreDirectory) else StoreDirectory.single(stores)
        self._caches: dict[str | None, tuple[object, int, dict[Audience, list[Registration]]]] = {}
        self._cache_size = cache_size

    async def batches(
        self, audience: Audience, tenant: str | None = None
    ) -> AsyncIterator[list[Registration]]:
        store = self.stores.store(tenant)
        if store is None:
            return  # a tenant that is not (or no longer) subscribed has nobody
        cached_store, version, cache = self._caches.get(tenant) or (None, -1, {})
        current = await store.version()
        if cached_store is not store or current != version:
            cache = {}
            self._caches[tenant] = (store, current, cache)
        cached = cache.get(audience)
        if cached is not None:
            yield cached
            return
        collected: list[Registration] = []
        small = True
        async for batch in store.resolve(audience):
            if small:
                collected.extend(batch)
                small = len(collected) <= 1000
            yield batch
        if small and len(cache) < self._cache_size:
            cache[audience] = collected
