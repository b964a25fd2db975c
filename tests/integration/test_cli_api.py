"""``tocsin registrations list|add|remove`` and ``tocsin push``: separate processes, a running service."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import sys
from pathlib import Path

import aiohttp

from service.cli import main
from tests.conftest import RunningService
from tests.integration.conftest import ADMIN, APNS, APP, Api
from tests.support import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]


async def tocsin(*args: str, key: str | None = None) -> tuple[int, str, str]:
    """The command in this process (a thread, so the service on this loop answers it): fast, same code."""
    out, err = io.StringIO(), io.StringIO()
    argv = [*args, *(("--key", key) if key else ())]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = await asyncio.to_thread(main, argv)
    return code, out.getvalue(), err.getvalue()


async def tocsin_process(*args: str, key: str | None = None) -> tuple[int, str, str]:
    """The command as users run it: a separate process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOCSIN_")}
    if key:
        env["TOCSIN_API_KEY"] = key
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_add_list_push_remove(api: Api) -> None:
    url = ("--url", api.base)
    tags = ("--tag", "severity:critical", "--tag", "deviceId:all")
    code, out, err = await tocsin(
        "registrations", "add", "log", "cli-phone", "--user", "dora", *tags, *url, key=ADMIN
    )
    assert code == 0 and out.startswith("registered log cli-phone"), err
    code, out, err = await tocsin_process(
        "registrations", "add", "apns", APNS, "--app", "com.example.alarms", "--sandbox", *url, key=APP
    )
    assert code == 0 and out.startswith(f"registered apns {APNS}"), err
    code, out, err = await tocsin("registrations", "list", "--user", "dora", *url, key=ADMIN)
    code2, out2, _ = await tocsin(
        "registrations", "list", "--json", "--tags", "!deviceId:all", *url, key=ADMIN
    )
    assert code == 0 and "cli-phone" in out and "dora" in out and err.strip() == "1 registration"
    listed = [json.loads(line) for line in out2.splitlines()]
    assert code2 == 0 and {r["token"] for r in listed} == {"console", APNS}
    assert next(r for r in listed if r["token"] == APNS)["environment"] == "sandbox"
    code, out, err = await tocsin(
        "push", "--tags", "severity:critical && deviceId:all", "--title", "Hi", *url, key=ADMIN
    )
    assert code == 0 and out.startswith("accepted: notification "), err
    await wait_until(lambda: api.printed.count() == 1, 10, "the test push")
    line = api.printed.lines()[0]
    assert line["to"] == "cli-phone" and line["title"] == "Hi" and line["nid"] == out.split()[-1]
    code, out, _ = await tocsin("registrations", "remove", "log", "cli-phone", *url, key=ADMIN)
    assert code == 0 and out.strip() == "removed log cli-phone"
    assert await api.service.store.get("log", "cli-phone") is None


async def test_errors_exit_non_zero_with_the_reason(api: Api) -> None:
    url = ("--url", api.base)
    bad_token = await tocsin("registrations", "add", "apns", "nothex", *url, key=ADMIN)
    bad_key = await tocsin_process("registrations", "list", *url, key="wrong-key-0000000000")
    unknown = await tocsin("registrations", "remove", "log", "nobody", *url, key=ADMIN)
    bad_tags = await tocsin("push", "--tags", "a &&", *url, key=ADMIN)
    unreachable = await tocsin("registrations", "list", "--url", f"http://127.0.0.1:{free_port()}", key=ADMIN)
    assert bad_token[0] == 1 and "400" in bad_token[2] and "64 hexadecimal" in bad_token[2]
    assert bad_key[0] == 1 and "401" in bad_key[2] and "wrong-key" not in bad_key[2]
    assert unknown[0] == 1 and "404" in unknown[2]
    assert bad_tags[0] == 1 and "position 5" in bad_tags[2]
    assert unreachable[0] == 1 and "cannot reach the service" in unreachable[2]


async def test_no_keys_configured_loopback_is_admin(running: RunningService, tmp_path: Path) -> None:
    """The embedded defaults have no keys: the CLI on the same machine still works, without a key."""
    config = tmp_path / "tocsin.yaml"
    config.write_text(f"http: {{port: {running.service.http_port}}}\n")
    code, _, err = await tocsin_process("push", "--user", "console", "--title", "Hello", "-c", str(config))
    assert code == 0, err
    await wait_until(lambda: running.printed.count() == 1, 10, "the push to the console")
    assert running.printed.lines()[0]["title"] == "Hello"
    base = f"http://127.0.0.1:{running.service.http_port}/v1/registrations"
    async with aiohttp.ClientSession() as http:
        async with http.get(base) as r:
            assert r.status == 200
        async with http.get(base, headers={"X-Forwarded-For": "203.0.113.9"}) as r:
            assert r.status == 401  # through a reverse proxy on this host: not local
