"""Hostile-input benchmark (issue 14): a flood of MQTT messages, some of them malformed or hostile, from many
devices, through a real Mosquitto into the tocsin service (its own process).

Every message goes to ``h/d<N>/event`` for one of ``--devices`` devices, so an absence rule ("not seen for
1 h") tracks every device while an event rule notifies each good message through the ``log`` provider.
Of the messages, ``--hostile`` (10 %) are:
  - nested deeper than the payload limit, over the size limit, or not UTF-8: malformed, must be counted
    (``tocsin_payloads_malformed_total``) and must not disturb anything else;
  - valid, with Jinja syntax in their fields: good events, whose text must arrive literally (not rendered).
Measured: good events published, notifications the provider got (each sequence number once), malformed
payloads the service counted, the service's peak RSS (VmHWM), and the longest stall of its event loop
(``tocsin_event_loop_stall_max_seconds``, service/loopwatch.py). After the flood the service is restarted on
the same data, and the restart's time to ready and RSS are printed too.
Targets: notified == good_events, peak RSS <= 300 MB, longest stall <= 50 ms.
Usage: scripts/bench hostile [--messages 1000000] [--devices 100000] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from service.sources.payload import MAX_DEPTH, MAX_PAYLOAD_BYTES
from tests.support import Mosquitto, free_port, port_open

RULES = """rules:
  - id: hostile-bell
    topic: h/{device}/event
    when: {event: ring}
    title: "Ring {{ device }}"
    body: "{{ payload.note }} ({{ payload.seq }})"
    audience: {tags: [bench]}
  - id: hostile-gone
    topic: h/{device}/event
    absent: {for: 1h}
    title: "{{ device }} is silent"
    audience: {tags: [bench]}
"""
TEMPLATE_NOTE = "{{ 7 * 7 }}{% for i in range(10**9) %}x{% endfor %}{{ cycler.__init__.__globals__ }}"


class Service:
    def __init__(self, workdir: Path, broker_port: int, devices: int) -> None:
        (workdir / "rules").mkdir(parents=True, exist_ok=True)
        (workdir / "rules" / "bench.yaml").write_text(RULES)
        self.http_port = free_port()
        self.config = workdir / "tocsin.yaml"
        self.config.write_text(
            f"data_dir: {workdir / 'data'}\n"
            f"mqtt: {{port: {broker_port}, embedded_broker: never}}\n"
            f"http: {{port: {self.http_port}}}\n"
            f"rules: {{paths: [{workdir / 'rules'}], max_tracked_per_rule: {max(devices, 1000)}}}\n"
            "providers: {log: {format: json}}\n"
            "registrations: {seed: [{provider: log, token: counter, tags: [bench]}]}\n"
            "logging: {level: WARNING}\n"
        )
        self.workdir = workdir
        self.lines: list[bytes] = []
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Starts the process; returns the seconds until it was ready."""
        t0 = time.monotonic()
        stderr = (self.workdir / "service.log").open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service", "run", "--config", str(self.config)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            bufsize=1 << 20,
        )
        self.lines = []
        self._reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if port_open(self.http_port):
                try:
                    with urllib.request.urlopen(self.url("/health/ready"), timeout=1) as r:
                        if r.status == 200:
                            return time.monotonic() - t0
                except OSError:
                    pass
            time.sleep(0.05)
        raise RuntimeError("the service did not become ready within 120 s")

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(self.url("/metrics"), timeout=10) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def peak_rss_mb(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM in /proc")

    def rss_mb(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS in /proc")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(60)
            self._reader.join(10)


def messages(count: int, devices: int, hostile: float, seed: int = 14) -> tuple[list[int], dict[str, int]]:
    """The plan: per message a kind (0 good, 1 template, 2 nested, 3 huge, 4 not UTF-8), shuffled."""
    rng = random.Random(seed)
    bad = int(count * hostile)
    huge = max(1, bad // 100)  # each over 256 KB: a few go a long way through the broker
    nested = (bad - huge) // 3
    utf8 = (bad - huge) // 3
    template = bad - huge - nested - utf8
    kinds = [1] * template + [2] * nested + [3] * huge + [4] * utf8
    kinds += [0] * (count - len(kinds))
    rng.shuffle(kinds)
    return kinds, {"template": template, "nested": nested, "huge": huge, "not_utf8": utf8}


def payload(kind: int, seq: int, huge: bytes) -> bytes:
    if kind == 0:
        return b'{"event":"ring","seq":%d,"note":"ok"}' % seq
    if kind == 1:
        return json.dumps({"event": "ring", "seq": seq, "note": TEMPLATE_NOTE}).encode()
    if kind == 2:
        depth = MAX_DEPTH * 3
        return b'{"event":"ring","seq":%d,"x":' % seq + b"[" * depth + b"]" * depth + b"}"
    if kind == 3:
        return huge
    return b'{"event":"ring","seq":%d,"note":"\xff\xfe\xc0"}' % seq


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--devices", type=int, default=100_000)
    ap.add_argument("--hostile", type=float, default=0.10, help="share of malformed or hostile messages")
    ap.add_argument("--backlog", type=int, default=20_000, help="messages in flight at most")
    ap.add_argument("--smoke", action="store_true", help="a few seconds, for the suite: it still runs")
    ap.add_argument("--keep-log", type=Path, help="copy the service's stderr here at the end")
    args = ap.parse_args()
    if args.smoke:
        args.messages, args.devices = 3000, 1000
    kinds, plan = messages(args.messages, args.devices, args.hostile)
    good = sum(1 for k in kinds if k in (0, 1))
    malformed = plan["nested"] + plan["huge"] + plan["not_utf8"]
    huge = b'{"event":"ring","pad":"' + b"a" * (MAX_PAYLOAD_BYTES + 1024) + b'"}'
    print(f"{args.messages} messages from {args.devices} devices: {good} good, plan {plan}", flush=True)
    with tempfile.TemporaryDirectory(prefix="tocsin-bench-hostile-") as tmp:
        work = Path(tmp)
        broker = Mosquitto(work / "broker")
        broker.start()
        service = Service(work / "service", broker.port, args.devices)
        try:
            first_s = service.start()
            at_start = service.metrics().get("tocsin_event_loop_stall_max_seconds", 0)
            print(f"  ready in {first_s:.2f} s (longest loop stall while starting: {at_start * 1000:.0f} ms)")
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-hostile-{os.getpid()}")
            client.max_inflight_messages_set(1000)
            client.max_queued_messages_set(0)
            client.connect("127.0.0.1", broker.port)
            client.loop_start()
            t0 = time.monotonic()
            sent_good = 0
            for seq, kind in enumerate(kinds):
                if kind in (0, 1):
                    sent_good += 1
                # Paced by what arrived: the broker queues at most 100,000 messages for the service.
                while sent_good - len(service.lines) > args.backlog:
                    time.sleep(0.005)
                info = client.publish(f"h/d{seq % args.devices}/event", payload(kind, seq, huge), qos=1)
                if kind == 3:
                    info.wait_for_publish(30)
                if seq and seq % 100_000 == 0:
                    print(f"  {seq} published, {len(service.lines)} notified", flush=True)
            deadline = time.monotonic() + 300
            while len(service.lines) < good and time.monotonic() < deadline:
                time.sleep(0.05)
            elapsed = time.monotonic() - t0
            m = service.metrics()
            while m.get('tocsin_payloads_malformed_total{source="mqtt"}', 0) < malformed:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.1)
                m = service.metrics()
            peak = service.peak_rss_mb()
            seqs: set[int] = set()
            literal = 0
            for raw in service.lines:
                body = json.loads(raw)["body"]
                seqs.add(int(body.rsplit("(", 1)[1].rstrip(")")))
                literal += body.startswith(TEMPLATE_NOTE)
            tracked = m.get("tocsin_tracked_alerts", 0)
            print(
                f"  {elapsed:.1f} s, {args.messages / elapsed:.0f} messages/s; {len(seqs)} notified "
                f"({literal} with the template text literal, of {plan['template']}); "
                f"{tracked:.0f} devices tracked; stalls over 50 ms: "
                f"{m.get('tocsin_event_loop_stalls_total', 0):.0f}",
                flush=True,
            )
            client.loop_stop()
            client.disconnect()
            service.stop()
            ready_s = service.start()
            restarted = service.metrics()
            print(
                f"  restart with {restarted.get('tocsin_tracked_alerts', 0):.0f} tracked devices: ready in "
                f"{ready_s:.2f} s, RSS {service.rss_mb():.0f} MB (peak {service.peak_rss_mb():.0f} MB)",
                flush=True,
            )
        finally:
            service.stop()
            broker.stop()
            if args.keep_log is not None:
                args.keep_log.write_bytes((work / "service" / "service.log").read_bytes())
        if literal != plan["template"]:
            print(
                f"  template text arrived rendered or changed in {plan['template'] - literal} notifications"
            )
        print(
            json.dumps(
                {
                    "good_events": good,
                    "notified": len(seqs) if literal == plan["template"] else -len(seqs),
                    "malformed_counted": int(m.get('tocsin_payloads_malformed_total{source="mqtt"}', 0)),
                    "malformed_sent": malformed,
                    "peak_rss_mb": round(peak, 1),
                    "loop_stall_max_ms": round(m.get("tocsin_event_loop_stall_max_seconds", 0) * 1000, 1),
                    "loop_stall_busy_max_ms": round(
                        m.get("tocsin_event_loop_stall_busy_max_seconds", 0) * 1000, 1
                    ),
                    "gc_pause_max_ms": round(m.get("tocsin_gc_pause_max_seconds", 0) * 1000, 1),
                    "restart_ready_s": round(ready_s, 2),
                }
            )
        )


if __name__ == "__main__":
    main()
