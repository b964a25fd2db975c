"""aioapns 4.0 as tocsin's APNs provider used it before ``service.providers.http2``: the baseline that the
benchmarks quote beside tocsin (its protocol with HPACK Huffman coding off, the configured host and port)."""

from __future__ import annotations

import asyncio
import functools
from typing import Any
from urllib.parse import urlsplit

from aioapns.connection import APNsProductionClientProtocol

from service.providers.apns_token import ProviderToken


class LeanProtocol(APNsProductionClientProtocol):
    """HPACK without Huffman coding and no re-validation of the headers aioapns builds; flow-control credit
    returned for error bodies (aioapns never does). ``SHARED_TOKEN``: one provider token for every connection
    (aioapns alone signs one per connection, which Apple, and the fake, refuse within 20 minutes)."""

    SHARED_TOKEN: ProviderToken | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.SHARED_TOKEN is not None:
            self.auth_provider = self.SHARED_TOKEN  # type: ignore[assignment]  # same get_header() interface

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.conn.config.validate_outbound_headers = False
        self.conn.config.normalize_outbound_headers = False
        encoder = self.conn.encoder
        encoder.encode = functools.partial(type(encoder).encode, encoder, huffman=False)  # type: ignore[method-assign]
        super().connection_made(transport)

    def on_data_received(self, data: bytes, stream_id: int) -> None:
        super().on_data_received(data, stream_id)
        self.conn.acknowledge_received_data(len(data), stream_id)


def endpoint(url: str, token: ProviderToken | None = None) -> type[APNsProductionClientProtocol]:
    """aioapns has no host option: a protocol class carrying the configured host and port."""
    parts = urlsplit(url)
    attrs = {"APNS_SERVER": parts.hostname, "APNS_PORT": parts.port or 443, "SHARED_TOKEN": token}
    return type("ConfiguredAPNsEndpoint", (LeanProtocol,), attrs)
