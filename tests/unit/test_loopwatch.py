"""The loop watch sees a stall of the event loop where it happens."""

from __future__ import annotations

import asyncio
import time

from service.loopwatch import LoopWatch
from service.metrics import Counter
from tests.support import wait_until


async def test_a_blocking_call_on_the_loop_shows_as_a_stall() -> None:
    stalls = Counter("s", "s")
    watch = LoopWatch(stalls, interval_s=0.005, threshold_s=0.05)
    watch.arm()
    task = asyncio.get_running_loop().create_task(watch.run())
    try:
        await asyncio.sleep(0.02)  # the watch is sleeping
        until = time.monotonic() + 0.12
        while time.monotonic() < until:  # the stall under test: the loop is kept busy on purpose
            pass
        await wait_until(lambda: stalls.get() >= 1, 5, "the stall counted")
        assert watch.max_s >= 0.1 and watch.max_busy_s > 0.0
    finally:
        task.cancel()


def test_collector_passes_are_timed_while_armed() -> None:
    import gc

    watch = LoopWatch(Counter("s", "s"))
    watch.arm()
    try:
        gc.collect()
        assert watch.max_gc_s > 0.0
    finally:
        watch.disarm()
    assert watch._gc not in gc.callbacks
