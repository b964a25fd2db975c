"""Group commit: registrations are written many to a transaction, each caller answered after its commit.

One commit runs at a time (SQLite: in the store's writer thread, which releases the GIL while it writes and
fsyncs; PostgreSQL: one transaction on the server), so the event loop keeps reading requests meanwhile;
those wait in ``pending`` and form the next transaction. An acknowledged registration is therefore durable,
while one commit serves dozens of requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from registrations.model import Registration
from registrations.store import RegistrationStore


class BatchWriter:
    def __init__(self, store: RegistrationStore, clock: Callable[[], float], max_batch: int = 1000) -> None:
        self.store, self.clock, self.max_batch = store, clock, max_batch
        self._pending: list[tuple[Registration, asyncio.Future[Registration]]] = []
        self._drainer: asyncio.Task[None] | None = None
        self.batches = 0

    async def upsert(self, registration: Registration) -> Registration:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Registration] = loop.create_future()
        self._pending.append((registration, future))
        if self._drainer is None:
            self._drainer = loop.create_task(self._drain())
        return await future

    async def remove(self, provider: str | None, token: str) -> bool:
        """Delete a registration (one statement, committed at once)."""
        return await self.store.remove(provider, token)

    async def _run(self, regs: list[Registration]) -> None:
        await self.store.upsert_many(regs, self.clock())

    async def _drain(self) -> None:
        try:
            await asyncio.sleep(0)  # the requests read in this turn join the first transaction
            while self._pending:
                batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
                try:
                    await self._run([r for r, _ in batch])
                except Exception:
                    await self._one_by_one(batch)  # one bad registration must not sink the others
                    continue
                self.batches += 1
                for reg, future in batch:
                    if not future.done():
                        future.set_result(reg)
        finally:
            self._drainer = None

    async def _one_by_one(self, batch: list[tuple[Registration, asyncio.Future[Registration]]]) -> None:
        for reg, future in batch:
            try:
                await self._run([reg])
            except Exception as exc:
                if not future.done():
                    future.set_exception(exc)
            else:
                if not future.done():
                    future.set_result(reg)

    async def close(self) -> None:
        """Wait for the transaction under way (the store is closed by its owner)."""
        if self._drainer is not None:
            await asyncio.gather(self._drainer, return_exceptions=True)
