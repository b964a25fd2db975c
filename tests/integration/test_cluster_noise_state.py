"""Cluster-wide noise state, scheduled pushes and handed-over deliveries, as processes on a real Mosquitto:
an acknowledgement through a follower stops the next leader's escalation; a cooldown that held a
notification on the old leader holds it on the new one (which caught up from a snapshot); a scheduled push
survives a full restart and is sent once; a deposed leader's pending deliveries are sent by the new leader,
not by both."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import sqlite3
import urllib.request
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import paho.mqtt.publish as mqtt_publish
import pytest

from tests.cluster_support import ServiceProcess
from tests.support import Mosquitto, wait_until_sync

RULES = """rules:
  - id: leak
    topic: home/{room}/leak
    threshold: {value: value, above: 0}
    escalate:
      - {after: 6s, audience: {users: [console]}}
    title: "Leak in the {{ room }}"
    audience: {tags: [home]}
  - id: bell
    topic: home/{room}/bell
    when: {event: ring}
    cooldown: 1h
    title: "Bell {{ room }}"
    audience: {tags: [home]}
  - id: tick
    topic: home/{room}/tick
    when: {event: tick}
    title: "Tick {{ payload.n }}"
    audience: {tags: [home]}
"""
COOLED = 'tocsin_notifications_suppressed_total{stage="cooldown"}'
HANDED_OVER = 'tocsin_cluster_sends_total{kind="handed_over"}'


def rules_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    return {"TOCSIN_RULES__PATHS": f"[{path}]", **extra}


def start(
    tmp_path: Path, broker: Mosquitto, env: dict[str, str], *nodes: tuple[str, int]
) -> list[ServiceProcess]:
    return [ServiceProcess(tmp_path / nid, broker.port, nid, prio, extra_env=env) for nid, prio in nodes]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    b = Mosquitto(tmp_path / "broker")
    b.start()
    try:
        yield b
    finally:
        b.stop()


def led_by(services: list[ServiceProcess], leader: ServiceProcess) -> None:
    # generous: three Python processes starting on two loaded cores
    wait_until_sync(lambda: leader.cluster().get("may_send") is True, 60, f"{leader.id} to lead")
    wait_until_sync(
        lambda: all(s.cluster().get("leader") == leader.id for s in services),
        60,
        f"all to follow {leader.id}",
    )


_ids = itertools.count()
RECEIVED = 'tocsin_events_received_total{source="mqtt"}'


def publish(broker: Mosquitto, topic: str, payload: dict[str, Any]) -> None:
    """Each event with its own id (``mqtt.event_id_field``), so that each ring is an episode of its own."""
    body = json.dumps({**payload, "id": f"e{next(_ids)}"})
    mqtt_publish.single(topic, body, qos=1, hostname="127.0.0.1", port=broker.port)


def call(s: ServiceProcess, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{s.http_port}{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method=method,
    )
    with urllib.request.urlopen(request, timeout=5) as r:
        return int(r.status), json.loads(r.read() or b"null")


def titled(services: list[ServiceProcess], title: str) -> list[dict[str, Any]]:
    return [d for s in services for d in list(s.deliveries) if d.get("title") == title]


def delivered_once(services: list[ServiceProcess], title: str) -> bool:
    return len(titled(services, title)) == 1


def stop_all(services: list[ServiceProcess]) -> None:
    for s in services:
        s.stop()


def test_an_ack_through_a_follower_stops_the_escalation_on_the_next_leader(
    tmp_path: Path, broker: Mosquitto
) -> None:
    services = start(tmp_path, broker, rules_env(tmp_path), ("a", 0), ("b", 1), ("c", 2))
    a, b, c = services
    try:
        led_by(services, a)
        publish(broker, "home/cellar/leak", {"value": 1})
        wait_until_sync(lambda: len(titled(services, "Leak in the cellar")) == 1, 20, "the cellar leak")
        publish(broker, "home/hall/leak", {"value": 1})  # escalates after the cellar leak would have
        wait_until_sync(lambda: len(titled(services, "Leak in the hall")) == 1, 20, "the hall leak")
        # The follower c knows the open alert and takes the acknowledgement (answered once echoed).
        _, listed = call(c, "GET", "/v1/alerts")
        [cellar] = [x for x in listed["alerts"] if x["labels"].get("room") == "cellar"]
        status, ack = call(c, "POST", f"/v1/alerts/{cellar['id']}/ack", {"by": "ann"})
        assert status == 200 and ack["by"] == "ann"
        a.proc.kill()  # the leader that opened both alerts dies before either escalates
        wait_until_sync(lambda: b.cluster().get("may_send") is True, 20, "b to take over")
        # b escalates the hall leak on a's schedule; by then the cellar's (earlier) escalation was due too.
        wait_until_sync(lambda: len(titled(services, "Leak in the hall")) == 2, 30, "the hall escalation")
        hall = titled(services, "Leak in the hall")
        assert len({d["nid"] for d in hall}) == 2  # the first notification and its escalation
        cellar_sent = titled(services, "Leak in the cellar")
        assert len(cellar_sent) == 1, f"the acknowledged alert escalated: {cellar_sent}"
    finally:
        stop_all(services)


@pytest.mark.timeout(240)  # four process starts on loaded cores
def test_a_cooldown_on_the_old_leader_holds_on_a_new_leader_that_caught_up_from_a_snapshot(
    tmp_path: Path, broker: Mosquitto
) -> None:
    env = rules_env(tmp_path)
    services = start(tmp_path, broker, env, ("a", 0), ("b", 1), ("c", 2))
    a, b, c = services
    try:
        led_by(services, a)
        publish(broker, "home/cellar/bell", {"event": "ring"})
        wait_until_sync(lambda: len(titled(services, "Bell cellar")) == 1, 20, "the first ring")
        # b is replaced by an instance with an empty disk: all it knows of the cooldown is the snapshot.
        b.proc.kill()
        fresh = ServiceProcess(tmp_path / "b-fresh", broker.port, "b", 1, extra_env=env)
        services.append(fresh)
        led_by([a, c, fresh], a)
        publish(broker, "home/cellar/bell", {"event": "ring"})  # held by a's cooldown
        wait_until_sync(lambda: a.metric(COOLED) >= 1, 20, "a's cooldown to hold the second ring")
        wait_until_sync(lambda: fresh.cluster().get("buffered_transitions", 0) >= 1, 20, "fresh to see it")
        a.proc.kill()
        wait_until_sync(lambda: fresh.cluster().get("may_send") is True, 20, "the fresh b to take over")
        publish(broker, "home/cellar/bell", {"event": "ring"})  # after the takeover: held too
        # The takeover re-handed the second ring and the third came live: both meet the replicated cooldown.
        wait_until_sync(lambda: fresh.metric(COOLED) >= 2, 20, "the new leader's cooldown to hold both")
        publish(broker, "home/hall/tick", {"event": "tick", "n": 1})  # a later event, as a marker
        wait_until_sync(lambda: len(titled(services, "Tick 1")) == 1, 20, "the marker")
        assert len(titled(services, "Bell cellar")) == 1
    finally:
        stop_all(services)


def _iso_in(seconds: float) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)).isoformat()


SCHEDULED = "tocsin_scheduled_pushes"


@pytest.mark.timeout(240)  # six process starts
def test_a_scheduled_push_survives_a_full_restart_and_is_sent_once(tmp_path: Path, broker: Mosquitto) -> None:
    env = rules_env(tmp_path)
    services = start(tmp_path, broker, env, ("a", 0), ("b", 1), ("c", 2))
    try:
        led_by(services, services[0])
        body = {"audience": {"users": ["console"]}, "title": "Later", "schedule_at": _iso_in(8)}
        status, answer = call(services[2], "POST", "/v1/push", body)  # through a follower
        assert status == 202 and answer["scheduled_for"]
        wait_until_sync(lambda: all(s.metric(SCHEDULED) == 1 for s in services), 10, "it on every instance")
        stop_all(services)  # kill -9 of all three before its time
        assert not titled(services, "Later")
        again = start(tmp_path, broker, env, ("a", 0), ("b", 1), ("c", 2))
        services.extend(again)
        led_by(again, again[0])
        wait_until_sync(lambda: len(titled(services, "Later")) >= 1, 30, "the scheduled push")
        wait_until_sync(lambda: all(s.metric(SCHEDULED) == 0 for s in again), 10, "it done everywhere")
        sent = titled(services, "Later")
        assert [(d["nid"], d["to"]) for d in sent] == [(answer["id"], "console")]
        assert dt.datetime.fromtimestamp(sent[0]["sent_at"], dt.UTC) >= dt.datetime.fromisoformat(
            answer["scheduled_for"].replace("Z", "+00:00")
        )
    finally:
        stop_all(services)


def pending_rows(s: ServiceProcess) -> int:
    db = sqlite3.connect(f"file:{s.workdir / 'data' / 'tocsin.db'}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT count(*) FROM outbox WHERE state = 'pending'").fetchone()[0])
    finally:
        db.close()


@pytest.mark.timeout(240)  # four process starts
def test_a_deposed_leaders_pending_delivery_is_sent_by_the_new_leader_and_not_by_both(
    tmp_path: Path, broker: Mosquitto
) -> None:
    # A short transition window: what the new leader re-hands from its own buffer does not cover the
    # delivery, so only the handover from the deposed leader's outbox can bring it out.
    env = rules_env(tmp_path, TOCSIN_CLUSTER__BUFFER_WINDOW_S="0.01")
    services = start(tmp_path, broker, {**env, "TOCSINTEST_FAULT": "after_intent:3"}, ("a", 0))
    services += start(tmp_path, broker, env, ("b", 1), ("c", 2))
    a, b, _ = services
    try:
        led_by(services, a)
        for n in (1, 2):
            publish(broker, "home/hall/tick", {"event": "tick", "n": n})
            wait_until_sync(partial(delivered_once, services, f"Tick {n}"), 20, f"tick {n}")
        # a dies after its intent for tick 3, before the push
        publish(broker, "home/hall/tick", {"event": "tick", "n": 3})
        wait_until_sync(lambda: not a.alive(), 20, "the injected crash")
        assert pending_rows(a) == 1
        # A later event pushes tick 3 out of b's window (1 after it: b's buffer holds that event only),
        # long before b may take over (the lease: over a second).
        publish(broker, "home/hall/tick", {"event": "tick", "n": 4})
        wait_until_sync(lambda: b.metric(RECEIVED) >= 4, 10, "b to receive tick 4")
        assert b.cluster().get("buffered_transitions") == 1
        wait_until_sync(lambda: len(titled(services, "Tick 4")) == 1, 20, "b to take over and send tick 4")
        assert not titled(services, "Tick 3")  # outside b's window: only a's outbox has it
        back = ServiceProcess(tmp_path / "a", broker.port, "a", 0, extra_env=env)  # returns as a follower
        services.append(back)
        wait_until_sync(lambda: len(titled(services, "Tick 3")) == 1, 30, "b to send a's pending delivery")
        wait_until_sync(lambda: back.metric(HANDED_OVER) == 1, 10, "a to count the handover")
        wait_until_sync(lambda: pending_rows(back) == 0, 10, "a's row to end")
        [tick3] = titled(services, "Tick 3")
        assert [s.id for s in services if tick3 in s.deliveries] == ["b"]
        assert b.metric('tocsin_cluster_sends_total{kind="ambiguous_resent"}') == 1  # a's intent, no push
        assert back.cluster()["role"] == "follower" and not back.deliveries
    finally:
        stop_all(services)
