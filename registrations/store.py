"""The store interface, asynchronous so that no store call blocks the event loop.

Implementations: SQLite (``sqlite_store``, the embedded default), PostgreSQL (``pg_store``, shared by every
instance) and a Cumulocity tenant's inventory (``inventory_store``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Protocol

from registrations.model import Audience, Registration


class StoreUnavailable(Exception):
    """The store could not take a write (a remote store's service failed); nothing was changed.
    ``status``: the remote answer's HTTP status, when there was one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RegistrationStore(Protocol):
    async def version(self) -> int:
        """Changes with every write (by any instance, for a shared store), so readers can cache resolved
        audiences until it changes."""
        ...

    async def upsert(self, registration: Registration, now: float) -> Registration: ...

    async def upsert_many(self, registrations: Sequence[Registration], now: float) -> list[Registration]:
        """All in one durable transaction: every registration is stored, or none is."""
        ...

    async def remove(self, provider: str | None, token: str) -> bool:
        """Delete ``token``'s registration (of any provider when ``provider`` is None)."""
        ...

    async def get(self, provider: str, token: str) -> Registration | None: ...

    async def app_of(self, provider: str, token: str) -> tuple[bool, str | None]:
        """Whether the token is registered, and to which app."""
        ...

    async def by_token(self, token: str) -> list[Registration]: ...

    async def count(self) -> int: ...

    async def query(
        self, where: Audience, states: Iterable[str] = (), after: str = "", limit: int = 100
    ) -> tuple[list[Registration], str | None]:
        """One page of registrations matching ``where`` (everyone when it is empty), and the cursor to pass
        as ``after`` for the next page (None after the last)."""
        ...

    def resolve(self, audience: Audience, batch_size: int = 1000) -> AsyncIterator[list[Registration]]:
        """Active registrations in the audience, in batches of bounded keyset queries, never all at once."""
        ...

    async def close(self) -> None: ...
