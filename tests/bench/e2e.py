"""End-to-end benchmark: MQTT publish → real Mosquitto → the tocsin service (its own process) → provider.

The service delivers through its ``log`` provider in JSON mode, which stamps each line with the time it was
handed to the provider; this process reads those lines, matches them to the publish times, and measures:
  - at a fixed 1,000 events/s: p50 and p99 latency from publish to provider;
  - at full speed: sustained events/s with every event matching a rule;
  - the service's CPU seconds per 1,000 events (from /proc, via psutil).
Usage: scripts/bench e2e [--rate-seconds 10] [--burst 50000] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion

from tests.support import Mosquitto, free_port, port_open

RULES = """rules:
  - id: bench-doorbell
    topic: bench/{device}/doorbell
    when: {event: ring}
    title: Doorbell
    body: "{{ device }} rang ({{ payload.seq }})"
    audience: {tags: [bench]}
"""


LOG_PROVIDER = (
    "providers: {log: {format: json}}\n"
    "registrations: {seed: [{provider: log, token: counter, tags: [bench]}]}\n"
)


class Service:
    """The service in its own process; ``delivery`` is its providers and registrations sections (YAML)."""

    def __init__(
        self, workdir: Path, broker_port: int, rules: str = RULES, delivery: str = LOG_PROVIDER
    ) -> None:
        (workdir / "rules").mkdir(parents=True)
        (workdir / "rules" / "bench.yaml").write_text(rules)
        self.http_port = free_port()
        config = workdir / "tocsin.yaml"
        config.write_text(
            f"data_dir: {workdir / 'data'}\n"
            f"mqtt: {{port: {broker_port}, embedded_broker: never}}\n"
            f"http: {{port: {self.http_port}}}\n"
            f"rules: {{paths: [{workdir / 'rules'}]}}\n"
            "logging: {level: WARNING}\n" + delivery
        )
        self.stderr = (workdir / "service.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service", "run", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            bufsize=1 << 20,
        )
        self.lines: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.ps = psutil.Process(self.proc.pid)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_ready(self, timeout: float = 30) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if port_open(self.http_port):
                try:
                    with urllib.request.urlopen(
                        f"http://127.0.0.1:{self.http_port}/health/ready", timeout=1
                    ) as r:
                        if r.status == 200:
                            return
                except OSError:
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"the service did not become ready within {timeout:.0f} s")

    def cpu_seconds(self) -> float:
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)
        self._reader.join(5)


def publisher(port: int) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{os.getpid()}")
    client.max_inflight_messages_set(2000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def wait_for_lines(service: Service, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(service.lines) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"only {len(service.lines)} of {count} notifications arrived within {timeout} s"
            )
        time.sleep(0.01)


def parse(lines: list[bytes]) -> dict[int, float]:
    out = {}
    for raw in lines:
        d = json.loads(raw)
        seq = int(d["body"].rsplit("(", 1)[1].rstrip(")"))
        out[seq] = d["sent_at"]
    return out


def pct(sorted_values: list[float], p: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(p / 100 * len(sorted_values)))]


def run_rate(
    service: Service, client: mqtt.Client, rate: int, seconds: float, start_seq: int
) -> dict[str, Any]:
    n = int(rate * seconds)
    published: dict[int, float] = {}
    before_lines, cpu0 = len(service.lines), service.cpu_seconds()
    t0 = time.perf_counter()
    i = 0
    while i < n:
        # Publish what is due, then sleep a tick: a spinning publisher would steal a core from the service.
        due = min(n, int((time.perf_counter() - t0) * rate) + 1)
        while i < due:
            seq = start_seq + i
            published[seq] = time.time()
            client.publish(f"bench/d{seq % 50}/doorbell", json.dumps({"event": "ring", "seq": seq}), qos=1)
            i += 1
        time.sleep(0.002)
    wait_for_lines(service, before_lines + n, 60)
    cpu = service.cpu_seconds() - cpu0
    sent = parse(service.lines[before_lines:])
    lat = sorted((sent[s] - published[s]) * 1000 for s in published)
    return {
        "events": n,
        "p50_ms": pct(lat, 50),
        "p99_ms": pct(lat, 99),
        "max_ms": lat[-1],
        "cpu_s_per_1k": cpu / n * 1000,
    }


def run_burst(service: Service, client: mqtt.Client, n: int, start_seq: int) -> dict[str, Any]:
    payloads = [
        (f"bench/d{s % 50}/doorbell", json.dumps({"event": "ring", "seq": s}))
        for s in range(start_seq, start_seq + n)
    ]
    before_lines, cpu0 = len(service.lines), service.cpu_seconds()
    t0 = time.time()
    for topic, payload in payloads:
        client.publish(topic, payload, qos=1)
    publish_s = time.time() - t0
    wait_for_lines(service, before_lines + n, 120)
    cpu = service.cpu_seconds() - cpu0
    sent = parse(service.lines[before_lines:])
    first, last = min(sent.values()), max(sent.values())
    return {
        "events": n,
        "publish_s": publish_s,
        "elapsed_s": last - t0,
        "events_per_s": n / (last - t0),
        "steady_events_per_s": (n - 1) / (last - first) if last > first else 0,
        "cpu_s_per_1k": cpu / n * 1000,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--rate-seconds", type=float, default=10.0)
    ap.add_argument("--burst", type=int, default=50_000)
    ap.add_argument("--smoke", action="store_true", help="a few seconds, for the suite: it still runs")
    args = ap.parse_args()
    if args.smoke:
        args.rate, args.rate_seconds, args.burst = 200, 1.0, 2000
    with tempfile.TemporaryDirectory(prefix="tocsin-bench-") as tmp:
        work = Path(tmp)
        broker = Mosquitto(work / "broker")
        broker.start()
        service = Service(work / "service", broker.port)
        try:
            service.wait_ready()
            client = publisher(broker.port)
            print("warming up ...", flush=True)
            run_rate(service, client, 1000, 1.0, 0)
            print(f"fixed rate: {args.rate} events/s for {args.rate_seconds:.0f} s ...", flush=True)
            rate = run_rate(service, client, args.rate, args.rate_seconds, 1_000_000)
            print(
                f"  p50 {rate['p50_ms']:.2f} ms, p99 {rate['p99_ms']:.2f} ms, max {rate['max_ms']:.2f} ms, "
                f"service CPU {rate['cpu_s_per_1k']:.3f} s per 1,000 events",
                flush=True,
            )
            print(f"full speed: {args.burst} events ...", flush=True)
            burst = run_burst(service, client, args.burst, 2_000_000)
            print(
                f"  {burst['events_per_s']:.0f} events/s publish-to-last-delivery "
                f"({burst['steady_events_per_s']:.0f}/s first-to-last delivery; the publisher took "
                f"{burst['publish_s']:.2f} s), service CPU {burst['cpu_s_per_1k']:.3f} s per 1,000 events",
                flush=True,
            )
            client.loop_stop()
            client.disconnect()
        finally:
            service.stop()
            broker.stop()
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
