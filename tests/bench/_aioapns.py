"""aioapns 4.0 as tocsin's APNs provider used it before ``service.providers.http2``: the baseline that the
benchmarks quote beside tocsin (its protocol with HPACK Huffman coding off, the configured host and port)."""

from __future__ import annotations

import asyncio
import functools
from urllib.parse import urlsplit

from aioapns.connection import APNsProductionClientProtocol


class LeanProtocol(APNsProductionClientProtocol):
    """HPACK without Huffman coding and no re-validation of the headers aioapns builds; flow-control credit
    returned for error bodies (aioapns never does)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.conn.config.validate_outbound_headers = False
        self.conn.config.normalize_outbound_headers = False
        encoder = self.conn.encoder
        encoder.encode = functools.partial(type(encoder).encode, encoder, huffman=False)  # type: ignore[method-assign]
        super().connection_made(transport)

    def on_data_received(self, data: bytes, stream_id: int) -> None:
        super().on_data_received(data, stream_id)
        self.conn.acknowledge_received_data(len(data), stream_id)


def endpoint(url: str) -> type[APNsProductionClientProtocol]:
    """aioapns has no host option: a protocol class carrying the configured host and port."""
    parts = urlsplit(url)
    attrs = {"APNS_SERVER": parts.hostname, "APNS_PORT": parts.port or 443}
    return type("ConfiguredAPNsEndpoint", (LeanProtocol,), attrs)
