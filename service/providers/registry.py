"""Which providers run: each plug-in's, built from its configuration section when that section enables it."""

from __future__ import annotations

from service.config import Config
from service.providers import plugins
from service.providers.base import Provider


def build_providers(config: Config) -> dict[str, Provider]:
    built: dict[str, Provider] = {}
    for name, plugin in plugins.plugins().items():
        section = config.providers.section(name)
        if plugin.enabled(section):
            built[name] = plugin.build(section)
    return built


def credential_problems(config: Config) -> list[str]:
    """Each enabled provider's credential problems (unreadable or malformed files, with their paths)."""
    problems: list[str] = []
    for name, plugin in plugins.plugins().items():
        section = config.providers.section(name)
        if plugin.enabled(section):
            problems += [f"providers.{name}: {p}" for p in plugin.check(section)]
    return problems
