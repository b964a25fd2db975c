"""Exactly one reporter, end to end: three tocsin services as separate processes on a real Mosquitto, numbered
events from a device simulator, every delivery recorded by each service's log provider. A fault in the middle
of the stream; afterwards every event was notified once, and any duplicate is one of the counted ambiguous
sends. Takeover times are measured by `scripts/bench failover`, not asserted here."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster_support import ServiceProcess, Simulator, delivered_episodes, episode_of
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
        wait_until_sync(
            lambda: all(s.cluster().get("leader") == "a" for s in services), 10, "all to follow a"
        )
        yield broker, services
    finally:
        for s in services:
            s.stop()
        broker.stop()


def check_no_loss_no_duplicate(
    services: list[ServiceProcess], sent: int, survivors: list[ServiceProcess]
) -> int:
    expected = {episode_of(n) for n in range(sent)}
    wait_until_sync(
        lambda: expected <= set(delivered_episodes(services)),
        30,
        "every event to be notified by some instance",
    )
    counts = delivered_episodes(services)
    assert set(counts) == expected
    duplicates = sum(c - 1 for c in counts.values())
    ambiguous = sum(s.metric('tocsin_cluster_sends_total{kind="ambiguous_resent"}') for s in survivors)
    assert duplicates <= ambiguous, f"{duplicates} duplicates but only {ambiguous} ambiguous resends"
    assert (
        ambiguous <= 8
    )  # at most the sends in flight when the leader died (4 dispatch workers, 2 steps each)
    return duplicates


def test_kill9_of_the_leader_mid_stream_loses_nothing_and_repeats_nothing(trio) -> None:
    _, services = trio
    a, b, c = services
    sim = Simulator(trio[0].port, rate=100)
    wait_until_sync(lambda: len(a.deliveries) >= 100, 20, "a to deliver 100")
    a.proc.send_signal(signal.SIGKILL)
    wait_until_sync(lambda: b.cluster().get("may_send") is True, 20, "b to take over")
    count_at_takeover = len(b.deliveries)
    wait_until_sync(lambda: len(b.deliveries) >= count_at_takeover + 100, 20, "b to deliver live events")
    sent = sim.stop()
    check_no_loss_no_duplicate(services, sent, [b, c])
    assert c.cluster()["leader"] == "b" and not c.deliveries
    assert {d["term"] for d in b.deliveries} == {2}


def test_sigstop_of_the_leader_then_sigcont(trio) -> None:
    _, services = trio
    a, b, c = services
    sim = Simulator(trio[0].port, rate=100)
    wait_until_sync(lambda: len(a.deliveries) >= 50, 20, "a to deliver 50")
    a.proc.send_signal(signal.SIGSTOP)
    try:
        wait_until_sync(lambda: b.cluster().get("may_send") is True, 20, "b to take over from the hung a")
        n = len(b.deliveries)
        wait_until_sync(lambda: len(b.deliveries) >= n + 50, 20, "b to deliver live events")
    finally:
        a.proc.send_signal(signal.SIGCONT)
    wait_until_sync(
        lambda: a.cluster().get("role") == "follower" and a.cluster().get("leader") == "b",
        20,
        "a to follow b after waking",
    )
    n = len(b.deliveries)
    wait_until_sync(lambda: len(b.deliveries) >= n + 50, 20, "b to keep delivering")
    sent = sim.stop()
    check_no_loss_no_duplicate(services, sent, [a, b, c])
    assert max(d["term"] for d in a.deliveries) == 1  # the woken a never sent in b's term


def test_graceful_stop_hands_over_without_the_lease_wait(trio) -> None:
    _, services = trio
    a, b, _ = services
    sim = Simulator(trio[0].port, rate=100)
    wait_until_sync(lambda: len(a.deliveries) >= 50, 20, "a to deliver 50")
    a.proc.send_signal(signal.SIGTERM)
    assert a.proc.wait(20) == 0
    wait_until_sync(lambda: b.cluster().get("may_send") is True, 20, "b to take over")
    n = len(b.deliveries)
    wait_until_sync(lambda: len(b.deliveries) >= n + 50, 20, "b to deliver live events")
    sent = sim.stop()
    assert check_no_loss_no_duplicate(services, sent, [b]) == 0


@pytest.mark.parametrize("point", ["after_intent", "after_send"])
def test_kill9_inside_a_send_is_bounded_by_the_ambiguous_count(tmp_path: Path, point: str) -> None:
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    fault = {"TOCSINTEST_FAULT": f"{point}:60"}
    services = [ServiceProcess(tmp_path / "a", broker.port, "a", 0, extra_env=fault)] + [
        ServiceProcess(tmp_path / nid, broker.port, nid, prio) for nid, prio in (("b", 1), ("c", 2))
    ]
    a, b, c = services
    try:
        wait_until_sync(lambda: a.cluster().get("may_send") is True, 90, "a to lead")
        sim = Simulator(broker.port, rate=100)
        wait_until_sync(lambda: not a.alive(), 20, "the injected crash")
        wait_until_sync(lambda: b.cluster().get("may_send") is True, 20, "b to take over")
        n = len(b.deliveries)
        wait_until_sync(lambda: len(b.deliveries) >= n + 50, 20, "b to deliver live events")
        sent = sim.stop()
        duplicates = check_no_loss_no_duplicate(services, sent, [b, c])
        ambiguous = b.metric('tocsin_cluster_sends_total{kind="ambiguous_resent"}')
        assert ambiguous >= 1  # the crashed send is seen as begun and never confirmed
        if point == "after_send":
            assert duplicates >= 1  # it went out before the crash, and is resent: one of the ambiguous
        else:
            # it never went out: resent once, no duplicate; only other sends caught in flight may repeat
            assert duplicates <= ambiguous - 1
    finally:
        for s in services:
            s.stop()
        broker.stop()


@pytest.mark.parametrize("persistence", [True, False])
def test_broker_restart_loses_nothing_published_and_repeats_nothing(
    tmp_path: Path, persistence: bool
) -> None:
    broker = Mosquitto(tmp_path / "broker", persistence=persistence)
    broker.start()
    services = [
        ServiceProcess(tmp_path / nid, broker.port, nid, prio) for nid, prio in (("a", 0), ("b", 1), ("c", 2))
    ]
    try:
        wait_until_sync(lambda: services[0].cluster().get("may_send") is True, 90, "a to lead")
        sim = Simulator(broker.port, rate=100)
        wait_until_sync(lambda: len(delivered_episodes(services)) >= 100, 20, "100 notifications")
        first = sim.stop()  # devices cannot publish while the broker is down: pause them around the restart
        broker.restart()
        wait_until_sync(lambda: all(s.ready() for s in services), 30, "every service to resubscribe")
        wait_until_sync(
            lambda: sum(1 for s in services if s.cluster().get("may_send") is True) == 1,
            30,
            "one leader that may send",
        )
        sim = Simulator(broker.port, rate=100, start=first)
        wait_until_sync(
            lambda: len(delivered_episodes(services)) >= first + 100, 30, "100 more after the restart"
        )
        sent = sim.stop()
        check_no_loss_no_duplicate(services, sent, services)
    finally:
        for s in services:
            s.stop()
        broker.stop()


def test_the_preferred_instance_returns_as_a_follower_and_a_full_restart_repeats_nothing(
    trio, tmp_path
) -> None:
    broker, services = trio
    a, b, c = services
    sim = Simulator(broker.port, rate=100)
    wait_until_sync(lambda: len(a.deliveries) >= 50, 20, "a to deliver 50")
    a.proc.kill()
    wait_until_sync(lambda: b.cluster().get("may_send") is True, 20, "b to take over")
    a2 = ServiceProcess(tmp_path / "a", broker.port, "a", 0)  # the preferred one comes back
    services.append(a2)
    wait_until_sync(lambda: a2.cluster().get("leader") == "b", 30, "a to follow b")
    n = len(b.deliveries)
    wait_until_sync(lambda: len(b.deliveries) >= n + 50, 20, "b to keep delivering")
    assert a2.cluster()["role"] == "follower" and not a2.deliveries  # no preemption
    sent = sim.stop()
    check_no_loss_no_duplicate(services, sent, [b, c, a2])  # kill -9's duplicates: at most the ambiguous
    before = delivered_episodes(services)
    # The whole cluster restarts, and the devices replay old events (their own retry, a retained state):
    # the ledger on each instance's disk knows they were reported.
    for s in services:
        s.stop()
    restarted = [ServiceProcess(tmp_path / nid, broker.port, nid, prio) for nid, prio in (("a", 0), ("b", 1))]
    services.extend(restarted)
    wait_until_sync(lambda: restarted[0].cluster().get("may_send") is True, 30, "a to lead again")
    replay = Simulator(broker.port, rate=200, start=0)
    wait_until_sync(lambda: replay.sent >= 100, 10, "the replay")
    replay.stop()
    more = Simulator(broker.port, rate=100, start=sent)
    wait_until_sync(lambda: more.sent >= sent + 20, 10, "new events")
    total = more.stop()
    expected = {episode_of(n) for n in range(total)}
    wait_until_sync(lambda: expected <= set(delivered_episodes(services)), 30, "the new events")
    counts = delivered_episodes(services)
    # Reported again after the restart: more often than before it (a duplicate of the kill -9 above, an
    # ambiguous send checked there, is not one of the restart's).
    repeated = {e for e, c in counts.items() if c > max(1, before.get(e, 0))}
    by = [(s.id, d["term"], d["episode"]) for s in services for d in s.deliveries if d["episode"] in repeated]
    assert not repeated, f"replayed events reported again after the restart: {sorted(by)[:12]}"


def test_an_api_push_to_a_follower_is_sent_by_that_follower(trio) -> None:
    """Only the instance that took the request knows of an API push: the cluster must not hold it back."""
    import json
    import urllib.request

    _, services = trio
    c = services[2]
    assert c.cluster()["role"] == "follower"
    request = urllib.request.Request(
        f"http://127.0.0.1:{c.http_port}/v1/push",
        data=json.dumps({"audience": {"users": ["console"]}, "title": "Hello from c"}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as r:
        assert r.status == 202
    wait_until_sync(lambda: any(d["title"] == "Hello from c" for d in c.deliveries), 10, "the push from c")
    assert not any(d["title"] == "Hello from c" for s in services[:2] for d in s.deliveries)
