"""End-to-end benchmark to the providers: MQTT publish → real Mosquitto → the tocsin service (its own process)
→ the fake APNs (HTTP/2, TLS, provider tokens checked) and the fake FCM (OAuth2 + HTTP v1 over HTTP/2 and
TLS), each its own process.

Two rules, one per platform: ``bench/<device>/apns`` events notify the one APNs registration, ``.../fcm``
events the one FCM registration, alternately, so every event is exactly one push and half go to each fake.
The fakes print the time of every accepted push (``--echo``); this process matches them to the publish times
and measures, as ``e2e`` does:
  - at a fixed 1,000 events/s: p50 and p99 latency from publish to the fake accepting the push;
  - at full speed: sustained events/s, publish of the first to the last push accepted;
  - the service's CPU seconds per 1,000 events (from /proc, via psutil).
Usage: scripts/bench e2e_apns [--rate-seconds 10] [--burst 50000] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

import yaml

from tests.bench.e2e import Service, pct, publisher
from tests.fakes.keys import ApnsKey, service_account, write_service_account
from tests.support import Mosquitto

BUNDLE = "com.example.bench"
PROJECT = "tocsin-bench"
APNS_TOKEN = "ab" * 32
FCM_TOKEN = "fcm-bench-token-000000000001"
RULES = """rules:
  - id: bench-apns
    topic: bench/{device}/apns
    when: {event: ring}
    title: Doorbell
    body: "{{ device }} rang ({{ payload.seq }})"
    audience: {tags: [bench-apns]}
  - id: bench-fcm
    topic: bench/{device}/fcm
    when: {event: ring}
    title: Doorbell
    body: "{{ device }} rang ({{ payload.seq }})"
    audience: {tags: [bench-fcm]}
"""


class Arrivals:
    """Push times by event number, from the fakes' echo lines (``TIME d7 rang (123)``)."""

    def __init__(self) -> None:
        self.times: dict[int, float] = {}
        self.lock = threading.Lock()

    def follow(self, stream: IO[str]) -> None:
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            stamp, _, body = line.partition(" ")
            if not body.rstrip().endswith(")"):
                continue  # the fakes' periodic counts
            seq = int(body.rsplit("(", 1)[1].rstrip().rstrip(")"))
            with self.lock:
                self.times[seq] = float(stamp)

    def wait(self, seqs: range, timeout: float) -> dict[int, float]:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                got = {s: self.times[s] for s in seqs if s in self.times}
            if len(got) == len(seqs):
                return got
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(got)} of {len(seqs)} pushes reached the fakes in {timeout} s")
            time.sleep(0.05)


def start_fake(module: str, *args: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args, "--echo"], stdout=subprocess.PIPE, text=True, bufsize=1
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"{module} did not start")
    return proc, json.loads(line)


def delivery(work: Path, apns: dict[str, Any], key: ApnsKey, sa: Path, fcm_url: str) -> str:
    """The service's providers (pointed at the fakes) and its two registrations, as YAML."""
    (work / "AuthKey.p8").write_text(key.p8)
    doc = {
        "providers": {
            "apns": {
                "apps": {
                    BUNDLE: {
                        "team_id": key.team_id,
                        "key_id": key.key_id,
                        "private_key_path": str(work / "AuthKey.p8"),
                    }
                },
                "production_url": f"https://localhost:{apns['port']}",
                "ca_file": apns["cert"],
            },
            "fcm": {"credentials_path": str(sa), "send_url": fcm_url, "ca_file": apns["cert"]},
        },
        "registrations": {
            "seed": [
                {"provider": "apns", "token": APNS_TOKEN, "tags": ["bench-apns"]},  # the one app
                {"provider": "fcm", "token": FCM_TOKEN, "tags": ["bench-fcm"]},
            ]
        },
    }
    return yaml.safe_dump(doc)


def topic(seq: int) -> str:
    return f"bench/d{seq % 50}/{'apns' if seq % 2 else 'fcm'}"


def run_rate(
    service: Service, arrivals: Arrivals, client: Any, rate: int, seconds: float, start: int
) -> dict[str, float]:
    n = int(rate * seconds)
    published: dict[int, float] = {}
    cpu0 = service.cpu_seconds()
    t0 = time.perf_counter()
    i = 0
    while i < n:
        due = min(n, int((time.perf_counter() - t0) * rate) + 1)
        while i < due:
            seq = start + i
            published[seq] = time.time()
            client.publish(topic(seq), json.dumps({"event": "ring", "seq": seq}), qos=1)
            i += 1
        time.sleep(0.002)
    got = arrivals.wait(range(start, start + n), 60)
    cpu = service.cpu_seconds() - cpu0
    lat = sorted((got[s] - published[s]) * 1000 for s in published)
    return {"p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "max_ms": lat[-1], "cpu_s_per_1k": cpu / n * 1000}


def run_burst(service: Service, arrivals: Arrivals, client: Any, n: int, start: int) -> dict[str, float]:
    payloads = [(topic(s), json.dumps({"event": "ring", "seq": s})) for s in range(start, start + n)]
    cpu0 = service.cpu_seconds()
    t0 = time.time()
    for t, payload in payloads:
        client.publish(t, payload, qos=1)
    publish_s = time.time() - t0
    got = arrivals.wait(range(start, start + n), 120 + n / 50)  # generous: a loaded machine is slow
    cpu = service.cpu_seconds() - cpu0
    first, last = min(got.values()), max(got.values())
    return {
        "publish_s": publish_s,
        "events_per_s": n / (last - t0),
        "steady_events_per_s": (n - 1) / (last - first) if last > first else 0,
        "cpu_s_per_1k": cpu / n * 1000,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--rate-seconds", type=float, default=10.0)
    ap.add_argument("--burst", type=int, default=50_000)
    ap.add_argument("--smoke", action="store_true", help="a few seconds, for the suite: it still runs")
    args = ap.parse_args()
    if args.smoke:
        args.rate, args.rate_seconds, args.burst = 200, 1.0, 1000
    with tempfile.TemporaryDirectory(prefix="tocsin-bench-apns-") as tmp:
        work = Path(tmp)
        key = ApnsKey.generate()
        (work / "apns.pub").write_text(key.public_pem)
        apns_proc, apns_info = start_fake(
            "tests.fakes.apns",
            "--cert-dir",
            str(work / "tls"),
            "--key",
            f"{key.key_id}:{key.team_id}:{work / 'apns.pub'}",
        )
        info, pub = service_account(PROJECT, "http://127.0.0.1:0/token")
        (work / "sa.pub").write_text(pub)
        fcm_proc, fcm_info = start_fake(
            "tests.fakes.fcm",
            "--cert-dir",
            str(work / "tls"),  # the APNs fake's certificate: one CA file for both
            "--account",
            f"{work / 'sa.pub'}:{info['client_email']}:{info['private_key_id']}:{PROJECT}",
        )
        info["token_uri"] = f"http://127.0.0.1:{fcm_info['port']}/token"
        fcm_url = f"https://localhost:{fcm_info['h2_port']}"  # HTTP/2 over TLS, as fcm.googleapis.com
        sa = write_service_account(work / "sa.json", info)
        arrivals = Arrivals()
        for proc in (apns_proc, fcm_proc):
            assert proc.stdout is not None
            arrivals.follow(proc.stdout)
        broker = Mosquitto(work / "broker")
        broker.start()
        service: Service | None = None
        try:
            service = Service(
                work / "service", broker.port, RULES, delivery(work, apns_info, key, sa, fcm_url)
            )
            service.wait_ready(120)  # a loaded machine starts slowly
            client = publisher(broker.port)
            print("warming up ...", flush=True)
            run_rate(service, arrivals, client, 1000, 0.2 if args.smoke else 1.0, 0)
            print(f"fixed rate: {args.rate} events/s for {args.rate_seconds:.0f} s ...", flush=True)
            rate = run_rate(service, arrivals, client, args.rate, args.rate_seconds, 1_000_000)
            print(
                f"  p50 {rate['p50_ms']:.2f} ms, p99 {rate['p99_ms']:.2f} ms, max {rate['max_ms']:.2f} ms, "
                f"service CPU {rate['cpu_s_per_1k']:.3f} s per 1,000 events",
                flush=True,
            )
            print(f"full speed: {args.burst} events, one push each (half APNs, half FCM) ...", flush=True)
            burst = run_burst(service, arrivals, client, args.burst, 2_000_000)
            print(
                f"  {burst['events_per_s']:.0f} events/s publish-to-last-push "
                f"({burst['steady_events_per_s']:.0f}/s first-to-last push; the publisher took "
                f"{burst['publish_s']:.2f} s), service CPU {burst['cpu_s_per_1k']:.3f} s per 1,000 events",
                flush=True,
            )
            client.loop_stop()
            client.disconnect()
        except Exception:
            log = work / "service" / "service.log"
            if log.exists():
                print(log.read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            if service is not None:
                service.stop()
            broker.stop()
            for proc in (apns_proc, fcm_proc):
                proc.terminate()
                proc.wait(10)
        print(
            json.dumps(
                {
                    "qos": 1,
                    "rate_1k_p50_ms": round(rate["p50_ms"], 3),
                    "rate_1k_p99_ms": round(rate["p99_ms"], 3),
                    "max_events_per_s": round(burst["events_per_s"]),
                    "cpu_s_per_1k_events": round(burst["cpu_s_per_1k"], 4),
                }
            )
        )


if __name__ == "__main__":
    main()
