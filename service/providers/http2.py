"""A multiplexed HTTP/2 client on asyncio and jh2 (h2's API, HPACK in Rust), for the providers' hot path.

Chosen by measurement over aioapns and the native clients (README, "Send-path transports"): the work per
request is what the HTTP/2 state machine needs and little else; pure-Python h2 is the fallback
(``state_machine="h2"``), measured beside it. Requests on a connection share one TLS write per loop turn;
HPACK runs without Huffman coding (pure-Python Huffman was the largest cost per request, and the server pays
to decode it) and without re-validating the headers the caller builds; the stream limit is counted here
instead of by h2 (which walks every stream on every send). Each connection respects the server's
MAX_CONCURRENT_STREAMS (APNs allows one until a request was answered), returns flow-control credit for every
body it reads, waits for credit before sending a body larger than the window, and leaves the pool at a
GOAWAY, finishing the streams the server kept.

Errors: ``ConnectionError`` (subclass ``Http2ConnectionError``) when the connection could not be made or was
lost or refused the stream before an answer; ``StreamReset`` when the server reset the stream. A request
cancelled by its caller (a timeout) closes its connection: a server that stalls one stream usually stalls
them all, and a fresh connection is the cure.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import ssl
from collections import deque
from dataclasses import dataclass
from types import ModuleType
from typing import Any

Headers = list[tuple[bytes, bytes]]


class Http2ConnectionError(ConnectionError):
    """The request did not get an answer because of its connection (refused, lost, GOAWAY)."""


class StreamReset(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"stream reset by the server (error code {code})")
        self.code = code


@dataclass(slots=True)
class Response:
    status: int
    headers: Headers
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


class _Stream:
    __slots__ = ("body", "future", "headers", "status")

    def __init__(self, future: asyncio.Future[Response]) -> None:
        self.future = future
        self.status = 0
        self.headers: Headers = []
        self.body = bytearray()


class Flavour:
    """The HTTP/2 state machine in use: ``h2`` (pure Python), or ``jh2`` (h2's fork with HPACK and frame
    buffering in Rust, same API) when it is installed and asked for. Both are looked up by name so that the
    event dispatch is a dictionary look-up, not a chain of isinstance tests."""

    def __init__(self, package: str) -> None:
        self.name = package
        mod: dict[str, ModuleType] = {
            part: importlib.import_module(f"{package}.{part}")
            for part in ("config", "connection", "events", "exceptions")
        }
        self.config: Any = mod["config"].H2Configuration
        self.protocol_error: type[Exception] = mod["exceptions"].ProtocolError
        self.events: Any = mod["events"]
        self.native = package != "h2"
        base = mod["connection"].H2Connection

        class _H2(base):  # type: ignore[misc, valid-type]
            """h2 with the outbound stream count kept by the caller: h2's own walks every stream on every
            send."""

            counted = 0

            @property
            def open_outbound_streams(self) -> int:
                return self.counted

            def forget(self, stream_id: int) -> None:
                """Drop a closed stream, as h2 itself does on its next count (late frames stay legal)."""
                stream = self.streams.pop(stream_id, None)
                if stream is not None:
                    self._closed_streams[stream_id] = stream.closed_by

        self.connection: Any = _H2


class _PlainEncoder:
    """jh2's (Rust) HPACK encoder with Huffman coding off; jh2 reads ``encode`` and ``header_table_size``."""

    def __init__(self, encoder: Any) -> None:
        self._encoder = encoder

    def encode(self, headers: Any, huffman: bool | None = None) -> bytes:
        return bytes(self._encoder.encode(headers, False))

    @property
    def header_table_size(self) -> int:
        return int(self._encoder.header_table_size)

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self._encoder.header_table_size = value


@functools.cache
def flavour(package: str = "h2") -> Flavour:
    return Flavour(package)


class _Connection(asyncio.Protocol):
    def __init__(self, pool: Http2Pool) -> None:
        self.pool = pool
        f = pool.flavour
        config = f.config(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=False,
        )
        self.h2: Any = f.connection(config=config)
        # No Huffman coding: in h2 it is the largest cost per request, and the server pays to decode it.
        encoder = self.h2.encoder
        if f.native:
            self.h2.encoder = _PlainEncoder(encoder)
        else:
            encoder.encode = functools.partial(type(encoder).encode, encoder, huffman=False)
        ev = f.events
        self._handlers = {
            ev.ResponseReceived: self._on_response,
            ev.DataReceived: self._on_data,
            ev.StreamEnded: self._on_end,
            ev.StreamReset: self._on_reset,
            ev.WindowUpdated: self._on_window,
            ev.RemoteSettingsChanged: self._on_settings,
            ev.ConnectionTerminated: self._on_goaway,
        }
        self._protocol_error = f.protocol_error
        self.streams: dict[int, _Stream] = {}
        self.blocked: deque[tuple[int, memoryview]] = deque()  # bodies waiting for flow-control credit
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.usable = False  # settings arrived, no GOAWAY, not lost
        self._next_id = 1
        self._flush_due = False

    # -- asyncio ----------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() != "h2":
            self.pool.refused_http2 = True
            self._fail_ready(Http2ConnectionError("the server did not agree to HTTP/2 (ALPN)"))
            transport.close()
            return
        self.h2.initiate_connection()
        transport.write(self.h2.data_to_send())

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except self._protocol_error as exc:
            self._lost(Http2ConnectionError(f"HTTP/2 protocol error: {exc.__class__.__name__}"))
            return
        handlers = self._handlers
        for ev in events:
            handler = handlers.get(type(ev))
            if handler is not None:
                handler(ev)
        self._flush()

    def _on_response(self, ev: Any) -> None:
        s = self.streams.get(ev.stream_id)
        if s is not None:
            s.headers = ev.headers
            for k, v in ev.headers:
                if k == b":status":
                    s.status = int(v)
                    break

    def _on_data(self, ev: Any) -> None:
        s = self.streams.get(ev.stream_id)
        if s is not None:
            s.body += ev.data
        self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)

    def _on_end(self, ev: Any) -> None:
        s = self._finish(ev.stream_id)
        if s is not None and not s.future.done():
            s.future.set_result(Response(s.status, s.headers, bytes(s.body)))

    def _on_reset(self, ev: Any) -> None:
        s = self._finish(ev.stream_id)
        if s is not None and not s.future.done():
            s.future.set_exception(StreamReset(int(ev.error_code or 0)))

    def _on_window(self, ev: Any) -> None:
        self._unblock()

    def _on_settings(self, ev: Any) -> None:
        self._unblock()
        if not self.ready.done():
            self.usable = True
            self.ready.set_result(None)
        self.pool._wake(all_=True)  # the stream limit may have grown

    def _on_goaway(self, ev: Any) -> None:
        self._goaway(ev.last_stream_id or 0, ev.additional_data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(Http2ConnectionError(f"connection lost: {exc.__class__.__name__ if exc else 'closed'}"))

    # -- requests ---------------------------------------------------------------------------------------
    @property
    def free(self) -> int:
        return self.h2.remote_settings.max_concurrent_streams - len(self.streams) if self.usable else 0

    def start(self, headers: Headers, body: bytes) -> asyncio.Future[Response]:
        stream_id = self._next_id
        self._next_id += 2
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self.h2.send_headers(stream_id, headers, end_stream=not body)  # h2 counts the streams open before
        self.streams[stream_id] = _Stream(future)
        self.h2.counted += 1
        if body:
            self.blocked.append((stream_id, memoryview(body)))
            self._unblock()
        if not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)
        return future

    def cancel(self, future: asyncio.Future[Response]) -> None:
        """The caller gave up waiting (timeout): this connection is not answering; replace it."""
        self.close()

    def close(self) -> None:
        self.usable = False
        self.pool._discard(self)
        if self.transport is not None:
            self.transport.close()

    # -- internals --------------------------------------------------------------------------------------
    def _finish(self, stream_id: int) -> _Stream | None:
        s = self.streams.pop(stream_id, None)
        if s is not None:
            self.h2.counted -= 1
            self.h2.forget(stream_id)
            self.pool._wake()
            if not self.usable and not self.streams and self.transport is not None:
                self.transport.close()  # after a GOAWAY: the last kept stream was answered
        return s

    def _unblock(self) -> None:
        h2 = self.h2
        while self.blocked:
            stream_id, rest = self.blocked[0]
            if stream_id not in self.streams:
                self.blocked.popleft()
                continue
            room = min(h2.local_flow_control_window(stream_id), h2.max_outbound_frame_size)
            if room <= 0:
                return
            chunk, rest = rest[:room], rest[room:]
            h2.send_data(stream_id, bytes(chunk), end_stream=not rest)
            if rest:
                self.blocked[0] = (stream_id, rest)
            else:
                self.blocked.popleft()

    def _flush(self) -> None:
        self._flush_due = False
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _goaway(self, last_stream_id: int, reason: bytes | None) -> None:
        self.usable = False
        self.pool._discard(self)
        why = f"GOAWAY {reason.decode(errors='replace')}" if reason else "GOAWAY"
        for stream_id in [sid for sid in self.streams if sid > last_stream_id]:
            s = self.streams.pop(stream_id)
            self.h2.counted -= 1
            if not s.future.done():
                s.future.set_exception(Http2ConnectionError(f"not answered: {why}"))
        if not self.streams and self.transport is not None:
            self.transport.close()

    def _lost(self, error: Exception) -> None:
        self.usable = False
        self.pool._discard(self)
        self._fail_ready(error)
        streams, self.streams = self.streams, {}
        self.h2.counted = 0
        for s in streams.values():
            if not s.future.done():
                s.future.set_exception(error)
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def _fail_ready(self, error: Exception) -> None:
        if not self.ready.done():
            self.ready.set_exception(error)
            self.ready.exception()  # retrieved: the connecting request reports it


class Http2Pool:
    """Up to ``max_connections`` HTTP/2 connections to one origin; a request takes the least-busy one with a
    free stream, opens a new connection when all are full, or waits for a stream to come free."""

    def __init__(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext,
        max_connections: int = 1,
        connect_timeout: float = 10.0,
        state_machine: str = "jh2",
    ) -> None:
        ssl_context.set_alpn_protocols(["h2"])
        self.flavour = flavour(state_machine)
        self.host, self.port, self.ssl = host, port, ssl_context
        self.max_connections = max(1, max_connections)
        self.connect_timeout = connect_timeout
        self.connections: list[_Connection] = []
        self._connecting = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.opened = 0  # connections made, for metrics and tests
        self.refused_http2 = False  # the server's ALPN answer was not "h2"

    async def request(self, headers: Headers, body: bytes) -> Response:
        while True:
            conn = self._pick()
            if conn is not None:
                future = conn.start(headers, body)
                try:
                    return await future
                except asyncio.CancelledError:
                    if future.cancelled():  # not answered in time (the caller's timeout)
                        conn.cancel(future)
                    raise
            if len(self.connections) + self._connecting < self.max_connections:
                await self._connect()
                continue
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # pass the free stream on
                raise

    def _pick(self) -> _Connection | None:
        best, room = None, 0
        for conn in self.connections:
            free = conn.free
            if free > room:
                best, room = conn, free
        return best

    async def _connect(self) -> None:
        self._connecting += 1
        try:
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self), self.host, self.port, ssl=self.ssl, server_hostname=self.host
                )
                await conn.ready
            self.opened += 1
            if conn.usable:
                self.connections.append(conn)
        except TimeoutError:
            raise Http2ConnectionError(f"no HTTP/2 connection to {self.host}:{self.port} in time") from None
        finally:
            self._connecting -= 1
            self._wake(all_=True)

    def _wake(self, all_: bool = False) -> None:
        """One waiter per freed stream; all of them when a connection opened or its limit changed."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                if not all_:
                    return

    def _discard(self, conn: _Connection) -> None:
        if conn in self.connections:
            self.connections.remove(conn)
        self._wake(all_=True)  # the waiters may open a new connection

    def close(self) -> None:
        for conn in list(self.connections):
            conn.close()
        self.connections.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(Http2ConnectionError("the client was closed"))
