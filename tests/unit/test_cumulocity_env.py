"""The microservice environment (specs/cumulocity.md §1.3): which variables make which platform setup."""

from __future__ import annotations

import pytest

from service.cumulocity.client import Credentials
from service.cumulocity.env import PlatformEnv, PlatformEnvError, from_environ

BOOT = {"C8Y_BOOTSTRAP_TENANT": "management", "C8Y_BOOTSTRAP_USER": "servicebootstrap_tocsin"}
BASE = {
    "C8Y_BASEURL": "http://cumulocity:8111/",
    "C8Y_BASEURL_MQTT": "tcp://cumulocity:1881",
    "C8Y_MICROSERVICE_ISOLATION": "MULTI_TENANT",
    "APPLICATION_NAME": "tocsin",
    "APPLICATION_KEY": "tocsin-key",
    **BOOT,
    "C8Y_BOOTSTRAP_PASSWORD": "s3cret-boot",
}
TENANT = {"C8Y_TENANT": "t42", "C8Y_USER": "service_tocsin", "C8Y_PASSWORD": "s3cret-t42"}


def test_not_on_the_platform_without_a_base_url_even_with_other_c8y_variables() -> None:
    assert from_environ({}) is None
    assert PlatformEnv.from_environ({**TENANT, "C8Y_BASEURL": " "}) is None


def test_multi_tenant() -> None:
    env = PlatformEnv.from_environ(BASE)
    assert env == PlatformEnv(
        base_url="http://cumulocity:8111",
        isolation="MULTI_TENANT",
        bootstrap=Credentials("management", "servicebootstrap_tocsin", "s3cret-boot"),
        tenant=None,
        application_name="tocsin",
        application_key="tocsin-key",
        mqtt_url="tcp://cumulocity:1881",
    )


def test_per_tenant_has_the_tenant_and_maybe_the_bootstrap_user() -> None:
    env = PlatformEnv.from_environ({**BASE, **TENANT, "C8Y_MICROSERVICE_ISOLATION": "per_tenant"})
    assert env is not None and env.isolation == "PER_TENANT"
    assert env.tenant == Credentials("t42", "service_tocsin", "s3cret-t42")
    assert env.bootstrap is not None
    only_tenant = {"C8Y_BASEURL": "https://x.example.com", **TENANT}
    env = PlatformEnv.from_environ(only_tenant)  # no isolation given: inferred
    assert env is not None and env.isolation == "PER_TENANT" and env.bootstrap is None


def test_defaults_for_what_the_platform_always_sets() -> None:
    env = PlatformEnv.from_environ({"C8Y_BASEURL": "http://c:1", **BOOT, "C8Y_BOOTSTRAP_PASSWORD": "p"})
    assert env is not None
    assert (env.isolation, env.application_name, env.application_key, env.mqtt_url) == (
        "MULTI_TENANT",
        "tocsin",
        None,
        None,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({**BASE, "C8Y_BOOTSTRAP_PASSWORD": ""}, "C8Y_BOOTSTRAP_PASSWORD not set, but C8Y_BOOTSTRAP_TENANT"),
        (
            {"C8Y_BASEURL": "http://c:1", "C8Y_MICROSERVICE_ISOLATION": "MULTI_TENANT"},
            "bootstrap credentials",
        ),
        ({**BASE, "C8Y_MICROSERVICE_ISOLATION": "PER_TENANT"}, "C8Y_TENANT, C8Y_USER, C8Y_PASSWORD"),
        ({**BASE, **TENANT, "C8Y_USER": ""}, "C8Y_USER not set"),
        ({**BASE, "C8Y_MICROSERVICE_ISOLATION": "SHARED"}, "must be one of MULTI_TENANT, PER_TENANT"),
        ({**BASE, "C8Y_BASEURL": "cumulocity:8111"}, "http:// or https://"),
        ({**BASE, "C8Y_BASEURL": "ftp://cumulocity"}, "http:// or https://"),
    ],
)
def test_a_half_set_environment_is_refused_with_what_is_missing(env: dict[str, str], message: str) -> None:
    with pytest.raises(PlatformEnvError, match=message):
        PlatformEnv.from_environ(env)


def test_passwords_never_print() -> None:
    env = PlatformEnv.from_environ({**BASE, **TENANT, "C8Y_MICROSERVICE_ISOLATION": "PER_TENANT"})
    assert "s3cret" not in repr(env) and "s3cret" not in str(env)
    with pytest.raises(PlatformEnvError) as caught:
        PlatformEnv.from_environ({**BASE, "C8Y_BOOTSTRAP_USER": ""})
    assert "s3cret" not in str(caught.value)
