"""How late the event loop runs a timer: the longest stall of the event path, measured in place.

A task sleeps ``interval_s`` again and again; whatever the loop was busy with meanwhile (a long callback, a
blocking call, a collector pass) makes the wake-up late by as much. On a shared machine the process may also
simply not get a core for a while, which makes the wake-up late just the same: the part of the lateness the
process spent on the CPU (``time.process_time``) is kept apart as ``max_busy_s``, an upper bound of the stall
tocsin's own work caused. Measured once the service has started (``arm``): start-up has its own figure, the
time to ready.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

from service.metrics import Counter


class LoopWatch:
    """Reads the loop's own clock (``loop.time()``), not the service's injected one: a stall is real time."""

    def __init__(self, stalls: Counter, interval_s: float = 0.02, threshold_s: float = 0.05) -> None:
        self.stalls = stalls
        self.interval_s, self.threshold_s = interval_s, threshold_s
        self.max_s = 0.0  # the longest lateness
        self.max_busy_s = 0.0  # the longest lateness while the process was on the CPU
        self.max_gc_s = 0.0  # the longest pass of the cyclic garbage collector, one cause of stalls
        self.armed = False
        self._gc_start = 0.0

    def arm(self) -> None:
        if not self.armed:
            self.armed = True
            gc.callbacks.append(self._gc)

    def disarm(self) -> None:
        if self.armed:
            self.armed = False
            gc.callbacks.remove(self._gc)

    def _gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            self.max_gc_s = max(self.max_gc_s, time.perf_counter() - self._gc_start)

    async def run(self) -> None:
        monotonic, interval = asyncio.get_running_loop().time, self.interval_s
        cpu = time.process_time
        while True:
            start, cpu0 = monotonic(), cpu()
            await asyncio.sleep(interval)
            late = monotonic() - start - interval
            if not self.armed:
                continue
            busy = min(late, cpu() - cpu0)
            self.max_s = max(self.max_s, late)
            self.max_busy_s = max(self.max_busy_s, busy)
            if late > self.threshold_s:
                self.stalls.inc()
