"""MQTT clients side by side: one subscriber at QoS 1 that acknowledges only once the message is durable.

Every subscriber runs as its own process against the same Mosquitto and the same publisher (this process,
paho with a background thread), and does the same work per message: read the payload (tocsin's
``parse_payload``), buffer one row in tocsin's journal (service/journal.py, group commit in a writer thread),
and send the PUBACK only once that row is committed. Measured: messages per second from the first to the
last committed message, and the subscriber's CPU µs per message.
  - tocsin:  the MQTT intake itself (service/sources/mqtt.py: paho on the event loop, manual PUBACKs, with
             the I/O of service/sources/paho_client.py), MQTT 5;
  - paho:    the same intake on paho's own ``Client`` I/O (what it was before paho_client.py), MQTT 5;
  - gmqtt:   gmqtt with ``optimistic_acknowledgement=False`` (its PUBACK follows the awaited ``on_message``),
             MQTT 5;
  - aiomqtt: aiomqtt's message queue; it cannot hold back a PUBACK (paho acknowledges on receipt), so it is
             the same work with a weaker guarantee, for reference.
Usage: scripts/bench clients [--messages 50000] [--clients tocsin,paho,gmqtt,aiomqtt] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.support import Mosquitto

CLIENTS = ("tocsin", "paho", "gmqtt", "aiomqtt")
TOPIC = "bench/clients/{}"


class Durable:
    """The same durable step for every client: one journal row per message, acknowledged after commit."""

    def __init__(self, path: Path, expected: int) -> None:
        from service.journal import Journal, Statement

        self.journal = Journal(path)
        self.journal.db.execute("CREATE TABLE events (topic TEXT, payload BLOB)")
        self.journal.start()
        self._rows: list[tuple[str, bytes]] = []
        self.journal.register("events", lambda: self._take(Statement))
        self.expected, self.received, self.committed = expected, 0, 0
        self.first: float | None = None
        self.cpu0 = 0.0
        self.done = asyncio.Event()

    def _take(self, statement: Any) -> list[Any]:
        rows, self._rows = self._rows, []
        return [statement("INSERT INTO events VALUES (?, ?)", rows)] if rows else []

    def add(self, topic: str, payload: bytes, parse: bool = True) -> None:
        """``parse``: read the payload here (the intake has read it already)."""
        from service.sources.payload import MalformedPayload, parse_payload

        if self.first is None:
            self.first, self.cpu0 = time.perf_counter(), _cpu()
        if parse:
            with contextlib.suppress(MalformedPayload):
                parse_payload(payload)
        self._rows.append((topic, payload))
        self.received += 1

    async def commit(self) -> None:
        """Returns once every message added before the call is committed."""
        if self.done.is_set():
            return
        added = self.received
        await self.journal.commit()
        self.committed = max(self.committed, added)
        if self.committed >= self.expected:
            self.done.set()

    def report(self) -> dict[str, Any]:
        assert self.first is not None
        seconds, cpu = time.perf_counter() - self.first, _cpu() - self.cpu0
        return {"messages": self.committed, "seconds": seconds, "cpu_s": cpu}


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def subscribe_tocsin(port: int, durable: Durable, plain_paho: bool) -> None:
    from rules.event import Event
    from service.clock import SystemClock
    from service.config import MqttConfig
    from service.metrics import Metrics
    from service.sources import mqtt as intake

    if plain_paho:  # paho's own I/O and Properties, as before service/sources/paho_client.py
        from paho.mqtt import _packet
        from paho.mqtt.properties import Properties

        class PlainPaho(mqtt.Client):
            buffered = False

        _packet.Properties = Properties  # type: ignore[attr-defined]
        intake.IntakeClient = PlainPaho  # type: ignore[attr-defined,assignment]

    class Sink:
        async def handle(self, event: Event) -> None:
            durable.add(event.topic, b"", parse=False)

        async def commit(self) -> None:
            await durable.commit()

    config = MqttConfig(host="127.0.0.1", port=port, embedded_broker="never", protocol="5")
    source = intake.MqttIntake(
        config, f"bench-{os.getpid()}", [TOPIC.format("#")], Metrics(), SystemClock(), durable.journal
    )
    run = asyncio.create_task(source.run(Sink()))
    await source.connected.wait()
    print("ready", flush=True)
    await durable.done.wait()
    await source.stop()
    await run


async def subscribe_gmqtt(port: int, durable: Durable) -> None:
    import gmqtt

    client = gmqtt.Client(f"bench-{os.getpid()}", optimistic_acknowledgement=False, receive_maximum=1000)

    async def on_message(client: Any, topic: str, payload: bytes, qos: int, properties: Any) -> int:
        durable.add(topic, payload)
        await durable.commit()
        return 0  # success: gmqtt sends the PUBACK now

    subscribed = asyncio.Event()
    client.on_message = on_message
    client.on_subscribe = lambda *a: subscribed.set()
    await client.connect("127.0.0.1", port, version=gmqtt.constants.MQTTv50)
    client.subscribe(TOPIC.format("#"), qos=1)
    await subscribed.wait()
    print("ready", flush=True)
    await durable.done.wait()
    await client.disconnect()


async def subscribe_aiomqtt(port: int, durable: Durable) -> None:
    import aiomqtt

    async with aiomqtt.Client("127.0.0.1", port, identifier=f"bench-{os.getpid()}") as client:
        await client.subscribe(TOPIC.format("#"), qos=1)
        print("ready", flush=True)

        async def committer() -> None:
            while not durable.done.is_set():
                await durable.commit()
                await asyncio.sleep(0)

        task = asyncio.create_task(committer())
        async for message in client.messages:
            durable.add(str(message.topic), bytes(message.payload))
            if durable.received >= durable.expected:
                break
        await durable.done.wait()
        await task


async def subscriber(name: str, port: int, count: int, workdir: Path) -> None:
    durable = Durable(workdir / f"{name}.db", count)
    if name in ("tocsin", "paho"):
        await subscribe_tocsin(port, durable, plain_paho=name == "paho")
    elif name == "gmqtt":
        await subscribe_gmqtt(port, durable)
    else:
        await subscribe_aiomqtt(port, durable)
    print(json.dumps(durable.report()), flush=True)
    durable.journal.close()


def measure(name: str, broker: Mosquitto, count: int, workdir: Path) -> dict[str, Any]:
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "tests.bench.clients", "--subscriber", name),
            *("--port", str(broker.port), "--messages", str(count), "--workdir", str(workdir)),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError(f"{name}: the subscriber did not start")
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{name}")
    pub.max_inflight_messages_set(2000)
    pub.max_queued_messages_set(0)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    body = json.dumps({"event": "ring", "device": "d1", "seq": 0, "room": "hall"})
    for i in range(count):
        pub.publish(TOPIC.format(i % 50), body, qos=1)
    try:
        out, _ = proc.communicate(timeout=max(120, count / 500))
    finally:
        pub.loop_stop()
        pub.disconnect()
    r = json.loads(out.strip().splitlines()[-1])
    if r["messages"] < count:
        raise RuntimeError(f"{name}: {r['messages']} of {count} messages committed")
    return {
        "msgs_per_s": round(r["messages"] / r["seconds"]),
        "cpu_us_per_msg": round(r["cpu_s"] / r["messages"] * 1e6, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--messages", type=int, default=50_000, help="messages per client")
    ap.add_argument("--clients", default=",".join(CLIENTS), help="which, comma-separated")
    ap.add_argument("--smoke", action="store_true", help="a few seconds, for the suite: it still runs")
    ap.add_argument("--subscriber", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.subscriber:
        asyncio.run(subscriber(args.subscriber, args.port, args.messages, args.workdir))
        return
    if args.smoke:
        args.messages = 2000
    names = [n for n in args.clients.split(",") if n]
    unknown = set(names) - set(CLIENTS)
    if unknown:
        ap.error(f"unknown clients: {', '.join(sorted(unknown))} (known: {', '.join(CLIENTS)})")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tocsin-bench-") as tmp:
        work = Path(tmp)
        broker = Mosquitto(work / "broker")
        broker.start()
        try:
            for name in names:
                print(f"{name}: {args.messages} messages at QoS 1 ...", flush=True)
                results[name] = measure(name, broker, args.messages, work)
                r = results[name]
                print(f"  {r['msgs_per_s']} messages/s, {r['cpu_us_per_msg']} µs of CPU each", flush=True)
        finally:
            broker.stop()
    print(json.dumps({"messages": args.messages, **results}))


if __name__ == "__main__":
    main()
