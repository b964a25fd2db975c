"""Work only the leader does, kept as replicated records until it is done: scheduled pushes, and the
deliveries a deposed leader handed over.

- ``push``, key the notification key, value ``{at, notification, audience}``: written by the instance that
  took ``POST /v1/push`` with a ``schedule_at`` (answered 202 once echoed), so it is on every instance's disk
  and survives a full restart. At its time the leader submits it (origin ``schedule``: through the send
  ledger, so a new leader that fires it again after a crash skips what was sent), waits until the
  deliveries are in its outbox, then deletes the record (a tombstone).
- ``handover``, key the delivery key, value ``{notification, audience, provider, token, attempts}``: a
  delivery an instance still had pending when it was no longer leader (deposed while retrying, or restarted
  as a follower). Its outbox row ends ``handed_over``; the leader puts it in its own outbox (the ledger skips
  it when it was already sent) and deletes the record. So a deposed leader's rows never stay pending, and the
  deliveries are sent by the leader, once.

Without a cluster the same records live in the instance's own ``state.jsonl`` (``local_replicator``), so
scheduled pushes survive a restart there too.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from registrations.directory import StoreDirectory
from registrations.model import Audience
from service.clock import Clock
from service.cluster.replica import HybridClock, Record, ReplicaStore, Replicator, ReplicaUnavailable
from service.notify.dispatch import Dispatcher
from service.notify.model import Delivery, Notification
from service.notify.pipeline import Pipeline
from service.outbox import decode, encode

log = logging.getLogger("tocsin.cluster")
PUSH, HANDOVER = "push", "handover"
_AUDIENCE_TUPLES = {f.name for f in dataclasses.fields(Audience) if f.name not in ("expression", "where")}


def local_replicator(origin: str, path: Path, clock: Clock) -> Replicator:
    """A replicator of one: records are durable in ``path`` and confirmed at once (no cluster to echo)."""
    replicator = Replicator(origin, ReplicaStore(path), HybridClock(lambda: int(clock.time() * 1000)), _none)
    replicator.publish = replicator.receive  # its own echo
    return replicator


async def _none(raw: bytes) -> None:
    return None


def encode_notification(n: Notification) -> dict[str, Any]:
    audience = {k: list(v) if k in _AUDIENCE_TUPLES else v for k, v in dataclasses.asdict(n.audience).items()}
    return {"notification": json.loads(encode(n)), "audience": audience}


def decode_notification(value: dict[str, Any]) -> Notification:
    n = decode(json.dumps(value["notification"]))
    aud: dict[str, Any] = {k: tuple(v) if k in _AUDIENCE_TUPLES else v for k, v in value["audience"].items()}
    return dataclasses.replace(n, audience=Audience(**aud))


class LeaderJobs:
    def __init__(
        self,
        replicator: Replicator,
        pipeline: Pipeline,
        dispatcher: Dispatcher,
        stores: StoreDirectory,
        clock: Clock,
        leading: Callable[[], bool],
        written: Callable[[], Awaitable[None]],
    ) -> None:
        self.replicator, self.pipeline, self.dispatcher = replicator, pipeline, dispatcher
        self.stores, self.clock, self.leading, self.written = stores, clock, leading, written
        self.pushes: dict[str, dict[str, Any]] = dict(replicator.store.live(PUSH))
        self.handovers: dict[str, dict[str, Any]] = dict(replicator.store.live(HANDOVER))
        self.done = {PUSH: 0, HANDOVER: 0}
        self.bad = 0
        replicator.appliers[PUSH] = replicator.appliers[HANDOVER] = self._apply
        self._wake = asyncio.Event()

    async def schedule(self, n: Notification, at: float) -> None:
        """``ReplicaUnavailable`` (503) when the cluster did not confirm."""
        await self.replicator.write(PUSH, n.nid, {"at": at, **encode_notification(n)})

    async def hand_over(self, key: str, d: Delivery) -> None:
        """``ReplicaUnavailable`` when the cluster did not confirm (the row then stays pending here)."""
        reg = d.registration
        value = {"provider": reg.provider, "token": reg.token, "attempts": d.attempt}
        await self.replicator.write(HANDOVER, key, {**value, **encode_notification(d.notification)})

    def wake(self) -> None:
        self._wake.set()

    async def _apply(self, record: Record) -> None:
        jobs = self.pushes if record.kind == PUSH else self.handovers
        if record.value is None:
            jobs.pop(record.key, None)
        else:
            jobs[record.key] = record.value
            self._wake.set()

    async def run(self) -> None:
        """Supervised: while leading, does what is due; sleeps until the next push or a change."""
        while True:
            self._wake.clear()
            wait = 3600.0
            if self.leading():
                try:
                    wait = await self._work()
                except ReplicaUnavailable as exc:
                    log.warning("scheduled work not confirmed by the cluster, again in 1 s: %s", exc)
                    wait = 1.0
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def _work(self) -> float:
        now = self.clock.time()
        for key, value in list(self.handovers.items()):
            if not self.leading():
                return 3600.0
            await self._take_over(key, value, now)
        following = 3600.0
        for key, value in sorted(self.pushes.items(), key=lambda kv: float(kv[1].get("at", 0))):
            at = float(value.get("at", 0))
            if at > now:
                following = min(following, at - now)
                continue
            if not self.leading():
                return 3600.0
            try:
                n = dataclasses.replace(decode_notification(value), origin="schedule")
            except (KeyError, TypeError, ValueError) as exc:
                self.bad += 1
                log.warning("dropping a bad scheduled push %s: %r", key, exc)
            else:
                count = await self.pipeline.submit(n, now)
                await self.written()
                log.info("scheduled push %s handed %d deliveries to the providers", key, count)
            await self.replicator.delete(PUSH, key)
            self.done[PUSH] += 1
        return following

    async def _take_over(self, key: str, value: dict[str, Any], now: float) -> None:
        try:
            n = decode_notification(value)
            provider, token, attempts = str(value["provider"]), str(value["token"]), int(value["attempts"])
        except (KeyError, TypeError, ValueError) as exc:
            self.bad += 1
            log.warning("dropping a bad handed-over delivery %s: %r", key, exc)
        else:
            store = self.stores.store(n.tenant)
            reg = await store.get(provider, token) if store is not None else None
            if reg is not None and reg.state == "active" and now < n.expires:
                await self.dispatcher.submit(Delivery(n, reg, attempts))
                await self.written()
        await self.replicator.delete(HANDOVER, key)
        self.done[HANDOVER] += 1
