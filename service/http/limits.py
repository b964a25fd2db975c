"""Limits of the HTTP server against slow, idle and malformed clients.

aiohttp closes a connection that is idle (no request yet, or between keep-alive requests) after its
``keepalive_timeout``; tocsin sets it from ``http.keepalive_s`` (aiohttp's default is an hour). Malformed
requests are logged through ``MalformedRequestLog``: one line each without a traceback, at most ``burst`` a
window, the rest counted and summarised, so a flood of bad requests cannot flood the log. A request body
must arrive within ``http.body_timeout_s`` (``registrations.http.read_body``, else 408). ``LimitedSite``
holds each client address to ``http.max_connections_per_client`` open connections.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from registrations.problem import problem_body
from service.clock import Clock
from service.ratelimit import RateLimitedLog


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


class ClientConnections:
    """Open connections per client address, at most ``per_client`` each: past that a new connection is
    answered 429 (a problem document) and closed at once, counted, and logged rate-limited per address."""

    def __init__(self, per_client: int, on_refused: Callable[[], None], log: RateLimitedLog) -> None:
        self.per_client, self.on_refused, self.log = per_client, on_refused, log
        self.open: dict[str, int] = {}  # bounded by the open connections

    def take(self, host: str) -> bool:
        n = self.open.get(host, 0)
        if n >= self.per_client:
            self.on_refused()
            self.log.warning(
                host,
                "refused a connection from %s: it has %d open (http.max_connections_per_client)",
                host,
                n,
            )
            return False
        self.open[host] = n + 1
        return True

    def release(self, host: str) -> None:
        n = self.open.get(host, 0) - 1
        if n > 0:
            self.open[host] = n
        else:
            self.open.pop(host, None)


_REFUSAL = json.dumps(
    problem_body(
        429, "too_many_connections", "too many open connections from this address; close some and retry"
    )
).encode()
REFUSAL = (
    b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/problem+json\r\nConnection: close\r\n"
    b"Retry-After: 1\r\nContent-Length: %d\r\n\r\n" % len(_REFUSAL)
) + _REFUSAL


class _Counted(asyncio.Protocol):
    """Wraps aiohttp's protocol for one connection: counts it against its client address."""

    def __init__(self, inner: asyncio.Protocol, limit: ClientConnections) -> None:
        self.inner, self.limit = inner, limit
        self.host: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        host = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        if not self.limit.take(host):
            assert isinstance(transport, asyncio.Transport)
            transport.write(REFUSAL)
            transport.close()
            return
        self.host = host
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.host is not None:
            self.limit.release(self.host)
            self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.host is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.host is not None else None

    def pause_writing(self) -> None:
        if self.host is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.host is not None:
            self.inner.resume_writing()


class LimitedSite(web.BaseSite):
    """aiohttp's TCP site, with each connection counted per client address (``ClientConnections``)."""

    __slots__ = ("_host", "_limit", "_port")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, limit: ClientConnections) -> None:
        super().__init__(runner)
        self._host, self._port, self._limit = host, port, limit

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def sockets(self) -> list[Any]:
        return list(getattr(self._server, "sockets", None) or [])

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        limit = self._limit
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Counted(server(), limit), self._host, self._port, backlog=self._backlog
        )
