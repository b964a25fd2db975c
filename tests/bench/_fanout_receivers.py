"""Fan-out to the receivers: one notification to N Web Push subscriptions, then to N webhook registrations.

Run as ``scripts/bench fanout --providers webpush,webhook`` (``fanout.py`` hands over to this module). The
fake push service (which decrypts every message and checks its VAPID token) and the fake webhook server
(which checks every signature) run as separate processes; this process is the service's delivery path as the
service wires it: audience resolution from the SQLite registry, the durable outbox, the dispatcher's workers,
and the production Web Push and webhook providers. Each provider is measured on its own, one after the
other, in the same run: notifications/s from the first submit to the last outbox row final, and this
process's CPU µs per notification (encryption, signing, HTTP, outbox). Then, for comparison, a plain loop
of the libraries alone (pywebpush + aiohttp; aiohttp with a signed body) to the same fake: ``plain_loop_*``.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import ssl
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from pywebpush import WebPusher

from registrations.model import Audience, Registration
from registrations.sqlite_store import SqliteRegistrationStore
from service.clock import SystemClock
from service.metrics import Metrics
from service.notify.dispatch import Dispatcher
from service.notify.model import Delivery, Notification
from service.notify.stages import TargetStage
from service.outbox import Outbox
from service.providers import vapid, webhook_body
from service.providers.base import Provider
from service.providers.webhook import WebhookConfig, WebhookProvider
from service.providers.webpush import WebPushConfig, WebPushProvider
from tests.bench.fanout import start_fake

RECEIVERS = ("webpush", "webhook")


def seed(store: SqliteRegistrationStore, regs: list[Registration]) -> None:
    for start in range(0, len(regs), 5000):
        store.db.upsert_many(regs[start : start + 5000], time.time())


async def run_one(
    tmp: Path, name: str, provider: Provider, regs: list[Registration], workers: int
) -> dict[str, float]:
    store = SqliteRegistrationStore(tmp / f"{name}.db")
    seed(store, regs)
    outbox = Outbox(tmp / f"{name}.db")
    metrics = Metrics()
    dispatcher = Dispatcher(
        {name: provider}, store, metrics, SystemClock(), queue_size=200_000, outbox=outbox, workers=workers
    )
    dispatcher.start()
    target = TargetStage(store)
    now = time.time()
    nid = f"bench-{name}"
    n = Notification(
        nid=nid,
        alert_id="a",
        episode="e",
        rule="bench",
        state="firing",
        severity="warning",
        title="Fan-out",
        body="One notification to every registration",
        labels={"site": "bench"},
        audience=Audience(tags=("bench",)),
        created=now,
        expires=now + 3600,
    )
    cpu0, t0 = time.process_time(), time.perf_counter()
    count = 0
    async for batch in target.batches(n.audience):
        for reg in batch:
            await dispatcher.submit(Delivery(n, reg))
            count += 1
    while True:  # until every row is final: retries wait outside the queue
        await dispatcher.drain()
        report = outbox.report(nid)
        if report is None or report["pending"] == 0:
            break
        await asyncio.sleep(0.05)
    total = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    report = outbox.report(nid)
    assert report is not None
    await dispatcher.stop()
    await provider.close()
    outbox.close()
    await store.close()
    outcomes = {"/".join(k): int(v) for k, v in sorted(metrics.notifications.values.items())}
    print(
        f"{name}: outcomes {outcomes}; delivered {report['delivered']}, failed {report['failed']}", flush=True
    )
    if report["delivered"] != len(regs):
        raise SystemExit(f"{name}: only {report['delivered']} of {len(regs)} delivered: {report}")
    return {"total_s": total, "cpu_s": cpu, "n": count}


async def plain_loop(
    urls: list[str], body_for: Callable[[int], tuple[bytes, dict[str, str]]], ca: Path, workers: int
) -> dict[str, float]:
    """The libraries alone, for comparison: the same POSTs (bodies made by ``body_for``) from one aiohttp
    session, ``workers`` at a time, no registry, outbox or dispatcher."""
    ctx = ssl.create_default_context(cafile=str(ca))
    connector = aiohttp.TCPConnector(limit=64, ssl=ctx)
    todo = iter(range(len(urls)))
    ok = 0
    async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar()) as http:

        async def worker() -> None:
            nonlocal ok
            for i in todo:
                body, headers = body_for(i)
                async with http.post(urls[i], data=body, headers=headers) as r:
                    await r.read()
                    ok += r.status < 300

        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(workers)))
        total, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    if ok != len(urls):
        raise SystemExit(f"plain loop: only {ok} of {len(urls)} accepted")
    return {"total_s": total, "cpu_s": cpu, "n": len(urls)}


def figures(s: dict[str, float], fake_cpu: float, plain: dict[str, float]) -> dict[str, float]:
    return {
        "notifications_per_s": round(s["n"] / s["total_s"], 1),
        "cpu_us_per_notification": round(s["cpu_s"] / s["n"] * 1e6, 1),
        "total_s": round(s["total_s"], 2),
        "n": int(s["n"]),
        "fake_cpu_share": round(fake_cpu / s["total_s"], 2),
        "plain_loop_per_s": round(plain["n"] / plain["total_s"], 1),
        "plain_loop_cpu_us": round(plain["cpu_s"] / plain["n"] * 1e6, 1),
    }


def main(providers: list[str], n: int, workers: int) -> None:
    unknown = set(providers) - set(RECEIVERS)
    if unknown:
        raise SystemExit(f"--providers: {', '.join(sorted(unknown))} unknown; one of {', '.join(RECEIVERS)}")
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tocsin-fanout-receivers-") as d:
        tmp = Path(d)
        print(f"fan-out of one notification to {n} registrations per provider, {workers} workers", flush=True)
        if "webpush" in providers:
            key_path = tmp / "vapid.pem"
            public = vapid.generate(key_path)
            proc, info = start_fake(
                "tests.fakes.webpush",
                "--dir",
                str(tmp / "webpush"),
                "--bench",
                str(n),
                "--application-server-key",
                public,
            )
            try:
                regs = [
                    Registration(
                        "webpush",
                        f"{info['endpoint_prefix']}{i}",
                        tags=("bench",),
                        p256dh=info["p256dh"],
                        auth=info["auth"],
                    )
                    for i in range(n)
                ]
                config = WebPushConfig(
                    vapid_private_key_path=key_path,
                    subject="mailto:bench@example.com",
                    allowed_hosts=("127.0.0.1",),
                    ca_file=Path(info["ca"]),
                    max_connections=64,
                )
                fake = psutil.Process(proc.pid)
                before = sum(fake.cpu_times()[:2])
                s = asyncio.run(run_one(tmp, "webpush", WebPushProvider(config), regs, workers))
                fake_cpu = sum(fake.cpu_times()[:2]) - before
                signer = vapid.VapidSigner(vapid.load(key_path), "mailto:bench@example.com")
                sub_json = {
                    "endpoint": regs[0].token,
                    "keys": {"p256dh": info["p256dh"], "auth": info["auth"]},
                }

                def encrypted(i: int) -> tuple[bytes, dict[str, str]]:
                    body = WebPusher(sub_json).encode(b'{"title":"Fan-out","body":"plain pywebpush"}')["body"]
                    auth = signer.header(info["origin"])
                    return body, {"Authorization": auth, "TTL": "3600", "Content-Encoding": "aes128gcm"}

                plain = asyncio.run(plain_loop([r.token for r in regs], encrypted, Path(info["ca"]), workers))
                out["webpush"] = figures(s, fake_cpu, plain)
                print(f"webpush: {out['webpush']}", flush=True)
            finally:
                proc.terminate()
                proc.wait(10)
        if "webhook" in providers:
            secret = tmp / "webhook.secret"
            secret.write_text(os.urandom(32).hex())
            proc, info = start_fake(
                "tests.fakes.webhook_receiver", "--dir", str(tmp / "webhook"), "--secret-file", str(secret)
            )
            try:
                regs = [Registration("webhook", f"{info['url']}/hook/{i}", tags=("bench",)) for i in range(n)]
                whc = WebhookConfig(
                    secret_path=secret,
                    allowed_hosts=("127.0.0.1",),
                    ca_file=Path(info["ca"]),
                    max_connections=64,
                )
                fake = psutil.Process(proc.pid)
                before = sum(fake.cpu_times()[:2])
                s = asyncio.run(run_one(tmp, "webhook", WebhookProvider(whc), regs, workers))
                fake_cpu = sum(fake.cpu_times()[:2]) - before
                key = secret.read_bytes().strip()

                def signed(i: int) -> tuple[bytes, dict[str, str]]:
                    raw = b'{"version":"tocsin.webhook/1","title":"plain aiohttp"}'
                    return raw, webhook_body.headers(key, int(time.time()), raw, f"plain-{i}")

                plain = asyncio.run(plain_loop([r.token for r in regs], signed, Path(info["ca"]), workers))
                out["webhook"] = figures(s, fake_cpu, plain)
                print(f"webhook: {out['webhook']}", flush=True)
            finally:
                proc.terminate()
                proc.wait(10)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(out))
