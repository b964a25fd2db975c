"""The one writer of the event path: every durable change of a batch in one SQLite transaction, in a thread.

Participants (the outbox, the alert store, the MQTT intake's acknowledgement record) register a ``collect``
function. ``await commit()`` calls each of them on the event loop (cheap: they hand over what they buffered
as a list of statements), and a writer thread runs all of it in one transaction. Commits asked for while one
is under way are grouped into the next one (group commit), so a burst of callers costs one transaction.

Nothing here blocks the event loop: the loop only swaps buffers and waits on a future. What is durable when:
a ``commit()`` that returned survived a crash of the process (WAL, ``synchronous=NORMAL``); it survives a
power cut once the next WAL checkpoint or, with ``synchronous: full``, at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger("tocsin.journal")

Synchronous = Literal["normal", "full"]


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement run for each row of ``rows`` (``executemany``), or once with ``rows`` empty."""

    sql: str
    rows: Sequence[Any] = ()  # rows (each a sequence) when ``many``, else the one statement's parameters
    many: bool = True


Collector = Callable[[], list[Statement]]
_Job = tuple[list[Statement], Callable[[BaseException | None], None]]


class Journal:
    """``commit()`` makes everything the participants buffered durable, in one transaction."""

    def __init__(self, path: Path | str, synchronous: Synchronous = "normal") -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.synchronous = synchronous
        self._db = self._connect()
        self._collectors: list[tuple[str, Collector]] = []
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._running: asyncio.Future[None] | None = None  # the commit under way
        self._next: asyncio.Future[None] | None = None  # the one that gathers whoever asks meanwhile
        self.commits = 0
        self.statements = 0
        self._extra: list[Statement] = []
        self._submitted: set[asyncio.Task[None]] = set()
        self.register("journal", self._take_extra)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        if self.path != ":memory:":
            db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
        db.execute("PRAGMA busy_timeout=5000")
        return db

    @property
    def db(self) -> sqlite3.Connection:
        """For set-up and reads before the writer starts (migrations, loading state at start)."""
        return self._db

    @property
    def started(self) -> bool:
        return self._thread is not None

    @property
    def committing(self) -> bool:
        """A commit is under way: what it took from the participants is not durable yet."""
        return self._running is not None

    def register(self, name: str, collect: Collector) -> None:
        self._collectors.append((name, collect))

    # -- the writer thread ---------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._write_loop, name="tocsin-journal", daemon=True)
            self._thread.start()

    def _write_loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            statements, done = job
            try:
                self._run(statements)
            except BaseException as exc:  # reported to whoever waits; the thread keeps serving
                done(exc)
            else:
                done(None)

    def _run(self, statements: Iterable[Statement]) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for s in statements:
                if s.many:
                    if s.rows:
                        db.executemany(s.sql, s.rows)
                else:
                    db.execute(s.sql, s.rows)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # -- the loop side -------------------------------------------------------------------------------------
    def _collect(self) -> list[Statement]:
        out: list[Statement] = []
        for _, collect in self._collectors:
            out.extend(collect())
        return out

    async def commit(self) -> None:
        """Returns once everything buffered before the call is committed; raises if that commit failed."""
        if self._thread is None:  # not started (tools, tests without the service): write in place
            self.commit_now()
            return
        if self._running is None:
            await self._start_commit()
            return
        # A commit is under way and may not hold what was buffered since: join the next one.
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
            running = self._running
            nxt = self._next

            async def follow() -> None:
                with contextlib.suppress(BaseException):  # its own waiters get its error
                    await asyncio.shield(running)
                self._next = None
                try:
                    await self._start_commit()
                except BaseException as exc:
                    if not nxt.done():
                        nxt.set_exception(exc)
                else:
                    if not nxt.done():
                        nxt.set_result(None)

            asyncio.get_running_loop().create_task(follow(), name="journal-next-commit")
        await asyncio.shield(self._next)

    async def _start_commit(self) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        statements = self._collect()
        if not statements:
            return
        self._running = future

        def done(exc: BaseException | None) -> None:
            loop.call_soon_threadsafe(_settle, future, exc)

        self._jobs.put((statements, done))
        self.statements += len(statements)
        try:
            await asyncio.shield(future)
            self.commits += 1
        except Exception:
            # Nothing of it was written: keep it for the next commit, so that a passing failure (a full
            # disk, a locked database) loses nothing. The caller does not acknowledge meanwhile.
            self._extra[:0] = statements
            raise
        finally:
            if self._running is future:
                self._running = None

    def commit_now(self) -> None:
        """Synchronously, on the calling thread: at start, at shutdown once the writer stopped, in tools."""
        statements = self._collect()
        if statements:
            self._run(statements)
            self.commits += 1

    async def run(self, statements: list[Statement]) -> None:
        """Commit these statements (with whatever the participants buffered) and wait for it."""
        self._extra.extend(statements)
        await self.commit()

    def submit(self, statements: list[Statement]) -> None:
        """Have these statements committed with the next commit, which this asks for (not waited for)."""
        self._extra.extend(statements)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.commit_now()
            return
        task = loop.create_task(self.commit(), name="journal-submit")
        self._submitted.add(task)
        task.add_done_callback(self._submit_done)

    def _submit_done(self, task: asyncio.Task[None]) -> None:
        self._submitted.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a journal write failed: %s", task.exception())

    def _take_extra(self) -> list[Statement]:
        taken, self._extra = self._extra, []
        return taken

    def close(self) -> None:
        """Stops the writer (after the jobs it has), then commits what is still buffered, in place."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join(timeout=30)
            self._thread = None
        try:
            self.commit_now()
        finally:
            self._db.close()


def _settle(future: asyncio.Future[None], exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is None:
        future.set_result(None)
    else:
        future.set_exception(exc)
