"""``tocsin alerts``, ``ack``, ``silence add|list|expire``, ``report``, ``push --wait`` and ``cluster``
against a running service and a real Mosquitto: tables with headers, ``--json``, what the service did."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.conftest import publish
from tests.integration.conftest import ADMIN, Api
from tests.integration.test_cli_api import tocsin, tocsin_process
from tests.support import wait_until

ROOT = Path(__file__).resolve().parents[2]


async def test_alerts_silence_ack_report(api: Api) -> None:
    url = ("--url", api.base)
    code, out, err = await tocsin("alerts", *url, key=ADMIN)
    assert code == 0, err
    assert out.split("\n")[0].split() == ["STATE", "SEVERITY", "RULE", "LABELS", "SINCE", "ID", "TITLE"]
    assert len(out.strip().splitlines()) == 2  # header and rule: nothing open

    await publish(api.service.config.mqtt.port, ("home/front/doorbell", '{"event": "ring", "seq": 1}'))
    await wait_until(lambda: api.printed.count() == 1, 10, "the ring's notification")
    code, out, err = await tocsin("alerts", "--firing", "--json", *url, key=ADMIN)
    (alert,) = json.loads(out)
    assert code == 0 and alert["rule"] == "doorbell" and alert["labels"] == {"room": "front"}
    code, out, _ = await tocsin("alerts", *url, key=ADMIN)
    assert "firing" in out and "room=front" in out and alert["id"] in out

    # A silence from the command line mutes the next ring; the report of the held one says why.
    code, out, err = await tocsin(
        "silence", "add", "rule=doorbell", "room=~^fr", "-d", "30m", "--comment", "party", *url, key=ADMIN
    )
    assert code == 0 and out.startswith("silence "), err
    sid = out.split()[1]
    code, out, _ = await tocsin("silence", "list", *url, key=ADMIN)
    assert out.split("\n")[0].split() == ["ID", "STATUS", "MATCHERS", "STARTS", "ENDS", "BY", "COMMENT"]
    assert sid in out and "room=~^fr" in out and "party" in out and "cli" in out
    await publish(api.service.config.mqtt.port, ("home/front/doorbell", '{"event": "ring", "seq": 2}'))
    await wait_until(lambda: len(api.service.explainer.recent) == 1, 10, "the second ring to be held")
    held = api.service.explainer.recent[0]
    assert held.stage == "silence" and api.printed.count() == 1
    code, out, err = await tocsin("report", held.nid, *url, key=ADMIN)
    assert code == 0, err
    assert "0 targeted" in out and "1 held back" in out and "silence" in out and sid in out
    code, out, _ = await tocsin("report", held.nid, "--json", *url, key=ADMIN)
    assert json.loads(out)["suppressed"][0]["stage"] == "silence"

    code, out, err = await tocsin("silence", "expire", sid, *url, key=ADMIN)
    assert code == 0 and out.strip() == f"expired silence {sid}", err
    code, out, _ = await tocsin("silence", "list", "--expired", "--json", *url, key=ADMIN)
    (expired,) = json.loads(out)
    assert expired["id"] == sid and expired["status"] == "expired"
    assert api.service.noise.silences.get(sid) is None

    code, out, err = await tocsin("ack", alert["id"], "--comment", "on my way", *url, key=ADMIN)
    assert code == 0 and out.startswith(f"acknowledged alert {alert['id']}") and "as ops" in out, err
    assert api.service.noise.acks.acked(api.service.noise.open_alerts()[alert["id"]])
    code, out, _ = await tocsin("alerts", *url, key=ADMIN)
    assert "firing (acked)" in out
    unknown = await tocsin("ack", "no-such-alert", *url, key=ADMIN)
    assert unknown[0] == 1 and "404" in unknown[2]
    bad = await tocsin("silence", "add", "rule", *url, key=ADMIN)
    assert bad[0] == 1 and "NAME=VALUE" in bad[2]


async def test_push_wait_prints_the_report_and_cluster(api: Api) -> None:
    url = ("--url", api.base)
    code, out, err = await tocsin_process(
        "push", "--user", "console", "--title", "Hi", "--wait", *url, key=ADMIN
    )
    assert code == 0, err
    assert "1 targeted, 1 delivered, 0 pending, 0 failed" in out, out
    assert out.splitlines()[1].split() == ["PLATFORM", "OUTCOME", "COUNT"] and "log" in out
    assert api.printed.lines()[0]["title"] == "Hi"
    code, out, _ = await tocsin(
        "push", "--user", "nobody", "--wait", "--json", "--timeout", "10", *url, key=ADMIN
    )
    report = json.loads(out)
    assert code == 0 and report["targeted"] == 0 and report["suppressed"][0]["stage"] == "no_audience"

    code, out, _ = await tocsin("cluster", *url, key=ADMIN)
    assert code == 0 and out.startswith("single instance")
    code, out, _ = await tocsin("cluster", "--json", *url, key=ADMIN)
    assert json.loads(out)["enabled"] is False
    code, out, _ = await tocsin("registrations", "list", *url, key=ADMIN)
    assert out.split("\n")[0].split()[:3] == ["PROVIDER", "STATE", "USER"] and "console" in out


def test_every_option_has_help_and_every_command_an_example() -> None:
    for command in (
        ["alerts"],
        ["ack"],
        ["silence", "add"],
        ["silence", "list"],
        ["silence", "expire"],
        ["report"],
        ["cluster"],
        ["push"],
        ["registrations", "list"],
        ["registrations", "add"],
        ["registrations", "remove"],
    ):
        done = subprocess.run(
            [str(ROOT / ".venv/bin/tocsin"), *command, "--help"], capture_output=True, text=True, check=True
        )
        assert "examples:" in done.stdout, command
        options = [line for line in done.stdout.splitlines() if line.startswith("  -")]
        for line in options:
            index = done.stdout.index(line)
            following = done.stdout[index + len(line) :].split("\n", 1)[1].split("\n", 1)[0]
            assert len(line.split()) > 2 or following.startswith(" " * 10), f"{command}: {line} has no help"


def test_wrapper_and_bench_usage() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOCSIN_")}
    done = subprocess.run(
        [str(ROOT / "scripts/tocsin"), "--version"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0 and done.stdout.startswith("tocsin "), done.stderr
    bench = subprocess.run([str(ROOT / "scripts/bench")], capture_output=True, text=True, env=env)
    assert bench.returncode == 2 and bench.stdout.startswith("usage: scripts/bench NAME")
    assert "e2e" in bench.stdout and "line " not in bench.stderr  # not a bash error
