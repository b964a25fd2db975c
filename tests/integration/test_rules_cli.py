"""``tocsin rules check`` / ``tocsin rules test`` and rule reloads (SIGHUP) as users run them."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from service.cli import main
from tests.integration.test_cli import tocsin
from tests.support import Mosquitto, ServiceRun, free_port, wait_until_sync

RULES = """rules:
  - id: hot
    topic: servers/{host}/cpu
    threshold: {value: usage, above: 90, clear: 80, for: 2m}
    title: "{{ host }} hot"
    body: "{% if state == 'firing' %}at {{ value }}{% else %}back to {{ value }}{% endif %}"
    audience: {tags: [ops], users: [ann]}
  - id: bell
    topic: home/{room}/doorbell
    title: "Ring at {{ room }}"
    audience: {channels: [doors]}
"""


def test_rules_check_reports_ok_and_errors_with_position(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(RULES)
    r = tocsin("rules", "check", str(good))
    assert r.returncode == 0, r.stderr
    assert "ok: 2 rules (1 event, 1 threshold)" in r.stdout
    assert "subscriptions: home/+/doorbell, servers/+/cpu" in r.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(RULES.replace("above: 90", "above: 90, sideways: 3"))
    r = tocsin("rules", "check", str(bad))
    assert r.returncode == 2
    assert f"{bad}:4:52: rules[0].threshold.sideways: unknown field" in r.stderr


def test_rules_test_replays_on_simulated_time_and_prints_each_notification(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """In-process (the command's own entry point), to keep the suite fast; rules check runs as a process."""
    (tmp_path / "r.yaml").write_text(RULES)
    events = tmp_path / "day.jsonl"
    lines = [
        {"time": "2024-05-01T10:00:00Z", "topic": "servers/web1/cpu", "payload": {"usage": 97}, "id": "e1"},
        {"time": "2024-05-01T10:00:30Z", "topic": "home/front/doorbell", "payload": "ring"},
        {"time": "2024-05-01T10:01:00Z", "topic": "servers/web1/cpu", "payload": {"usage": 95}},
        {"time": "2024-05-01T13:00:00Z", "topic": "servers/web1/cpu", "payload": {"usage": 70}},
    ]
    events.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    assert main(["rules", "test", str(tmp_path), "--events", str(events)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "2024-05-01T10:00:30Z FIRING bell (info) to tags=channel:doors: Ring at front",
        "2024-05-01T10:02:00Z FIRING hot (info) to users=ann tags=ops: web1 hot — at 95.0",
        "2024-05-01T13:00:00Z RESOLVED hot (info) to users=ann tags=ops: web1 hot — back to 70.0",
    ]
    assert "4 events, 3 notifications" in err
    assert main(["rules", "test", str(tmp_path), "--events", str(events), "--json"]) == 0
    first = json.loads(capsys.readouterr().out.splitlines()[1])
    assert (first["episode"], first["labels"], first["audience"]["users"]) == (
        "e1",
        {"host": "web1"},
        ["ann"],
    )


def test_rules_test_names_the_bad_line_of_a_recording(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "r.yaml").write_text(RULES)
    events = tmp_path / "bad.jsonl"
    events.write_text('{"time": 1, "topic": "a"}\n{"topic": "b"}\n')
    assert main(["rules", "test", str(tmp_path / "r.yaml"), "--events", str(events)]) == 2
    assert f"{events}:2: 'time' is required" in capsys.readouterr().err


def test_sighup_reloads_rules_and_refuses_a_broken_set(tmp_path: Path, broker: Mosquitto) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "a.yaml").write_text(RULES)
    run = ServiceRun(
        {
            "TOCSIN_DATA_DIR": str(tmp_path / "data"),
            "TOCSIN_MQTT__PORT": str(broker.port),
            "TOCSIN_MQTT__EMBEDDED_BROKER": "never",
            "TOCSIN_HTTP__PORT": str(free_port()),
            "TOCSIN_RULES__PATHS": f"[{rules}]",
            "TOCSIN_RULES__WATCH_S": "0",
        }
    )
    out = run.lines
    try:
        wait_until_sync(lambda: any("connected to MQTT broker" in x for x in out), 30, f"connect: {out}")
        (rules / "b.yaml").write_text("rules:\n  - id: broken\n    topic: x/{a\n    title: t\n")
        run.proc.send_signal(signal.SIGHUP)
        wait_until_sync(lambda: any("new rules refused" in x for x in out), 10, f"the refusal: {out}")
        assert any("b.yaml:3:12: rules[0].topic" in x for x in out), out
        (rules / "b.yaml").write_text(
            "rules:\n  - id: more\n    topic: x/{a}\n    title: t\n    audience: {tags: [ops]}\n"
        )
        run.proc.send_signal(signal.SIGHUP)
        wait_until_sync(lambda: any("rules reloaded: 3 rules" in x for x in out), 10, f"the reload: {out}")
    finally:
        assert run.stop() == 0
