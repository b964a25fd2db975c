"""Noise state through the replicated-record layer: acknowledgements, cooldowns and the start of repeats and
escalations are the same on every instance, so a new leader neither escalates an alert acknowledged through
another instance nor re-sends what the old leader's cooldown held back.

Kinds (``service.notify.noise.STATE_KINDS``), each keyed by alert id:

- ``ack``: ``{episode, by, comment, time}``, written through any instance (``POST /v1/alerts/{id}/ack``); the
  answer is 200 only once the broker echoed it, else 503.
- ``cooldown``: ``{at, nid}``, the last notification the leader's cooldown admitted.
- ``followup``: ``{episode, opened}``, when the leader started the alert's repeats and escalation; every
  instance schedules them from that time (the notification keys are then the same everywhere and the send
  ledger skips what the old leader sent).

The leader's own changes (cooldown, followup) are written in the background; ``flushed()`` waits until all of
them were echoed (or failed), and the gate calls it before each send's ``intent``: the state behind a push is
on the cluster channel before the push, so a takeover right after it sees that state.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from service.cluster.replica import Record, Replicator, ReplicaUnavailable
from service.notify.noise import STATE_KINDS, Ack, NoiseControl

log = logging.getLogger("tocsin.cluster")
MAX_IN_FLIGHT = 10_000


class ReplicatedNoise:
    def __init__(self, noise: NoiseControl, replicator: Replicator) -> None:
        self.noise, self.replicator = noise, replicator
        self._writes: set[asyncio.Task[None]] = set()
        self.failed = 0  # background writes the broker did not echo (republished on reconnection)
        self.dropped = 0  # changes not written: too many writes in flight
        self.bad = 0  # records from another instance that did not make sense
        for kind in STATE_KINDS:
            replicator.appliers[kind] = self._apply
            for key, value in replicator.store.live(kind).items():  # survived a restart in state.jsonl
                self._import(kind, key, value)
        noise.on_state = self._changed

    async def ack(self, alert_id: str, by: str, comment: str, now: float) -> Ack | None:
        """Acknowledge on every instance; ``ReplicaUnavailable`` (503) when the cluster did not confirm."""
        n = self.noise.open_alerts().get(alert_id)
        if n is None:
            return None
        a = Ack(alert_id, n.episode, by, comment, now)
        await self.replicator.write("ack", alert_id, self.noise.acks.export(a))
        return a

    def _changed(self, kind: str, key: str, value: Any) -> None:
        if len(self._writes) >= MAX_IN_FLIGHT:
            self.dropped += 1
            return
        task = asyncio.get_running_loop().create_task(self._write(kind, key, value))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, kind: str, key: str, value: Any) -> None:
        try:
            await self.replicator.write(kind, key, value)
        except ReplicaUnavailable as exc:
            self.failed += 1
            log.warning("noise state not confirmed by the cluster (republished on reconnection): %s", exc)

    async def flushed(self) -> None:
        """Every change made so far was echoed by the broker (or its write failed)."""
        if self._writes:
            await asyncio.gather(*list(self._writes), return_exceptions=True)

    async def _apply(self, record: Record) -> None:
        if record.origin == self.replicator.origin and record.kind != "ack":
            return  # this instance's own change: already in effect
        self._import(record.kind, record.key, record.value)

    def _import(self, kind: str, key: str, value: Any) -> None:
        try:
            self.noise.import_state(kind, key, value)
        except ValueError as exc:
            self.bad += 1
            log.warning("ignored bad replicated noise state: %s", exc)
