"""Audiences compiled to SQL over the ``registrations r`` and ``registration_tags`` tables.

Written for SQLite (``?`` parameters); ``postgresql`` turns a statement into PostgreSQL's dialect, so both
stores resolve an audience with the same plans over the same layout.

Resolving is a list of plans, each a bounded, index-driven query paged by key: explicit tokens, then users,
then the tag part driven by the tag index on the rarest tags that every match must carry. Each plan excludes
what an earlier one returned, so a registration is yielded once without remembering what was sent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from registrations import tagexpr
from registrations.model import PROVIDERS, Audience

ESTIMATE_CAP = 20_000  # counting a tag's index range costs time before the first batch


@dataclass(frozen=True, slots=True)
class Plan:
    sql: str  # "FROM ... WHERE ..." selecting r.*; the caller appends "AND <key> > ? ORDER BY <key> LIMIT ?"
    params: tuple[object, ...]
    key: str


def tag_node(audience: Audience) -> tagexpr.Node | None:
    nodes: list[tagexpr.Node] = []
    if audience.tags:
        nodes.append(tagexpr.any_of(audience.tags))
    if audience.expression:
        nodes.append(tagexpr.parse(audience.expression))
    if not nodes:
        return None
    return nodes[0] if len(nodes) == 1 else tagexpr.Or(tuple(nodes))


def _marks(values: tuple[str, ...], params: list[object]) -> str:
    params.extend(values)
    return ", ".join("?" * len(values))


def _has_tag(tag: str, params: list[object], key: str = "r.rid") -> str:
    params.append(tag)
    return f"EXISTS (SELECT 1 FROM registration_tags x WHERE x.tag = ? AND x.rid = {key})"


def compile_node(
    node: tagexpr.Node, params: list[object], known: dict[str, bool] | None = None, key: str = "r.rid"
) -> str:
    """SQL true for the registration whose rid is ``key`` if its tags satisfy ``node``; ``known`` tags are
    constants. Driven by the tag index, ``key`` is ``d.rid``: the tags are checked before the row is read."""
    known = known or {}
    if isinstance(node, tagexpr.Tag):
        if node.name in known:
            return "TRUE" if known[node.name] else "FALSE"  # both SQLite (3.23+) and PostgreSQL read these
        return _has_tag(node.name, params, key)
    if isinstance(node, tagexpr.Not):
        return f"NOT {compile_node(node.item, params, known, key)}"
    joiner = " AND " if isinstance(node, tagexpr.And) else " OR "
    return "(" + joiner.join(compile_node(n, params, known, key) for n in node.items) + ")"


def _tokens(tokens: tuple[str, ...], params: list[object]) -> str:
    """Tokens of any provider, through the (provider, token) index rather than a scan."""
    return f"r.provider IN ({_marks(PROVIDERS, params)}) AND r.token IN ({_marks(tokens, params)})"


def _filters(audience: Audience, params: list[object], states: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    if states:
        out.append(f"r.state IN ({_marks(states, params)})")
    if audience.platforms:
        out.append(f"r.provider IN ({_marks(audience.platforms, params)})")
    if audience.apps:
        out.append(f"r.app IN ({_marks(audience.apps, params)})")
    if audience.channels:
        params.extend(f" {c} " for c in audience.channels)  # channels: space-separated, no spaces inside
        out.append(
            "(" + " OR ".join("instr(' ' || r.channels || ' ', ?) > 0" for _ in audience.channels) + ")"
        )
    if audience.where:
        out.append(compile_node(tagexpr.parse(audience.where), params))
    return out


def _selectors(audience: Audience, params: list[object]) -> list[str]:
    out: list[str] = []
    if audience.tokens:
        out.append(_tokens(audience.tokens, params))
    if audience.users:
        out.append(f"r.user_id IN ({_marks(audience.users, params)})")
    node = tag_node(audience)
    if node is not None:
        out.append(compile_node(node, params))
    return out


def predicate(audience: Audience, params: list[object], states: tuple[str, ...] = ()) -> str:
    """One WHERE clause for listing: selectors OR-ed (none: everyone), filters AND-ed."""
    parts = []
    selectors = _selectors(audience, params)
    if selectors:
        parts.append("(" + " OR ".join(selectors) + ")")
    parts.extend(_filters(audience, params, states))
    return " AND ".join(parts) or "TRUE"


def plans(audience: Audience, tag_rows: Callable[[str, int], int]) -> list[Plan]:
    """The queries that together yield each active registration of ``audience`` once."""
    if audience.empty:
        return []
    active = ("active",)
    if not audience.has_selector:
        params: list[object] = []
        only = " AND ".join(_filters(audience, params, active))
        return [Plan(f"FROM registrations r WHERE {only}", tuple(params), "r.rid")]
    out: list[Plan] = []
    earlier: list[tuple[str, tuple[object, ...]]] = []  # selectors already planned, to exclude

    def exclusions(params: list[object]) -> list[str]:
        for _, p in earlier:
            params.extend(p)
        return [f"NOT ({sql})" for sql, _ in earlier]

    for column, values in (("r.token", audience.tokens), ("r.user_id", audience.users)):
        if not values:
            continue
        params = []
        selector = (
            _tokens(values, params) if column == "r.token" else f"{column} IN ({_marks(values, params)})"
        )
        own = tuple(params)
        where = [selector, *exclusions(params), *_filters(audience, params, active)]
        out.append(Plan(f"FROM registrations r WHERE {' AND '.join(where)}", tuple(params), "r.rid"))
        earlier.append((selector, own))

    node = tag_node(audience)
    if node is None:
        return out
    options = tagexpr.driver_options(node)
    if not options:  # nothing every match must carry: scan (a negation alone, for instance)
        params = []
        where = [compile_node(node, params), *exclusions(params), *_filters(audience, params, active)]
        out.append(Plan(f"FROM registrations r WHERE {' AND '.join(where)}", tuple(params), "r.rid"))
        return out
    if len(options) == 1:
        driver = options[0]
    else:
        driver = min(options, key=lambda tags: sum(tag_rows(t, ESTIMATE_CAP) for t in tags))
    for i, tag in enumerate(driver):
        params = [tag]
        known = {t: False for t in driver[:i]}
        known[tag] = True
        conds = ["d.tag = ?"]
        conds += [f"NOT {_has_tag(t, params, 'd.rid')}" for t in driver[:i]]
        conds.append(compile_node(node, params, known, "d.rid"))
        conds += exclusions(params)
        conds += _filters(audience, params, active)
        out.append(
            Plan(
                "FROM registration_tags d CROSS JOIN registrations r ON r.rid = d.rid "
                f"WHERE {' AND '.join(conds)}",
                tuple(params),
                "d.rid",
            )
        )
    return out


def page_plan(
    audience: Audience, states: tuple[str, ...], tag_rows: Callable[[str, int], int]
) -> Plan | None:
    """For listing by a tag expression alone: one query driven by the tag index, in rid order (so it pages),
    when the expression has a single tag every match carries. None: list with ``predicate`` instead."""
    if audience.tags or audience.users or audience.tokens or not audience.expression:
        return None
    node = tagexpr.parse(audience.expression)
    singles = [option[0] for option in tagexpr.driver_options(node) if len(option) == 1]
    if not singles:
        return None
    tag = min(singles, key=lambda t: tag_rows(t, ESTIMATE_CAP)) if len(singles) > 1 else singles[0]
    params: list[object] = [tag]
    conds = [
        "d.tag = ?",
        compile_node(node, params, {tag: True}, "d.rid"),
        *_filters(audience, params, states),
    ]
    sql = f"FROM registration_tags d CROSS JOIN registrations r ON r.rid = d.rid WHERE {' AND '.join(conds)}"
    return Plan(sql, tuple(params), "d.rid")


def postgresql(sql: str) -> str:
    """``sql`` (as built here) in PostgreSQL's dialect, with psycopg's ``%s`` parameters. The statements
    hold no ``?`` or ``%`` of their own (values are parameters), so the rewrite is exact."""
    return (
        sql.replace("%", "%%")
        .replace("?", "%s")
        .replace("instr(", "strpos(")  # same arguments: (text, what to find)
        .replace("CROSS JOIN", "JOIN")  # SQLite's way of fixing the join order; PostgreSQL's planner picks
    )
