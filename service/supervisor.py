"""Runs the service's long-running tasks by name and restarts the ones that die.

An unexpected exception (or a normal return from a task that should run forever) is a crash: it is logged
with its traceback (once per distinct error and task; repeats are one line), counted in
``tocsin_internal_errors_total{task=...}``, and the task starts again after an exponential backoff with
jitter. While a task waits to restart, or gave up, it is *down*: ``down`` names it and why, and the
service's readiness is false. Cancelling a task's handle stops it for good (no restart, no count).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from service.clock import Clock, SystemClock
from service.metrics import Counter

log = logging.getLogger("tocsin.supervisor")

TaskFactory = Callable[[], Awaitable[None]]
State = Literal["running", "restarting", "failed"]
HISTORY = 20  # crashes remembered per task
SIGNATURES = 50  # distinct errors per task whose traceback was logged


class Spawn(Protocol):
    """What components get to start their tasks with: ``spawn(name, factory) -> asyncio.Task``."""

    def __call__(self, name: str, factory: TaskFactory, *, forever: bool = True) -> asyncio.Task[None]: ...


def unsupervised(name: str, factory: TaskFactory, *, forever: bool = True) -> asyncio.Task[None]:
    """A plain task, for components used without a supervisor (unit tests, tools)."""

    async def run() -> None:
        await factory()

    return asyncio.get_running_loop().create_task(run(), name=name)


@dataclass
class Crash:
    at: float  # clock.time()
    reason: str


@dataclass
class Supervised:
    name: str
    forever: bool
    restart: bool
    state: State = "running"
    reason: str | None = None
    restarts: int = 0
    started_at: float = 0.0  # clock.monotonic() of the last (re)start
    history: deque[Crash] = field(default_factory=lambda: deque(maxlen=HISTORY))
    logged: deque[str] = field(default_factory=lambda: deque(maxlen=SIGNATURES))


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


class Supervisor:
    """``spawn(name, factory)`` starts ``factory()`` under supervision and returns its task.

    ``factory`` is called again for every restart (a coroutine runs only once). The returned task ends only
    when cancelled (``forever``), or when ``factory()`` returns (``forever=False``, for tasks that may end,
    such as one that stops when the service stops). ``restart=False``: a crash is logged and counted and the
    task stays failed (for one-off work that must not run twice). Backoff: ``base_s * 2**(n-1)`` capped at
    ``cap_s``, times a jitter in [0.5, 1); the count starts again once a task ran ``reset_after_s``.
    ``give_up_after``: that many crashes in a row and the task stays failed (None: never gives up).
    """

    def __init__(
        self,
        errors: Counter,
        clock: Clock | None = None,
        *,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
        base_s: float = 0.5,
        cap_s: float = 60.0,
        reset_after_s: float = 60.0,
        give_up_after: int | None = None,
    ) -> None:
        self.errors, self.clock = errors, clock or SystemClock()
        self.sleep, self.rng = sleep, rng
        self.base_s, self.cap_s, self.reset_after_s, self.give_up_after = (
            base_s,
            cap_s,
            reset_after_s,
            give_up_after,
        )
        self.tasks: dict[str, Supervised] = {}
        self._handles: dict[str, asyncio.Task[None]] = {}

    def spawn(
        self, name: str, factory: TaskFactory, *, forever: bool = True, restart: bool = True
    ) -> asyncio.Task[None]:
        if name in self._handles:
            raise ValueError(f"a task named {name!r} is already supervised")
        entry = Supervised(name, forever, restart)
        self.tasks[name] = entry
        task = asyncio.get_running_loop().create_task(self._run(entry, factory), name=name)
        self._handles[name] = task
        task.add_done_callback(self._forget)  # also when cancelled before it started
        return task

    def _forget(self, task: asyncio.Task[None]) -> None:
        name = task.get_name()
        if self._handles.get(name) is task:
            del self._handles[name], self.tasks[name]

    @property
    def down(self) -> dict[str, str]:
        """Tasks that crashed and wait to restart, or gave up: name -> the error, one line."""
        return {n: t.reason or "" for n, t in self.tasks.items() if t.state != "running"}

    def states(self) -> dict[str, dict[str, object]]:
        return {
            n: {
                "state": t.state,
                "restarts": t.restarts,
                "error": t.reason,
                "last_crash": t.history[-1].at if t.history else None,
            }
            for n, t in sorted(self.tasks.items())
        }

    def delay(self, attempt: int) -> float:
        """The wait before restart number ``attempt`` (1, 2, ...) of a run of crashes."""
        return float(min(self.cap_s, self.base_s * 2.0 ** (attempt - 1)) * (0.5 + self.rng() / 2))

    async def close(self) -> None:
        """Cancel every task still running and wait for them."""
        pending = [t for t in self._handles.values() if not t.done()]
        while pending:  # cancel again if a task swallowed it (asyncio.wait_for on 3.11 can)
            for task in pending:
                task.cancel()
            _, still = await asyncio.wait(pending, timeout=1.0)
            pending = list(still)

    async def _run(self, entry: Supervised, factory: TaskFactory) -> None:
        me = asyncio.current_task()
        assert me is not None
        streak = 0
        while True:
            entry.state, entry.started_at = "running", self.clock.monotonic()
            try:
                await factory()
            except asyncio.CancelledError:
                if me.cancelling():
                    raise  # stopped: the clean way out
                exc: BaseException = RuntimeError("cancelled from inside (not stopped)")
            except Exception as error:
                if me.cancelling():
                    return  # an error while being stopped is part of stopping
                exc = error
            else:
                if me.cancelling() or not entry.forever:
                    return
                exc = RuntimeError("returned, but it should run until stopped")
            if self.clock.monotonic() - entry.started_at >= self.reset_after_s:
                streak = 0
            streak += 1
            self._crashed(entry, exc)
            if not entry.restart or (self.give_up_after is not None and streak >= self.give_up_after):
                entry.state = "failed"
                log.error(
                    "task %s stays down after %d crashes in a row: %s", entry.name, streak, entry.reason
                )
                await asyncio.Event().wait()  # until stopped; readiness names it meanwhile
            delay = self.delay(streak)
            entry.state = "restarting"
            log.warning("task %s restarts in %.2f s", entry.name, delay)
            await self.sleep(delay)
            entry.restarts += 1

    def _crashed(self, entry: Supervised, exc: BaseException) -> None:
        reason = one_line(exc)
        entry.reason = reason
        entry.history.append(Crash(self.clock.time(), reason))
        self.errors.inc(entry.name)
        if reason in entry.logged:
            log.error("task %s crashed again: %s (traceback logged before)", entry.name, reason)
        else:
            entry.logged.append(reason)
            log.error("task %s crashed: %s", entry.name, reason, exc_info=exc)
