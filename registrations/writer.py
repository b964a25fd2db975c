"""Group commit: registrations arriving in the same event-loop turn are written in one transaction.

Each caller awaits its own registration; it is answered only after the transaction holding it committed (with
``synchronous=FULL``), so an acknowledged registration is durable, while one fsync serves many requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Protocol

from registrations.model import Registration


class BatchStore(Protocol):
    def upsert_many(self, registrations: Sequence[Registration], now: float) -> list[Registration]: ...


class BatchWriter:
    def __init__(self, store: BatchStore, clock: Callable[[], float], max_batch: int = 500) -> None:
        self.store, self.clock, self.max_batch = store, clock, max_batch
        self._pending: list[tuple[Registration, asyncio.Future[Registration]]] = []
        self._scheduled = False
        self.batches = 0

    async def upsert(self, registration: Registration) -> Registration:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Registration] = loop.create_future()
        self._pending.append((registration, future))
        if len(self._pending) >= self.max_batch:
            self._flush()
        elif not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)  # after every request already read in this turn has joined
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        if not pending:
            return
        try:
            self.store.upsert_many([r for r, _ in pending], self.clock())
        except Exception as exc:
            # One bad registration must not sink the others: retry them one by one.
            if len(pending) == 1:
                if not pending[0][1].done():
                    pending[0][1].set_exception(exc)
                return
            for reg, future in pending:
                try:
                    self.store.upsert_many([reg], self.clock())
                except Exception as one:
                    if not future.done():
                        future.set_exception(one)
                else:
                    if not future.done():
                        future.set_result(reg)
            return
        self.batches += 1
        for reg, future in pending:
            if not future.done():
                future.set_result(reg)
