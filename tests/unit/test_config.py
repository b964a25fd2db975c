from pathlib import Path

import pytest

from service.config import ConfigError, load_config
from service.providers.log import LogProviderConfig


def test_no_configuration_runs_on_embedded_defaults(tmp_path: Path) -> None:
    c = load_config(None, {"XDG_DATA_HOME": str(tmp_path)})
    assert c.mqtt.host == "127.0.0.1" and c.mqtt.port == 1883 and c.mqtt.embedded_broker == "auto"
    assert c.providers.get(LogProviderConfig).format == "text"
    assert [s.token for s in c.registrations.seed] == ["console"]
    assert c.rules.paths == []
    assert c.store_path.name == "tocsin.db"


def test_file_then_environment(tmp_path: Path) -> None:
    f = tmp_path / "tocsin.yaml"
    f.write_text("mqtt:\n  host: broker.lan\n  port: 1884\nhttp:\n  port: 9000\n")
    c = load_config(f, {"TOCSIN_MQTT__PORT": "1885", "TOCSIN_LOGGING__LEVEL": "DEBUG", "OTHER": "x"})
    assert (c.mqtt.host, c.mqtt.port, c.http.port, c.logging.level) == ("broker.lan", 1885, 9000, "DEBUG")


def test_every_error_names_where_field_and_reason(tmp_path: Path) -> None:
    f = tmp_path / "tocsin.yaml"
    f.write_text("mqtt:\n  port: 99999\n  hots: x\nproviders:\n  log:\n    format: xml\n")
    with pytest.raises(ConfigError) as info:
        load_config(f, {"TOCSIN_HTTP__PORT": "web"})
    problems = info.value.problems
    assert f"{f}:2: mqtt.port: Input should be less than or equal to 65535" in problems
    assert f"{f}:3: mqtt.hots: unknown field" in problems
    assert any(
        p.startswith(f"{f}:6: providers.log.format: Input should be 'text' or 'json'") for p in problems
    )
    assert any(
        p.startswith("environment TOCSIN_HTTP__PORT: http.port: Input should be a valid integer")
        for p in problems
    )


def test_yaml_syntax_error_and_wrong_shape(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("mqtt: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:2:1: invalid YAML"):
        load_config(f, {})
    f.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping of sections"):
        load_config(f, {})
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        load_config(tmp_path / "missing.yaml", {})


def test_secrets_from_files_and_environment_never_print(tmp_path: Path) -> None:
    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret-from-file\n")
    f = tmp_path / "c.yaml"
    f.write_text(f"mqtt:\n  username: tocsin\n  password_file: {secret}\n")
    c = load_config(f, {})
    assert c.mqtt.password is not None and c.mqtt.password.get_secret_value() == "s3cret-from-file"
    assert "s3cret" not in repr(c) and "s3cret" not in str(c.model_dump())
    c = load_config(None, {"TOCSIN_MQTT__PASSWORD": "env-s3cret: [not yaml"})
    assert c.mqtt.password is not None and c.mqtt.password.get_secret_value() == "env-s3cret: [not yaml"


def test_secret_errors_do_not_show_the_secret(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("mqtt:\n  password: 12345678901234567890\n  port: x\n")
    with pytest.raises(ConfigError) as info:
        load_config(f, {"TOCSIN_MQTT__PASSWORD_FILE": str(tmp_path / "nope")})
    text = str(info.value)
    assert "cannot read secret file" in text and "mqtt.port" in text
    assert "1234567890" not in text
