"""Fan-out benchmark: one notification to N registrations (half APNs, half FCM) through the fakes.

The fake APNs and the fake FCM (OAuth2 + HTTP v1) run as separate processes; this process is the service's
delivery path as the service wires it: audience resolution from the SQLite registry, the durable outbox
(every row committed before its first send and marked when answered), the dispatcher's workers, and the
production APNs and FCM clients (HTTP/2 over TLS to both fakes, ``--fcm-http1`` for FCM over HTTP/1.1
keep-alive). Measured: notifications/s from the first
submit to the last outbox row final, this process's CPU µs per notification, its peak RSS. Then, in the same
run, a plain aioapns loop sends N/2 notifications to the same fake APNs for comparison.

Usage: scripts/bench fanout [--registrations 100000] [--workers 256] [--providers webpush,webhook]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
from aioapns import APNs, NotificationRequest
from pydantic import SecretStr

from registrations.model import Audience, Registration
from registrations.sqlite_store import SqliteRegistrationStore
from service.clock import SystemClock
from service.metrics import Metrics
from service.notify.dispatch import Dispatcher
from service.notify.model import Delivery, Notification
from service.notify.stages import TargetStage
from service.outbox import Outbox
from service.providers.apns import ApnsProvider
from service.providers.apns_token import ProviderTokens
from service.providers.base import Provider
from service.providers.fcm import FcmProvider
from service.push_config import ApnsAppConfig, ApnsConfig, FcmConfig
from tests.bench._aioapns import endpoint
from tests.fakes.keys import ApnsKey, service_account

BUNDLE = "com.example.bench"
ONLY: str | None = None
PROJECT = "tocsin-bench"


def start_fake(module: str, *args: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args], stdout=subprocess.PIPE, text=True, bufsize=1
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"{module} did not start")
    return proc, json.loads(line)


def seed(store: SqliteRegistrationStore, n: int, only: str | None = None) -> None:
    """Registrations through the store API (setup, not measured): half APNs, half FCM, all tagged 'bench'.
    Going through ``upsert_many`` keeps the seed right whatever columns the table grows."""
    regs = []
    for i in range(n):
        if (only or ("apns" if i % 2 else "fcm")) == "apns":
            regs.append(Registration("apns", f"{i:064x}", app=BUNDLE, tags=("bench",)))
        else:
            regs.append(Registration("fcm", f"fcm-bench-token-{i:012d}", tags=("bench",)))
    for start in range(0, n, 5000):
        store.db.upsert_many(regs[start : start + 5000], time.time())


async def service_run(
    tmp: Path, n: int, workers: int, key: ApnsKey, apns_port: int, cert: str, sa: dict[str, str], fcm_url: str
) -> dict[str, float]:
    store = SqliteRegistrationStore(tmp / "bench.db")
    seed(store, n, ONLY)
    store.db._version += 1
    outbox = Outbox(tmp / "bench.db")
    apns = ApnsProvider(
        ApnsConfig(
            apps={
                BUNDLE: ApnsAppConfig(team_id=key.team_id, key_id=key.key_id, private_key=SecretStr(key.p8))
            },
            production_url=f"https://localhost:{apns_port}",
            ca_file=Path(cert),
            max_connections=4,
        )
    )
    fcm = FcmProvider(
        FcmConfig(
            credentials=SecretStr(json.dumps(sa)),
            send_url=fcm_url,
            ca_file=Path(cert) if fcm_url.startswith("https") else None,
            max_connections=128,
        )
    )
    providers: dict[str, Provider] = {"apns": apns, "fcm": fcm}
    metrics = Metrics()
    dispatcher = Dispatcher(
        providers, store, metrics, SystemClock(), queue_size=200_000, outbox=outbox, workers=workers
    )
    dispatcher.start()
    target = TargetStage(store)
    now = time.time()
    n_ = Notification(
        nid="bench-fanout",
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
    cpu0, t0 = time.process_time(), time.perf_counter()
    count = 0
    async for batch in target.batches(n_.audience):
        for reg in batch:
            await dispatcher.submit(Delivery(n_, reg))
            count += 1
    while True:  # until every row is final: retries wait outside the queue
        await dispatcher.drain()
        report = outbox.report("bench-fanout")
        if report is None or report["pending"] == 0:
            break
        await asyncio.sleep(0.1)
    total = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    report = outbox.report("bench-fanout")
    assert report is not None
    await dispatcher.stop()
    await apns.close()
    await fcm.close()
    outbox.close()
    await store.close()
    outcomes = {"/".join(k): int(v) for k, v in sorted(metrics.notifications.values.items())}
    print(f"service: outcomes {outcomes}", flush=True)
    print(
        f"service: {count} deliveries, report: delivered {report['delivered']}, pending {report['pending']}, "
        f"failed {report['failed']}",
        flush=True,
    )
    if report["delivered"] != n:
        raise SystemExit(f"only {report['delivered']} of {n} delivered: {report}")
    return {"total_s": total, "cpu_s": cpu, "n": count}


async def worker_once(client: APNs, tokens: Iterator[int]) -> None:
    i = next(tokens)
    req = NotificationRequest(
        device_token=f"{i:064x}",
        message={"aps": {"alert": {"title": "Fan-out", "body": "plain aioapns"}}},
        collapse_key="bench",
    )
    result = await client.send_notification(req)
    if not result.is_successful:
        raise SystemExit(f"plain aioapns: the first request was refused: {result.description}")


async def aioapns_run(n: int, concurrency: int, key: ApnsKey, apns_port: int, cert: str) -> dict[str, float]:
    import ssl

    client = APNs(
        key=key.p8,
        key_id=key.key_id,
        team_id=key.team_id,
        topic=BUNDLE,
        max_connections=4,
        ssl_context=ssl.create_default_context(cafile=cert),
    )
    # One provider token for all its connections: the fake, as Apple, refuses a key's second token change
    # within 20 minutes (aioapns alone signs one per connection).
    shared = ProviderTokens().for_key(key.team_id, key.key_id, key.p8)
    client.pool.protocol_class = endpoint(f"https://localhost:{apns_port}", shared)
    tokens = iter(range(n))
    ok = 0

    async def worker() -> None:
        nonlocal ok
        for i in tokens:
            req = NotificationRequest(
                device_token=f"{i:064x}",
                message={"aps": {"alert": {"title": "Fan-out", "body": "plain aioapns"}}},
                collapse_key="bench",
            )
            result = await client.send_notification(req)
            ok += result.is_successful

    cpu0, t0 = time.process_time(), time.perf_counter()
    await worker_once(client, tokens)  # APNs allows one stream until a first request was answered
    ok += 1
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    total = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    client.pool.close()
    if ok != n:
        raise SystemExit(f"plain aioapns: only {ok} of {n} accepted")
    return {"total_s": total, "cpu_s": cpu, "n": n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--registrations", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=256)
    parser.add_argument(
        "--only", choices=["apns", "fcm"], help="all registrations on one platform (profiling)"
    )
    parser.add_argument("--smoke", action="store_true", help="a few hundred registrations (the test suite)")
    parser.add_argument(
        "--providers", help="the receivers instead: webpush,webhook (see tests/bench/_fanout_receivers.py)"
    )
    parser.add_argument(
        "--fcm-http1", action="store_true", help="FCM over HTTP/1.1 keep-alive (default: HTTP/2 over TLS)"
    )
    args = parser.parse_args()
    n = 400 if args.smoke else args.registrations
    if args.providers:
        from tests.bench import _fanout_receivers as fanout_receivers

        fanout_receivers.main(
            args.providers.split(","), 200 if args.smoke else args.registrations, args.workers
        )
        return
    global ONLY
    ONLY = args.only
    with tempfile.TemporaryDirectory(prefix="tocsin-fanout-") as d:
        tmp = Path(d)
        key = ApnsKey.generate()
        (tmp / "apns.pub").write_text(key.public_pem)
        apns_proc, apns_info = start_fake(
            "tests.fakes.apns",
            "--cert-dir",
            str(tmp / "tls"),
            "--key",
            f"{key.key_id}:{key.team_id}:{tmp / 'apns.pub'}",
        )
        sa, pub = service_account(PROJECT, "http://127.0.0.1:0/token")
        (tmp / "sa.pub").write_text(pub)
        fcm_proc, fcm_info = start_fake(
            "tests.fakes.fcm",
            "--cert-dir",
            str(tmp / "tls"),  # the APNs fake's certificate: one CA file for both
            "--account",
            f"{tmp / 'sa.pub'}:{sa['client_email']}:{sa['private_key_id']}:{PROJECT}",
        )
        sa["token_uri"] = f"http://127.0.0.1:{fcm_info['port']}/token"
        fcm_url = (
            f"http://127.0.0.1:{fcm_info['port']}"
            if args.fcm_http1
            else f"https://localhost:{fcm_info['h2_port']}"
        )
        try:
            print(
                f"fan-out of one notification to {n} registrations ({n // 2} APNs, {n - n // 2} FCM), "
                f"{args.workers} workers; fakes in their own processes",
                flush=True,
            )
            fakes = [psutil.Process(apns_proc.pid), psutil.Process(fcm_proc.pid)]
            before = [sum(f.cpu_times()[:2]) for f in fakes]
            s = asyncio.run(
                service_run(tmp, n, args.workers, key, apns_info["port"], apns_info["cert"], sa, fcm_url)
            )
            used = [sum(f.cpu_times()[:2]) - b for f, b in zip(fakes, before, strict=True)]
            print(
                f"fakes: APNs {used[0]:.1f} s CPU ({used[0] / s['total_s']:.0%} of a core), "
                f"FCM {used[1]:.1f} s CPU ({used[1] / s['total_s']:.0%} of a core) during the service run",
                flush=True,
            )
            peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            rate = s["n"] / s["total_s"]
            cpu_us = s["cpu_s"] / s["n"] * 1e6
            print(
                f"service: {rate:,.0f} notifications/s, {s['total_s']:.1f} s total, "
                f"{cpu_us:.0f} µs CPU per notification, peak RSS {peak_mb:.0f} MB",
                flush=True,
            )
            before_apns = sum(fakes[0].cpu_times()[:2])
            a = asyncio.run(aioapns_run(n // 2, args.workers, key, apns_info["port"], apns_info["cert"]))
            fake_apns = sum(fakes[0].cpu_times()[:2]) - before_apns
            print(f"fake APNs during the plain loop: {fake_apns / a['total_s']:.0%} of a core", flush=True)
            a_rate = a["n"] / a["total_s"]
            a_cpu = a["cpu_s"] / a["n"] * 1e6
            print(
                f"plain aioapns loop: {a['n']} notifications, {a_rate:,.0f} notifications/s, "
                f"{a_cpu:.0f} µs CPU per notification",
                flush=True,
            )
        finally:
            apns_proc.terminate()
            fcm_proc.terminate()
            apns_proc.wait(10)
            fcm_proc.wait(10)
    print(
        json.dumps(
            {
                "notifications_per_s": round(rate, 1),
                "cpu_us_per_notification": round(cpu_us, 1),
                "peak_rss_mb": round(peak_mb, 1),
                "total_s": round(s["total_s"], 2),
                "aioapns_notifications_per_s": round(a_rate, 1),
                "aioapns_cpu_us_per_notification": round(a_cpu, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
