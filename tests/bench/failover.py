"""Failover benchmark: three tocsin services (separate processes) on a real Mosquitto, numbered events from a
device simulator at a steady rate, and each fault repeated (default 30 times):

  kill9                     kill -9 of the leader at a random moment
  kill9_in_send             the leader kills itself inside a send (after its intent, or after the push and
                            before its 'sent'), via the test-only fault hook
  stop_cont                 SIGSTOP of the leader (a silent hang), SIGCONT after the takeover
  graceful                  SIGTERM of the leader (hand-over)
  broker_restart            Mosquitto restarted with persistence on
  broker_restart_nopersist  Mosquitto restarted with persistence off
  preferred_returns         the leader is killed and comes back with the best priority (no preemption)
  register_then_kill        a phone registers through a follower; on the 2xx, kill -9 of that follower and
                            of the leader: the new leader must notify the phone
  silence_then_kill         a silence through a follower, then the same kill: the new leader must hold back
                            a notification it matches (and send an unmatched one)
  ack_then_kill             an alert acknowledged through a follower, then the same kill: the new leader must
                            not escalate it (and must escalate an unacknowledged one opened after it)

Takeover time: from the fault to the moment another instance (or, for broker restarts, any instance) may send
again, sampled every 20 ms from /v1/cluster. Lost: simulator events never notified. Duplicates: deliveries
beyond the first per event. Ambiguous: resends of sends the old leader began and never confirmed (the bound
for duplicates). State lost (state faults): writes answered 2xx whose effect the new leader did not show.
Lost, duplicates and ambiguous count the simulator's events to the console phone only.
Usage: scripts/bench failover [--runs 30] [--faults kill9,graceful] [--rate 50]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import signal
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.publish as mqtt_publish

from tests.cluster_support import ServiceProcess, Simulator, episode_of
from tests.support import Mosquitto, wait_until_sync

FAULTS = (
    "kill9",
    "kill9_in_send",
    "stop_cont",
    "graceful",
    "broker_restart",
    "broker_restart_nopersist",
    "preferred_returns",
    "register_then_kill",
    "silence_then_kill",
    "ack_then_kill",
)
STATE_FAULTS = ("register_then_kill", "silence_then_kill", "ack_then_kill")
# The examples' doorbell (the simulator's events) and a leak rule that escalates, for ack_then_kill.
RULES = """rules:
  - id: doorbell
    topic: home/{room}/doorbell
    when: {event: ring}
    title: Doorbell
    body: "Someone is at the {{ room }} door."
    audience: {tags: [home]}
  - id: leak
    topic: home/{room}/leak
    threshold: {value: value, above: 0}
    escalate:
      - {after: 4s, audience: {users: [console]}}
    title: "Leak {{ room }}"
    audience: {tags: [home]}
"""
AMBIGUOUS = 'tocsin_cluster_sends_total{kind="ambiguous_resent"}'


class Campaign:
    def __init__(self, fault: str, workdir: Path, rate: float) -> None:
        self.fault, self.workdir, self.rate = fault, workdir, rate
        self.broker = Mosquitto(workdir / "broker", persistence=fault != "broker_restart_nopersist")
        self.broker.start()
        self.priorities = {"a": 0, "b": 1, "c": 2}
        self.all: list[ServiceProcess] = []
        self.live: dict[str, ServiceProcess] = {}
        self.ambiguous: dict[int, float] = {}
        self.paused: set[str] = set()  # a stopped process cannot answer: do not wait on its HTTP API
        self.state_lost = 0
        self.rules = workdir / "rules.yaml"
        self.rules.write_text(RULES)
        for nid in self.priorities:
            self.start(nid)
        wait_until_sync(lambda: self.leader() is not None, 60, "a first leader")
        self.sim = Simulator(self.broker.port, rate)
        self.published = 0

    def start(self, nid: str) -> ServiceProcess:
        env = {"TOCSIN_RULES__PATHS": f"[{self.rules}]"}
        if self.fault == "kill9_in_send" and nid == "a":  # only a is armed; each run makes it the leader
            env["TOCSINTEST_FAULT"] = (
                f"{random.choice(['after_intent', 'after_send'])}:{random.randint(5, 60)}"
            )
        s = ServiceProcess(self.workdir / nid, self.broker.port, nid, self.priorities[nid], extra_env=env)
        self.all.append(s)
        self.live[nid] = s
        return s

    def leader(self) -> str | None:
        senders = [
            nid
            for nid, s in self.live.items()
            if nid not in self.paused and s.alive() and s.cluster().get("may_send") is True
        ]
        return senders[0] if len(senders) == 1 else None

    def scrape(self) -> None:
        for s in self.live.values():
            if s.alive():
                self.ambiguous[id(s)] = max(self.ambiguous.get(id(s), 0.0), s.metric(AMBIGUOUS))

    def wait_sender(self, accept: Callable[[str], bool], timeout: float = 60) -> float:
        """Seconds until exactly one instance that ``accept`` admits may send."""
        start = time.monotonic()
        while True:
            current = self.leader()
            if current is not None and accept(current):
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise RuntimeError(f"{self.fault}: no takeover within {timeout} s")
            time.sleep(0.02)

    def rejoin(self, nid: str) -> None:
        s = self.start(nid)
        wait_until_sync(
            lambda: s.cluster().get("role") == "follower" and s.cluster().get("leader") is not None,
            60,
            f"{nid} to rejoin",
        )

    def run_once(self) -> float:
        time.sleep(random.uniform(0.2, 1.0))  # a random moment in the stream
        self.wait_sender(lambda _: True)
        old = self.leader() or ""
        victim = self.live.get(old)
        if self.fault in ("kill9", "preferred_returns"):
            assert victim is not None
            t0 = time.time()
            victim.proc.kill()
            took = self._new_leader_after(t0, old)
            if self.fault == "preferred_returns":
                for nid in self.priorities:  # the one coming back is the preferred one
                    self.priorities[nid] = 1 if nid != old else 0
            self.rejoin(old)
        elif self.fault == "kill9_in_send":
            if old != "a":  # hand leadership to the armed a first (not measured)
                assert victim is not None
                victim.proc.send_signal(signal.SIGTERM)
                victim.proc.wait(30)
                armed = self.live["a"]
                # a leads next (best rank); it may crash before we even see it sending
                wait_until_sync(
                    lambda: not armed.alive() or armed.cluster().get("may_send") is True, 60, "a to lead"
                )
                self.rejoin(old)
                old, victim = "a", armed
            assert victim is not None
            crashed = victim
            wait_until_sync(lambda: crashed.exited_at is not None, 120, "the injected crash")
            assert crashed.exited_at is not None
            took = self._new_leader_after(crashed.exited_at, old)
            self.rejoin(old)
        elif self.fault == "stop_cont":
            assert victim is not None
            t0 = time.time()
            victim.proc.send_signal(signal.SIGSTOP)
            self.paused.add(old)
            took = self._new_leader_after(t0, old)
            victim.proc.send_signal(signal.SIGCONT)
            self.paused.discard(old)
            wait_until_sync(
                lambda: victim.cluster().get("role") == "follower", 60, "the woken leader to follow"
            )
        elif self.fault == "graceful":
            assert victim is not None
            t0 = time.time()
            victim.proc.send_signal(signal.SIGTERM)
            took = self._new_leader_after(t0, old)
            victim.proc.wait(30)
            self.rejoin(old)
        elif self.fault in STATE_FAULTS:
            took = self._state_fault(old)
        else:
            self.published = self.sim.stop()
            t0 = time.monotonic()
            self.broker.restart()
            took = self._since(t0, lambda n: True)
            wait_until_sync(lambda: all(s.ready() for s in self.live.values()), 60, "resubscribed")
            self.sim = Simulator(self.broker.port, self.rate, start=self.published)
        self.scrape()
        return took

    def _state_fault(self, old: str) -> float:
        """A write through a follower; on its 2xx, kill -9 of that follower and of the leader; then check that
        the new leader acts on the write (else ``state_lost``)."""
        taker = random.choice([n for n in self.live if n != old])
        tag = uuid.uuid4().hex[:10]
        if self.fault == "ack_then_kill":  # open the alert first (the leader notifies it)
            self._publish(f"home/acked-{tag}/leak", {"value": 1})
            self._wait_title(f"Leak acked-{tag}", 1)
            alert = self._open_alert(taker, f"acked-{tag}")
            status, _ = _call(self.live[taker], "POST", f"/v1/alerts/{alert}/ack", {"by": "bench"})
            self._publish(f"home/control-{tag}/leak", {"value": 1})  # escalates after the acknowledged one
        elif self.fault == "register_then_kill":
            phone = {"provider": "log", "token": f"phone-{tag}", "user_id": "bench", "tags": ["home"]}
            status, _ = _call(self.live[taker], "POST", "/v1/registrations", phone)
        else:
            silence = {"matchers": {"room": f"muted-{tag}"}, "duration": "1h", "comment": "bench"}
            status, _ = _call(self.live[taker], "POST", "/v1/silences", silence)
        assert 200 <= status < 300, f"{self.fault}: the write was answered {status}"
        t0 = time.time()
        self.live[taker].proc.kill()
        self.live[old].proc.kill()
        took = self._new_leader_after(t0, old)
        if not self._took_effect(tag):
            self.state_lost += 1
        for nid in (taker, old):
            self.rejoin(nid)
        return took

    def _took_effect(self, tag: str) -> bool:
        leader = self.live[self.leader() or ""]
        if self.fault == "register_then_kill":  # the simulator's doorbells reach the new phone
            reached = _waited(lambda: any(d.get("to") == f"phone-{tag}" for d in list(leader.deliveries)), 20)
            _call(leader, "DELETE", f"/v1/registrations/log/phone-{tag}")  # one phone at a time
            return reached
        if self.fault == "silence_then_kill":
            self._publish(f"home/muted-{tag}/doorbell", {"event": "ring"})
            self._publish(f"home/open-{tag}/doorbell", {"event": "ring"})
            if not _waited(lambda: self._titled_body(f"open-{tag}") >= 1, 20):
                return False  # nothing was notified at all: counted as lost below, and here
            return self._titled_body(f"muted-{tag}") == 0
        # ack_then_kill: once the control alert escalated (after the acknowledged one was due), it did not
        escalated = _waited(lambda: self._count_title(f"Leak control-{tag}") >= 2, 30)
        return escalated and self._count_title(f"Leak acked-{tag}") == 1

    def _publish(self, topic: str, payload: dict[str, Any]) -> None:
        body = json.dumps({**payload, "id": uuid.uuid4().hex})
        mqtt_publish.single(topic, body, qos=1, hostname="127.0.0.1", port=self.broker.port)

    def _count_title(self, title: str) -> int:
        return sum(1 for s in self.all for d in list(s.deliveries) if d.get("title") == title)

    def _titled_body(self, room: str) -> int:
        text = f"Someone is at the {room} door."
        return sum(1 for s in self.all for d in list(s.deliveries) if d.get("body") == text)

    def _wait_title(self, title: str, count: int) -> None:
        wait_until_sync(lambda: self._count_title(title) >= count, 30, title)

    def _open_alert(self, nid: str, room: str) -> str:
        def found() -> str | None:
            _, listed = _call(self.live[nid], "GET", "/v1/alerts")
            ids = [a["id"] for a in listed["alerts"] if a["labels"].get("room") == room]
            return ids[0] if ids else None

        wait_until_sync(lambda: found() is not None, 20, f"{nid} to list the open alert")
        alert = found()
        assert alert is not None
        return alert

    def _since(self, t0: float, accept: Callable[[str], bool]) -> float:
        """From the fault (monotonic ``t0``) to a sender that ``accept`` admits."""
        self.wait_sender(accept)
        return time.monotonic() - t0

    def _new_leader_after(self, fault_wall: float, old: str) -> float:
        """From a fault at wall time ``fault_wall`` to when the new leader won: read from the leader itself,
        so a late look does not shorten or lengthen the figure."""
        self.wait_sender(lambda n: n != old)
        new = self.leader()
        assert new is not None
        since = self.live[new].cluster().get("leader_since")
        return max(0.0, float(since) - fault_wall) if since is not None else 0.0

    def console(self) -> Counter[str]:
        """The simulator's events notified to the console phone (a state fault adds phones and alerts)."""
        return Counter(d["episode"] for s in self.all for d in list(s.deliveries) if d.get("to") == "console")

    def finish(self) -> dict[str, Any]:
        published = self.sim.stop()
        expected = {episode_of(n) for n in range(published)}
        with contextlib.suppress(AssertionError):  # what never arrives is counted as lost below
            wait_until_sync(lambda: expected <= set(self.console()), 60, "the last notifications")
        self.scrape()
        counts = {e: c for e, c in self.console().items() if e in expected}
        result = {
            "events": published,
            "lost": len(expected - set(counts)),
            "duplicates": sum(c - 1 for c in counts.values()),
            "ambiguous": int(sum(self.ambiguous.values())),
            "state_lost": self.state_lost,
        }
        for s in self.all:
            s.stop()
        self.broker.stop()
        return result


def _call(s: ServiceProcess, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{s.http_port}{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method=method,
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        return int(r.status), json.loads(r.read() or b"null")


def _waited(condition: Callable[[], bool], timeout: float) -> bool:
    try:
        wait_until_sync(condition, timeout)
    except AssertionError:
        return False
    return True


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--faults", default=",".join(FAULTS))
    ap.add_argument("--rate", type=float, default=50.0, help="simulator events per second")
    ap.add_argument("--smoke", action="store_true", help="a few seconds, for the suite: it still runs")
    args = ap.parse_args()
    if args.smoke:
        args.runs, args.faults = 1, "register_then_kill"  # a kill -9 of the leader, and a write
    table: dict[str, dict[str, Any]] = {}
    for fault in args.faults.split(","):
        with tempfile.TemporaryDirectory(prefix=f"tocsin-failover-{fault}-") as tmp:
            print(f"{fault}: {args.runs} runs ...", flush=True)
            campaign = Campaign(fault, Path(tmp), args.rate)
            times = []
            for i in range(args.runs):
                times.append(campaign.run_once())
                print(f"  run {i + 1}: takeover {times[-1]:.2f} s", flush=True)
            tally = campaign.finish()
            table[fault] = {
                "runs": len(times),
                "takeover_p50_s": round(pct(times, 50), 3),
                "takeover_p95_s": round(pct(times, 95), 3),
                "takeover_max_s": round(max(times), 3),
                "lost": tally["lost"],
                "duplicates": tally["duplicates"],
                "ambiguous": tally["ambiguous"],
            }
            if fault in STATE_FAULTS:
                table[fault]["state_lost"] = tally["state_lost"]
            print(
                f"  {fault}: p50 {table[fault]['takeover_p50_s']} s, p95 {table[fault]['takeover_p95_s']} s, "
                f"max {table[fault]['takeover_max_s']} s; {tally['events']} events, lost {tally['lost']}, "
                f"duplicates {tally['duplicates']}, ambiguous {tally['ambiguous']}"
                + (f", state lost {tally['state_lost']}" if fault in STATE_FAULTS else ""),
                flush=True,
            )
    print(json.dumps(table))


if __name__ == "__main__":
    main()
