"""The MQTT source on aiomqtt: QoS 1 subscriptions on a persistent session, reconnect with backoff and
resubscribe, one bad payload never stops the loop."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

import aiomqtt

from rules.event import Event, device_of, event_id
from service.clock import Clock
from service.config import MqttConfig
from service.metrics import Metrics
from service.ratelimit import RateLimitedLog
from service.sources.payload import MalformedPayload, parse_payload

log = logging.getLogger("tocsin.mqtt")
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

    @property
    def is_connected(self) -> bool:
        return self.connected.is_set()

    def _client(self) -> aiomqtt.Client:
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
        )

    async def run(self) -> None:
        """Consume until cancelled, reconnecting with exponential backoff and jitter."""
        delay = self.config.reconnect_min_s
        while True:
            try:
                async with self._client() as client:
                    for topic in self.topics:
                        await client.subscribe(topic, qos=1)
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
                    async for message in client.messages:
                        await self._on_message(str(message.topic), message.payload)
            except aiomqtt.MqttError as exc:
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
