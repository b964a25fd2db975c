"""What a provider plug-in declares: its name, its configuration section, how to build it, its token shape.

A provider is one module under ``service/providers/`` (named in ``plugins.MODULES``) that defines ``PLUGIN``.
Nothing else in tocsin names providers: the configuration's ``providers`` section, the registration API's
provider field, the CLI's choices and the Cumulocity push gateway's platforms all come from the plug-ins.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from pydantic import BaseModel

if TYPE_CHECKING:
    from service.providers.base import Provider

C = TypeVar("C", bound=BaseModel)


def _always(section: BaseModel) -> bool:
    return True


def _no_problems(section: BaseModel) -> list[str]:
    return []


def _anywhere(section: BaseModel, token: str) -> str:
    return token


@dataclass(frozen=True, slots=True)
class ProviderPlugin(Generic[C]):
    name: str  # as in registrations, config (providers.<name>) and metrics
    config: type[C]  # the ``providers.<name>`` section; its defaults are what an absent section means
    build: Callable[[C], Provider]
    check_token: Callable[
        [str], str
    ]  # a registration's token in this provider's shape, normalised; or raises
    enabled: Callable[[C], bool] = _always  # e.g. APNs only once an app is configured
    # Problems with the section's credentials, each naming the file or field: ``tocsin check`` and start-up.
    check: Callable[[C], list[str]] = _no_problems
    # Where a token makes tocsin post, checked against the deployment's section when it is registered
    # (webhook URLs, Web Push endpoints: allowed hosts); returns the token or raises ValueError.
    check_target: Callable[[C, str], str] = _anywhere
    c8y_platform: str | None = None  # the Cumulocity push gateway's device.platform served by this provider
    summary: str = ""  # one line for help texts
