"""Replicated records: HLC, last-writer-wins with origin tie-break, tombstones, durability, echo deadline,
and convergence over a real Mosquitto (canonical dumps compared byte for byte)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiomqtt
import pytest

from service.cluster.records import RecordError
from service.cluster.replica import (
    HybridClock,
    Record,
    ReplicaStore,
    Replicator,
    ReplicaUnavailable,
    decode,
    encode,
)
from tests.support import Mosquitto, wait_until


def test_hlc_is_monotonic_when_the_wall_clock_stands_still_or_steps_back() -> None:
    wall = [1000]
    c = HybridClock(lambda: wall[0])
    a = c.now()
    b = c.now()
    wall[0] = 900  # NTP stepped back
    d = c.now()
    assert a < b < d
    c.observe(d + 50)
    assert c.now() > d + 50


def test_last_writer_wins_by_hlc_then_origin_in_any_order() -> None:
    recs = [
        Record("silence", "s1", {"v": 1}, 10, "a"),
        Record("silence", "s1", {"v": 2}, 11, "a"),
        Record("silence", "s1", {"v": 3}, 11, "c"),  # same HLC, higher origin: wins
        Record("silence", "s1", {"v": 0}, 11, "b"),
        Record("silence", "s2", {"v": 9}, 5, "b"),
        Record("silence", "s2", None, 6, "a"),  # tombstone wins over the older write
        Record("silence", "s2", {"v": 8}, 4, "c"),  # late and older: no resurrection
    ]
    dumps = set()
    for seed in range(20):
        order = recs[:]
        random.Random(seed).shuffle(order)
        s = ReplicaStore(None)
        for r in order:
            s.apply(r)
        dumps.add(s.dump())
    assert len(dumps) == 1
    s = ReplicaStore(None)
    for r in recs:
        s.apply(r)
    assert s.get("silence", "s1") == {"v": 3}
    assert s.live("silence") == {"s1": {"v": 3}}


def test_bad_records_are_refused_with_a_specific_error() -> None:
    for raw, what in [
        (b"{", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"kind":"x","key":"k","hlc":0,"origin":"a"}', "hlc"),
        (b'{"kind":"x","key":"","hlc":1,"origin":"a"}', "key"),
        (b'{"kind":"","key":"k","hlc":1,"origin":"a"}', "kind"),
    ]:
        with pytest.raises(RecordError, match=what):
            decode(raw)


def test_the_store_is_bounded() -> None:
    s = ReplicaStore(None, max_records=2)
    assert s.apply(Record("k", "1", 1, 1, "a")) and s.apply(Record("k", "2", 1, 1, "a"))
    assert not s.apply(Record("k", "3", 1, 1, "a"))
    assert s.refused == 1
    assert s.apply(Record("k", "1", 2, 2, "a"))  # an existing key still updates


async def test_a_write_is_durable_and_survives_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "state.jsonl"
    store = ReplicaStore(path)
    rep = Replicator("a", store, HybridClock(lambda: 1), _loopback(lambda: rep))
    await rep.write("registration", "tok1", {"user": "u"})
    await rep.write("registration", "tok2", {"user": "v"})
    await rep.delete("registration", "tok2")
    with path.open("ab") as f:
        f.write(b'{"kind":"registration","key":"tok3"')  # crash mid-append
    again = ReplicaStore(path)
    assert again.dump() == store.dump()
    assert again.live("registration") == {"tok1": {"user": "u"}}
    assert again.refused == 1


async def test_a_write_the_broker_does_not_echo_is_not_confirmed(tmp_path: Path) -> None:
    async def swallow(raw: bytes) -> None:
        return None

    rep = Replicator("a", ReplicaStore(None), HybridClock(lambda: 1), swallow, echo_timeout_s=0.2)
    with pytest.raises(ReplicaUnavailable, match="not echoed"):
        await rep.write("silence", "s", {"until": 5})


def _loopback(rep: Callable[[], Replicator]) -> Callable[[bytes], Awaitable[None]]:
    """A broker of one: the published record comes back on the next loop turn."""

    async def publish(raw: bytes) -> None:
        asyncio.get_running_loop().call_soon(lambda: _keep.add(asyncio.ensure_future(rep().receive(raw))))

    return publish


_keep: set[asyncio.Future[None]] = set()


class MqttReplica:
    """A Replicator wired to ``tocsin/t/state/stream`` over its own aiomqtt connection."""

    def __init__(self, origin: str, port: int, path: Path) -> None:
        self.port = port
        self.client = aiomqtt.Client("127.0.0.1", port, identifier=f"rep-{origin}")
        self.rep = Replicator(origin, ReplicaStore(path), HybridClock(_wall_ms), self._publish)
        self.applied: list[Record] = []
        self.rep.on_apply = self.applied.append
        self._task: asyncio.Task[None] | None = None

    async def _publish(self, raw: bytes) -> None:
        await self.client.publish("tocsin/t/state/stream", raw, qos=1)

    async def __aenter__(self) -> MqttReplica:
        await self.client.__aenter__()
        await self.client.subscribe("tocsin/t/state/stream", qos=1)
        self._task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        async for m in self.client.messages:
            assert isinstance(m.payload, bytes)
            await self.rep.receive(m.payload)

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self.client.__aexit__(None, None, None)


def _wall_ms() -> int:
    return int(time.time() * 1000)


@contextlib.asynccontextmanager
async def _three(port: int, tmp: Path) -> AsyncIterator[list[MqttReplica]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(MqttReplica(n, port, tmp / f"{n}.jsonl")) for n in "abc"]


async def test_three_instances_converge_byte_for_byte_and_a_late_joiner_catches_up(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async with _three(broker.port, tmp_path) as (a, b, c):
        # concurrent writes to the same keys through different instances
        await asyncio.gather(
            *(
                r.rep.write("silence", f"s{i % 5}", {"by": r.rep.origin, "i": i})
                for i in range(30)
                for r in (a, b, c)
            )
        )
        await a.rep.delete("silence", "s0")
        await wait_until(
            lambda: a.rep.store.dump() == b.rep.store.dump() == c.rep.store.dump(), 10, "three equal dumps"
        )
        assert "s0" not in b.rep.store.live("silence")
        assert len(c.rep.store.live("silence")) == 4
        # d was away: it catches up from a's snapshot, then follows the stream
        async with MqttReplica("d", broker.port, tmp_path / "d.jsonl") as d:
            won = await d.rep.merge_snapshot(a.rep.store.snapshot())
            assert won == 5
            await b.rep.write("silence", "s9", {"late": True})
            await wait_until(
                lambda: (
                    d.rep.store.get("silence", "s9") is not None and d.rep.store.dump() == a.rep.store.dump()
                ),
                10,
                "d equal to a, the late write included",
            )
            assert d.rep.store.get("silence", "s9") == {"late": True}
    # durable: reopened from disk, the same bytes
    assert ReplicaStore(tmp_path / "b.jsonl").dump() == ReplicaStore(tmp_path / "a.jsonl").dump()


def test_encoding_is_canonical() -> None:
    r = Record("group", "g", {"z": 1, "a": [1, 2]}, 7, "x")
    assert encode(r) == encode(decode(encode(r)))
    assert encode(r).index(b'"a"') < encode(r).index(b'"z"')
