"""Limits of the HTTP server against slow, idle and malformed clients.

aiohttp closes a connection that is idle (no request yet, or between keep-alive requests) after its
``keepalive_timeout``; tocsin sets it from ``http.keepalive_s`` (aiohttp's default is an hour). Malformed
requests are logged through ``MalformedRequestLog``: one line each without a traceback, at most ``burst`` a
window, the rest counted and summarised, so a flood of bad requests cannot flood the log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError

from service.clock import Clock


class MalformedRequestLog:
    """Stands in for aiohttp's server logger (it calls ``exception`` and ``debug``)."""

    def __init__(
        self,
        clock: Clock,
        on_malformed: Callable[[], None],
        burst: int = 5,
        window_s: float = 60.0,
        log: logging.Logger | None = None,
    ) -> None:
        self.clock, self.on_malformed, self.burst, self.window_s = clock, on_malformed, burst, window_s
        self.log = log or logging.getLogger("tocsin.http")
        self._window_start, self._in_window, self._suppressed = 0.0, 0, 0

    def _line(self, message: str, args: tuple[Any, ...], exc: object) -> None:
        now = self.clock.monotonic()
        if now - self._window_start >= self.window_s:
            if self._suppressed:
                self.log.warning(
                    "%d more malformed HTTP requests in the last window, not logged", self._suppressed
                )
            self._window_start, self._in_window, self._suppressed = now, 0, 0
        self._in_window += 1
        if self._in_window > self.burst:
            self._suppressed += 1
            return
        reason = f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else "unknown error"
        text = (message % args if args else message).replace(
            "Error handling request", "malformed HTTP request"
        )
        self.log.warning("%s: %s", text, reason.encode("unicode_escape").decode("ascii")[:300])

    def exception(self, message: str, *args: Any, exc_info: object = None, **kw: Any) -> None:
        if not isinstance(exc_info, HttpProcessingError):  # a handler's own failure: log it in full
            self.log.error(message, *args, exc_info=exc_info if isinstance(exc_info, BaseException) else True)
            return
        self.on_malformed()
        self._line(message, args, exc_info)

    def debug(self, message: str, *args: Any, exc_info: object = None, **kw: Any) -> None:
        self.on_malformed()
        self._line(message, args, exc_info)

    def warning(self, message: str, *args: Any, **kw: Any) -> None:
        self.log.warning(message, *args)

    def error(self, message: str, *args: Any, **kw: Any) -> None:
        self.log.error(message, *args)

    def info(self, message: str, *args: Any, **kw: Any) -> None:
        self.log.info(message, *args)

    def isEnabledFor(self, level: int) -> bool:
        return self.log.isEnabledFor(level)
