"""What the platform tells a microservice through its environment (specs/cumulocity.md §1.3).

``PlatformEnv.from_environ`` returns None when ``C8Y_BASEURL`` is unset (tocsin is not running on the
platform; other ``C8Y_*`` variables, e.g. from the c8y command line tools, are then ignored), and raises
``PlatformEnvError`` naming the missing variables for a half-set environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from service.cumulocity.client import Credentials

Isolation = Literal["MULTI_TENANT", "PER_TENANT"]
ISOLATIONS: tuple[Isolation, ...] = ("MULTI_TENANT", "PER_TENANT")
BOOTSTRAP = ("C8Y_BOOTSTRAP_TENANT", "C8Y_BOOTSTRAP_USER", "C8Y_BOOTSTRAP_PASSWORD")
TENANT = ("C8Y_TENANT", "C8Y_USER", "C8Y_PASSWORD")
DEFAULT_APPLICATION_NAME = "tocsin"


class PlatformEnvError(ValueError):
    """The environment is partly that of a Cumulocity microservice: the message says what is missing."""


@dataclass(frozen=True)
class PlatformEnv:
    base_url: str  # C8Y_BASEURL without a trailing slash, e.g. http://cumulocity:8111
    isolation: Isolation
    bootstrap: Credentials | None  # C8Y_BOOTSTRAP_*: reads the subscriptions (required in MULTI_TENANT)
    tenant: Credentials | None  # C8Y_TENANT/USER/PASSWORD: the one tenant's service user (PER_TENANT)
    application_name: str
    application_key: str | None
    mqtt_url: str | None = None

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> PlatformEnv | None:
        base_url = env.get("C8Y_BASEURL", "").strip()
        if not base_url:
            return None
        scheme = urlsplit(base_url).scheme
        if scheme not in ("http", "https") or not urlsplit(base_url).netloc:
            raise PlatformEnvError(f"C8Y_BASEURL must be an http:// or https:// URL, not {base_url!r}")
        bootstrap = _credentials(env, BOOTSTRAP)
        tenant = _credentials(env, TENANT)
        raw_isolation = env.get("C8Y_MICROSERVICE_ISOLATION", "").strip().upper()
        if not raw_isolation:
            raw_isolation = "PER_TENANT" if tenant is not None and bootstrap is None else "MULTI_TENANT"
        if raw_isolation == "MULTI_TENANT":
            isolation: Isolation = "MULTI_TENANT"
            if bootstrap is None:
                raise PlatformEnvError(
                    "C8Y_BASEURL is set and the isolation is MULTI_TENANT, but the bootstrap credentials are "
                    f"not: set {', '.join(BOOTSTRAP)}"
                )
        elif raw_isolation == "PER_TENANT":
            isolation = "PER_TENANT"
            if tenant is None:
                raise PlatformEnvError(
                    f"C8Y_MICROSERVICE_ISOLATION is PER_TENANT but the tenant's credentials are not set: "
                    f"set {', '.join(TENANT)}"
                )
        else:
            raise PlatformEnvError(
                f"C8Y_MICROSERVICE_ISOLATION must be one of {', '.join(ISOLATIONS)}, not {raw_isolation!r}"
            )
        return cls(
            base_url=base_url.rstrip("/"),
            isolation=isolation,
            bootstrap=bootstrap,
            tenant=tenant,
            application_name=env.get("APPLICATION_NAME", "").strip() or DEFAULT_APPLICATION_NAME,
            application_key=env.get("APPLICATION_KEY", "").strip() or None,
            mqtt_url=env.get("C8Y_BASEURL_MQTT", "").strip() or None,
        )


def _credentials(env: Mapping[str, str], names: tuple[str, str, str]) -> Credentials | None:
    """All three variables set: the credentials; none: None; some: an error naming the missing ones."""
    values = [env.get(name, "") for name in names]
    if not any(values):
        return None
    missing = [name for name, value in zip(names, values, strict=True) if not value]
    if missing:
        given = [name for name in names if name not in missing]
        raise PlatformEnvError(f"{', '.join(missing)} not set, but {', '.join(given)} are: set all three")
    return Credentials(values[0].strip(), values[1].strip(), values[2])


def from_environ(env: Mapping[str, str]) -> PlatformEnv | None:
    """``PlatformEnv.from_environ``."""
    return PlatformEnv.from_environ(env)
