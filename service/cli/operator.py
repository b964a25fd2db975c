"""``tocsin alerts``, ``silence add|list|expire``, ``ack``, ``report`` and ``cluster``: the operator's
commands (in the manner of Alertmanager's amtool), clients of a running service's HTTP API."""

from __future__ import annotations

import argparse
import json
import time
import urllib.parse
from datetime import UTC, datetime
from typing import Any

from service.cli.api import CliError, Loader, call, common, example

SEVERITY_ORDER = {"critical": 0, "major": 1, "minor": 2, "warning": 3, "info": 4}


def stamp(t: float | None) -> str:
    return "-" if t is None else datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Columns as wide as their widest cell, a header line, and a rule under it."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def labels(d: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(d.items())) or "-"


def out_json(value: Any) -> None:
    print(json.dumps(value, indent=1, ensure_ascii=False))


# -- alerts and acknowledgements -----------------------------------------------------------------------------
def alerts(args: argparse.Namespace, load: Loader) -> int:
    _, body = call(args, load, "GET", "/ui/api/alerts" + ("?state=firing" if args.firing else ""))
    found = body["alerts"]
    if args.rule:
        found = [a for a in found if a["rule"] == args.rule]
    found.sort(
        key=lambda a: ({"firing": 0, "pending": 1}.get(a["state"], 2), SEVERITY_ORDER.get(a["severity"], 9))
    )
    if args.json:
        out_json(found)
        return 0
    rows = [
        [
            a["state"]
            + (" (acked)" if a.get("acknowledged") else "")
            + (" (silenced)" if a.get("silenced_by") else ""),
            a["severity"],
            a["rule"],
            labels(a["labels"]),
            stamp(a.get("resolved_at") or a["since"]),
            a["id"],
            a["title"],
        ]
        for a in found
    ]
    print(table(["STATE", "SEVERITY", "RULE", "LABELS", "SINCE", "ID", "TITLE"], rows))
    return 0


def ack(args: argparse.Namespace, load: Loader) -> int:
    body = {"comment": args.comment} if args.comment else {}
    if args.by:
        body["by"] = args.by
    _, answer = call(args, load, "POST", f"/v1/alerts/{urllib.parse.quote(args.id, safe='')}/ack", body)
    if args.json:
        out_json(answer)
    else:
        print(f"acknowledged alert {answer['alert_id']} (episode {answer['episode']}) as {answer['by']}")
    return 0


# -- silences ------------------------------------------------------------------------------------------------
def matchers_of(items: list[str]) -> dict[str, str]:
    found = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise CliError(f"matcher {item!r}: write NAME=VALUE (NAME=~REGEX for a regular expression)")
        found[name] = value
    return found


def silence_add(args: argparse.Namespace, load: Loader) -> int:
    body: dict[str, Any] = {"matchers": matchers_of(args.matchers), "duration": args.duration}
    if args.comment:
        body["comment"] = args.comment
    body["created_by"] = args.author
    _, s = call(args, load, "POST", "/v1/silences", body)
    if args.json:
        out_json(s)
    else:
        print(f"silence {s['id']} until {stamp(s['end'])}: {labels(s['matchers'])}")
    return 0


def silence_list(args: argparse.Namespace, load: Loader) -> int:
    _, body = call(args, load, "GET", "/ui/api/silences")
    found = [{**s, "status": "active"} for s in body["active"]]
    if args.expired:
        found += [{**s, "status": "expired"} for s in body["expired"]]
    if args.json:
        out_json(found)
        return 0
    rows = [
        [
            s["id"],
            s["status"],
            labels(s["matchers"]),
            stamp(s["start"]),
            stamp(s.get("expired_at", s["end"])),
            s["created_by"] or "-",
            s["comment"] or "-",
        ]
        for s in found
    ]
    print(table(["ID", "STATUS", "MATCHERS", "STARTS", "ENDS", "BY", "COMMENT"], rows))
    return 0


def silence_expire(args: argparse.Namespace, load: Loader) -> int:
    for sid in args.ids:
        call(args, load, "DELETE", f"/v1/silences/{urllib.parse.quote(sid, safe='')}")
        if args.json:
            out_json({"id": sid, "expired": True})
        else:
            print(f"expired silence {sid}")
    return 0


# -- delivery reports and the cluster ------------------------------------------------------------------------
def print_report(r: dict[str, Any]) -> None:
    failed = sum(r["failed"].values())
    print(
        f"notification {r['id']}: {r['targeted']} targeted, {r['delivered']} delivered, "
        f"{r['pending']} pending, {failed} failed, {len(r.get('suppressed', []))} held back"
    )
    rows = []
    for platform, p in sorted(r["platforms"].items()):
        rows.append([platform, "delivered", str(p["delivered"])])
        if p["pending"]:
            rows.append([platform, "pending", str(p["pending"])])
        for reason, n in sorted(p["failed"].items()):
            rows.append([platform, f"failed: {reason}", str(n)])
    if rows:
        print(table(["PLATFORM", "OUTCOME", "COUNT"], rows))
    held = r.get("suppressed", [])
    if held:
        print(
            table(
                ["HELD AT", "STAGE", "REGISTRATION", "REASON"],
                [[stamp(s["time"]), s["stage"], s["registration"] or "-", s["reason"]] for s in held],
            )
        )


def fetch_report(args: argparse.Namespace, load: Loader, nid: str) -> dict[str, Any]:
    _, r = call(args, load, "GET", f"/v1/notifications/{urllib.parse.quote(nid, safe='')}")
    return dict(r)


def report(args: argparse.Namespace, load: Loader) -> int:
    r = fetch_report(args, load, args.id)
    if args.json:
        out_json(r)
    else:
        print_report(r)
    return 0


def wait_report(args: argparse.Namespace, load: Loader, nid: str, timeout: float) -> dict[str, Any]:
    """Until the report exists and nothing is pending in two looks in a row (fan-out may still add rows)."""
    deadline, last = time.monotonic() + timeout, None
    while True:
        try:
            r: dict[str, Any] | None = fetch_report(args, load, nid)
        except CliError as exc:
            if ": 404:" not in str(exc):
                raise
            r = None
        if (
            r is not None
            and r["pending"] == 0
            and last is not None
            and last == (r["targeted"], r["delivered"])
        ):
            return r
        last = None if r is None or r["pending"] else (r["targeted"], r["delivered"])
        if time.monotonic() > deadline:
            if r is not None:
                return r
            raise CliError(f"notification {nid}: no delivery report after {timeout:g} s")
        time.sleep(0.25)


def cluster(args: argparse.Namespace, load: Loader) -> int:
    _, c = call(args, load, "GET", "/v1/cluster")
    if args.json:
        out_json(c)
        return 0
    if not c.get("enabled"):
        print(f"single instance: {c.get('reason', 'no cluster configured')}")
        return 0
    print(
        f"cluster {c['cluster']}: this instance {c['instance']} is {c['role']}, leader {c['leader'] or '-'}, "
        f"term {c['term']}, takeovers {c['takeovers']}, lease age {c['lease_age_s']} s, "
        f"backlog {c['cluster_backlog']}, buffered {c['buffered_transitions']}"
    )
    rows = [
        [
            m["id"],
            str(m["rank"]),
            str(m["priority"]),
            m["version"],
            "leader" if m["id"] == c["leader"] else "follower",
        ]
        for m in c["members"]
    ]
    print(table(["MEMBER", "RANK", "PRIORITY", "VERSION", "ROLE"], rows))
    return 0


def add_commands(sub: Any, load: Loader) -> None:
    p = sub.add_parser(
        "alerts",
        help="list alerts: firing, pending and recently resolved",
        epilog=example("tocsin alerts --firing", "tocsin alerts --rule doorbell --json"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common(p)
    p.add_argument("--firing", action="store_true", help="only firing alerts (e.g. --firing)")
    p.add_argument("--rule", help="only this rule's alerts (e.g. --rule doorbell)")
    p.set_defaults(func=lambda a: alerts(a, load))

    p = sub.add_parser(
        "ack",
        help="acknowledge a firing alert: stops its repeats and escalation",
        epilog=example("tocsin ack 3f2a9c01 --comment 'on my way'"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common(p)
    p.add_argument("id", help="the alert id (from `tocsin alerts`)")
    p.add_argument("--comment", help="why, for the others (e.g. --comment 'on my way')")
    p.add_argument("--by", help="who acknowledges (default: the key's name)")
    p.set_defaults(func=lambda a: ack(a, load))

    s = sub.add_parser("silence", help="add, list or expire silences")
    verbs = s.add_subparsers(dest="verb", required=True)
    p = verbs.add_parser(
        "add",
        help="mute notifications whose fields match every matcher, for a while",
        epilog=example("tocsin silence add rule=doorbell room=~^cell --duration 2h --comment 'party'"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common(p)
    p.add_argument(
        "matchers",
        nargs="+",
        metavar="NAME=VALUE",
        help="rule, severity, alert_id, state or a label; =~REGEX for a regular expression",
    )
    p.add_argument("--duration", "-d", default="1h", help="how long (default 1h; e.g. 30m, 2h, 1d)")
    p.add_argument("--comment", help="why (e.g. --comment 'maintenance')")
    p.add_argument("--author", default="cli", help="who made it (default: cli)")
    p.set_defaults(func=lambda a: silence_add(a, load))
    p = verbs.add_parser(
        "list",
        help="list active silences (and expired ones with --expired)",
        epilog=example("tocsin silence list --expired"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common(p)
    p.add_argument("--expired", action="store_true", help="also the recently expired ones")
    p.set_defaults(func=lambda a: silence_list(a, load))
    p = verbs.add_parser(
        "expire",
        help="end silences now",
        epilog=example("tocsin silence expire 9c3e0d2a4b5f4e0e8a1b2c3d4e5f6a7b"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common(p)
    p.add_argument("ids", nargs="+", metavar="ID", help="silence ids (from `tocsin silence list`)")
    p.set_defaults(func=lambda a: silence_expire(a, load))

    p = sub.add_parser(
        "report",
        help="the delivery report of a notification: per platform and reason",
        epilog=example("tocsin report 5b1e0c9a7f3d4e21"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common(p)
    p.add_argument("id", help="the notification id (from `tocsin push` or the console)")
    p.set_defaults(func=lambda a: report(a, load))

    p = sub.add_parser(
        "cluster",
        help="the cluster: members, leader, term, takeovers",
        epilog=example("tocsin cluster", "tocsin cluster --json"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common(p)
    p.set_defaults(func=lambda a: cluster(a, load))
