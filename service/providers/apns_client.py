"""One APNs endpoint of one (app, environment): the requests aioapns 4.0 built, over ``http2.Http2Pool``.

The request is aioapns's ``NotificationRequest`` and the answer its ``NotificationResult``, so the provider's
decisions are those it made on aioapns; the headers are the ones aioapns sends, in its order (spec §1.2):
``:method :scheme :path host apns-id apns-topic [apns-expiration] [apns-priority] [apns-collapse-id]
[apns-push-type] [authorization]``, and the body is the payload as JSON with ``ensure_ascii=False``. The
provider token is the signing key's one ``ProviderToken`` (apns_token.py), shared by every client and
connection of that key (Apple: one per key, renewed between 20 and 60 minutes).
"""

from __future__ import annotations

import json
import ssl
import time
from urllib.parse import urlsplit

from aioapns import NotificationRequest
from aioapns.common import NotificationResult

from service.providers.apns_token import ProviderToken
from service.providers.http2 import Http2Pool, Response


def endpoint(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"APNs endpoint {url!r} must be https://host[:port]")
    return parts.hostname, parts.port or 443


class ApnsClient:
    def __init__(
        self,
        url: str,
        topic: str,
        ssl_context: ssl.SSLContext,
        max_connections: int,
        auth: ProviderToken | None = None,
    ) -> None:
        host, port = endpoint(url)
        self.pool = Http2Pool(host, port, ssl_context, max_connections)
        self.topic = topic
        self.auth = auth
        self._host = host.encode()

    @property
    def connections(self) -> int:
        return len(self.pool.connections)

    async def send_notification(
        self, request: NotificationRequest, body: bytes | None = None
    ) -> NotificationResult:
        """Send ``request``; ``body``, when given, is ``request.message`` encoded already."""
        headers = [
            (b":method", b"POST"),
            (b":scheme", b"https"),
            (b":path", b"/3/device/" + request.device_token.encode()),
            (b"host", self._host),
            (b"apns-id", request.notification_id.encode()),
            (b"apns-topic", (request.apns_topic or self.topic).encode()),
        ]
        if request.time_to_live is not None:
            headers.append((b"apns-expiration", str(int(time.time()) + request.time_to_live).encode()))
        if request.priority is not None:
            headers.append((b"apns-priority", str(request.priority).encode()))
        if request.collapse_key is not None:
            headers.append((b"apns-collapse-id", request.collapse_key.encode()))
        if request.push_type is not None:
            headers.append((b"apns-push-type", request.push_type.value.encode()))
        if self.auth is not None:
            headers.append((b"authorization", self.auth.get_header().encode()))
        if body is None:
            body = json.dumps(request.message, ensure_ascii=False).encode()
        return result(request.notification_id, await self.pool.request(headers, body))

    def close(self) -> None:
        self.pool.close()


def result(notification_id: str, response: Response) -> NotificationResult:
    if response.status == 200:
        return NotificationResult(notification_id, "200")
    reason, timestamp = "", None
    try:
        doc = json.loads(response.body)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        reason = str(doc.get("reason") or "")
        ts = doc.get("timestamp")
        timestamp = ts if isinstance(ts, int) else None
    return NotificationResult(notification_id, str(response.status), description=reason, timestamp=timestamp)
