"""The example rule packs in deploy/rules pass `tocsin rules check` and do what they say on a short day."""

from __future__ import annotations

import pytest

from rules.cumulocity import alarm_topic
from rules.engine import RuleEngine
from rules.event import Event
from rules.loader import load_rules
from service.cli import main
from service.cli.rules import simulate
from tests.integration.test_cli import ROOT

PACKS = ROOT / "deploy" / "rules"


def test_packs_pass_rules_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "check", str(PACKS)]) == 0
    assert "ok: 10 rules" in capsys.readouterr().out


def day(*events: tuple[float, str, object]) -> list[Event]:
    return [Event(f"e{i}", "mqtt", topic, None, t, payload) for i, (t, topic, payload) in enumerate(events)]


def sent(*events: tuple[float, str, object], until: float) -> list[tuple[float, str, str, str]]:
    engine = RuleEngine(load_rules([PACKS]))
    return [(n.created, n.rule, n.state, n.title) for n in simulate(engine, day(*events), until)]


def test_home_pack() -> None:
    got = sent(
        (0, "home/front/doorbell", {"event": "ring"}),
        (10, "home/front/doorbell", {"event": "ring"}),  # within the cooldown
        (20, "home/hall/motion", {"occupancy": True, "mode": "home"}),
        (30, "home/hall/motion", {"occupancy": True, "mode": "away"}),
        (40, "home/laundry/washer/state", {"state": "running"}),
        (50, "home/laundry/washer/state", {"state": "idle"}),
        until=100,
    )
    assert got == [
        (0, "home-doorbell", "firing", "Doorbell: front"),
        (30, "home-motion-while-away", "firing", "Motion in the hall"),
        (50, "home-washer-done", "firing", "The washer is done"),
    ]


def test_fleet_pack() -> None:
    got = sent(
        (0, "servers/web1/cpu", {"usage": 95}),
        (0, "servers/web2/cpu", {"usage": 10}),
        (0, "servers/web3/cpu", {"usage": 10}),
        (100, "servers/web1/process/nginx", {"state": "running"}),
        (110, "servers/web1/process/nginx", {"state": "crashed", "exit_code": 137}),
        (200, "servers/web1/cpu", {"usage": 96}),
        until=400,
    )
    assert got == [
        (110, "fleet-process-crashed", "firing", "nginx crashed on web1"),
        (300, "fleet-cpu-high", "firing", "web1: CPU above 90 %"),
        (360, "fleet-host-not-seen", "firing", "2 hosts not seen"),  # web2 and web3 at 300, grouped
    ]


def test_cumulocity_pack() -> None:
    def alarm(t: float, severity: str, status: str, type_: str = "c8y_Pressure") -> tuple[float, str, object]:
        payload = {
            "type": type_,
            "severity": severity,
            "status": status,
            "text": "Pressure low",
            "source": {"id": "42", "name": "Pump 7"},
        }
        return (t, alarm_topic("t1", "42", type_), payload)

    got = sent(
        alarm(0, "CRITICAL", "ACTIVE"),
        alarm(5, "MINOR", "ACTIVE", "c8y_Dust"),
        alarm(60, "CRITICAL", "CLEARED"),
        (70, "c8y/pump9/s/us", "302,c8y_Flow,Flow too low"),
        until=100,
    )
    assert got == [
        (0, "c8y-critical", "firing", "CRITICAL: Pump 7"),
        (60, "c8y-critical", "resolved", "CRITICAL: Pump 7"),
        (70, "c8y-device-smartrest", "firing", "MAJOR alarm on pump9"),
    ]
