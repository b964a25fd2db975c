"""The store interface: a second store (PostgreSQL, Cumulocity inventory) is a new module implementing it."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

from registrations.model import Audience, Registration


class StoreUnavailable(Exception):
    """The store could not take a write (a remote store's service failed); nothing was changed.
    ``status``: the remote answer's HTTP status, when there was one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RegistrationStore(Protocol):
    @property
    def version(self) -> int:
        """Grows with every write, so readers can cache resolved audiences until it changes."""
        ...

    def upsert(self, registration: Registration, now: float) -> Registration: ...

    def upsert_many(self, registrations: Sequence[Registration], now: float) -> list[Registration]:
        """All in one durable transaction: every registration is stored, or none is."""
        ...

    def remove(self, provider: str | None, token: str) -> bool:
        """Delete ``token``'s registration (of any provider when ``provider`` is None)."""
        ...

    def get(self, provider: str, token: str) -> Registration | None: ...

    def app_of(self, provider: str, token: str) -> tuple[bool, str | None]:
        """Whether the token is registered, and to which app."""
        ...

    def by_token(self, token: str) -> list[Registration]: ...

    def count(self) -> int: ...

    def query(
        self, where: Audience, states: Iterable[str] = (), after: str = "", limit: int = 100
    ) -> tuple[list[Registration], str | None]:
        """One page of registrations matching ``where`` (everyone when it is empty), and the cursor to pass
        as ``after`` for the next page (None after the last)."""
        ...

    def resolve(self, audience: Audience, batch_size: int = 1000) -> Iterator[list[Registration]]:
        """Active registrations in the audience, in batches, never all rows at once."""
        ...

    def close(self) -> None: ...
