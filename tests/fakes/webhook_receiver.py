"""A user's webhook server, as the README tells one to write it: HTTPS (optionally asking for a client
certificate), checks ``Tocsin-Signature`` over ``Tocsin-Timestamp`` and the raw body with the shared secret
(401 when it does not match or is more than five minutes old), parses the body as JSON of schema
``tocsin.webhook/1`` (400 otherwise), records what it got and answers 200, or whatever ``fail_next`` says
((status, Retry-After), e.g. 410, 429, 503, 302)."""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from service.providers import webhook_body
from tests.fakes.certs import CertificateAuthority


@dataclass(frozen=True)
class Posted:
    path: str
    headers: dict[str, str]
    raw: bytes
    body: dict[str, Any]
    client_cert: bool


@dataclass
class FakeWebhookReceiver:
    directory: Path
    secret: bytes
    host: str = "127.0.0.1"
    port: int = 0
    require_client_cert: bool = False
    fail_next: deque[tuple[int, float | None]] = field(default_factory=deque)
    record: bool = True

    def __post_init__(self) -> None:
        self.ca = CertificateAuthority(self.directory / "webhook-ca", "fake webhook CA")
        self.posted: list[Posted] = []
        self.refused: dict[int, int] = {}
        self.requests = 0
        self.accepted = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    async def start(self) -> FakeWebhookReceiver:
        issued = self.ca.server("localhost", ip=self.host)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(issued.cert, issued.key)
        if self.require_client_cert:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(self.ca.cert)
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port, ssl_context=ctx).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _refuse(self, status: int, text: str) -> web.Response:
        self.refused[status] = self.refused.get(status, 0) + 1
        return web.Response(status=status, text=text)

    async def _hook(self, request: web.Request) -> web.Response:
        self.requests += 1
        raw = await request.read()
        ts = request.headers.get(webhook_body.TIMESTAMP_HEADER, "")
        sig = request.headers.get(webhook_body.SIGNATURE_HEADER, "")
        if not webhook_body.verify(self.secret, ts, raw, sig, time.time()):
            return self._refuse(401, "bad signature")
        if request.content_type != "application/json":
            return self._refuse(415, "not JSON")
        try:
            doc = json.loads(raw)
        except ValueError:
            return self._refuse(400, "not JSON")
        if not isinstance(doc, dict) or doc.get("version") != webhook_body.VERSION:
            return self._refuse(400, "unknown schema")
        if self.fail_next:
            status, after = self.fail_next.popleft()
            headers = {"Retry-After": str(int(after))} if after is not None else {}
            if 300 <= status < 400:
                headers["Location"] = "http://169.254.169.254/latest/meta-data/"
            return web.Response(status=status, text="scripted", headers=headers)
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        self.accepted += 1
        if self.record:
            self.posted.append(Posted(request.path, dict(request.headers), raw, doc, bool(peer)))
        return web.Response(status=200, text="ok")


async def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, required=True, help="where the CA and certificates are written")
    parser.add_argument("--secret-file", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    fake = FakeWebhookReceiver(args.dir, args.secret_file.read_bytes().strip(), port=args.port, record=False)
    await fake.start()
    print(json.dumps({"port": fake.port, "ca": str(fake.ca.cert), "url": fake.url}), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_main())
