"""The MQTT intake: paho-mqtt driven on the asyncio loop, QoS 1, acknowledged only once durable.

paho reads from the socket when the loop says it is readable and calls ``_on_message``, which only appends
the message to the batch under way. The consumer takes what arrived, hands each event to the sink (rules,
notify pipeline: outbox rows buffered), asks the journal to commit, and only then sends the PUBACKs
(paho's ``manual_ack``). While a batch is committed the next one is processed, so the commit's thread and
the loop overlap. The broker sends at most ``mqtt.max_inflight`` messages unacknowledged (MQTT 5 Receive
Maximum), so a slow provider or a stalled commit slows the broker instead of growing memory here.

A message the broker delivers again (DUP flag, after a reconnect or a crash between commit and PUBACK) is
recognised from durable state: per packet id the digest of the last message committed with it, written in
the same transaction as the batch. Such a message is acknowledged and not handled again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from rules.event import Event, EventIdentity, device_of
from service.clock import Clock
from service.config import MqttConfig
from service.journal import Journal, Statement
from service.metrics import Metrics
from service.ratelimit import RateLimitedLog
from service.sources.base import EventSink
from service.sources.broker import NO_DELAY, configure_paho
from service.sources.paho_client import IntakeClient
from service.sources.payload import MalformedPayload, parse_payload

log = logging.getLogger("tocsin.mqtt")
ACK_TABLE = (
    "CREATE TABLE IF NOT EXISTS intake_acks (client_id TEXT NOT NULL, mid INTEGER NOT NULL,"
    " digest BLOB NOT NULL, PRIMARY KEY (client_id, mid)) WITHOUT ROWID"
)
READS_PER_WAKEUP = 256  # packets parsed per readiness callback before yielding to the loop
MAX_SETTLING = 4  # batches committed but not yet acknowledged, at most
# The longest the intake keeps the loop to itself within a batch before it lets other work run.
YIELD_S = 0.005


class MqttError(Exception):
    """The connection could not be made or was lost."""


def digest(topic: str, payload: bytes) -> bytes:
    h = hashlib.blake2b(payload, digest_size=8, key=topic.encode()[:64])
    return h.digest()


class MqttIntake:
    """The ``mqtt`` source (``service.sources.base.Source``)."""

    name = "mqtt"

    def __init__(
        self,
        config: MqttConfig,
        client_id: str,
        topics: list[str],
        metrics: Metrics,
        clock: Clock,
        journal: Journal,
    ) -> None:
        self.config, self.client_id, self.topics = config, client_id, topics
        self.metrics, self.clock, self.journal = metrics, clock, journal
        self.identity = EventIdentity(config.event_id_field)
        # The version spoken: "auto" starts with 5 and keeps 3.1.1 once a broker refused 5.
        self.protocol = "3.1.1" if config.protocol == "3.1.1" else "5"
        self.connected = asyncio.Event()
        self.last_error: str | None = None
        self.subscribed: list[str] = []  # what the broker acknowledged on the live connection
        self._bad_payload_log = RateLimitedLog(log, clock, 60.0)
        self._client: paho.Client | None = None
        self._inbox: deque[paho.MQTTMessage] = deque()
        self._wakeup: asyncio.Future[None] | None = None
        self._lost: asyncio.Future[None] | None = None
        self._stopping = False
        self._stopped = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._settling: deque[asyncio.Task[None]] = deque()
        # Durable: per packet id, the digest of the last message committed with it.
        journal.db.execute(ACK_TABLE)
        self._acked: dict[int, bytes] = {
            mid: bytes(d)
            for mid, d in journal.db.execute(
                "SELECT mid, digest FROM intake_acks WHERE client_id = ?", [client_id]
            )
        }
        self._committing: list[tuple[str, int, bytes]] = []
        journal.register("mqtt-intake", self._collect)

    # -- state --------------------------------------------------------------------------------------------
    @property
    def is_connected(self) -> bool:
        return self.connected.is_set()

    @property
    def ready(self) -> bool:
        return self.is_connected

    def health(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            "connected": self.is_connected,
            "host": self.config.host,
            "port": self.config.port,
            "protocol": self.protocol,
            "unacknowledged": len(self._inbox) + sum(1 for t in self._settling if not t.done()),
        }
        if self.last_error:
            found["error"] = self.last_error
        return found

    def _collect(self) -> list[Statement]:
        rows, self._committing = self._committing, []
        if not rows:
            return []
        return [Statement("INSERT OR REPLACE INTO intake_acks VALUES (?, ?, ?)", rows)]

    def set_topics(self, topics: list[str]) -> None:
        """New subscriptions (after a rule reload): applied now when connected, else at the next connect."""
        old, self.topics = self.topics, topics
        client = self._client
        if client is None or not self.is_connected or old == topics:
            return
        for topic in topics:
            if topic not in old:
                client.subscribe(topic, qos=1)
        gone = [t for t in old if t not in topics]
        if gone:
            client.unsubscribe(gone)
        self.subscribed = list(topics)

    # -- the connection -----------------------------------------------------------------------------------
    def _new_client(self, loop: asyncio.AbstractEventLoop) -> IntakeClient:
        c = self.config
        v5 = self.protocol == "5"
        client = IntakeClient(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if v5 else False,
            manual_ack=True,
        )
        configure_paho(client, c)  # TLS, server name, credentials (service/sources/broker.py)
        loop_thread = threading.get_ident()
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe

        def reader(cl: IntakeClient = client) -> None:
            sock = cl.socket()
            if sock is None:
                return
            # Each loop_read parses one packet; go on while whole packets wait in the client's read buffer
            # or, under TLS, decrypted in the SSL object (the socket itself is then not readable).
            for _ in range(READS_PER_WAKEUP):
                rc = cl.loop_read()
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    self._lose(f"read failed: {paho.error_string(rc)}")
                    return
                if cl.buffered:
                    continue
                pending = getattr(sock, "pending", None)
                if pending is None or pending() == 0:
                    return
            # Fair to the rest of the loop: what is left is read on the next iteration.
            loop.call_soon(reader)

        def writer(cl: paho.Client = client) -> None:
            try:
                rc = cl.loop_write()
            except OSError as exc:
                self._lose(str(exc))
                return
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._lose(f"write failed: {paho.error_string(rc)}")

        def on_loop(action: Callable[[], None]) -> None:
            """paho calls back from the connecting worker thread too; selectors are the loop's alone."""
            if threading.get_ident() == loop_thread:
                action()
            else:
                loop.call_soon_threadsafe(action)

        def opened(cl: paho.Client, userdata: Any, sock: Any) -> None:
            sock.setsockopt(*NO_DELAY[0])

            fd: int = sock.fileno()

            def add() -> None:
                if cl.socket() is sock:  # not closed meanwhile
                    loop.add_reader(fd, reader)

            on_loop(add)

        def closed(cl: paho.Client, userdata: Any, sock: Any) -> None:
            fd = sock.fileno()
            if fd > -1:
                loop.remove_reader(fd)
                loop.remove_writer(fd)

        def want_write(cl: paho.Client, userdata: Any, sock: Any) -> None:
            fd: int = sock.fileno()

            def add() -> None:
                if cl.socket() is sock and cl.want_write():
                    loop.add_writer(fd, writer)

            on_loop(add)

        def no_write(cl: paho.Client, userdata: Any, sock: Any) -> None:
            loop.remove_writer(sock.fileno())

        client.on_socket_open = opened
        client.on_socket_close = closed
        client.on_socket_register_write = want_write
        client.on_socket_unregister_write = no_write
        return client

    def _connect_blocking(self, client: paho.Client) -> None:
        """Runs in a worker thread: DNS, TCP and the TLS handshake may block."""
        c = self.config
        if self.protocol == "5":
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = c.session_expiry_s
            props.ReceiveMaximum = c.max_inflight
            client.connect(c.host, c.port, c.keepalive_s, clean_start=False, properties=props)
        else:
            client.connect(c.host, c.port, c.keepalive_s)

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        waiter = self._connack
        self._got_connack = not (reason.is_failure and reason.value in (0x01, 0x84))  # bad version
        if reason.is_failure:
            if waiter is not None and not waiter.done():
                waiter.set_exception(MqttError(f"the broker refused the connection: {reason}"))
            return
        self._subacks = len(self.topics)
        for topic in self.topics:
            client.subscribe(topic, qos=1)
        if not self.topics and waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        self._subacks -= 1
        waiter = self._connack
        if self._subacks <= 0 and waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        self._lose(f"disconnected: {reason}")

    def _lose(self, why: str) -> None:
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
            self.last_error = why
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(MqttError(why))
        self._wake()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self._inbox.append(message)
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def _misc(self, client: paho.Client) -> None:
        """Keepalive pings and their time-outs. Part of the session: if it fails, the session ends (and
        reconnects) rather than going on without keepalive."""
        try:
            while client.loop_misc() == MQTTErrorCode.MQTT_ERR_SUCCESS:  # noqa: ASYNC110 (paho's own clock)
                await asyncio.sleep(1.0)
        except Exception as exc:
            self.metrics.internal_errors.inc("mqtt_keepalive")
            log.exception("the MQTT keepalive failed")
            self._lose(f"keepalive failed: {exc}")
            return
        self._lose("keepalive: the broker stopped answering")

    # -- running ------------------------------------------------------------------------------------------
    _connack: asyncio.Future[None] | None = None
    _got_connack = False
    _subacks = 0

    async def run(self, sink: EventSink) -> None:
        """Consume until cancelled or stopped, reconnecting with exponential backoff and jitter."""
        delay = self.config.reconnect_min_s
        while not self._stopping:
            try:
                await self._session(sink)
                delay = self.config.reconnect_min_s
            except (MqttError, OSError, TimeoutError) as exc:
                was = self.connected.is_set()
                self.connected.clear()
                self.metrics.mqtt_disconnects.inc()
                self.last_error = str(exc) or exc.__class__.__name__
                if was:
                    log.warning("lost the MQTT broker %s:%d (%s); reconnecting", *self._where(), exc)
                else:
                    log.warning(
                        "cannot reach the MQTT broker %s:%d (%s); retrying in %.1f s",
                        *self._where(),
                        self.last_error,
                        delay,
                    )
            if self._stopping:
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay * random.uniform(0.5, 1.0)):
                    await self._stop_requested.wait()
            delay = min(delay * 2, self.config.reconnect_max_s)
        self._stopped.set()

    def _where(self) -> tuple[str, int]:
        return self.config.host, self.config.port

    async def _session(self, sink: EventSink) -> None:
        loop = asyncio.get_running_loop()
        client = self._new_client(loop)
        self._lost = loop.create_future()
        self._connack = loop.create_future()
        self._connack.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved, always
        self._got_connack = False
        self._inbox.clear()
        misc: asyncio.Task[None] | None = None
        try:
            await loop.run_in_executor(None, self._connect_blocking, client)
            misc = loop.create_task(self._misc(client), name="mqtt-keepalive")
            try:
                async with asyncio.timeout(10):
                    await asyncio.shield(self._connack)
            except (MqttError, TimeoutError):
                if self.config.protocol == "auto" and self.protocol == "5" and not self._got_connack:
                    self.protocol = "3.1.1"
                    log.info("the broker at %s:%d does not speak MQTT 5: using 3.1.1", *self._where())
                raise
            self._client = client
            self.subscribed = list(self.topics)
            self.connected.set()
            self.last_error = None
            self.metrics.mqtt_connects.inc()
            log.info(
                "connected to MQTT broker %s:%d (MQTT %s), subscribed to %s",
                *self._where(),
                self.protocol,
                ", ".join(self.topics) or "nothing",
            )
            await self._consume(client, sink)
        finally:
            self._client = None
            self.connected.clear()
            # What was handled is committed and acknowledged before the connection goes.
            while self._settling:
                await asyncio.gather(self._settling.popleft(), return_exceptions=True)
            if misc is not None:
                misc.cancel()
            if self._lost is not None and not self._lost.done():
                client.disconnect()
                client.loop_write()
            sock = client.socket()
            if sock is not None:
                closed = getattr(client, "_sock_close", None)
                if callable(closed):
                    closed()
        if self._stopping:
            log.info("MQTT intake stopped: everything handled is committed and acknowledged")
        else:
            raise MqttError(self.last_error or "connection lost")

    async def _consume(self, client: paho.Client, sink: EventSink) -> None:
        lost = self._lost
        assert lost is not None
        batch_max = self.config.batch_max
        while not self._stopping and not lost.done():
            if not self._inbox:
                self._wakeup = asyncio.get_running_loop().create_future()
                await self._wakeup
                continue
            batch = [self._inbox.popleft() for _ in range(min(batch_max, len(self._inbox)))]
            mids = await self._handle(batch, sink)
            # Committed even when the connection went meanwhile (the PUBACKs then fail, and the broker's
            # redelivery is recognised as committed).
            task = asyncio.get_running_loop().create_task(self._settle(client, mids, sink))
            self._settling.append(task)
            while len(self._settling) > MAX_SETTLING or (self._settling and self._settling[0].done()):
                await self._settling.popleft()

    async def _handle(self, batch: list[paho.MQTTMessage], sink: EventSink) -> list[int]:
        """Hands the batch's events to the sink; returns the packet ids to acknowledge once committed."""
        mids: list[int] = []
        received = self.metrics.events_received
        clock = asyncio.get_running_loop().time
        turn = clock() + YIELD_S
        for message in batch:
            if clock() >= turn:  # a big batch still lets timers, HTTP and the dispatcher run in between
                await asyncio.sleep(0)
                turn = clock() + YIELD_S
            received.inc("mqtt")
            raw, mid = bytes(message.payload), message.mid
            try:
                topic = message.topic
            except UnicodeDecodeError:  # a broker lets no such topic through; never trust it anyway
                topic = message._topic.decode("utf-8", "replace")
            d = digest(topic, raw)
            if message.dup and self._acked.get(mid) == d:
                self.metrics.duplicates.inc("mqtt", "redelivered")
                log.debug(
                    "message %d on %s was committed before its PUBACK was lost: not handled again", mid, topic
                )
                mids.append(mid)
                continue
            self._acked[mid] = d
            self._committing.append((self.client_id, mid, d))
            mids.append(mid)
            try:
                payload = parse_payload(raw)
            except MalformedPayload as exc:
                self.metrics.payloads_malformed.inc("mqtt")
                self._bad_payload_log.warning(topic, "malformed payload on %s: %s", topic, exc)
                continue
            now = self.clock.time()
            event = Event(
                self.identity(topic, raw, payload, now), "mqtt", topic, device_of(payload), now, payload
            )
            try:
                await sink.handle(event)
            except Exception:
                self.metrics.internal_errors.inc("mqtt_handler")
                log.exception("handling the event on %s failed; continuing with the next", topic)
        return mids

    async def _settle(self, client: paho.Client, mids: list[int], sink: EventSink) -> None:
        """Commit, then acknowledge: a failed commit is retried; the batch is never acknowledged before."""
        delay = 0.05
        while True:
            try:
                await sink.commit()
                break
            except Exception as exc:
                self.metrics.internal_errors.inc("journal")
                log.error("committing a batch of %d messages failed (%s); retrying", len(mids), exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        if self._lost is not None and not self._lost.done():
            for mid in mids:
                client.ack(mid, 1)

    async def stop(self, timeout: float = 10.0) -> None:
        """Take nothing new; the batch under way is committed and acknowledged; then disconnect.
        What was received and not yet handled stays unacknowledged: the broker keeps it for the next run."""
        self._stopping = True
        self._stop_requested.set()
        self._wake()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._stopped.wait()
