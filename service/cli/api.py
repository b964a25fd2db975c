"""``tocsin registrations list|add|remove`` and ``tocsin push``: clients of a running service's HTTP API.

The service's address comes from the configuration (http.host, http.port) or ``--url``; the key from
``--key``, ``TOCSIN_API_KEY``, or the first admin key given in plain in the configuration. With no keys
configured the service treats loopback callers as admin, so the embedded defaults need none.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from service.config import Config, ConfigError

Loader = Callable[[str | None], Config]


def add_commands(sub: Any, load: Loader) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", "-c", help="YAML configuration file (or TOCSIN_CONFIG)")
        p.add_argument("--url", help="the service's base URL (default: from the configuration)")
        p.add_argument(
            "--key", help="API key (default: TOCSIN_API_KEY, or an admin key in the configuration)"
        )

    regs = sub.add_parser("registrations", help="list, add or remove push registrations")
    verbs = regs.add_subparsers(dest="verb", required=True)
    ls = verbs.add_parser("list", help="list registrations")
    common(ls)
    ls.add_argument("--user", action="append", default=[])
    ls.add_argument("--app", action="append", default=[])
    ls.add_argument("--provider", action="append", default=[])
    ls.add_argument("--tags", help="tag expression, e.g. 'severity:critical && deviceId:all'")
    ls.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    ls.add_argument("--json", action="store_true", help="one JSON object a line")
    ls.set_defaults(func=lambda a: _list(a, load))
    add = verbs.add_parser("add", help="register a token (again: updates it)")
    common(add)
    add.add_argument("provider", choices=["apns", "fcm", "log"])
    add.add_argument("token")
    add.add_argument("--user")
    add.add_argument("--app")
    add.add_argument("--tag", action="append", default=[])
    add.add_argument("--channel", action="append", default=[])
    add.add_argument("--sandbox", action="store_true", help="an APNs development token")
    add.set_defaults(func=lambda a: _add(a, load))
    rm = verbs.add_parser("remove", help="unregister a token")
    common(rm)
    rm.add_argument("provider", choices=["apns", "fcm", "log"])
    rm.add_argument("token")
    rm.set_defaults(func=lambda a: _remove(a, load))

    push = sub.add_parser("push", help="send a test notification to an audience")
    common(push)
    push.add_argument("--title", default="Test notification from tocsin")
    push.add_argument("--body", default="If you read this, push works.")
    push.add_argument("--user", action="append", default=[])
    push.add_argument("--token", action="append", default=[])
    push.add_argument("--tags", help="tag expression")
    push.add_argument("--app", action="append", default=[])
    push.add_argument("--platform", action="append", default=[], choices=["apns", "fcm", "log"])
    push.set_defaults(func=lambda a: _push(a, load))


class CliError(Exception):
    pass


def _target(args: argparse.Namespace, load: Loader) -> tuple[str, str | None]:
    try:
        config = load(args.config)
    except ConfigError as exc:
        raise CliError(f"configuration is not valid:\n{exc}") from None
    url = args.url or f"http://{config.http.host}:{config.http.port}"
    key = args.key or os.environ.get("TOCSIN_API_KEY")
    if key is None:
        for k in config.api.keys:
            if k.role == "admin" and k.api_key is not None:
                key = k.api_key.get_secret_value()
                break
    return url.rstrip("/"), key


def _call(
    args: argparse.Namespace, load: Loader, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    base, key = _target(args, load)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            text = r.read().decode()
            return r.status, json.loads(text) if text else None
    except urllib.error.HTTPError as exc:
        text = exc.read().decode()
        try:
            answer = json.loads(text)
        except ValueError:
            answer = {"message": text}
        raise CliError(f"{method} {path}: {exc.code}: {answer.get('message', answer)}") from None
    except urllib.error.URLError as exc:
        raise CliError(
            f"cannot reach the service at {base} ({exc.reason}); is `tocsin run` running?"
        ) from None


def _list(args: argparse.Namespace, load: Loader) -> int:
    params: list[tuple[str, str]] = [("user_id", u) for u in args.user] + [("app", a) for a in args.app]
    params += [("provider", p) for p in args.provider]
    if args.tags:
        params.append(("tags", args.tags))
    shown, after = 0, None
    while shown < args.limit:
        page = [*params, ("limit", str(min(1000, args.limit - shown)))] + (
            [("after", after)] if after else []
        )
        _, body = _call(args, load, "GET", "/v1/registrations?" + urllib.parse.urlencode(page))
        for r in body["items"]:
            if args.json:
                print(json.dumps(r))
            else:
                tags = ",".join(r["tags"]) or "-"
                print(
                    f"{r['provider']:<5} {r['state']:<8} {r['user_id'] or '-':<20} {r['app'] or '-':<24} "
                    f"{tags} {r['token']}"
                )
            shown += 1
        after = body["next"]
        if not after:
            break
    if not args.json:
        print(f"{shown} registration{'s' if shown != 1 else ''}", file=sys.stderr)
    return 0


def _add(args: argparse.Namespace, load: Loader) -> int:
    body: dict[str, Any] = {
        "provider": args.provider,
        "token": args.token,
        "tags": args.tag,
        "channels": args.channel,
    }
    if args.user:
        body["user_id"] = args.user
    if args.app:
        body["app"] = args.app
    if args.sandbox:
        body["environment"] = "sandbox"
    status, reg = _call(args, load, "POST", "/v1/registrations", body)
    print(f"{'registered' if status == 201 else 'updated'} {reg['provider']} {reg['token']} (id {reg['id']})")
    return 0


def _remove(args: argparse.Namespace, load: Loader) -> int:
    path = f"/v1/registrations/{args.provider}/{urllib.parse.quote(args.token, safe='')}"
    _call(args, load, "DELETE", path)
    print(f"removed {args.provider} {args.token}")
    return 0


def _push(args: argparse.Namespace, load: Loader) -> int:
    audience: dict[str, Any] = {
        "users": args.user,
        "tokens": args.token,
        "apps": args.app,
        "platforms": args.platform,
    }
    if args.tags:
        audience["tags"] = args.tags
    body = {"audience": audience, "title": args.title, "body": args.body}
    _, answer = _call(args, load, "POST", "/v1/push", body)
    print(f"accepted: notification {answer['id']}")
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"tocsin: {exc}", file=sys.stderr)
        return 1
