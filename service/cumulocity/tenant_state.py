"""What must survive a pod, kept in the tenant: one fragment on each alarm source's managed object.

The platform discards a microservice's disk, and replicas share a tenant's alarm stream partitioned by
source id (specs/cumulocity.md §3a, shared tokens: all notifications of one device go to one connection).
So the state of a source's alarms lives on that source's managed object, fragment ``tocsin_AlarmState``:

- ``versions``: per platform alarm id, the last handled version (``inbox.Version``), its type and when it
  was handled: drops redelivered and out-of-order frames, and names the alarm a DELETE frame removes;
- ``alerts``: the rule engine's alerts of this source (``rules.state_codec.dump_alert``): open alerts,
  pending timers;
- ``acks``: their acknowledgements (episode, by, comment, time);
- ``escalated``: per alert, the episode and the escalation steps already sent.

The replica that handles a frame reads the fragment first (read through: the source may have been handled
by another replica or pod since), and writes it before the frame is acknowledged. Only one connection gets
a source's frames at a time, so the fragment has one writer at a time. Pure data here; I/O in ``SourceStore``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from service.cumulocity.client import C8yClient, C8yError
from service.cumulocity.inbox import Verdict, Version, verdict, version_of

log = logging.getLogger("tocsin.cumulocity")
FRAGMENT = "tocsin_AlarmState"
MAX_VERSIONS = 500  # per source: the oldest handled versions are forgotten first


@dataclass
class SourceState:
    versions: dict[str, list[Any]] = field(default_factory=dict)  # alarm id -> [lastUpdated, fp, seen, type]
    alerts: dict[str, dict[str, Any]] = field(default_factory=dict)  # alert id -> dumped AlertState
    acks: dict[str, dict[str, Any]] = field(default_factory=dict)  # alert id -> {episode, by, comment, time}
    escalated: dict[str, dict[str, Any]] = field(default_factory=dict)  # alert id -> {episode, steps}
    owner: str | None = None  # the consumer name of the replica that wrote it last
    exists: bool = True  # False: the managed object is gone (nothing can be written)

    @classmethod
    def from_fragment(cls, f: Any) -> SourceState:
        if not isinstance(f, Mapping):
            return cls()

        def part(name: str) -> dict[str, Any]:
            value = f.get(name)
            return dict(value) if isinstance(value, Mapping) else {}

        versions = {k: v for k, v in part("versions").items() if isinstance(v, list) and len(v) == 4}
        owner = f.get("owner")
        return cls(
            versions,
            part("alerts"),
            part("acks"),
            part("escalated"),
            owner=owner if isinstance(owner, str) else None,
        )

    def to_fragment(self) -> dict[str, Any]:
        return {
            "versions": self.versions,
            "alerts": self.alerts,
            "acks": self.acks,
            "escalated": self.escalated,
            "owner": self.owner,
        }

    def seen(self, alarm_id: str) -> Version | None:
        v = self.versions.get(alarm_id)
        return None if v is None else Version(v[0], str(v[1]))

    def check(self, alarm: Mapping[str, Any]) -> Verdict:
        alarm_id = alarm.get("id")
        if alarm_id is None:
            return "new"
        return verdict(self.seen(str(alarm_id)), version_of(alarm))

    def record(self, alarm: Mapping[str, Any], now: float) -> None:
        alarm_id = alarm.get("id")
        if alarm_id is None:
            return
        v = version_of(alarm)
        self.versions.pop(str(alarm_id), None)  # re-inserted last: the dict stays oldest first
        self.versions[str(alarm_id)] = [v.last_updated, v.fingerprint, now, str(alarm.get("type") or "")]
        while len(self.versions) > MAX_VERSIONS:
            del self.versions[next(iter(self.versions))]

    def purge(self, before: float) -> None:
        old = [a for a, v in self.versions.items() if not isinstance(v[2], int | float) or v[2] < before]
        for alarm_id in old:
            del self.versions[alarm_id]

    def type_of(self, alarm_id: str) -> str | None:
        v = self.versions.get(alarm_id)
        return str(v[3]) if v is not None and v[3] else None


def json_safe(value: Any) -> Any:
    """``value`` as the platform gives it back (JSON), so that what is kept compares with what is read."""
    return json.loads(json.dumps(value, separators=(",", ":"), default=str))


class SourceStore:
    """Reads and writes the fragment on the source's managed object, as the tenant's service user."""

    def __init__(self, client: C8yClient, tenant: str) -> None:
        self.client, self.tenant = client, tenant
        self.reads = 0
        self.writes = 0

    async def load(self, source_id: str) -> SourceState:
        """The source's state; empty when it has none; ``exists`` False when the managed object is gone.
        Raises ``C8yError`` when the inventory cannot answer (the frame then stays unacknowledged)."""
        self.reads += 1
        try:
            mo = await self.client.request("GET", f"/inventory/managedObjects/{source_id}")
        except C8yError as exc:
            if exc.status == 404:
                return SourceState(exists=False)
            raise
        return SourceState.from_fragment(mo.get(FRAGMENT) if isinstance(mo, Mapping) else None)

    async def save(self, source_id: str, state: SourceState) -> None:
        if not state.exists:
            return
        self.writes += 1
        try:
            await self.client.request(
                "PUT", f"/inventory/managedObjects/{source_id}", json={FRAGMENT: state.to_fragment()}
            )
        except C8yError as exc:
            if exc.status != 404:
                raise
            state.exists = False  # the device was deleted meanwhile: nothing left to keep for it


PRESENCE = "tocsin_Replica"


class Presence:
    """Which replicas are up, per tenant: each keeps a managed object of type ``tocsin_Replica`` named by
    its consumer name, its time written every ``every_s`` (and deleted at a graceful stop). Repeats and
    escalations of a source go out from the replica that wrote its state last while that one is up;
    otherwise from whichever replica has the alert (a pod that replaced a stopped one)."""

    def __init__(self, client: C8yClient, consumer: str, every_s: float) -> None:
        self.client, self.consumer, self.every_s = client, consumer, every_s
        self.mo_id: str | None = None
        self._seen: dict[str, float] = {}  # consumer -> time of its last beat, as last read
        self._read_at = float("-inf")

    async def beat(self, now: float) -> None:
        fragment = {PRESENCE: {"consumer": self.consumer, "time": now}}
        if self.mo_id is None:
            async for mo in self.client.pages(
                "/inventory/managedObjects", "managedObjects", {"type": PRESENCE}
            ):
                if mo.get("name") == self.consumer and mo.get("id"):
                    self.mo_id = str(mo["id"])
                    break
        if self.mo_id is not None:
            try:
                await self.client.request("PUT", f"/inventory/managedObjects/{self.mo_id}", json=fragment)
                return
            except C8yError as exc:
                if exc.status != 404:
                    raise
        created = await self.client.request(
            "POST",
            "/inventory/managedObjects",
            json={"type": PRESENCE, "name": self.consumer, **fragment},
            retry=False,
        )
        if isinstance(created, Mapping) and created.get("id"):
            self.mo_id = str(created["id"])

    async def leave(self) -> None:
        if self.mo_id is not None:
            with contextlib.suppress(C8yError):
                await self.client.request("DELETE", f"/inventory/managedObjects/{self.mo_id}")
            self.mo_id = None

    async def alive(self, consumer: str, now: float) -> bool:
        """Whether ``consumer`` beat within three periods (read again at most once a period)."""
        if consumer == self.consumer:
            return True
        if now - self._read_at >= self.every_s or consumer not in self._seen:
            seen: dict[str, float] = {}
            async for mo in self.client.pages(
                "/inventory/managedObjects", "managedObjects", {"type": PRESENCE}
            ):
                f = mo.get(PRESENCE)
                if isinstance(f, Mapping) and isinstance(f.get("time"), int | float):
                    seen[str(f.get("consumer"))] = float(f["time"])
            self._seen, self._read_at = seen, now
        return now - self._seen.get(consumer, float("-inf")) < 3 * self.every_s
