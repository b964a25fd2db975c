"""Registrations through the replicated-record layer: a write through any instance reaches every instance's
own registrations store, so the leader's audiences include phones registered through a follower.

Kind ``registration``, key ``<provider>/<token>`` (a token is unique per provider), value the registration's
fields; removal is a tombstone. The local store (SQLite) is a projection of the replicated records: each
instance applies the winning record through its own writer (its local ``created``/``updated`` times are its
own; the replicated record is the canonical state).
"""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any

from registrations.directory import RegistrationWriter
from registrations.model import PROVIDERS, Registration
from registrations.store import StoreUnavailable
from service.cluster.replica import Record, Replicator, ReplicaUnavailable

KIND = "registration"
_TUPLES = {"tags", "channels"}
_FIELDS = {f.name for f in fields(Registration)}


def encode_registration(r: Registration) -> dict[str, Any]:
    return {k: list(v) if k in _TUPLES else v for k, v in asdict(r).items()}


def decode_registration(value: dict[str, Any]) -> Registration:
    data: dict[str, Any] = {k: tuple(v) if k in _TUPLES else v for k, v in value.items() if k in _FIELDS}
    return Registration(**data)


class ReplicatedWriter:
    """A ``RegistrationWriter`` whose writes are confirmed by the cluster (``ReplicaUnavailable``: 503)."""

    def __init__(self, local: RegistrationWriter, replicator: Replicator) -> None:
        self.local, self.replicator = local, replicator
        self._saved: dict[str, Registration] = {}
        replicator.appliers[KIND] = self._apply

    async def upsert(self, registration: Registration) -> Registration:
        key = f"{registration.provider}/{registration.token}"
        try:
            await self.replicator.write(KIND, key, encode_registration(registration))
        except ReplicaUnavailable as exc:
            raise StoreUnavailable(str(exc)) from None  # answered 503 by the HTTP API
        finally:
            saved = self._saved.pop(key, registration)
        return saved

    async def remove(self, provider: str | None, token: str) -> bool:
        found = False
        for p in (provider,) if provider else PROVIDERS:
            if self.replicator.store.get(KIND, f"{p}/{token}") is not None:
                found = True
                try:
                    await self.replicator.delete(KIND, f"{p}/{token}")
                except ReplicaUnavailable as exc:
                    raise StoreUnavailable(str(exc)) from None
        return found

    async def _apply(self, record: Record) -> None:
        if record.value is None:
            provider, _, token = record.key.partition("/")
            await self.local.remove(provider, token)
        else:
            saved = await self.local.upsert(decode_registration(record.value))
            if record.origin == self.replicator.origin:
                self._saved[record.key] = saved  # what this instance's HTTP answer shows
