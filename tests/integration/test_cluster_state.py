"""Cluster-wide state as processes on a real Mosquitto: a registration taken by a follower reaches the
phones from the leader, and still after kill -9 of that follower and of the leader."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster_support import ServiceProcess, Simulator, episode_of
from tests.support import Mosquitto, wait_until_sync


@pytest.fixture
def trio(tmp_path: Path) -> Iterator[tuple[Mosquitto, list[ServiceProcess]]]:
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    services = [
        ServiceProcess(tmp_path / nid, broker.port, nid, prio) for nid, prio in (("a", 0), ("b", 1), ("c", 2))
    ]
    try:
        wait_until_sync(lambda: services[0].cluster().get("may_send") is True, 90, "a to lead")
        wait_until_sync(lambda: all(s.cluster().get("leader") == "a" for s in services), 10, "all follow a")
        yield broker, services
    finally:
        for s in services:
            s.stop()
        broker.stop()


def register(s: ServiceProcess, token: str) -> int:
    body = {"provider": "log", "token": token, "user_id": "console", "tags": ["home", "ops"]}
    request = urllib.request.Request(
        f"http://127.0.0.1:{s.http_port}/v1/registrations",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as r:
        return int(r.status)


def to(s: ServiceProcess, token: str) -> int:
    return sum(1 for d in list(s.deliveries) if d.get("to") == token)


def test_a_registration_through_a_follower_reaches_phones_from_the_leader_and_after_both_die(
    trio: tuple[Mosquitto, list[ServiceProcess]],
) -> None:
    broker, (a, b, c) = trio
    assert register(c, "phone-via-c") in (200, 201)  # answered only once the broker echoed it
    sim = Simulator(broker.port, rate=50)
    try:
        wait_until_sync(
            lambda: to(a, "phone-via-c") >= 5, 20, "the leader a to notify the phone registered on c"
        )
        assert to(c, "phone-via-c") == 0 and to(b, "phone-via-c") == 0  # followers do not send
        c.proc.kill()
        a.proc.kill()
        wait_until_sync(lambda: b.cluster().get("may_send") is True, 20, "b to take over")
        wait_until_sync(lambda: to(b, "phone-via-c") >= 5, 20, "the new leader b to notify it too")
    finally:
        sim.stop()


def post(s: ServiceProcess, path: str, body: dict[str, object]) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{s.http_port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as r:
        return int(r.status)


SILENCED = 'tocsin_notifications_suppressed_total{stage="silence"}'


def test_a_silence_through_a_follower_mutes_the_leader_and_survives_a_takeover(
    trio: tuple[Mosquitto, list[ServiceProcess]],
) -> None:
    broker, (a, b, c) = trio
    sim = Simulator(broker.port, rate=50)
    try:
        wait_until_sync(lambda: len(a.deliveries) >= 5, 20, "a to deliver")
        assert (
            post(c, "/v1/silences", {"matchers": {"rule": "~."}, "duration": "1h", "comment": "all"}) == 201
        )
        wait_until_sync(lambda: a.metric(SILENCED) >= 3, 20, "the leader a to hold notifications back")
        after = sim.sent  # everything published from here on meets the silence on a
        wait_until_sync(lambda: sim.sent >= after + 25, 10, "more events")
        a.proc.kill()
        wait_until_sync(lambda: b.cluster().get("may_send") is True, 20, "b to take over")
        wait_until_sync(lambda: b.metric(SILENCED) >= 3, 20, "the new leader b to hold them back too")
        late = {episode_of(n) for n in range(after, sim.sent)}
        sent_late = [
            (s.id, d["episode"]) for s in (a, b, c) for d in list(s.deliveries) if d["episode"] in late
        ]
        assert not sent_late, f"silenced events were notified: {sent_late[:5]}"
    finally:
        sim.stop()
