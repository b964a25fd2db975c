"""A provider plug-in that exists only for tests/unit/test_provider_plugins.py: one module and its
configuration section are all a provider needs."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from registrations.model import Registration
from service.notify.model import Delivery
from service.providers.base import Delivered, Outcome
from service.providers.plugin import ProviderPlugin


class PigeonConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    loft: str | None = None


class PigeonProvider:
    name = "pigeon_provider"

    def __init__(self, config: PigeonConfig) -> None:
        self.config = config
        self.sent: list[str] = []

    @property
    def degraded(self) -> str | None:
        return None

    def credential_for(self, registration: Registration) -> str:
        return self.config.loft or ""

    async def send(self, delivery: Delivery) -> Outcome:
        self.sent.append(delivery.registration.token)
        return Delivered()

    async def close(self) -> None:
        pass


def check_token(token: str) -> str:
    if not token.startswith("leg-"):
        raise ValueError("a pigeon token is leg-<ring number>")
    return token


PLUGIN = ProviderPlugin(
    name="pigeon_provider",
    config=PigeonConfig,
    build=PigeonProvider,
    check_token=check_token,
    enabled=lambda c: c.loft is not None,
    check=lambda c: [] if c.loft != "burnt" else [f"loft {c.loft}: gone"],
)
