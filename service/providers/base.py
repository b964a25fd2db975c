"""The provider interface and the outcome classes every provider answers with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from registrations.model import Registration
from service.notify.model import Delivery


@dataclass(frozen=True, slots=True)
class Delivered:
    name = "delivered"


@dataclass(frozen=True, slots=True)
class Retry:
    """Try again, after ``after`` seconds when the provider said so (Retry-After), else with backoff."""

    reason: str
    after: float | None = None
    name = "retry"


@dataclass(frozen=True, slots=True)
class TokenInvalid:
    """The token will never work again: disable the registration (unless re-registered after ``since``)."""

    reason: str
    since: float | None = None  # when the provider saw the token die (APNs 410 timestamp), seconds
    name = "token_invalid"


@dataclass(frozen=True, slots=True)
class TokenSuspect:
    """Wrong environment or topic: mark the registration, do not delete it."""

    reason: str
    name = "token_suspect"


@dataclass(frozen=True, slots=True)
class ConfigError:
    """Our credential or setup is wrong: pause the provider and tell the operator; do not burn the queue."""

    reason: str
    credential: str = ""  # which of the provider's credentials (an APNs app); "" for the provider's only one
    name = "config_error"


@dataclass(frozen=True, slots=True)
class Rejected:
    """The provider refused this message itself (too large, malformed): do not retry, record why."""

    reason: str
    name = "rejected"


Outcome = Delivered | Retry | TokenInvalid | TokenSuspect | ConfigError | Rejected


def retry_after_s(value: str | None) -> float | None:
    """A Retry-After header given in seconds; None when absent or not a number (the dispatcher's backoff)."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class Provider(Protocol):
    """What the dispatcher drives; a plug-in (``plugin.ProviderPlugin``) builds it from its config section."""

    name: str

    @property
    def degraded(self) -> str | None:
        """Why the provider cannot send right now, or None when it can."""
        ...

    def credential_for(self, registration: Registration) -> str:
        """Which of the provider's credentials serves ``registration`` (an APNs app), "" for its only one.

        A ``ConfigError`` pauses that credential only: other apps' deliveries keep going."""
        ...

    async def send(self, delivery: Delivery) -> Outcome: ...

    async def close(self) -> None: ...
