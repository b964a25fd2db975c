"""Provider plug-ins (service/providers/plugins.py): the one list every provider name comes from."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from registrations.model import PROVIDERS, check_token
from service.config import ConfigError, load_config
from service.providers import plugins
from service.providers.registry import build_providers, credential_problems


@pytest.fixture
def with_pigeon(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The list as it would read with one more module in it."""
    monkeypatch.setattr(plugins, "MODULES", (*plugins.MODULES, "tests.pigeon_provider"))
    monkeypatch.setattr(plugins, "NAMES", (*plugins.NAMES, "pigeon_provider"))
    plugins.plugins.cache_clear()
    yield
    plugins.plugins.cache_clear()


def test_every_name_and_config_section_comes_from_the_plugin_list() -> None:
    assert PROVIDERS == plugins.NAMES == tuple(plugins.plugins()) == ("log", "apns", "fcm")
    config = load_config(None, {})
    for name, plugin in plugins.plugins().items():
        assert isinstance(config.providers.section(name), plugin.config)
    assert plugins.c8y_providers() == {"IOS": "apns", "Android": "fcm"}
    with pytest.raises(ConfigError) as bad:
        load_config(None, {"TOCSIN_PROVIDERS__PIGEON__LOFT": "roof"})
    [problem] = bad.value.problems
    assert problem.endswith(": providers.pigeon: unknown field")
    with pytest.raises(ValueError, match="unknown provider 'pigeon': one of log, apns, fcm"):
        check_token("pigeon", "leg-1")


@pytest.mark.usefixtures("with_pigeon")
def test_a_new_provider_is_one_module_and_its_config_section() -> None:
    model = plugins.providers_config_model()
    section = model.model_validate({"pigeon_provider": {"loft": "roof"}})
    plugin = plugins.get("pigeon_provider")
    cfg = section.section("pigeon_provider")
    assert plugin.enabled(cfg) and plugin.check(cfg) == []
    provider = plugin.build(cfg)
    assert provider.name == "pigeon_provider" and provider.degraded is None
    assert plugins.check_token("pigeon_provider", "leg-42") == "leg-42"
    with pytest.raises(ValueError, match="leg-<ring number>"):
        plugins.check_token("pigeon_provider", "42")
    with pytest.raises(ValidationError):
        model.model_validate({"pigeon_provider": {"coop": "x"}})  # its section is checked like any other
    assert not plugin.enabled(model().section("pigeon_provider"))  # absent section: the defaults


def test_enabled_providers_and_their_credential_problems_come_from_their_sections() -> None:
    assert set(build_providers(load_config(None, {}))) == {"log"}
    assert credential_problems(load_config(None, {})) == []
