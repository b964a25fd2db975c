"""The provider plug-ins: one list of modules, each defining ``PLUGIN`` (see ``plugin.ProviderPlugin``).

Adding a provider is adding its module here. The list is read without importing the modules (a provider's name
is its module's name), so the registration model and the CLI know the names without loading HTTP clients.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, create_model

from service.providers.plugin import ProviderPlugin

MODULES: tuple[str, ...] = (
    "service.providers.log",
    "service.providers.apns",
    "service.providers.fcm",
    "service.providers.webhook",
    "service.providers.webpush",
)
NAMES: tuple[str, ...] = tuple(m.rsplit(".", 1)[1] for m in MODULES)
S = TypeVar("S", bound=BaseModel)


@functools.cache
def plugins() -> dict[str, ProviderPlugin[Any]]:
    found: dict[str, ProviderPlugin[Any]] = {}
    for module_name, name in zip(MODULES, NAMES, strict=True):
        plugin = getattr(importlib.import_module(module_name), "PLUGIN", None)
        if not isinstance(plugin, ProviderPlugin):
            raise TypeError(f"provider module {module_name} defines no PLUGIN = ProviderPlugin(...)")
        if plugin.name != name:
            raise TypeError(f"provider module {module_name} declares the name {plugin.name!r}, not {name!r}")
        found[name] = plugin
    return found


def get(name: str) -> ProviderPlugin[Any]:
    try:
        return plugins()[name]
    except KeyError:
        raise ValueError(f"unknown provider {name!r}: one of {', '.join(NAMES)}") from None


def check_token(provider: str, token: str) -> str:
    """The token in the shape its provider issues, normalised (APNs: lower-case hex)."""
    return get(provider).check_token(token)


def target_check(providers: ProvidersBase) -> Callable[[str, str], str]:
    """``check(provider, token)``: each plug-in's target check with its configured section."""

    def check(provider: str, token: str) -> str:
        return get(provider).check_target(providers.section(provider), token)

    return check


def c8y_providers() -> dict[str, str]:
    """The Cumulocity push gateway's platforms (``IOS``, ``Android``) and the provider serving each."""
    return {p.c8y_platform: name for name, p in plugins().items() if p.c8y_platform is not None}


class ProvidersBase(BaseModel):
    """The ``providers`` configuration section: one sub-section per plug-in, typed by the plug-in."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    def section(self, name: str) -> BaseModel:
        value = getattr(self, name)
        assert isinstance(value, BaseModel)
        return value

    def get(self, kind: type[S]) -> S:
        """The sub-section of type ``kind``, e.g. ``config.providers.get(ApnsConfig)``."""
        for name in NAMES:
            value = getattr(self, name)
            if isinstance(value, kind):
                return value
        raise KeyError(kind.__name__)


def providers_config_model() -> type[ProvidersBase]:
    fields: dict[str, Any] = {name: (p.config, p.config()) for name, p in plugins().items()}
    return create_model("ProvidersConfig", __base__=ProvidersBase, **fields)
