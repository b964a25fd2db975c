"""Hostile events through a running service (issue 14): template budgets where they take effect."""

from __future__ import annotations

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
