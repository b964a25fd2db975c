"""The shipped configuration example and manifest stay valid."""

import json
from pathlib import Path

import yaml

from service.config import Config, load_config

ROOT = Path(__file__).resolve().parents[2]


def test_example_configuration_is_valid_and_documents_every_section(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("x")
    text = (
        (ROOT / "deploy" / "config.example.yaml")
        .read_text()
        .replace("/etc/tocsin/mqtt-password", str(secret))
    )
    f = tmp_path / "c.yaml"
    f.write_text(text)
    config = load_config(f, {})
    assert config.mqtt.password is not None and config.mqtt.embedded_broker == "never"
    assert set(yaml.safe_load(text)) == set(Config.model_fields)


def test_cumulocity_manifest_shape() -> None:
    m = json.loads((ROOT / "cumulocity-manifest.json").read_text())
    assert m["apiVersion"] == "2"
    assert "+" not in m["version"]
    assert m["provider"]["name"]
    assert m["isolation"] in ("MULTI_TENANT", "PER_TENANT")
    assert m["livenessProbe"]["httpGet"]["path"] == "/health"
    assert all(
        r.startswith("ROLE_") and r.rsplit("_", 1)[1] in ("READ", "ADMIN", "CREATE") for r in m["roles"]
    )
