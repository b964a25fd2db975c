"""Log a recurring problem at most once per key per interval, and say how many were held back."""

from __future__ import annotations

import logging

from service.clock import Clock


class RateLimitedLog:
    def __init__(
        self, logger: logging.Logger, clock: Clock, interval: float = 60.0, max_keys: int = 10_000
    ) -> None:
        self.logger, self.clock, self.interval, self.max_keys = logger, clock, interval, max_keys
        self._last: dict[str, tuple[float, int]] = {}

    def warning(self, key: str, message: str, *args: object) -> bool:
        """Log unless ``key`` was logged within the interval; returns whether it logged."""
        now = self.clock.monotonic()
        last = self._last.get(key)
        if last is not None and now - last[0] < self.interval:
            self._last[key] = (last[0], last[1] + 1)
            return False
        if len(self._last) >= self.max_keys:
            self._last = {k: v for k, v in self._last.items() if now - v[0] < self.interval}
        held = last[1] if last else 0
        suffix = f" ({held} more like this in the last {self.interval:.0f} s were not logged)" if held else ""
        self.logger.warning(message + suffix, *args)
        self._last[key] = (now, 0)
        return True
