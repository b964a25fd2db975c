"""Payload conditions (``when:``): a field path and either a value to equal or a mapping of operators.

Compiled once at load time into plain closures, so that matching an event costs a few dictionary look-ups.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

Predicate = Callable[[Any], bool]
_MISSING = object()
MISSING = _MISSING  # what get_path and get_parts return for a path that is not there
OPERATORS = ("eq", "ne", "gt", "ge", "lt", "le", "in", "not_in", "regex", "exists")


_PATH_PART = re.compile(r"""\.?([^.\[\]]+)|\[(\d+)\]|\[['"]([^'"]*)['"]\]""")
_parsed_paths: dict[str, tuple[str, ...]] = {}


def parse_path(path: str) -> tuple[str, ...]:
    """The keys of a path: dotted (``a.b.0``) or JSONPath-style (``$.a.b[0]``, ``$['a b']``); ``$`` is ()."""
    found = _parsed_paths.get(path)
    if found is not None:
        return found
    text = path.strip()
    if text.startswith("$"):
        text = text[1:]
    parts: list[str] = []
    pos = 0
    while pos < len(text):
        m = _PATH_PART.match(text, pos)
        if m is None or m.end() == pos:
            raise ValueError(f"cannot read {path!r} as a path (use a.b.0 or $.a.b[0])")
        parts.append(next(g for g in m.groups() if g is not None))
        pos = m.end()
    if len(_parsed_paths) < 10_000:
        _parsed_paths[path] = tuple(parts)
    return tuple(parts)


def get_path(payload: Any, path: str) -> Any:
    """The value at ``path`` in ``payload`` (see ``parse_path``); ``$`` is the whole payload."""
    if path == "$":
        return payload
    return get_parts(payload, parse_path(path))


def get_parts(payload: Any, parts: tuple[str, ...]) -> Any:
    value = payload
    for part in parts:
        if isinstance(value, dict):
            value = value.get(part, _MISSING)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
        if value is _MISSING:
            return _MISSING
    return value


def as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _compare(op: str, operand: Any) -> Callable[[Any], bool]:
    if op == "eq":
        return lambda v: (
            v == operand or (isinstance(v, str) and not isinstance(operand, str) and _num_eq(v, operand))
        )
    if op == "ne":
        return lambda v: v != operand
    if op in ("gt", "ge", "lt", "le"):
        limit = as_number(operand)
        if limit is None:
            raise ValueError(f"{op} needs a number, not {operand!r}")
        cmp: Callable[[float], bool] = {
            "gt": lambda x: x > limit,
            "ge": lambda x: x >= limit,
            "lt": lambda x: x < limit,
            "le": lambda x: x <= limit,
        }[op]

        def numeric(v: Any) -> bool:
            x = as_number(v)
            return x is not None and cmp(x)

        return numeric
    if op in ("in", "not_in"):
        if not isinstance(operand, list):
            raise ValueError(f"{op} needs a list of values")
        members = list(operand)
        return (lambda v: v in members) if op == "in" else (lambda v: v not in members)
    if op == "regex":
        if not isinstance(operand, str):
            raise ValueError("regex needs a pattern as text")
        try:
            rx = re.compile(operand)
        except re.error as exc:
            raise ValueError(f"bad regular expression {operand!r}: {exc}") from None
        return lambda v: isinstance(v, str | int | float) and rx.search(str(v)) is not None
    if op == "exists":
        want = bool(operand)
        return lambda v: (v is not _MISSING) == want
    raise ValueError(f"unknown operator {op!r} (known: {', '.join(OPERATORS)})")


def _num_eq(text: str, operand: Any) -> bool:
    x, y = as_number(text), as_number(operand)
    return x is not None and x == y


def compile_conditions(when: Mapping[str, Any]) -> Predicate | None:
    """One predicate for all conditions (all must hold), or None when there are none.

    Raises ValueError naming the field whose condition is wrong.
    """
    checks: list[tuple[tuple[str, ...], Callable[[Any], bool], bool]] = []
    for key, spec in when.items():
        path = str(key)
        try:
            parts = parse_path(path)
            if isinstance(spec, dict):
                for op, operand in spec.items():
                    checks.append((parts, _compare(str(op), operand), op == "exists"))
            else:
                checks.append((parts, _compare("eq", spec), False))
        except ValueError as exc:
            raise ValueError(f"when.{path}: {exc}") from None
    if not checks:
        return None

    def predicate(payload: Any) -> bool:
        for parts, check, sees_missing in checks:
            value = get_parts(payload, parts)
            if value is _MISSING and not sees_missing:
                return False
            if not check(value):
                return False
        return True

    return predicate


def value_at(payload: Any, path: str) -> Any:
    """Public accessor that returns None for a missing path."""
    value = get_path(payload, path)
    return None if value is _MISSING else value
