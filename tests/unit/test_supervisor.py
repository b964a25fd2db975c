"""The supervisor on an injected clock and sleep: backoff, restart, give up, clean cancel, bounded history."""

from __future__ import annotations

import asyncio
import logging

import pytest

from service.clock import ManualClock
from service.metrics import Counter
from service.supervisor import HISTORY, Supervisor, unsupervised
from tests.support import wait_until


class Sleeps:
    """The supervisor's sleep: records each delay and waits until the test releases it."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.delays: list[float] = []
        self._gate = asyncio.Event()

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await self._gate.wait()
        self._gate.clear()
        self.clock.advance(delay)

    def release(self) -> None:
        self._gate.set()


def make(rng: float = 0.0, **kwargs: object) -> tuple[Supervisor, Counter, ManualClock, Sleeps]:
    clock = ManualClock()
    sleeps = Sleeps(clock)
    errors = Counter("tocsin_internal_errors", "", ("task",))
    sup = Supervisor(errors, clock, sleep=sleeps, rng=lambda: rng, **kwargs)  # type: ignore[arg-type]
    return sup, errors, clock, sleeps


async def test_crash_is_counted_logged_once_and_restarted_with_growing_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sup, errors, _, sleeps = make(base_s=1.0, cap_s=5.0)
    runs = 0
    forever = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 4:
            raise ValueError("boom\nsecond line")
        await forever.wait()

    with caplog.at_level(logging.WARNING, "tocsin.supervisor"):
        task = sup.spawn("worker", flaky)
        for n in range(1, 5):
            await wait_until(lambda n=n: len(sleeps.delays) == n, 5, f"crash {n}")  # type: ignore[misc]
            assert sup.down == {"worker": "ValueError: boom second line"}
            assert sup.states()["worker"]["state"] == "restarting"
            sleeps.release()
        await wait_until(lambda: runs == 5, 5, "the fifth start")
    assert sleeps.delays == [0.5, 1.0, 2.0, 2.5]  # base * 2**(n-1) capped at 5, jitter 0.5 at rng 0
    assert sup.down == {} and sup.states()["worker"]["restarts"] == 4
    assert errors.get("worker") == 4
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1 and "Traceback" not in tracebacks[0].getMessage()
    assert sum("crashed again" in r.getMessage() for r in caplog.records) == 3
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sup.tasks == {}


async def test_jitter_stays_between_half_and_full_delay() -> None:
    low, _, _, _ = make(rng=0.0, base_s=2.0)
    high, _, _, _ = make(rng=0.999, base_s=2.0)
    assert low.delay(1) == 1.0 and 1.99 < high.delay(1) < 2.0
    assert low.delay(30) == 30.0  # capped at 60 s, times 0.5


async def test_returning_when_it_should_run_forever_is_a_crash() -> None:
    sup, errors, _, sleeps = make()
    calls = 0

    async def quits() -> None:
        nonlocal calls
        calls += 1

    task = sup.spawn("quitter", quits)
    await wait_until(lambda: bool(sleeps.delays), 5, "the restart wait")
    assert sup.down == {"quitter": "RuntimeError: returned, but it should run until stopped"}
    assert errors.get("quitter") == 1
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert calls == 1 and sup.down == {}


async def test_a_finite_task_may_return() -> None:
    sup, errors, _, _ = make()

    async def once() -> None:
        return None

    await sup.spawn("once", once, forever=False)
    assert errors.total() == 0 and sup.tasks == {}


async def test_cancel_stops_cleanly_without_restart_or_count() -> None:
    sup, errors, _, sleeps = make()
    started = asyncio.Event()

    async def loop() -> None:
        started.set()
        await asyncio.Event().wait()

    task = sup.spawn("loop", loop)
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert errors.total() == 0 and sleeps.delays == [] and sup.tasks == {}
    sup.spawn("loop", loop)  # the name is free again
    await sup.close()
    assert sup.tasks == {}


async def test_cancel_during_the_backoff_wait_stops_it() -> None:
    sup, errors, _, sleeps = make()

    async def crash() -> None:
        raise OSError("disk")

    task = sup.spawn("crashy", crash)
    await wait_until(lambda: bool(sleeps.delays), 5, "the restart wait")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled() and sup.down == {} and errors.get("crashy") == 1


async def test_gives_up_after_crashes_in_a_row_and_stays_down() -> None:
    sup, errors, _, sleeps = make(give_up_after=2)

    async def crash() -> None:
        raise KeyError("gone")

    task = sup.spawn("hopeless", crash)
    await wait_until(lambda: bool(sleeps.delays), 5, "the first restart wait")
    sleeps.release()
    await wait_until(lambda: sup.states()["hopeless"]["state"] == "failed", 5, "giving up")
    assert sup.down == {"hopeless": "KeyError: 'gone'"} and errors.get("hopeless") == 2
    assert len(sleeps.delays) == 1
    await sup.close()
    assert task.cancelled() and sup.down == {}


async def test_no_restart_for_one_off_work() -> None:
    sup, errors, _, sleeps = make()

    async def crash() -> None:
        raise RuntimeError("half done")

    sup.spawn("recovery", crash, forever=False, restart=False)
    await wait_until(lambda: bool(sup.down), 5, "the crash")
    assert sup.down == {"recovery": "RuntimeError: half done"} and sleeps.delays == []
    assert errors.get("recovery") == 1
    await sup.close()


async def test_the_streak_resets_after_a_long_healthy_run() -> None:
    sup, _, clock, sleeps = make(base_s=1.0, reset_after_s=10.0)
    runs = 0
    crash_now = asyncio.Event()

    async def sometimes() -> None:
        nonlocal runs
        runs += 1
        if runs == 3:
            await crash_now.wait()  # the third run lasts long
        raise ValueError(f"run {runs}")

    task = sup.spawn("w", sometimes)
    await wait_until(lambda: len(sleeps.delays) == 1, 5, "crash 1")
    sleeps.release()
    await wait_until(lambda: len(sleeps.delays) == 2, 5, "crash 2")
    sleeps.release()
    await wait_until(lambda: runs == 3, 5, "run 3")
    clock.advance(11.0)
    crash_now.set()
    await wait_until(lambda: len(sleeps.delays) == 3, 5, "crash 3")
    assert sleeps.delays == [0.5, 1.0, 0.5]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_history_is_bounded_and_the_name_unique() -> None:
    sup, _, _, sleeps = make(base_s=0.0)

    async def crash() -> None:
        raise ValueError("again")

    task = sup.spawn("w", crash)
    with pytest.raises(ValueError, match="already supervised"):
        sup.spawn("w", crash)
    for n in range(HISTORY + 5):
        await wait_until(lambda n=n: len(sleeps.delays) > n, 5, "a crash")  # type: ignore[misc]
        sleeps.release()
    assert len(sup.tasks["w"].history) == HISTORY
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_an_error_raised_while_being_stopped_is_part_of_stopping() -> None:
    sup, errors, _, sleeps = make()
    started = asyncio.Event()

    async def converts() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failed") from None

    task = sup.spawn("c", converts)
    await started.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert errors.total() == 0 and sleeps.delays == [] and sup.tasks == {}


async def test_unsupervised_runs_the_factory_once() -> None:
    ran: list[str] = []

    async def work() -> None:
        ran.append("x")

    await unsupervised("plain", work)
    assert ran == ["x"]
