"""Whose registrations live where: the deployment's own store, and one store per Cumulocity tenant.

A notification or an API caller names a tenant (or none); only that tenant's store is ever read or written
for it. A tenant without a store (not subscribed, or unsubscribed since) has no registrations at all: there
is no fallback to another store, so nothing of one tenant can reach another tenant's users.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from registrations.model import Registration
from registrations.store import RegistrationStore


class RegistrationWriter(Protocol):
    """How the HTTP API writes: durable when it returns (group commit for SQLite, a REST call for the
    Cumulocity inventory)."""

    async def upsert(self, registration: Registration) -> Registration: ...

    async def remove(self, provider: str | None, token: str) -> bool: ...


@dataclass(slots=True)
class Registry:
    """A store and how to write to it."""

    store: RegistrationStore
    writer: RegistrationWriter


class StoreDirectory:
    def __init__(self, default: Registry) -> None:
        self.default = default
        self._tenants: dict[str, Registry] = {}

    def registry(self, tenant: str | None) -> Registry | None:
        return self.default if tenant is None else self._tenants.get(tenant)

    def store(self, tenant: str | None) -> RegistrationStore | None:
        found = self.registry(tenant)
        return None if found is None else found.store

    def add(self, tenant: str, registry: Registry) -> None:
        self._tenants[tenant] = registry

    def remove(self, tenant: str) -> Registry | None:
        return self._tenants.pop(tenant, None)

    def tenants(self) -> Iterator[str]:
        return iter(list(self._tenants))

    def __contains__(self, tenant: object) -> bool:
        return tenant in self._tenants

    @classmethod
    def single(cls, store: RegistrationStore) -> StoreDirectory:
        """Only the deployment's own store (writes straight to it): for tools and tests."""
        return cls(Registry(store, DirectWriter(store)))


class DirectWriter:
    """Writes straight to the store, one transaction a call."""

    def __init__(self, store: RegistrationStore, clock: Callable[[], float] = time.time) -> None:
        self.store, self.clock = store, clock

    async def upsert(self, registration: Registration) -> Registration:
        return await self.store.upsert(registration, self.clock())

    async def remove(self, provider: str | None, token: str) -> bool:
        return await self.store.remove(provider, token)
