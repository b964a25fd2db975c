"""The ``tocsin`` command as users run it: a separate process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import paho.mqtt.publish

from tests.fakes.keys import ApnsKey, service_account, write_service_account
from tests.support import ServiceRun, free_port, port_open, wait_until_sync

ROOT = Path(__file__).resolve().parents[2]


def tocsin(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def test_check_accepts_embedded_defaults() -> None:
    r = tocsin("check")
    assert r.returncode == 0, r.stderr
    assert "ok: configuration embedded defaults, 3 rules" in r.stdout


def test_check_reports_every_config_error_and_exits_non_zero(tmp_path: Path) -> None:
    f = tmp_path / "tocsin.yaml"
    f.write_text("mqtt:\n  port: 0\nhttp:\n  prot: 80\n")
    r = tocsin("check", str(f))
    assert r.returncode == 2
    assert f"{f}:2: mqtt.port: Input should be greater than or equal to 1" in r.stderr
    assert f"{f}:4: http.prot: unknown field" in r.stderr


def test_check_of_the_example_configuration_passes_as_its_header_says() -> None:
    r = tocsin("check", "--skip-credentials", "deploy/config.example.yaml")
    assert r.returncode == 0, r.stderr
    assert "ok: configuration deploy/config.example.yaml" in r.stdout


def test_a_missing_secret_file_is_a_located_error_next_to_the_others(tmp_path: Path) -> None:
    f = tmp_path / "tocsin.yaml"
    f.write_text(f"mqtt:\n  password_file: {tmp_path / 'nope'}\n  port: 0\nhttp:\n  prot: 80\n")
    r = tocsin("check", str(f))
    assert r.returncode == 2
    assert f"{f}:2: mqtt.password_file: cannot read secret file" in r.stderr
    assert f"{f}:3: mqtt.port:" in r.stderr and f"{f}:5: http.prot: unknown field" in r.stderr


def test_one_bad_rule_hides_no_other_error(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    rule = "  - id: {id}\n    topic: a/{{x}}\n    title: {title}\n    audience: {{tags: [a]}}\n"
    (rules / "a.yaml").write_text(
        "rules:\n"
        + rule.format(id="dup", title='"{% if x %}{{ x | nosuch }}{% endif %}"')
        + rule.format(id="other", title="T")
        + "    severity: loud\n"
    )
    (rules / "b.yaml").write_text("rules:\n" + rule.format(id="dup", title="T") + "    for: soon\n")
    r = tocsin("rules", "check", str(rules))
    assert r.returncode == 2
    assert (
        f"{rules / 'a.yaml'}:4:12: rules[0].title: template syntax error on its line 1: "
        "No filter named 'nosuch'" in r.stderr
    )
    assert f"{rules / 'a.yaml'}:10:15: rules[1].severity:" in r.stderr
    assert (
        f"{rules / 'b.yaml'}:2:9: rules[0].id: rule id 'dup' is already used in {rules / 'a.yaml'}"
        in r.stderr
    )
    assert f"{rules / 'b.yaml'}:6:10: rules[0].for: unknown field" in r.stderr


def test_check_reports_rule_errors_with_position(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "bad.yaml").write_text(
        "rules:\n  - id: x\n    topic: a/b\n    title: T\n    audience: {tags: [a]}\n    severity: loud\n"
    )
    f = tmp_path / "tocsin.yaml"
    f.write_text(f"rules:\n  paths: [{rules}]\n")
    r = tocsin("check", str(f))
    assert r.returncode == 2
    assert f"{rules / 'bad.yaml'}:6:15: rules[0].severity:" in r.stderr


def test_run_refuses_to_start_on_a_bad_configuration(tmp_path: Path) -> None:
    r = tocsin("run", env={"TOCSIN_MQTT__PORT": "seventy", "TOCSIN_DATA_DIR": str(tmp_path)})
    assert r.returncode == 2
    assert "not starting" in r.stderr and "environment TOCSIN_MQTT__PORT: mqtt.port" in r.stderr
    assert not (tmp_path / "tocsin.db").exists()


def test_credential_files_are_read_by_check_and_run_and_named_by_path(tmp_path: Path) -> None:
    key, bad_key, sa = tmp_path / "AuthKey.p8", tmp_path / "Bad.p8", tmp_path / "sa.json"
    key.write_text(ApnsKey.generate().p8)
    bad_key.write_text("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
    f = tmp_path / "tocsin.yaml"
    app = {"team_id": "ABCDE12345", "key_id": "XYZ987WVU6"}
    doc = {
        "data_dir": str(tmp_path / "data"),
        "providers": {
            "apns": {
                "apps": {
                    "com.example.ok": {**app, "private_key_path": str(key)},
                    "com.example.gone": {**app, "private_key_path": str(tmp_path / "Missing.p8")},
                    "com.example.bad": {**app, "private_key_path": str(bad_key)},
                }
            },
            "fcm": {"credentials_path": str(sa)},
        },
    }
    f.write_text(json.dumps(doc))
    r = tocsin("check", str(f))
    assert r.returncode == 2, r.stdout
    problems = r.stderr.splitlines()[1:]
    assert problems == [
        f"providers.apns: apps.com.example.gone: {tmp_path / 'Missing.p8'}: no such file",
        f"providers.apns: apps.com.example.bad: {bad_key}: not a valid key or certificate (ValueError)",
        f"providers.fcm: {sa}: no such file",
    ]
    assert tocsin("check", "--skip-credentials", str(f)).returncode == 0
    sa.write_text('{"type": "service_account"}')
    r = tocsin("run", "-c", str(f))
    assert r.returncode == 2 and "not starting" in r.stderr
    assert f"providers.fcm: {sa}: not a usable service account:" in r.stderr
    assert not (tmp_path / "data" / "tocsin.db").exists()
    info, _ = service_account("p", "https://oauth2.googleapis.com/token")
    write_service_account(sa, info)
    del doc["providers"]["apns"]["apps"]["com.example.gone"]  # type: ignore[index]
    del doc["providers"]["apns"]["apps"]["com.example.bad"]  # type: ignore[index]
    f.write_text(json.dumps(doc))
    r = tocsin("check", str(f))
    assert r.returncode == 0, r.stderr
    assert info["private_key"] not in r.stdout + r.stderr


def test_newcomer_run_with_no_broker_starts_an_embedded_one_and_prints_the_doorbell(tmp_path: Path) -> None:
    """`tocsin run` on embedded defaults; nothing listens on the broker port, so it embeds one."""
    port = free_port()
    run = ServiceRun(
        {
            "XDG_DATA_HOME": str(tmp_path),
            "TOCSIN_MQTT__PORT": str(port),
            "TOCSIN_HTTP__PORT": str(free_port()),
        }
    )
    lines = run.lines
    try:
        wait_until_sync(
            lambda: any("connected to MQTT broker" in line for line in lines),
            30,
            f"the service to connect; output: {lines}",
        )
        assert any("started an embedded one" in line for line in lines)
        assert port_open(port)
        paho.mqtt.publish.single(
            "home/front/doorbell", json.dumps({"event": "ring"}), qos=1, hostname="127.0.0.1", port=port
        )
        wait_until_sync(
            lambda: any("[notification]" in line for line in lines), 5, f"the notification: {lines}"
        )
        printed = next(line for line in lines if "[notification]" in line)
        assert "FIRING doorbell (info) to console: Doorbell — Someone is at the front door." in printed
        assert (tmp_path / "tocsin" / "tocsin.db").exists()
    finally:
        assert run.stop() == 0
    assert any("stopping" in line for line in lines)
