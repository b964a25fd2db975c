"""Replicated state carried by ClusterNode over a real Mosquitto: writes through any instance converge on all
(canonical dumps equal byte for byte), an instance that was away catches up from the members' snapshots,
and a write is not confirmed while the cluster connection is down."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

from registrations.directory import DirectWriter
from registrations.model import Registration
from registrations.sqlite_store import SqliteRegistrationStore
from service.clock import SystemClock
from service.cluster.node import ClusterNode
from service.cluster.records import Presence
from service.cluster.replica import HybridClock, ReplicaStore, Replicator, ReplicaUnavailable
from service.cluster.replicated_registrations import ReplicatedWriter
from service.cluster.timing import ClusterTiming
from service.config import MqttConfig
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
