"""Crash benchmark: kill -9 and SIGTERM in the middle of a QoS 1 stream, counting lost and repeated notices.

One Mosquitto (its sessions survive the service), the tocsin service as its own process with a fixed client
id and data directory, a publisher sending numbered doorbell events at QoS 1. In each trial the service is
killed (SIGKILL) or stopped (SIGTERM) half way through the stream, started again, and the trial waits until
every event was notified or a deadline passed. Every notification the log provider printed in either run
is counted by its event number:
  - lost: numbers never notified;
  - duplicates: notifications beyond the first of a number;
  - in_flight (kill -9 only): the deliveries the restarted service found pending in its outbox, an upper
    bound of the sends that may have left before the kill without their answer being recorded.
Target: 0 lost in every trial; kill -9 duplicates <= in flight; SIGTERM 0 duplicates.
Usage: scripts/bench crash [--trials 10] [--events 20000] [--rate 4000] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.support import Mosquitto, free_port

RULES = """rules:
  - id: crash-doorbell
    topic: crash/{device}/doorbell
    when: {event: ring}
    title: Doorbell
    body: "{{ device }} rang ({{ payload.seq }})"
    audience: {tags: [bench]}
"""
RECOVERED = re.compile(r"outbox: (\d+) pending deliveries from before the restart")


class ServiceRun:
    """One run of the service process; its notifications (event numbers) and its log."""

    def __init__(self, workdir: Path, broker_port: int, run: int) -> None:
        self.http_port = free_port()
        config = workdir / "tocsin.yaml"
        config.write_text(
            f"data_dir: {workdir / 'data'}\n"
            "instance: {id: crash-bench}\n"
            f"mqtt: {{port: {broker_port}, embedded_broker: never}}\n"
            f"http: {{port: {self.http_port}}}\n"
            f"rules: {{paths: [{workdir / 'rules'}]}}\n"
            "providers: {log: {format: json}}\n"
            "registrations: {seed: [{provider: log, token: counter, tags: [bench]}]}\n"
            "logging: {level: INFO}\n"
        )
        self.log_path = workdir / f"service-{run}.log"
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service", "run", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=self.log,
            bufsize=1 << 20,
        )
        self.seqs: list[int] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                body = json.loads(line)["body"]
                self.seqs.append(int(body.rsplit("(", 1)[1].rstrip(")")))
            except (ValueError, KeyError, IndexError):
                continue

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                url = f"http://127.0.0.1:{self.http_port}/health/ready"
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"the service did not become ready within {timeout} s; see {self.log_path}")

    def end(self, sig: int) -> None:
        self.proc.send_signal(sig)
        self.proc.wait(30)
        self._reader.join(5)
        self.log.close()

    def recovered(self) -> int:
        found = RECOVERED.search(self.log_path.read_text())
        return int(found.group(1)) if found else 0

    def said_stopped(self) -> bool:
        return any(
            line.rstrip().endswith("tocsin: stopped") for line in self.log_path.read_text().splitlines()
        )


def publish(port: int, count: int, rate: float, at_half: threading.Event) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"crash-pub-{os.getpid()}")
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    start = time.monotonic()
    infos = []
    for seq in range(count):
        if seq == count // 2:
            at_half.set()
        infos.append(
            client.publish(f"crash/d{seq % 20}/doorbell", json.dumps({"event": "ring", "seq": seq}), qos=1)
        )
        ahead = start + (seq + 1) / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    for info in infos:
        info.wait_for_publish(30)  # acknowledged by the broker: from here on the broker owns each event
    client.loop_stop()
    client.disconnect()


def trial(sig: int, events: int, rate: float) -> dict[str, int]:
    with tempfile.TemporaryDirectory(prefix="tocsin-crash-") as tmp:
        work = Path(tmp)
        (work / "rules").mkdir()
        (work / "rules" / "crash.yaml").write_text(RULES)
        broker = Mosquitto(work / "broker")
        broker.start()
        try:
            first = ServiceRun(work, broker.port, 1)
            first.wait_ready()
            at_half = threading.Event()
            pub = threading.Thread(target=publish, args=(broker.port, events, rate, at_half), daemon=True)
            pub.start()
            at_half.wait(60)
            first.end(sig)
            second = ServiceRun(work, broker.port, 2)
            second.wait_ready()
            pub.join(120)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if len(set(first.seqs) | set(second.seqs)) >= events:
                    break
                time.sleep(0.05)
            time.sleep(0.5)  # what a straggling duplicate would need to show (counting, not synchronising)
            second.end(signal.SIGTERM)
            counts = Counter(first.seqs + second.seqs)
            return {
                "lost": sum(1 for s in range(events) if s not in counts),
                "duplicates": sum(c - 1 for c in counts.values()),
                "in_flight": second.recovered(),
                "stopped_said": int(sig != signal.SIGTERM or first.said_stopped()),
            }
        finally:
            broker.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--trials", type=int, default=10, help="trials of each kind (kill -9 and SIGTERM)")
    ap.add_argument("--events", type=int, default=20_000, help="events in each trial's stream")
    ap.add_argument("--rate", type=float, default=4000.0, help="events per second the publisher sends")
    ap.add_argument("--smoke", action="store_true", help="one short trial of each kind (for the suite)")
    args = ap.parse_args()
    if args.smoke:
        args.trials, args.events, args.rate = 1, 600, 1000.0
    totals = {"kill9_lost": 0, "kill9_duplicates": 0, "kill9_in_flight": 0, "sigterm_lost": 0}
    totals["sigterm_duplicates"] = 0
    said = True
    for kind, sig in (("kill9", signal.SIGKILL), ("sigterm", signal.SIGTERM)):
        for i in range(args.trials):
            r = trial(sig, args.events, args.rate)
            print(
                f"{kind} trial {i + 1}/{args.trials}: {args.events} events, lost {r['lost']}, "
                f"duplicates {r['duplicates']}, pending at restart {r['in_flight']}",
                flush=True,
            )
            totals[f"{kind}_lost"] += r["lost"]
            totals[f"{kind}_duplicates"] += r["duplicates"]
            if kind == "kill9":
                totals["kill9_in_flight"] += r["in_flight"]
            said = said and bool(r["stopped_said"])
    if not said:
        print("a SIGTERM run did not log 'stopped'", flush=True)
    print(json.dumps({**totals, "trials": args.trials, "events": args.events}))


if __name__ == "__main__":
    main()
