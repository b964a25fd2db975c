"""The store interface: a second store (PostgreSQL, Cumulocity inventory) is a new module implementing it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from registrations.model import Audience, Registration


class RegistrationStore(Protocol):
    @property
    def version(self) -> int:
        """Grows with every write, so readers can cache resolved audiences until it changes."""
        ...

    def upsert(self, registration: Registration, now: float) -> Registration: ...

    def remove(self, provider: str, token: str) -> bool: ...

    def get(self, provider: str, token: str) -> Registration | None: ...

    def count(self) -> int: ...

    def resolve(self, audience: Audience, batch_size: int = 1000) -> Iterator[list[Registration]]:
        """Active registrations in the audience, in batches, never all rows at once."""
        ...

    def close(self) -> None: ...
