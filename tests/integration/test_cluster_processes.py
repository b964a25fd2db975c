"""Three cluster nodes as separate processes on a real Mosquitto: election, kill -9, SIGSTOP/SIGCONT and a
graceful hand-over. Correctness only (one sender at a time, the right successor); takeover times are
measured by the failover benchmark, not asserted here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import Mosquitto, wait_until_sync

ROOT = Path(__file__).resolve().parents[2]


class NodeProcess:
    def __init__(self, port: int, node_id: str, priority: int, cluster: str) -> None:
        self.id = node_id
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "service.cluster",
                "--port",
                str(port),
                "--cluster",
                cluster,
                "--id",
                node_id,
                "--priority",
                str(priority),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(json.loads(line))

    def sending_times(self) -> list[float]:
        return [x["t"] for x in list(self.lines) if x["event"] == "sending"]

    def is_sending(self) -> bool:
        times = self.sending_times()
        return bool(times) and times[-1] >= max(x["t"] for x in self.lines)

    def roles(self) -> list[dict[str, Any]]:
        return [x for x in list(self.lines) if x["event"] == "role"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Mosquitto, dict[str, NodeProcess]]]:
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    nodes = {nid: NodeProcess(broker.port, nid, prio, "t") for nid, prio in (("a", 0), ("b", 1), ("c", 2))}
    try:
        yield broker, nodes
    finally:
        for n in nodes.values():
            n.stop()
        broker.stop()


def senders_now(nodes: dict[str, NodeProcess]) -> list[str]:
    return [n.id for n in nodes.values() if n.proc.poll() is None and n.is_sending()]


def assert_handover_without_overlap(old: NodeProcess, new: NodeProcess) -> None:
    first_new = min(new.sending_times())
    assert all(t < first_new for t in old.sending_times()), "two nodes could send at the same time"


def test_election_then_kill9_then_stop_cont(cluster) -> None:
    _, nodes = cluster
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    wait_until_sync(lambda: senders_now(nodes) == ["a"], 20, "a to lead")
    assert b.roles()[-1]["leader"] == "a" and c.roles()[-1]["leader"] == "a"

    a.proc.kill()  # kill -9: the broker fires a's will
    wait_until_sync(lambda: b.sending_times() and b.is_sending(), 20, "b to take over")
    assert_handover_without_overlap(a, b)
    assert c.roles()[-1]["leader"] == "b" and c.roles()[-1]["term"] == 2
    assert not c.sending_times()

    b.proc.send_signal(signal.SIGSTOP)  # a silent hang: no will until the broker's keepalive runs out
    wait_until_sync(lambda: c.sending_times() and c.is_sending(), 20, "c to take over from the hung b")
    b.proc.send_signal(signal.SIGCONT)
    wait_until_sync(
        lambda: any(r["role"] == "follower" and r["term"] >= 3 for r in b.roles()),
        20,
        "b to step down after waking",
    )
    assert_handover_without_overlap(b, c)
    last_b = max(b.sending_times())
    assert all(t > last_b for t in c.sending_times()[-5:])
    assert senders_now(nodes) == ["c"]


def test_graceful_stop_hands_over(cluster) -> None:
    _, nodes = cluster
    a, b = nodes["a"], nodes["b"]
    wait_until_sync(lambda: senders_now(nodes) == ["a"], 20, "a to lead")
    a.proc.send_signal(signal.SIGTERM)
    assert a.proc.wait(10) == 0
    assert a.lines[-1]["event"] == "left"
    wait_until_sync(lambda: b.sending_times() and b.is_sending(), 20, "b to take over")
    assert_handover_without_overlap(a, b)
    assert any(r["reason"] == "won the claim" for r in b.roles())
