"""Run one cluster node on its own, printing what it decides as JSON lines: for demos, for watching an
election on a broker, and for the fault tests that kill and stop such processes.

    python -m service.cluster --port 1883 --cluster home --id a --priority 0

Each line is ``{"t": <unix time>, "id", "event": "role"|"sending", ...}``; ``sending`` lines are printed every
tick while the node may send, so a test can check that two nodes never may send at the same moment.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import uuid

from service import __version__
from service.clock import SystemClock
from service.cluster.election import RoleChange
from service.cluster.node import TICK_S, ClusterNode
from service.cluster.records import Presence
from service.cluster.timing import ClusterTiming
from service.config import MqttConfig


def emit(node_id: str, event: str, **fields: object) -> None:
    sys.stdout.write(json.dumps({"t": time.time(), "id": node_id, "event": event, **fields}) + "\n")
    sys.stdout.flush()


async def main(args: argparse.Namespace) -> None:
    me = Presence(args.id, args.priority, uuid.uuid4().hex, __version__)

    def changed(change: RoleChange) -> None:
        emit(args.id, "role", role=change.role, term=change.term, leader=change.leader, reason=change.reason)

    node = ClusterNode(
        MqttConfig(host=args.host, port=args.port, reconnect_min_s=0.1, reconnect_max_s=1.0),
        args.cluster,
        me,
        ClusterTiming(),
        SystemClock(),
        on_change=changed,
    )
    task = asyncio.create_task(node.run())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    emit(args.id, "started", pid=os.getpid())
    while not stop.is_set():
        if node.may_send():
            emit(args.id, "sending", term=node.election.term)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), TICK_S)
    await node.leave()
    emit(args.id, "left")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--cluster", default="tocsin")
    ap.add_argument("--id", required=True)
    ap.add_argument("--priority", type=int, default=100)
    asyncio.run(main(ap.parse_args()))
