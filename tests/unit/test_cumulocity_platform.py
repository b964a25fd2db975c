"""Running on Cumulocity: when the platform's environment applies, and how callers are checked."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request

from registrations.auth import AuthError, KeyRing, Principal, digest
from service.app import mqtt_enabled, rule_paths
from service.cli import platform_of
from service.config import ConfigError, load_config
from service.cumulocity.auth import PlatformAuthenticator, tenant_of
from service.cumulocity.client import C8yError

ENV = {
    "C8Y_BASEURL": "http://cumulocity:8111",
    "C8Y_BOOTSTRAP_TENANT": "management",
    "C8Y_BOOTSTRAP_USER": "servicebootstrap_tocsin",
    "C8Y_BOOTSTRAP_PASSWORD": "s3cret",
    "C8Y_MICROSERVICE_ISOLATION": "MULTI_TENANT",
}


def test_the_platform_environment_decides_unless_configured_otherwise() -> None:
    auto = load_config(None, {})
    platform = platform_of(auto, ENV)
    assert platform is not None and platform.isolation == "MULTI_TENANT"
    assert platform_of(auto, {}) is None  # not on the platform: nothing changes
    assert platform_of(load_config(None, {"TOCSIN_CUMULOCITY__ENABLED": "off"}), ENV) is None
    with pytest.raises(ConfigError, match="C8Y_BASEURL is not set"):
        platform_of(load_config(None, {"TOCSIN_CUMULOCITY__ENABLED": "on"}), {})
    half = {k: v for k, v in ENV.items() if k != "C8Y_BOOTSTRAP_PASSWORD"}
    with pytest.raises(ConfigError, match="C8Y_BOOTSTRAP_PASSWORD") as caught:
        platform_of(auto, half)
    assert "s3cret" not in str(caught.value)


def test_on_the_platform_mqtt_is_off_and_the_alarm_app_rule_runs_unless_configured() -> None:
    config = load_config(None, {})
    assert mqtt_enabled(config, on_cumulocity=False) and not mqtt_enabled(config, on_cumulocity=True)
    assert mqtt_enabled(load_config(None, {"TOCSIN_MQTT__HOST": "broker"}), on_cumulocity=True)
    assert not mqtt_enabled(load_config(None, {"TOCSIN_MQTT__ENABLED": "off"}), on_cumulocity=False)
    assert rule_paths(config, on_cumulocity=True)[0].name == "cumulocity"


def basic(user: str, password: str = "pw") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_the_callers_tenant_comes_from_its_credentials() -> None:
    assert tenant_of(basic("t7/alice")["Authorization"], None) == "t7"
    assert tenant_of(basic("alice")["Authorization"], None) is None  # asked from the platform then
    claims = base64.urlsafe_b64encode(b'{"ten": "t9", "sub": "bob"}').decode().rstrip("=")
    assert tenant_of(f"Bearer h.{claims}.s", None) == "t9"
    assert tenant_of("Bearer nonsense", f"h.{claims}.s") == "t9"  # the cookie wins, as on the platform


class Platform:
    """Answers /user/currentUser like the platform: 200 with roles for alice, 401 otherwise."""

    def __init__(self) -> None:
        self.calls: list[dict[str, str]] = []

    async def request(self, method: str, path: str, **kw: Any) -> Any:
        headers = kw["headers"]
        self.calls.append(headers)
        if headers.get("Authorization") == basic("t1/alice")["Authorization"]:
            return {
                "userName": "alice",
                "effectiveRoles": [{"id": "ROLE_TOCSIN_READ", "name": "ROLE_TOCSIN_READ"}],
            }
        if headers.get("Authorization") == basic("t1/eve")["Authorization"]:
            return {"userName": "eve", "effectiveRoles": [{"name": "ROLE_ALARM_READ"}]}
        raise C8yError(401, "security/Unauthorized", "Invalid credentials!")


async def test_callers_are_checked_with_the_platform_and_cached() -> None:
    platform = Platform()
    keys = KeyRing({digest("ops-key"): Principal("ops", admin=True)})
    auth = PlatformAuthenticator(platform, keys, {"t1"}, cache_s=60.0)  # type: ignore[arg-type]
    alice = await auth.authenticate(make_mocked_request("GET", "/", headers=basic("t1/alice")))
    assert (alice.tenant, alice.user, alice.admin) == ("t1", "alice", False)
    await auth.authenticate(make_mocked_request("GET", "/", headers=basic("t1/alice")))
    assert auth.checks == 1  # the second came from the cache
    with pytest.raises(AuthError) as refused:
        await auth.authenticate(make_mocked_request("GET", "/", headers=basic("t1/alice", "wrong")))
    assert refused.value.status == 401
    with pytest.raises(AuthError) as no_role:
        await auth.authenticate(make_mocked_request("GET", "/", headers=basic("t1/eve")))
    assert no_role.value.status == 403 and "ROLE_TOCSIN_READ" in no_role.value.message
    ops = await auth.authenticate(make_mocked_request("GET", "/", headers={"X-API-Key": "ops-key"}))
    assert ops.admin and ops.tenant is None  # the deployment's keys, without asking the platform
    with pytest.raises(AuthError) as missing:
        await auth.authenticate(make_mocked_request("GET", "/"))
    assert missing.value.status == 401
    assert auth.checks == 3
