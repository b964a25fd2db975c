"""Replicated state carried by ClusterNode over a real Mosquitto: writes through any instance converge on all
(canonical dumps equal byte for byte), an instance that was away catches up from the members' snapshots,
and a write is not confirmed while the cluster connection is down."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from pathlib import Path

import pytest

from registrations.directory import DirectWriter
from registrations.model import Registration
from registrations.sqlite_store import SqliteRegistrationStore
from rules.engine import EngineState, RuleEngine, compile_rules
from rules.event import Event
from rules.loader import parse_rule_text
from service.clock import SystemClock
from service.cluster.node import ClusterNode
from service.cluster.records import Presence
from service.cluster.replica import HybridClock, ReplicaStore, Replicator, ReplicaUnavailable
from service.cluster.replicated_noise import ReplicatedNoise
from service.cluster.replicated_registrations import ReplicatedWriter
from service.cluster.timing import ClusterTiming
from service.config import MqttConfig
from service.notify.noise import NoiseControl
from service.notify.pipeline import to_notification
from tests.support import Mosquitto, wait_until


async def _unused(raw: bytes) -> None:
    raise AssertionError("replaced by ClusterNode.attach")


class Instance:
    def __init__(self, name: str, port: int, tmp: Path) -> None:
        self.node = ClusterNode(
            MqttConfig(host="127.0.0.1", port=port, reconnect_min_s=0.1, reconnect_max_s=0.5),
            "rep",
            Presence(name, 10, uuid.uuid4().hex, "test"),
            ClusterTiming(),
            SystemClock(),
        )
        self.rep = Replicator(
            name, ReplicaStore(tmp / f"{name}.jsonl"), HybridClock(lambda: int(time.time() * 1000)), _unused
        )
        self.node.attach(self.rep)
        self.task = asyncio.create_task(self.node.run())

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    def dump(self) -> bytes:
        return self.rep.store.dump()


async def test_state_written_anywhere_converges_and_a_returning_instance_catches_up(
    tmp_path: Path, broker: Mosquitto
) -> None:
    a, b, c = (Instance(n, broker.port, tmp_path) for n in "abc")
    try:
        for i in (a, b, c):
            await asyncio.wait_for(i.node.connected.wait(), 10)
        await b.rep.write("registration", "tok-b", {"user": "ann"})
        await c.rep.write("silence", "sil-1", {"match": {"device": "d1"}, "until": 2e9})
        await a.rep.write("ack", "alert-7", {"by": "ann"})
        await wait_until(lambda: a.dump() == b.dump() == c.dump(), 10, "equal dumps on a, b, c")
        assert a.rep.store.live("registration") == {"tok-b": {"user": "ann"}}

        await c.stop()  # c is away while the others write
        await a.rep.write("registration", "tok-a", {"user": "bob"})
        await b.rep.delete("silence", "sil-1")
        c2 = Instance("c", broker.port, tmp_path)  # same disk: it asks for the snapshot on joining
        try:
            await wait_until(lambda: c2.dump() == a.dump() == b.dump(), 10, "c caught up from snapshots")
            assert c2.rep.store.live("silence") == {}
            assert set(c2.rep.store.live("registration")) == {"tok-a", "tok-b"}
        finally:
            await c2.stop()
    finally:
        await a.stop()
        await b.stop()


async def test_a_write_without_the_broker_is_refused_and_republished_on_reconnection(
    tmp_path: Path, broker: Mosquitto
) -> None:
    a = Instance("a", broker.port, tmp_path)
    try:
        await asyncio.wait_for(a.node.connected.wait(), 10)
        broker.stop()
        await wait_until(lambda: not a.node.connected.is_set(), 10, "a sees the broker gone")
        a.rep.echo_timeout_s = 0.3
        with pytest.raises(ReplicaUnavailable):
            await a.rep.write("silence", "s", {"until": 1})
        assert len(a.rep.unconfirmed) == 1
        broker.start()
        b = Instance("b", broker.port, tmp_path)
        try:
            # the 503'd write is durable on a and republished on reconnection: the cluster still converges
            await wait_until(lambda: b.dump() == a.dump() != b"", 15, "b has a's unconfirmed write")
            await wait_until(lambda: not a.rep.unconfirmed, 10, "a saw its echo")
        finally:
            await b.stop()
    finally:
        await a.stop()


async def test_a_registration_through_one_instance_is_in_every_instance_store(
    tmp_path: Path, broker: Mosquitto
) -> None:
    a, b, c = (Instance(n, broker.port, tmp_path) for n in "abc")
    stores = {i.rep.origin: SqliteRegistrationStore(tmp_path / f"{i.rep.origin}.db") for i in (a, b, c)}
    writers = {i.rep.origin: ReplicatedWriter(DirectWriter(stores[i.rep.origin]), i.rep) for i in (a, b, c)}
    try:
        for i in (a, b, c):
            await asyncio.wait_for(i.node.connected.wait(), 10)
        saved = await writers["b"].upsert(Registration("log", "phone-1", user_id="ann", tags=("ops",)))
        assert saved.created > 0  # the answer shows the local store's row
        await wait_until(
            lambda: all(s.db.get("log", "phone-1") is not None for s in stores.values()), 10, "on all"
        )
        got = await stores["a"].get("log", "phone-1")
        assert got is not None and got.user_id == "ann" and got.tags == ("ops",)
        assert await writers["c"].remove(None, "phone-1")
        await wait_until(
            lambda: all(s.db.get("log", "phone-1") is None for s in stores.values()), 10, "gone on all"
        )
        assert not await writers["a"].remove(None, "phone-1")
        assert a.dump() == b.dump() == c.dump()
    finally:
        for i in (a, b, c):
            await i.stop()
        for s in stores.values():
            await s.close()


NOISY = """rules:
  - id: leak
    topic: home/{room}/leak
    threshold: {value: value, above: 0}
    cooldown: 1h
    escalate:
      - {after: 1h, audience: {users: [console]}}
    title: "Leak in the {{ room }}"
    audience: {tags: [home]}
"""


async def test_noise_state_converges_byte_for_byte_and_a_late_instance_catches_up(
    tmp_path: Path, broker: Mosquitto
) -> None:
    rules, errors = parse_rule_text(NOISY, "noisy.yaml")
    assert errors == []
    engine, state = RuleEngine(compile_rules(rules)), EngineState()
    instances = [Instance(n, broker.port, tmp_path) for n in "abc"]
    noises = [NoiseControl() for _ in instances]
    writers = [ReplicatedNoise(n, i.rep) for n, i in zip(noises, instances, strict=True)]
    late: Instance | None = None
    try:
        for i in instances:
            await asyncio.wait_for(i.node.connected.wait(), 10)
        now = time.time()
        notes = []
        for room in ("cellar", "hall"):
            event = Event(f"e-{room}", "mqtt", f"home/{room}/leak", None, now, {"value": 5})
            state, ts = engine.evaluate(event, state, now)
            notes += [to_notification(t, now) for t in ts]
        for n in notes:  # a leads: its noise control decides; b and c see the same transitions
            assert noises[0].before_target(n, now) == [n]
            for follower in noises[1:]:
                follower.observe(n)
        await writers[0].flushed()
        ack = await writers[2].ack(notes[0].alert_id, "ann", "on it", now)  # through the follower c
        assert ack is not None and ack.episode == notes[0].episode

        def dumps() -> list[bytes]:
            return [json.dumps(n.export_state(), sort_keys=True).encode() for n in noises]

        await wait_until(lambda: len(set(dumps())) == 1, 10, "equal noise state on a, b, c")
        await wait_until(lambda: len({i.dump() for i in instances}) == 1, 10, "equal records on a, b, c")
        exported = noises[1].export_state()
        assert set(exported["cooldown"]) == set(exported["followup"]) == {n.alert_id for n in notes}
        assert exported["ack"] == {
            notes[0].alert_id: {"episode": notes[0].episode, "by": "ann", "comment": "on it", "time": now}
        }
        # b leads now: the cooldown holds a new episode of the cellar leak, and the acknowledged one is
        # never escalated while the other is, on a's schedule (an hour after a opened them)
        later = dataclasses.replace(notes[0], nid="other", episode="e2")
        assert noises[1].before_target(later, now + 60) == []
        due = noises[1].due(now + 3600)
        assert [n.alert_id for n in due.notifications] == [notes[1].alert_id]

        late = Instance("d", broker.port, tmp_path)  # an empty disk: everything from the snapshots
        late_noise = NoiseControl()
        ReplicatedNoise(late_noise, late.rep)
        await wait_until(lambda: late.dump() == instances[0].dump(), 10, "d caught up")
        for n in notes:
            late_noise.observe(n)
        assert json.dumps(late_noise.export_state(), sort_keys=True).encode() == dumps()[0]
    finally:
        for i in [*instances, *([late] if late else [])]:
            await i.stop()
