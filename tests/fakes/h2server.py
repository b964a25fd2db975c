"""A small HTTP/2 server over TLS (h2, ALPN "h2") for the fakes whose real service speaks HTTP/2 (FCM).

Each complete request (headers and body) goes to ``handler(headers, body)``, which answers ``(status,
headers, body)`` or None to leave the stream unanswered (a stalled server). Flow-control credit is returned
for every body read; an answer body waits for the client's credit when its window is spent.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable
from pathlib import Path

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import ProtocolError

Answer = tuple[int, dict[str, str], bytes]
Handler = Callable[[dict[str, str], bytes], Answer | None]


class _Connection(asyncio.Protocol):
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.streams: dict[int, tuple[dict[str, str], bytearray]] = {}
        self.blocked: deque[tuple[int, bytes]] = deque()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.h2.initiate_connection()
        transport.write(self.h2.data_to_send())

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        try:
            events = self.h2.receive_data(data)
        except ProtocolError:
            self.transport.close()
            return
        for ev in events:
            if isinstance(ev, RequestReceived):
                headers = {bytes(k).decode(): bytes(v).decode() for k, v in ev.headers}
                self.streams[ev.stream_id] = (headers, bytearray())
            elif isinstance(ev, DataReceived):
                if ev.stream_id in self.streams:
                    self.streams[ev.stream_id][1].extend(ev.data)
                self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, StreamEnded):
                headers, body = self.streams.pop(ev.stream_id)
                answer = self.handler(headers, bytes(body))
                if answer is not None:
                    self._answer(ev.stream_id, answer)
            elif isinstance(ev, StreamReset):
                self.streams.pop(ev.stream_id, None)
            elif isinstance(ev, WindowUpdated):
                self._unblock()
            elif isinstance(ev, ConnectionTerminated):
                self.transport.close()
        self.transport.write(self.h2.data_to_send())

    def _answer(self, stream_id: int, answer: Answer) -> None:
        status, headers, body = answer
        out = [(":status", str(status)), ("content-type", "application/json"), *headers.items()]
        self.h2.send_headers(stream_id, out, end_stream=not body)
        if body:
            self.blocked.append((stream_id, body))
            self._unblock()

    def _unblock(self) -> None:
        while self.blocked:
            stream_id, body = self.blocked[0]
            if self.h2.local_flow_control_window(stream_id) < len(body):
                return
            self.blocked.popleft()
            self.h2.send_data(stream_id, body, end_stream=True)


async def serve(
    handler: Handler, host: str, port: int, cert: Path, key: Path
) -> tuple[asyncio.Server, set[_Connection]]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2"])
    open_: set[_Connection] = set()

    def factory() -> _Connection:
        conn = _Connection(handler)
        open_.add(conn)
        return conn

    server = await asyncio.get_running_loop().create_server(factory, host, port, ssl=ctx)
    return server, open_
