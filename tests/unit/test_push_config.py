"""Push provider settings: validated at start, with the file, line and field of each problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import ConfigError, load_config
from service.providers.apns import ApnsProvider
from service.providers.fcm import FcmProvider
from service.providers.registry import build_providers
from service.push_config import ApnsConfig


def test_apns_app_needs_exactly_one_credential(tmp_path: Path) -> None:
    f = tmp_path / "tocsin.yaml"
    f.write_text(
        "providers:\n"
        "  apns:\n"
        "    apps:\n"
        "      com.example.both:\n"
        "        team_id: ABCDE12345\n"
        "        key_id: XYZ987WVU6\n"
        "        private_key: secret-p8-text\n"
        "        certificate_path: /tmp/cert.pem\n"
        "      com.example.none:\n"
        "        team_id: ABCDE12345\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(f, {})
    text = str(err.value)
    assert (
        f"{f}:5: providers.apns.apps.com.example.both: give either a token key"
        " (private_key/private_key_path) or certificate_path, not both"
    ) in text
    assert f"{f}:10: providers.apns.apps.com.example.none: needs a token key" in text
    assert "secret-p8-text" not in text


def test_secrets_come_from_files_and_providers_are_built_from_settings(tmp_path: Path) -> None:
    (tmp_path / "AuthKey.p8").write_text("p8 text")
    (tmp_path / "sa.json").write_text('{"project_id": "p"}')
    env = {
        "TOCSIN_PROVIDERS__APNS__APPS__COM.EXAMPLE.APP__TEAM_ID": "ABCDE12345",
        "TOCSIN_PROVIDERS__APNS__APPS__COM.EXAMPLE.APP__KEY_ID": "XYZ987WVU6",
        "TOCSIN_PROVIDERS__APNS__APPS__COM.EXAMPLE.APP__PRIVATE_KEY_FILE": str(tmp_path / "AuthKey.p8"),
        "TOCSIN_PROVIDERS__FCM__CREDENTIALS_FILE": str(tmp_path / "sa.json"),
        "TOCSIN_DELIVERY__WORKERS": "8",
    }
    config = load_config(None, env)
    app = config.providers.get(ApnsConfig).apps["com.example.app"]
    assert app.private_key is not None and app.private_key.get_secret_value() == "p8 text"
    assert "p8 text" not in repr(config)
    assert config.delivery.workers == 8
    providers = build_providers(config)
    assert isinstance(providers["apns"], ApnsProvider) and isinstance(providers["fcm"], FcmProvider)
    assert set(build_providers(load_config(None, {}))) == {"log"}
