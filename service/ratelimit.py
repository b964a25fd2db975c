"""Log a recurring problem at most once per key per interval, and say how many were held back.

Keys alone do not bound the log when the keys are many (one bad payload from each of 100,000 devices): at
most ``max_lines`` lines are logged per interval over all keys; past that, lines are only counted, and the
next line logged after the interval says how many were left out.
"""

from __future__ import annotations

import logging

from service.clock import Clock


class RateLimitedLog:
    def __init__(
        self,
        logger: logging.Logger,
        clock: Clock,
        interval: float = 60.0,
        max_keys: int = 10_000,
        max_lines: int = 100,
    ) -> None:
        self.logger, self.clock, self.interval, self.max_keys = logger, clock, interval, max_keys
        self.max_lines = max_lines
        self._last: dict[str, tuple[float, int]] = {}
        self._window_start, self._lines, self._dropped = float("-inf"), 0, 0

    def warning(self, key: str, message: str, *args: object) -> bool:
        """Log unless ``key`` was logged within the interval; returns whether it logged."""
        now = self.clock.monotonic()
        last = self._last.get(key)
        if last is not None and now - last[0] < self.interval:
            self._last[key] = (last[0], last[1] + 1)
            return False
        if now - self._window_start >= self.interval:
            self._window_start, self._lines = now, 0
        if self._lines >= self.max_lines:
            self._dropped += 1
            return False
        self._lines += 1
        if len(self._last) >= self.max_keys:
            self._last = {k: v for k, v in self._last.items() if now - v[0] < self.interval}
        held = last[1] if last else 0
        suffix = f" ({held} more like this in the last {self.interval:.0f} s were not logged)" if held else ""
        if self._dropped:
            suffix += (
                f" ({self._dropped} more lines of other keys were not logged: at most {self.max_lines} a"
            )
            suffix += f" {self.interval:.0f} s)"
            self._dropped = 0
        self.logger.warning(message + suffix, *args)
        self._last[key] = (now, 0)
        return True
