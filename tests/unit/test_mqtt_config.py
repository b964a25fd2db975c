"""mqtt.protocol and mqtt.tls: defaults, secrets from files, and errors that name the field and the file."""

from __future__ import annotations

from pathlib import Path

import pytest
from paho.mqtt.enums import MQTTProtocolVersion

from service.config import ConfigError, load_config
from service.sources.broker import aiomqtt_options, paho_protocol, tls_context
from tests.fakes.certs import CertificateAuthority


def load(tmp_path: Path, text: str) -> tuple[Path, list[str]]:
    f = tmp_path / "tocsin.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(f, {})
    return f, info.value.problems


def test_defaults_are_plain_mqtt_311_without_tls(tmp_path: Path) -> None:
    c = load_config(None, {"XDG_DATA_HOME": str(tmp_path)}).mqtt
    assert c.protocol == "auto" and not c.tls.enabled and tls_context(c) is None
    assert paho_protocol(c) is MQTTProtocolVersion.MQTTv311
    assert "tls_context" not in aiomqtt_options(c)


def test_protocol_5_reads_as_a_yaml_number_or_string(tmp_path: Path) -> None:
    for value in ("5", "'5'"):
        f = tmp_path / "tocsin.yaml"
        f.write_text(f"mqtt:\n  protocol: {value}\n")
        c = load_config(f, {}).mqtt
        assert c.protocol == "5" and paho_protocol(c) is MQTTProtocolVersion.MQTTv5
    c = load_config(None, {"TOCSIN_MQTT__PROTOCOL": "5"}).mqtt
    assert c.protocol == "5"
    f, problems = load(tmp_path, "mqtt:\n  protocol: 4\n")
    assert any(
        p.startswith(f"{f}:2: mqtt.protocol: Input should be 'auto', '3.1.1' or '5'") for p in problems
    )


def test_missing_ca_file_names_the_field_the_path_and_the_line(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "ca.pem"
    f, problems = load(tmp_path, f"mqtt:\n  tls:\n    enabled: true\n    ca_file: {missing}\n")
    assert problems == [f"{f}:4: mqtt.tls.ca_file: cannot read {missing}: No such file or directory"]


def test_a_file_that_is_not_a_certificate_is_a_configuration_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    f, problems = load(tmp_path, f"mqtt:\n  tls:\n    enabled: true\n    ca_file: {junk}\n")
    assert len(problems) == 1 and problems[0].startswith(f"{f}:3: mqtt.tls: ca_file {junk}: not a PEM CA")


def test_client_key_with_the_wrong_passphrase_is_refused_at_load(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "pki")
    ours = ca.client(password="right-passphrase")
    _, problems = load(
        tmp_path,
        f"mqtt:\n  tls:\n    enabled: true\n    ca_file: {ca.cert}\n    cert_file: {ours.cert}\n"
        f"    key_file: {ours.key}\n    key_password: wrong-passphrase\n",
    )
    assert len(problems) == 1 and "cannot load the client certificate and key" in problems[0]
    assert "wrong-passphrase" not in problems[0]


def test_key_password_from_a_secret_file(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "pki")
    ours = ca.client(password="right-passphrase")
    secret = tmp_path / "pass"
    secret.write_text("right-passphrase\n")
    f = tmp_path / "tocsin.yaml"
    f.write_text(
        f"mqtt:\n  tls:\n    enabled: true\n    ca_file: {ca.cert}\n    cert_file: {ours.cert}\n"
        f"    key_file: {ours.key}\n    key_password_file: {secret}\n"
    )
    c = load_config(f, {}).mqtt
    assert c.tls.key_password is not None and c.tls.key_password.get_secret_value() == "right-passphrase"
    assert tls_context(c) is not None


def test_unreadable_password_file_names_the_field(tmp_path: Path) -> None:
    missing = tmp_path / "no-password"
    f, problems = load(tmp_path, f"mqtt:\n  username: u\n  password_file: {missing}\n")
    assert problems == [f"{f}:3: mqtt.password_file: cannot read secret file {missing}: FileNotFoundError"]


def test_tls_files_without_enabled_and_key_without_cert_are_errors(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "pki")
    ours = ca.client()
    f, problems = load(tmp_path, f"mqtt:\n  tls:\n    ca_file: {ca.cert}\n")
    assert problems == [f"{f}:3: mqtt.tls: ca_file given but enabled is false (set mqtt.tls.enabled: true)"]
    f, problems = load(tmp_path, f"mqtt:\n  tls:\n    enabled: true\n    key_file: {ours.key}\n")
    assert problems == [f"{f}:3: mqtt.tls: key_file needs cert_file (the client certificate)"]


def test_insecure_skip_verify_turns_every_check_off(tmp_path: Path) -> None:
    f = tmp_path / "tocsin.yaml"
    f.write_text("mqtt:\n  tls:\n    enabled: true\n    insecure_skip_verify: true\n")
    c = load_config(f, {}).mqtt
    ctx = tls_context(c)
    assert ctx is not None and not ctx.check_hostname and ctx.verify_mode.name == "CERT_NONE"
    assert aiomqtt_options(c)["tls_insecure"] is True
