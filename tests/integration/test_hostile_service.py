"""Hostile events through a running service (issue 14): template budgets where they take effect."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import publish, service_config, start_service
from tests.support import Mosquitto, wait_until

RULES = """rules:
  - id: loop
    topic: home/{room}/bell
    title: "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}{{ room }}"
    body: "{% if room %}{{ room.nope() }}{% endif %}"
    audience: {users: [console]}
"""


async def test_a_template_over_budget_pushes_a_fallback_title_and_is_counted(
    tmp_path: Path, broker: Mosquitto
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    service, printed = await start_service(
        service_config(tmp_path, broker.port, TOCSIN_RULES__PATHS=f"[{rules}]")
    )
    try:
        await wait_until(lambda: service.source.is_connected, 10, "the service to connect")
        await publish(broker.port, ("home/hall/bell", "{}"))
        await wait_until(lambda: printed.count() >= 1, 5, "the notification")
        [line] = printed.lines()
        assert line["title"] == "loop (template error)", line
        assert "range" not in str(line) and "nope" not in str(line) and "Undefined" not in str(line)
        assert service.metrics.template_errors.get("budget") == 1
        assert service.metrics.template_errors.get("error") == 1
    finally:
        await service.__aexit__(None, None, None)


async def test_a_newline_in_a_payload_cannot_forge_a_line_of_the_text_log(
    tmp_path: Path, broker: Mosquitto
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n  - id: msg\n    topic: home/msg\n"
        '    title: "{{ payload.text }}"\n    audience: {users: [console]}\n'
    )
    config = service_config(
        tmp_path, broker.port, TOCSIN_RULES__PATHS=f"[{rules}]", TOCSIN_PROVIDERS__LOG__FORMAT="text"
    )
    service, printed = await start_service(config)
    try:
        await wait_until(lambda: service.source.is_connected, 10, "the service to connect")
        forged = "hi\n[notification] 2026-01-01 00:00:00 FIRING door (critical) to console: forged\r\x1b[2K"
        await publish(broker.port, ("home/msg", json.dumps({"text": forged})))
        await wait_until(lambda: "hi" in printed.stream.getvalue(), 5, "the notification")
        lines = printed.stream.getvalue().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].endswith(
            r"hi\n[notification] 2026-01-01 00:00:00 FIRING door (critical) to console: forged\r\x1b[2K"
        )
    finally:
        await service.__aexit__(None, None, None)
