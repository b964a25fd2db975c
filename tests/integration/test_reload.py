"""Rules reload when their files change; a broken set is refused and the running one keeps working."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import publish, service_config, start_service
from tests.support import Mosquitto, wait_until

BELL = (
    "  - id: bell\n    topic: home/{room}/doorbell\n"
    "    title: 'Ring {{ room }}'\n    audience: {tags: [home]}\n"
)
LEAK = (
    "  - id: leak\n    topic: home/{room}/leak\n    title: 'Leak {{ room }}'\n    audience: {tags: [home]}\n"
)


async def test_changed_rule_file_is_reloaded_and_a_broken_one_refused(
    tmp_path: Path, broker: Mosquitto
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n" + BELL)
    config = service_config(
        tmp_path, broker.port, TOCSIN_RULES__PATHS=f"[{rules}]", TOCSIN_RULES__WATCH_S="0.05"
    )
    service, printed = await start_service(config)
    try:
        await wait_until(lambda: service.source.is_connected, 10, "the service to connect")
        rules.write_text("rules:\n" + BELL + LEAK)
        await wait_until(lambda: service.metrics.rule_reloads.get("loaded") == 1, 10, "the reload")
        assert len(service.ruleset.rules) == 2
        # the new rule's topic is subscribed to on the live connection
        await wait_until(lambda: "home/+/leak" in service.source.subscribed, 5, "the new subscription")
        await publish(broker.port, ("home/cellar/leak", json.dumps({"wet": True})))
        await wait_until(lambda: printed.count() == 1, 5, "the leak notification")
        assert printed.lines()[0]["title"] == "Leak cellar"

        rules.write_text("rules:\n" + BELL + LEAK + "  - id: broken\n    topic: a\n")
        await wait_until(lambda: service.metrics.rule_reloads.get("refused") == 1, 10, "the refusal")
        assert len(service.ruleset.rules) == 2
        await publish(broker.port, ("home/hall/doorbell", "ring"))
        await wait_until(lambda: printed.count() == 2, 5, "the old rules still running")
        assert printed.lines()[1]["title"] == "Ring hall"
    finally:
        await service.__aexit__(None, None, None)
