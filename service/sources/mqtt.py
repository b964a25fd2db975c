"""The MQTT source on aiomqtt: QoS 1 subscriptions on a persistent session, reconnect with backoff and
resubscribe, one bad payload never stops the loop."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from typing import cast

import aiomqtt

from rules.event import Event, device_of, event_id
from service.clock import Clock
from service.config import MqttConfig
from service.metrics import Metrics
from service.ratelimit import RateLimitedLog
from service.sources.payload import MalformedPayload, parse_payload

log = logging.getLogger("tocsin.mqtt")
# paho leaves Nagle's algorithm on; with delayed ACKs every small QoS 1 round trip (PUBACK) can wait ~40 ms.
NO_DELAY = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)


class BatchQueue(asyncio.Queue[aiomqtt.Message]):
    """aiomqtt's incoming queue (its public ``queue_type``), drained a batch at a time.

    aiomqtt's own iterator spends a task and two waits on every message; at thousands of messages a second
    that is a third of the CPU. Here paho's callback appends, and one consumer takes everything that arrived
    since it last looked. ``get()`` is never fed, so aiomqtt's iterator only reports the disconnect.
    """

    def __init__(self) -> None:
        super().__init__()
        self._items: deque[aiomqtt.Message] = deque()
        self._wakeup: asyncio.Future[None] | None = None
        self._closed = False

    def put_nowait(self, item: aiomqtt.Message) -> None:
        self._items.append(item)
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def qsize(self) -> int:
        return len(self._items)

    def close(self) -> None:
        self._closed = True
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def take(self) -> list[aiomqtt.Message]:
        """Everything received so far; waits while there is nothing; empty once closed and drained."""
        while not self._items and not self._closed:
            self._wakeup = asyncio.get_running_loop().create_future()
            await self._wakeup
        batch = list(self._items)
        self._items.clear()
        return batch


EventHandler = Callable[[Event], Awaitable[None]]


class MqttSource:
    source = "mqtt"

    def __init__(
        self,
        config: MqttConfig,
        client_id: str,
        topics: list[str],
        handler: EventHandler,
        metrics: Metrics,
        clock: Clock,
    ) -> None:
        self.config, self.client_id, self.topics = config, client_id, topics
        self.handler, self.metrics, self.clock = handler, metrics, clock
        self.connected = asyncio.Event()
        self.last_error: str | None = None
        self._bad_payload_log = RateLimitedLog(log, clock, 60.0)
        self._live: aiomqtt.Client | None = None
        self.subscribed: list[str] = []  # what the broker acknowledged on the live connection
        self._resubscribe: asyncio.Task[None] | None = None

    def set_topics(self, topics: list[str]) -> None:
        """New subscriptions (after a rule reload): applied now when connected, else at the next connect."""
        old, self.topics = self.topics, topics
        client = self._live
        if client is not None and self.is_connected and old != topics:
            self._resubscribe = asyncio.get_running_loop().create_task(self._apply(client, old, topics))

    async def _apply(self, client: aiomqtt.Client, old: list[str], new: list[str]) -> None:
        try:
            for topic in new:
                if topic not in old:
                    await client.subscribe(topic, qos=1)
            gone = [t for t in old if t not in new]
            if gone:
                await client.unsubscribe(gone)
            self.subscribed = list(new)
        except aiomqtt.MqttError as exc:  # the reconnect subscribes to self.topics anyway
            log.warning("could not change subscriptions now (%s); they apply at the next connect", exc)

    @property
    def is_connected(self) -> bool:
        return self.connected.is_set()

    def _client(self, queue: BatchQueue) -> aiomqtt.Client:
        c = self.config
        return aiomqtt.Client(
            c.host,
            c.port,
            identifier=self.client_id,
            clean_session=False,
            keepalive=c.keepalive_s,
            username=c.username,
            password=c.password.get_secret_value() if c.password else None,
            timeout=10,
            max_queued_incoming_messages=0,
            queue_type=cast("type[asyncio.Queue[aiomqtt.Message]]", lambda maxsize: queue),
            socket_options=NO_DELAY,
        )

    async def run(self) -> None:
        """Consume until cancelled, reconnecting with exponential backoff and jitter."""
        delay = self.config.reconnect_min_s
        while True:
            queue = BatchQueue()
            try:
                async with self._client(queue) as client:
                    for topic in self.topics:
                        await client.subscribe(topic, qos=1)
                    self._live = client
                    self.subscribed = list(self.topics)
                    self.connected.set()
                    self.last_error = None
                    self.metrics.mqtt_connects.inc()
                    log.info(
                        "connected to MQTT broker %s:%d, subscribed to %s",
                        self.config.host,
                        self.config.port,
                        ", ".join(self.topics) or "nothing",
                    )
                    delay = self.config.reconnect_min_s
                    consumer = asyncio.create_task(self._consume(queue), name="mqtt-consumer")
                    try:
                        # Messages go to the batch queue, so this loop only waits for the disconnect, which
                        # aiomqtt reports by raising MqttError here.
                        async for _ in client.messages:
                            pass
                    finally:
                        queue.close()
                        await consumer  # finishes what was received (and acknowledged) before the loss
            except aiomqtt.MqttError as exc:
                self._live = None
                was = self.connected.is_set()
                self.connected.clear()
                self.metrics.mqtt_disconnects.inc()
                self.last_error = str(exc)
                if was:
                    log.warning(
                        "lost the MQTT broker %s:%d (%s); reconnecting",
                        self.config.host,
                        self.config.port,
                        exc,
                    )
                else:
                    log.warning(
                        "cannot reach the MQTT broker %s:%d (%s); retrying in %.1f s",
                        self.config.host,
                        self.config.port,
                        exc,
                        delay,
                    )
            except asyncio.CancelledError:
                self.connected.clear()
                raise
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self.config.reconnect_max_s)

    async def _consume(self, queue: BatchQueue) -> None:
        while True:
            batch = await queue.take()
            if not batch:
                return
            for message in batch:
                await self._on_message(str(message.topic), message.payload)

    async def _on_message(self, topic: str, raw: bytes | bytearray | int | float | str | None) -> None:
        self.metrics.events_received.inc("mqtt")
        data = raw if isinstance(raw, bytes) else str(raw if raw is not None else "").encode()
        try:
            payload = parse_payload(data)
        except MalformedPayload as exc:
            self.metrics.payloads_malformed.inc("mqtt")
            self._bad_payload_log.warning(topic, "malformed payload on %s: %s", topic, exc)
            return
        now = self.clock.time()
        event = Event(event_id(topic, data, payload, now), "mqtt", topic, device_of(payload), now, payload)
        try:
            await self.handler(event)
        except Exception:
            self.metrics.internal_errors.inc("mqtt_handler")
            log.exception("handling the event on %s failed; continuing with the next", topic)
