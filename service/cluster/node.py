"""The cluster's MQTT side: presence with a last will, the leader stream, and the election ticking.

Topics under ``tocsin/<cluster>/``: ``members/<id>`` (retained presence; the will deletes it) and
``leader/stream`` (heartbeats, claims, stepdowns and the ledger, from one publisher at a time, so MQTT's
per-topic ordering keeps them in order). The node uses a connection of its own, so that its will and its
heartbeat echo measure exactly the cluster's view of this instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Callable

import aiomqtt

from service.clock import Clock
from service.cluster.election import Action, Election, Publish, RoleChange
from service.cluster.ledger import Ledger
from service.cluster.records import (
    SNAPSHOT_CHUNK,
    Presence,
    RecordError,
    StreamRecord,
    decode_presence,
    decode_record,
    decode_snapshot,
    encode_presence,
    encode_record,
    encode_snapshot,
)
from service.cluster.replica import Record, Replicator, decode, encode
from service.cluster.timing import ClusterTiming
from service.config import MqttConfig
from service.sources.broker import NO_DELAY, aiomqtt_options

log = logging.getLogger("tocsin.cluster")
TICK_S = 0.05


class ClusterNode:
    def __init__(
        self,
        mqtt: MqttConfig,
        cluster: str,
        me: Presence,
        timing: ClusterTiming,
        clock: Clock,
        ledger_retention_s: float = 3600.0,
        on_change: Callable[[RoleChange], None] | None = None,
    ) -> None:
        self.mqtt, self.me, self.timing, self.clock = mqtt, me, timing, clock
        self.prefix = f"tocsin/{cluster}/"
        self.stream_topic = self.prefix + "leader/stream"
        self.request_topic = self.prefix + "ledger/req"
        self.snapshot_topic = self.prefix + f"ledger/snap/{me.id}"
        self.presence_topic = self.prefix + f"members/{me.id}"
        self.election = Election(me, timing, clock.monotonic())
        self.ledger = Ledger(ledger_retention_s)
        self.on_change = on_change
        self.connected = asyncio.Event()
        self.bad_records = 0
        self._client: aiomqtt.Client | None = None
        self.election.connected = False
        self._stopping = False
        self._pending: list[Action] = []
        self._outbox: list[tuple[str, bytes]] = []
        self.state_topic = self.prefix + "state/stream"
        self.state_snapshot_topic = self.prefix + f"state/snap/{me.id}"
        self.replicator: Replicator | None = None

    def attach(self, replicator: Replicator) -> None:
        """Carry replicated state (``replica.py``) over this node's connection: writes publish on
        ``state/stream``, the echo confirms them, and a join asks the members for their state snapshot."""
        replicator.publish = self._publish_state
        self.replicator = replicator

    async def _publish_state(self, raw: bytes) -> None:
        client = self._client
        if client is None:
            raise aiomqtt.MqttError("not connected to the cluster")
        await client.publish(self.state_topic, raw, qos=1)

    # -- what the sender asks ------------------------------------------------------------------------------
    @property
    def is_leader(self) -> bool:
        return self.election.role == "leader"

    def backlog(self) -> int:
        """Cluster messages received and not yet processed (a lagging echo shows here first)."""
        client = self._client
        return len(client.messages) if client is not None else 0

    def may_send(self) -> bool:
        return self.connected.is_set() and self.election.may_send(self.clock.monotonic())

    async def record(self, kind: str, nid: str) -> None:
        """Publish an ``intent`` or ``sent`` record (waits for the broker's PUBACK) and apply it locally."""
        assert kind in ("intent", "sent")
        record = StreamRecord(kind, self.election.term, self.me.id, seq=self.election.next_seq(), nid=nid)  # type: ignore[arg-type]
        self.ledger.apply(record, self.clock.time())
        client = self._client
        if client is None:
            raise aiomqtt.MqttError("not connected to the cluster")
        await client.publish(self.stream_topic, encode_record(record), qos=1)

    # -- running ------------------------------------------------------------------------------------------
    async def run(self) -> None:
        delay = self.mqtt.reconnect_min_s
        while not self._stopping:
            try:
                await self._session()
                delay = self.mqtt.reconnect_min_s
            except aiomqtt.MqttError as exc:
                if self._stopping:
                    return
                self.connected.clear()
                self._client = None
                log.warning("cluster connection lost (%s); reconnecting", exc)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self.mqtt.reconnect_max_s)

    async def _session(self) -> None:
        c = self.mqtt
        will = aiomqtt.Will(self.presence_topic, None, qos=1, retain=True)
        options = aiomqtt_options(c)
        options["keepalive"] = 5  # the others see this node gone within 1.5 keepalives
        if c.protocol != "5":  # MQTT 5 has no clean session flag (clean start, aiomqtt's default)
            options["clean_session"] = True
        async with aiomqtt.Client(
            c.host,
            c.port,
            identifier=f"tocsin-cluster-{self.me.id}",
            will=will,
            timeout=10,
            socket_options=NO_DELAY,
            **options,
        ) as client:
            await client.subscribe(self.prefix + "members/+", qos=1)
            await client.subscribe(self.stream_topic, qos=1)
            await client.subscribe(self.request_topic, qos=1)
            await client.subscribe(self.snapshot_topic, qos=1)
            if self.replicator is not None:
                await client.subscribe(self.state_topic, qos=1)
                await client.subscribe(self.state_snapshot_topic, qos=1)
            await client.publish(self.presence_topic, encode_presence(self.me), qos=1, retain=True)
            self._client = client
            # Ask the others for what they know: a late joiner (or a whole cluster restarting one by one)
            # must not lead with a ledger that misses what was sent while it was away.
            await client.publish(self.request_topic, json.dumps({"sender": self.me.id}).encode(), qos=1)
            self.connected.set()
            self.election.connected = True
            if self.replicator is not None:
                await self.replicator.republish()
            log.info(
                "joined cluster %s as %s (priority %d)",
                self.prefix.split("/")[1],
                self.me.id,
                self.me.priority,
            )
            ticker = asyncio.create_task(self._tick())
            try:
                async for message in client.messages:
                    topic = str(message.topic)
                    if self.replicator is not None and topic in (self.state_topic, self.state_snapshot_topic):
                        await self._on_state(topic, message.payload)
                        continue
                    self._on_message(topic, message.payload)
                    await self._flush()
            finally:
                self.election.connected = False
                self.connected.clear()
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker

    def _on_message(self, topic: str, payload: bytes) -> None:
        now = self.clock.monotonic()
        try:
            if topic == self.stream_topic:
                record = decode_record(payload)
                self.ledger.apply(record, self.clock.time())
                self._pending.extend(self.election.on_record(record, now))
            elif topic == self.request_topic:
                requester = str(json.loads(payload).get("sender", ""))
                if requester and requester != self.me.id:
                    self._answer(requester)
            elif topic == self.snapshot_topic:
                for key, state, term, at in decode_snapshot(payload):
                    self.ledger.merge(key, state, term, at)  # type: ignore[arg-type]
            elif topic.startswith(self.prefix + "members/"):
                member = topic.rsplit("/", 1)[1]
                presence = decode_presence(payload)
                if presence is not None and presence.id != member:
                    raise RecordError(f"presence of {presence.id!r} on the topic of {member!r}")
                self._pending.extend(self.election.on_presence(member, presence, now))
        except (RecordError, json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
            self.bad_records += 1
            log.warning("ignored a bad cluster record on %s: %s", topic, exc)

    async def _on_state(self, topic: str, payload: object) -> None:
        assert self.replicator is not None
        if not isinstance(payload, bytes):
            self.bad_records += 1
            return
        if topic == self.state_topic:
            await self.replicator.receive(payload)
            return
        try:
            data = json.loads(payload)
            records = [decode(item) for item in data["records"]]
        except (RecordError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
            self.bad_records += 1
            log.warning("ignored a bad state snapshot: %s", exc)
            return
        await self.replicator.merge_snapshot(records)

    def _answer(self, requester: str) -> None:
        if self.replicator is not None:
            records = self.replicator.store.snapshot()
            state_topic = self.prefix + f"state/snap/{requester}"
            for i in range(0, len(records), SNAPSHOT_CHUNK):
                self._outbox.append((state_topic, _state_chunk(records[i : i + SNAPSHOT_CHUNK])))
        entries = [(e.nid, e.state, e.term, e.at) for e in self.ledger.entries()]
        topic = self.prefix + f"ledger/snap/{requester}"
        for i in range(0, len(entries), SNAPSHOT_CHUNK):
            self._outbox.append((topic, encode_snapshot(self.me.id, entries[i : i + SNAPSHOT_CHUNK])))

    async def _tick(self) -> None:
        while True:
            try:
                self._pending.extend(self.election.tick(self.clock.monotonic()))
                await self._flush()
            except aiomqtt.MqttError as exc:
                # A lost heartbeat or claim is safe (the lease covers it); a dead ticker is not.
                log.warning("cluster publish failed (%s); continuing", exc)
            await asyncio.sleep(TICK_S)

    async def _flush(self) -> None:
        outbox, self._outbox = self._outbox, []
        for topic, payload in outbox:
            if self._client is not None:
                await self._client.publish(topic, payload, qos=1)
        actions, self._pending = self._pending, []
        for action in actions:
            if isinstance(action, Publish):
                if self._client is not None:
                    await self._client.publish(self.stream_topic, encode_record(action.record), qos=1)
            else:
                log.info(
                    "cluster: now %s of term %d (leader %s): %s",
                    action.role,
                    action.term,
                    action.leader or "being elected",
                    action.reason,
                )
                if self.on_change is not None:
                    self.on_change(action)

    async def leave(self) -> None:
        """Graceful: hand leadership over, remove our presence, disconnect without firing the will."""
        self._stopping = True
        client = self._client
        if client is None:
            return
        self._pending.extend(self.election.step_down(self.clock.monotonic()))
        await self._flush()
        await client.publish(self.presence_topic, b"", qos=1, retain=True)


def _state_chunk(records: list[Record]) -> bytes:
    return b'{"records":[' + b",".join(encode(r) for r in records) + b"]}"
