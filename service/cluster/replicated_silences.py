"""Silences through the replicated-record layer: one created or deleted through any instance mutes (or stops
muting) on every instance, the leader included, and survives a takeover.

Kind ``silence``, key the silence id, value ``Silence.to_json()``; deletion is a tombstone. Each instance
applies the winning record to its own ``Silences`` (whose ``on_change`` keeps storing them locally).
"""

from __future__ import annotations

import logging
import re

from service.cluster.replica import Record, Replicator
from service.notify.noise import Silence, Silences

KIND = "silence"
log = logging.getLogger("tocsin.cluster")


class ReplicatedSilences:
    """``add``/``remove`` raise ``ReplicaUnavailable`` (answer 503) when the cluster did not confirm."""

    def __init__(self, silences: Silences, replicator: Replicator) -> None:
        self.silences, self.replicator = silences, replicator
        replicator.appliers[KIND] = self._apply

    async def add(self, silence: Silence) -> Silence:
        await self.replicator.write(KIND, silence.id, silence.to_json())
        return silence

    async def remove(self, silence_id: str) -> bool:
        if self.silences.get(silence_id) is None:
            return False
        await self.replicator.delete(KIND, silence_id)
        return True

    async def _apply(self, record: Record) -> None:
        if record.value is None:
            self.silences.remove(record.key)
            return
        try:
            self.silences.add(Silence.from_json(record.value))
        except (KeyError, TypeError, ValueError, re.error) as exc:
            log.warning("ignored a bad replicated silence %s: %r", record.key, exc)
