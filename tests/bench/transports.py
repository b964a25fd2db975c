"""HTTP transports side by side: the same APNs requests to the same fake APNs, client by client, in rounds;
and FCM through the provider over HTTP/1.1 keep-alive and over HTTP/2, to the same fake FCM.

Candidates: aioapns 4.0 as tocsin used it (its protocol with HPACK Huffman off: ``tests/bench/_aioapns.py``),
tocsin's own HTTP/2 client on asyncio (``service.providers.http2``) over h2 and over jh2 (h2's fork with HPACK
and frame buffering in Rust), and the native clients pyreqwest (Rust: hyper + rustls) and curl_cffi (libcurl
+ nghttp2). Those not installed are left out (only h2 and aioapns are dependencies: ``uv pip install jh2
pyreqwest curl_cffi`` into the venv to include the others). Every request
carries the headers aioapns sends (path, host, apns-id, topic, expiration, priority, collapse id, push type,
provider token) and the same JSON body; every answer must be 200. The rounds alternate the clients so that
the machine's load (shared by other work) falls on all of them alike. Measured per client: requests/s and
this process's CPU µs per request (all threads: the native clients do their I/O on their own threads), and
the fake's CPU µs per request.

Usage: scripts/bench transports [--requests 20000] [--concurrency 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import json
import ssl
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import psutil
from aioapns import APNs, NotificationRequest
from aioapns.connection import JWTAuthorizationHeaderProvider
from pydantic import SecretStr

from registrations.model import Audience, Registration
from service.notify.model import Delivery, Notification
from service.providers.base import Delivered, Retry
from service.providers.fcm import FcmProvider
from service.providers.http2 import Http2Pool
from service.push_config import FcmConfig
from tests.bench._aioapns import endpoint
from tests.bench.fanout import BUNDLE, PROJECT, start_fake
from tests.fakes.keys import ApnsKey, service_account

BODY = {"aps": {"alert": {"title": "Fan-out", "body": "One notification to every registration"}}}
Runner = Callable[[int, int], Coroutine[Any, Any, None]]


def headers(port: int, auth: str, i: int) -> list[tuple[str, str]]:
    return [
        (":method", "POST"),
        (":scheme", "https"),
        (":path", f"/3/device/{i:064x}"),
        ("host", "localhost"),
        ("apns-id", str(uuid.uuid4())),
        ("apns-topic", BUNDLE),
        ("apns-expiration", str(int(time.time()) + 3600)),
        ("apns-priority", "10"),
        ("apns-collapse-id", "bench"),
        ("apns-push-type", "alert"),
        ("authorization", auth),
    ]


async def _spread(n: int, concurrency: int, one: Callable[[int], Awaitable[None]]) -> None:
    await one(0)  # APNs allows one stream until a first request was answered
    tokens = iter(range(1, n))

    async def worker() -> None:
        for i in tokens:
            await one(i)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def aioapns_runner(key: ApnsKey, port: int, cert: str) -> Runner:
    async def run(n: int, concurrency: int) -> None:
        client = APNs(
            key=key.p8,
            key_id=key.key_id,
            team_id=key.team_id,
            topic=BUNDLE,
            max_connections=4,
            ssl_context=ssl.create_default_context(cafile=cert),
        )
        client.pool.protocol_class = endpoint(f"https://localhost:{port}")

        async def one(i: int) -> None:
            req = NotificationRequest(
                device_token=f"{i:064x}",
                message=BODY,
                notification_id=str(uuid.uuid4()),
                time_to_live=3600,
                priority=10,
                collapse_key="bench",
            )
            result = await client.send_notification(req)
            if not result.is_successful:
                raise SystemExit(f"aioapns: {result.status} {result.description}")

        try:
            await _spread(n, concurrency, one)
        finally:
            client.pool.close()

    return run


def h2_runner(auth: str, port: int, cert: str, state_machine: str = "h2") -> Runner | None:
    if importlib.util.find_spec(state_machine) is None:
        return None

    async def run(n: int, concurrency: int) -> None:
        ctx = ssl.create_default_context(cafile=cert)
        pool = Http2Pool("localhost", port, ctx, max_connections=4, state_machine=state_machine)

        async def one(i: int) -> None:
            body = json.dumps(BODY, ensure_ascii=False).encode()
            hs = [(k.encode(), v.encode()) for k, v in headers(port, auth, i)]
            resp = await pool.request(hs, body)
            if resp.status != 200:
                raise SystemExit(f"h2: {resp.status} {resp.body!r}")

        try:
            await _spread(n, concurrency, one)
        finally:
            pool.close()

    return run


def pyreqwest_runner(auth: str, port: int, cert: str) -> Runner | None:
    try:  # not a dependency: imported by name so that the type check does not need it
        ClientBuilder = importlib.import_module("pyreqwest.client").ClientBuilder
    except ImportError:
        return None

    async def run(n: int, concurrency: int) -> None:
        client = (
            ClientBuilder()
            # rustls refuses the fake's self-signed certificate (a CA used as end entity): the one client
            # here that does not verify it, which only saves it work.
            .danger_accept_invalid_certs(True)
            .http2_prior_knowledge()
            .build()
        )

        async def one(i: int) -> None:
            hs = headers(port, auth, i)
            req = client.post(f"https://localhost:{port}{hs[2][1]}")
            for k, v in hs[4:]:
                req = req.header(k, v)
            body = json.dumps(BODY, ensure_ascii=False).encode()
            resp = await req.body_bytes(body).build().send()
            if resp.status != 200:
                raise SystemExit(f"pyreqwest: {resp.status} {await resp.text()}")

        async with client:
            await _spread(n, concurrency, one)

    return run


def curl_runner(auth: str, port: int, cert: str) -> Runner | None:
    try:
        CurlHttpVersion = importlib.import_module("curl_cffi").CurlHttpVersion
        AsyncSession = importlib.import_module("curl_cffi.requests").AsyncSession
    except ImportError:
        return None

    async def run(n: int, concurrency: int) -> None:
        async with AsyncSession(
            max_clients=concurrency, http_version=CurlHttpVersion.V2TLS, verify=cert
        ) as session:

            async def one(i: int) -> None:
                hs = headers(port, auth, i)
                body = json.dumps(BODY, ensure_ascii=False).encode()
                resp = await session.post(
                    f"https://localhost:{port}{hs[2][1]}", headers=dict(hs[4:]), data=body
                )
                if resp.status_code != 200:
                    raise SystemExit(f"curl_cffi: {resp.status_code} {resp.text}")

            await _spread(n, concurrency, one)

    return run


def fcm_runner(sa: dict[str, str], url: str, ca: str | None) -> Runner:
    """FCM through the production provider: HTTP/1.1 keep-alive (aiohttp, plain HTTP: the fake's HTTP/1.1
    listener has no TLS) or HTTP/2 over TLS (``http2``), by the send URL's scheme."""

    async def run(n: int, concurrency: int) -> None:
        config = FcmConfig(
            credentials=SecretStr(json.dumps(sa)),
            send_url=url,
            ca_file=Path(ca) if ca else None,
            max_connections=128,
        )
        provider = FcmProvider(config)
        now = time.time()
        note = Notification(
            nid="bench",
            alert_id="a",
            episode="e",
            rule="bench",
            state="firing",
            severity="warning",
            title="Fan-out",
            body="One notification to every registration",
            labels={},
            audience=Audience(tags=("bench",)),
            created=now,
            expires=now + 3600,
        )

        async def one(i: int) -> None:
            reg = Registration("fcm", f"fcm-bench-token-{i:012d}")
            for _ in range(5):  # a timeout on an overloaded machine is retried, as the dispatcher would
                outcome = await provider.send(Delivery(note, reg))
                if isinstance(outcome, Delivered):
                    return
                if not isinstance(outcome, Retry):
                    break
            raise SystemExit(f"FCM: {outcome}")

        try:
            await _spread(n, concurrency, one)
        finally:
            await provider.close()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", action="append", help="run only these clients (repeatable)")
    parser.add_argument("--smoke", action="store_true", help="a few hundred requests, one round")
    args = parser.parse_args()
    n, rounds = (300, 1) if args.smoke else (args.requests, args.rounds)
    with tempfile.TemporaryDirectory(prefix="tocsin-transports-") as d:
        tmp = Path(d)
        key = ApnsKey.generate()
        (tmp / "apns.pub").write_text(key.public_pem)
        proc, info = start_fake(
            "tests.fakes.apns",
            "--cert-dir",
            str(tmp / "tls"),
            "--key",
            f"{key.key_id}:{key.team_id}:{tmp / 'apns.pub'}",
        )
        port, cert = int(info["port"]), str(info["cert"])
        sa, pub = service_account(PROJECT, "http://127.0.0.1:0/token")
        (tmp / "sa.pub").write_text(pub)
        fcm_proc, fcm_info = start_fake(
            "tests.fakes.fcm",
            "--cert-dir",
            str(tmp / "tls"),
            "--account",
            f"{tmp / 'sa.pub'}:{sa['client_email']}:{sa['private_key_id']}:{PROJECT}",
        )
        sa["token_uri"] = f"http://127.0.0.1:{fcm_info['port']}/token"
        auth = str(JWTAuthorizationHeaderProvider(key.p8, key.key_id, key.team_id).get_header())  # type: ignore[no-untyped-call]
        candidates: dict[str, Runner | None] = {
            "aioapns": aioapns_runner(key, port, cert),
            "h2": h2_runner(auth, port, cert),
            "jh2": h2_runner(auth, port, cert, "jh2"),
            "pyreqwest": pyreqwest_runner(auth, port, cert),
            "curl_cffi": curl_runner(auth, port, cert),
            "fcm_http1": fcm_runner(sa, f"http://127.0.0.1:{fcm_info['port']}", None),
            "fcm_http2": fcm_runner(sa, f"https://localhost:{fcm_info['h2_port']}", str(fcm_info["cert"])),
        }
        runners = {k: v for k, v in candidates.items() if v is not None and (not args.only or k in args.only)}
        fakes = {"apns": psutil.Process(proc.pid), "fcm": psutil.Process(fcm_proc.pid)}
        results: dict[str, list[tuple[float, float, float]]] = {k: [] for k in runners}
        try:
            print(f"{n} APNs requests per client per round, {args.concurrency} concurrent, {rounds} rounds")
            for r in range(rounds):
                for name, run in runners.items():
                    fake = fakes["fcm" if name.startswith("fcm") else "apns"]
                    f0 = sum(fake.cpu_times()[:2])
                    cpu0, t0 = time.process_time(), time.perf_counter()
                    asyncio.run(run(n, args.concurrency))
                    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
                    fcpu = sum(fake.cpu_times()[:2]) - f0
                    results[name].append((n / wall, cpu / n * 1e6, fcpu / n * 1e6))
                    print(
                        f"round {r + 1} {name:10s} {n / wall:8,.0f} requests/s  {cpu / n * 1e6:6.1f} µs CPU"
                        f" per request  fake {fcpu / n * 1e6:6.1f} µs",
                        flush=True,
                    )
        finally:
            for p in (proc, fcm_proc):
                p.terminate()
                p.wait(10)
    figures: dict[str, float] = {}
    for name, rows in results.items():
        rate = statistics.median(x[0] for x in rows)
        cpu = statistics.median(x[1] for x in rows)
        fake_cpu = statistics.median(x[2] for x in rows)
        print(f"{name:10s} median {rate:8,.0f} requests/s {cpu:6.1f} µs/request, fake {fake_cpu:6.1f} µs")
        figures[f"{name}_requests_per_s"] = round(rate, 1)
        figures[f"{name}_cpu_us_per_request"] = round(cpu, 1)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
