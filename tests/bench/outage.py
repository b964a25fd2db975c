"""Provider outage benchmark: APNs and FCM answer 503 for a full minute; nothing may be lost or doubled.

One notification to N registrations (half APNs, half FCM) through the dispatcher, the outbox and the real
providers at the in-process fakes, with the default retry settings (backoff from 0.5 s, capped at 60 s, full
jitter). Prints how many were delivered, lost and sent twice, and how long after the outage the last one
arrived. Usage: scripts/bench outage [--outage-s 60] [--registrations 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

from registrations.model import Registration
from registrations.sqlite_store import SqliteRegistrationStore
from service.clock import SystemClock
from service.metrics import Metrics
from service.notify.dispatch import Dispatcher
from service.notify.model import Delivery
from service.outbox import Outbox
from service.providers.apns import ApnsProvider
from service.providers.base import Provider
from service.providers.fcm import FcmProvider
from service.push_config import DeliveryConfig
from tests.fakes.apns import FakeAPNs
from tests.fakes.fcm import FakeFCM
from tests.fakes.keys import apns_token
from tests.push_support import (
    BUNDLE,
    apns_config,
    fcm_account,
    fcm_config,
    notification,
    token_app,
    trusted_key,
)


async def run(tmp: Path, outage_s: float, n: int) -> dict[str, float]:
    apns = await FakeAPNs(tmp / "apns").start()
    fcm = await FakeFCM().start()
    store = SqliteRegistrationStore(tmp / "o.db")
    outbox = Outbox(tmp / "o.db")
    providers: dict[str, Provider] = {
        "apns": ApnsProvider(apns_config(apns, {BUNDLE: token_app(trusted_key(apns))})),
        "fcm": FcmProvider(fcm_config(fcm, fcm_account(fcm))),
    }
    d = DeliveryConfig()
    dispatcher = Dispatcher(
        providers,
        store,
        Metrics(),
        SystemClock(),
        outbox=outbox,
        max_attempts=30,
        retry_base_s=d.retry_base_s,
        retry_cap_s=d.retry_cap_s,
        workers=d.workers,
    )
    dispatcher.start()
    regs = [Registration("apns", apns_token(), app=BUNDLE) for _ in range(n // 2)]
    regs += [Registration("fcm", f"fcm-outage-{i:06d}-" + "x" * 20) for i in range(n - n // 2)]
    regs = [await store.upsert(r, time.time()) for r in regs]
    apns.outage = (503, "ServiceUnavailable")
    fcm.outage = ("UNAVAILABLE", None)
    print(f"{n} registrations; both providers answer 503 for {outage_s:.0f} s", flush=True)
    n_ = notification("outage", ttl=3600)
    start = time.monotonic()
    for r in regs:
        await dispatcher.submit(Delivery(n_, r))
    await asyncio.sleep(outage_s)  # the outage itself
    apns.outage = None
    fcm.outage = None
    ended = time.monotonic()
    print(
        f"outage over after {ended - start:.0f} s; {apns.requests + len(fcm.answers)} requests so far",
        flush=True,
    )
    while True:
        report = outbox.report("outage")
        assert report is not None
        if report["pending"] == 0:
            break
        await asyncio.sleep(0.2)
    drained = time.monotonic() - ended
    got = Counter(r.token for r in apns.received) + Counter(s.token for s in fcm.sent)
    lost = sum(1 for r in regs if got[r.token] == 0)
    twice = sum(1 for c in got.values() if c > 1)
    print(
        f"delivered {report['delivered']}, failed {report['failed']}, lost {lost}, sent twice {twice}; "
        f"the last one {drained:.1f} s after the outage",
        flush=True,
    )
    await dispatcher.stop()
    for p in providers.values():
        await p.close()
    outbox.close()
    await store.close()
    await apns.stop()
    await fcm.stop()
    return {
        "outage_s": outage_s,
        "delivered": report["delivered"],
        "lost": lost,
        "duplicates": twice,
        "drain_after_outage_s": round(drained, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--outage-s", type=float, default=60.0)
    parser.add_argument("--registrations", type=int, default=1000)
    parser.add_argument("--smoke", action="store_true", help="a few seconds, for the suite: it still runs")
    args = parser.parse_args()
    if args.smoke:
        args.outage_s, args.registrations = 2.0, 50
    with tempfile.TemporaryDirectory(prefix="tocsin-outage-") as d:
        result = asyncio.run(run(Path(d), args.outage_s, args.registrations))
    print(json.dumps(result))
    if result["lost"] or result["duplicates"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
