"""``tocsin rules test --explain``: what the noise stages held back, with the stage and why."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

from service.cli import main

RULE = """
rules:
  - id: bell
    topic: home/{room}/doorbell
    severity: info
    title: Doorbell
    body: "{{ room }}"
    cooldown: 30s
    audience: {tags: [home]}
"""


def run(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def test_explain_prints_what_the_cooldown_held(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(RULE)
    events = tmp_path / "e.jsonl"
    events.write_text(
        "\n".join(
            json.dumps({"time": t, "topic": "home/front/doorbell", "payload": {"seq": t}})
            for t in (0, 10, 40)
        )
    )
    code, out, err = run("rules", "test", str(tmp_path / "r.yaml"), "--events", str(events))
    assert code == 0 and len(out.splitlines()) == 2 and err.strip() == "3 events, 2 notifications"
    code, out, err = run("rules", "test", str(tmp_path / "r.yaml"), "--events", str(events), "--explain")
    lines = out.splitlines()
    assert code == 0 and err.strip() == "3 events, 2 notifications, 1 held back"
    assert lines[1] == (
        "1970-01-01T00:00:10Z HELD bell (info) firing at cooldown: "
        "the rule's cooldown after its last notification has not passed"
    )
    assert lines[0].startswith("1970-01-01T00:00:00Z FIRING bell") and "00:00:40Z FIRING" in lines[2]
    code, out, _ = run(
        "rules", "test", str(tmp_path / "r.yaml"), "--events", str(events), "--explain", "--json"
    )
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["sent"] for r in records] == [True, False, True] and records[1]["stage"] == "cooldown"
