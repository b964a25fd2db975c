"""The cluster's MQTT side: presence with a last will, the leader stream, and the election ticking.

Topics under ``tocsin/<cluster>/``: ``members/<id>`` (retained presence; the will deletes it) and
``leader/stream`` (heartbeats, claims, stepdowns and the ledger, from one publisher at a time, so MQTT's
per-topic ordering keeps them in order). The node uses a connection of its own, so that its will and its
heartbeat echo measure exactly the cluster's view of this instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable

import aiomqtt

from service.clock import Clock
from service.cluster.election import Action, Election, Publish, RoleChange
from service.cluster.ledger import Ledger
from service.cluster.records import (
    Presence,
    RecordError,
    StreamRecord,
    decode_presence,
    decode_record,
    encode_presence,
    encode_record,
)
from service.cluster.timing import ClusterTiming
from service.config import MqttConfig

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
        self.presence_topic = self.prefix + f"members/{me.id}"
        self.election = Election(me, timing, clock.monotonic())
        self.ledger = Ledger(ledger_retention_s)
        self.on_change = on_change
        self.connected = asyncio.Event()
        self.bad_records = 0
        self._client: aiomqtt.Client | None = None
        self._stopping = False
        self._pending: list[Action] = []

    # -- what the sender asks ------------------------------------------------------------------------------
    @property
    def is_leader(self) -> bool:
        return self.election.role == "leader"

    def may_send(self) -> bool:
        return self.connected.is_set() and self.election.may_send(self.clock.monotonic())

    async def record(self, kind: str, nid: str) -> None:
        """Publish an ``intent`` or ``sent`` record (waits for the broker's PUBACK) and apply it locally."""
        assert kind in ("intent", "sent")
        record = StreamRecord(kind, self.election.term, self.me.id, seq=self.election.next_seq(), nid=nid)  # type: ignore[arg-type]
        self.ledger.apply(record, self.clock.monotonic())
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
        async with aiomqtt.Client(
            c.host,
            c.port,
            identifier=f"tocsin-cluster-{self.me.id}",
            clean_session=True,
            keepalive=5,
            username=c.username,
            password=c.password.get_secret_value() if c.password else None,
            will=will,
            timeout=10,
        ) as client:
            await client.subscribe(self.prefix + "members/+", qos=1)
            await client.subscribe(self.stream_topic, qos=1)
            await client.publish(self.presence_topic, encode_presence(self.me), qos=1, retain=True)
            self._client = client
            self.connected.set()
            log.info(
                "joined cluster %s as %s (priority %d)",
                self.prefix.split("/")[1],
                self.me.id,
                self.me.priority,
            )
            ticker = asyncio.create_task(self._tick())
            try:
                async for message in client.messages:
                    self._on_message(str(message.topic), message.payload)
                    await self._flush()
            finally:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker

    def _on_message(self, topic: str, payload: bytes) -> None:
        now = self.clock.monotonic()
        try:
            if topic == self.stream_topic:
                record = decode_record(payload)
                self.ledger.apply(record, now)
                self._pending.extend(self.election.on_record(record, now))
            elif topic.startswith(self.prefix + "members/"):
                member = topic.rsplit("/", 1)[1]
                presence = decode_presence(payload)
                if presence is not None and presence.id != member:
                    raise RecordError(f"presence of {presence.id!r} on the topic of {member!r}")
                self._pending.extend(self.election.on_presence(member, presence, now))
        except RecordError as exc:
            self.bad_records += 1
            log.warning("ignored a bad cluster record on %s: %s", topic, exc)

    async def _tick(self) -> None:
        while True:
            self._pending.extend(self.election.tick(self.clock.monotonic()))
            await self._flush()
            await asyncio.sleep(TICK_S)

    async def _flush(self) -> None:
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
