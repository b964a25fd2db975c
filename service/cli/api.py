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
from pathlib import Path
from typing import Any

from service.cli import push_flags
from service.config import Config, ConfigError
from service.providers.plugins import NAMES as PROVIDERS

Loader = Callable[[str | None], Config]


def common(p: argparse.ArgumentParser) -> None:
    """The options every API client command has."""
    p.add_argument("--config", "-c", help="YAML configuration file (or TOCSIN_CONFIG), e.g. -c tocsin.yaml")
    p.add_argument(
        "--url", help="the service's base URL (default: from the configuration), e.g. http://127.0.0.1:8080"
    )
    p.add_argument("--key", help="API key (default: TOCSIN_API_KEY, or an admin key in the configuration)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def example(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


RAW = argparse.RawDescriptionHelpFormatter
_NAMES = ", ".join(PROVIDERS)


def add_commands(sub: Any, load: Loader) -> None:
    regs = sub.add_parser("registrations", help="list, add or remove push registrations")
    verbs = regs.add_subparsers(dest="verb", required=True)
    ls = verbs.add_parser(
        "list",
        help="list registrations (a table; --json: one object a line)",
        epilog=example(
            "tocsin registrations list --user ann", "tocsin registrations list --tags 'home && !test'"
        ),
        formatter_class=RAW,
    )
    common(ls)
    ls.add_argument("--user", action="append", default=[], help="this user's (repeatable), e.g. --user ann")
    ls.add_argument("--app", action="append", default=[], help="this app's, e.g. --app com.example.alarms")
    ls.add_argument(
        "--provider", action="append", default=[], help=f"{_NAMES}, e.g. --provider {PROVIDERS[-1]}"
    )
    ls.add_argument("--tags", help="tag expression, e.g. 'severity:critical && deviceId:all'")
    ls.add_argument("--state", help="active, suspect or invalid, e.g. --state invalid")
    ls.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    ls.set_defaults(func=lambda a: _list(a, load))
    add = verbs.add_parser(
        "add",
        help="register a token (again: updates it)",
        epilog=example(
            "tocsin registrations add log my-laptop --user ann --tag home",
            "tocsin registrations add webhook https://hooks.example.com/tocsin --tag ops",
            "tocsin registrations add webpush --subscription subscription.json --user ann --tag home",
        ),
        formatter_class=RAW,
    )
    common(add)
    add.add_argument("provider", choices=PROVIDERS, help="the push provider")
    add.add_argument(
        "token",
        nargs="?",
        help="the device token (APNs: 64 hex digits; webhook: the URL; webpush: the endpoint)",
    )
    add.add_argument(
        "--subscription",
        type=Path,
        help="webpush: a file with the browser's PushSubscription.toJSON(): {endpoint, keys}",
    )
    add.add_argument("--p256dh", help="webpush: the subscription's keys.p256dh (with the endpoint as token)")
    add.add_argument("--auth", help="webpush: the subscription's keys.auth (with the endpoint as token)")
    add.add_argument("--user", help="the user id, e.g. --user ann")
    add.add_argument("--app", help="bundle id or package name, e.g. --app com.example.alarms")
    add.add_argument("--tag", action="append", default=[], help="a tag (repeatable), e.g. --tag home")
    add.add_argument(
        "--channel", action="append", default=[], help="a channel (repeatable), e.g. --channel climate"
    )
    add.add_argument("--sandbox", action="store_true", help="an APNs development token")
    add.set_defaults(func=lambda a: _add(a, load))
    rm = verbs.add_parser(
        "remove",
        help="unregister a token",
        epilog=example("tocsin registrations remove log my-laptop"),
        formatter_class=RAW,
    )
    common(rm)
    rm.add_argument("provider", choices=PROVIDERS, help="the push provider")
    rm.add_argument("token", help="the device token")
    rm.set_defaults(func=lambda a: _remove(a, load))

    push = sub.add_parser(
        "push",
        help="send a notification to an audience (--wait: and print its delivery report)",
        epilog=example(
            "tocsin push --user ann --title 'Test' --wait",
            "tocsin push --tags 'deviceId:4711'",
            "tocsin push --tags home --title Ring --sound bell.caf --priority normal --collapse-key bell-hall"
            " --locale-title de='Es klingelt'",
        ),
        formatter_class=RAW,
    )
    common(push)
    push.add_argument("--title", default="Test notification from tocsin", help="the title, e.g. --title Test")
    push.add_argument("--body", default="If you read this, push works.", help="the text, e.g. --body Hello")
    push.add_argument(
        "--user", action="append", default=[], help="to this user (repeatable), e.g. --user ann"
    )
    push.add_argument("--token", action="append", default=[], help="to this device token (repeatable)")
    push.add_argument("--tags", help="to registrations matching this tag expression, e.g. 'home && !test'")
    push.add_argument(
        "--app", action="append", default=[], help="only this app's, e.g. --app com.example.alarms"
    )
    push.add_argument(
        "--platform", action="append", default=[], choices=PROVIDERS, help="only this provider's"
    )
    push_flags.add_flags(push)  # one per option of POST /v1/push: --sound, --badge, --priority, ...
    push.add_argument("--wait", action="store_true", help="wait until it is delivered, then print the report")
    push.add_argument(
        "--timeout", type=float, default=60.0, help="how long --wait waits, seconds (default 60)"
    )
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


def call(args: argparse.Namespace, load: Loader, method: str, path: str, body: Any = None) -> tuple[int, Any]:
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
    if args.state:
        params.append(("state", args.state))
    shown, after, rows = 0, None, []
    while shown < args.limit:
        page = [*params, ("limit", str(min(1000, args.limit - shown)))] + (
            [("after", after)] if after else []
        )
        _, body = call(args, load, "GET", "/v1/registrations?" + urllib.parse.urlencode(page))
        for r in body["items"]:
            if args.json:
                print(json.dumps(r))
            else:
                last = r.get("last_success") or "-"
                rows.append(
                    [
                        r["provider"],
                        r["state"],
                        r["user_id"] or "-",
                        r["app"] or "-",
                        ",".join(r["tags"]) or "-",
                        str(last),
                        r["token"],
                    ]
                )
            shown += 1
        after = body["next"]
        if not after:
            break
    if not args.json:
        from service.cli.operator import table

        print(table(["PROVIDER", "STATE", "USER", "APP", "TAGS", "LAST SUCCESS", "TOKEN"], rows))
        print(f"{shown} registration{'s' if shown != 1 else ''}", file=sys.stderr)
    return 0


def _subscription(args: argparse.Namespace) -> dict[str, Any]:
    """A Web Push subscription from --subscription FILE, or from the endpoint with --p256dh and --auth."""
    if args.subscription is not None:
        try:
            doc = json.loads(args.subscription.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CliError(f"cannot read the subscription {args.subscription}: {exc}") from None
        if not isinstance(doc, dict):
            raise CliError(f"{args.subscription} is not a PushSubscription JSON object")
        return doc
    if not (args.token and args.p256dh and args.auth):
        raise CliError(
            "a webpush registration needs --subscription FILE, or the endpoint with --p256dh and --auth"
        )
    return {"endpoint": args.token, "keys": {"p256dh": args.p256dh, "auth": args.auth}}


def _add(args: argparse.Namespace, load: Loader) -> int:
    body: dict[str, Any] = {"provider": args.provider, "tags": args.tag, "channels": args.channel}
    if args.provider == "webpush":
        body["subscription"] = _subscription(args)
    elif args.token is None:
        raise CliError(f"a {args.provider} registration needs its token")
    elif args.subscription or args.p256dh or args.auth:
        raise CliError("--subscription, --p256dh and --auth are for webpush registrations")
    else:
        body["token"] = args.token
    if args.user:
        body["user_id"] = args.user
    if args.app:
        body["app"] = args.app
    if args.sandbox:
        body["environment"] = "sandbox"
    status, reg = call(args, load, "POST", "/v1/registrations", body)
    if args.json:
        print(json.dumps(reg))
        return 0
    print(f"{'registered' if status == 201 else 'updated'} {reg['provider']} {reg['token']} (id {reg['id']})")
    return 0


def _remove(args: argparse.Namespace, load: Loader) -> int:
    path = f"/v1/registrations/{args.provider}/{urllib.parse.quote(args.token, safe='')}"
    call(args, load, "DELETE", path)
    if args.json:
        print(json.dumps({"provider": args.provider, "token": args.token, "removed": True}))
        return 0
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
    try:
        options = push_flags.body_fields(args)
    except push_flags.FlagError as exc:
        raise CliError(str(exc)) from None
    body = {"audience": audience, "title": args.title, "body": args.body, **options}
    _, answer = call(args, load, "POST", "/v1/push", body)
    if not args.wait:
        print(json.dumps(answer) if args.json else f"accepted: notification {answer['id']}")
        return 0
    from service.cli.operator import print_report, wait_report

    if not args.json:
        print(f"accepted: notification {answer['id']}; waiting for its delivery report ...", file=sys.stderr)
    report = wait_report(args, load, answer["id"], args.timeout)
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report)
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"tocsin: {exc}", file=sys.stderr)
        return 1
