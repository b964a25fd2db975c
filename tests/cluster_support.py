"""Shared by the failover tests and benchmark: tocsin services as separate processes, a device simulator that
numbers its events, and the bookkeeping of what reached the provider (each service's log provider, JSON)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from rules.event import short_hash
from tests.support import free_port

ROOT = Path(__file__).resolve().parents[1]
TOPIC = "home/sim/doorbell"


def episode_of(n: int) -> str:
    """The event id every instance computes for the simulator's event number ``n``."""
    return short_hash(TOPIC, "id", str(n))


class ServiceProcess:
    def __init__(
        self,
        workdir: Path,
        broker_port: int,
        node_id: str,
        priority: int,
        cluster: str = "t",
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.id, self.workdir = node_id, workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.http_port = free_port()
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "TOCSIN_DATA_DIR": str(workdir / "data"),
            "TOCSIN_INSTANCE__ID": node_id,
            "TOCSIN_CLUSTER__NAME": cluster,
            "TOCSIN_CLUSTER__PRIORITY": str(priority),
            "TOCSIN_MQTT__PORT": str(broker_port),
            "TOCSIN_MQTT__EMBEDDED_BROKER": "never",
            "TOCSIN_MQTT__RECONNECT_MIN_S": "0.1",
            "TOCSIN_MQTT__RECONNECT_MAX_S": "1",
            "TOCSIN_HTTP__PORT": str(self.http_port),
            "TOCSIN_PROVIDERS__LOG__FORMAT": "json",
            "TOCSIN_MQTT__EVENT_ID_FIELD": "id",  # the simulator numbers its events in "id"
            **(extra_env or {}),
        }
        self.stderr = (workdir / "service.log").open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service", "run"],
            cwd=ROOT,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
        )
        self.deliveries: list[dict[str, Any]] = []
        self.unreadable: list[str] = []
        self.exited_at: float | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.deliveries.append(json.loads(line))
            except json.JSONDecodeError:
                self.unreadable.append(line)  # kept, so a test can show it rather than the reader dying
        self.exited_at = time.time()  # the end of its output: when the process died

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=1) as r:
            return json.loads(r.read()) if path.startswith("/v1") else r.read().decode()

    def ready(self) -> bool:
        """Connected to the broker and subscribed (GET /health/ready answers 200)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/health/ready", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def cluster(self) -> dict[str, Any]:
        try:
            return dict(self.get("/v1/cluster"))
        except OSError:
            return {}

    def metric(self, series: str) -> float:
        """A series of /metrics (``name{label="value"}``), 0 when absent."""
        try:
            text = str(self.get("/metrics"))
        except OSError:
            return 0.0
        for line in text.splitlines():
            head, _, value = line.rpartition(" ")
            if head == series:
                return float(value)
        return 0.0

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.proc.kill()
        self.proc.wait(10)
        self._reader.join(5)
        self.stderr.close()


class Simulator:
    """Publishes numbered doorbell events at a steady rate from a thread."""

    def __init__(self, broker_port: int, rate: float, start: int = 0) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sim-{os.getpid()}-{time.time()}")
        self.client.max_inflight_messages_set(1000)
        self.client.connect("127.0.0.1", broker_port)
        self.client.loop_start()
        self.rate, self.sent, self.start = rate, start, start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        start = time.monotonic()
        while not self._stop.is_set():
            due = self.start + int((time.monotonic() - start) * self.rate)
            while self.sent < due:
                info = self.client.publish(TOPIC, json.dumps({"event": "ring", "id": self.sent}), qos=1)
                info.wait_for_publish(5)
                self.sent += 1
            self._stop.wait(0.005)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(10)
        self.client.loop_stop()
        self.client.disconnect()
        return self.sent


def delivered_episodes(services: list[ServiceProcess]) -> Counter[str]:
    return Counter(d["episode"] for s in services for d in list(s.deliveries))
