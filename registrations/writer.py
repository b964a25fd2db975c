"""Group commit: registrations are written many to a transaction, each caller answered after its commit.

One commit runs at a time, in a dedicated thread (SQLite releases the GIL while it writes and fsyncs), so
the event loop keeps reading requests meanwhile; those wait in ``pending`` and form the next transaction.
An acknowledged registration is therefore durable, while one fsync serves dozens of requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from registrations.model import Registration

Commit = Callable[[Sequence[Registration], float], object]
Remove = Callable[[str | None, str], bool]


class BatchWriter:
    def __init__(
        self,
        commit: Commit,
        clock: Callable[[], float],
        max_batch: int = 1000,
        threaded: bool = True,
        remove: Remove | None = None,
    ) -> None:
        self.commit, self.clock, self.max_batch = commit, clock, max_batch
        self._remove = remove
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="registry-writer") if threaded else None
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
        if self._remove is None:
            raise RuntimeError("this writer was built without a remove function")
        return self._remove(provider, token)

    async def _run(self, regs: Sequence[Registration]) -> None:
        if self._executor is None:
            self.commit(regs, self.clock())
        else:
            await asyncio.get_running_loop().run_in_executor(self._executor, self.commit, regs, self.clock())

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

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
