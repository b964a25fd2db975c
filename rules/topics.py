"""MQTT topic filters with named segments (``home/{room}/doorbell``) and an index that finds the filters
matching a topic without scanning every rule."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
_NAMED = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True, slots=True)
class TopicFilter:
    """A compiled filter: its MQTT form, and which level binds which name."""

    pattern: str
    mqtt: str
    levels: tuple[str, ...]
    names: tuple[tuple[int, str], ...]  # (level index, name); '#' binds the rest when named '{name...}'

    def match(self, topic: str) -> dict[str, str] | None:
        return match_levels(self, topic.split("/"))


def compile_filter(pattern: str) -> TopicFilter:
    """Compile ``pattern``; raises ValueError saying which level is wrong."""
    if not pattern:
        raise ValueError("a topic filter cannot be empty")
    levels = pattern.split("/")
    mqtt_levels: list[str] = []
    names: list[tuple[int, str]] = []
    for i, level in enumerate(levels):
        m = _NAMED.fullmatch(level)
        if m:
            if any(n == m.group(1) for _, n in names):
                raise ValueError(f"segment name {m.group(1)!r} is used twice in {pattern!r}")
            names.append((i, m.group(1)))
            mqtt_levels.append("+")
        elif level == "#":
            if i != len(levels) - 1:
                raise ValueError(f"'#' must be the last level of {pattern!r}")
            mqtt_levels.append("#")
        elif level == "+":
            mqtt_levels.append("+")
        elif any(c in level for c in "+#{}"):
            raise ValueError(
                f"level {i + 1} of {pattern!r} ({level!r}) mixes wildcards or braces with text; "
                "a level is either text, '+', '#' or '{name}'"
            )
        else:
            mqtt_levels.append(level)
    return TopicFilter(pattern, "/".join(mqtt_levels), tuple(mqtt_levels), tuple(names))


def match_levels(flt: TopicFilter, levels: list[str]) -> dict[str, str] | None:
    fl = flt.levels
    if fl and fl[-1] == "#":
        if len(levels) < len(fl) - 1:
            return None
        body = fl[:-1]
    else:
        if len(levels) != len(fl):
            return None
        body = fl
    for f, t in zip(body, levels, strict=False):
        if f != "+" and f != t:
            return None
    if levels and levels[0].startswith("$") and fl[0] in ("+", "#"):
        return None  # MQTT: wildcards at the first level do not match $SYS-style topics
    return {name: levels[i] for i, name in flt.names}


@dataclass(slots=True)
class _Node(Generic[T]):
    children: dict[str, _Node[T]] = field(default_factory=dict)
    here: list[T] = field(default_factory=list)  # filters ending at this node
    rest: list[T] = field(default_factory=list)  # filters ending in '#' below this node


class TopicIndex(Generic[T]):
    """A trie over filter levels: lookup cost grows with topic depth, not with the number of filters."""

    def __init__(self) -> None:
        self._root: _Node[T] = _Node()
        self._filters: list[str] = []

    def add(self, flt: TopicFilter, value: T) -> None:
        node = self._root
        self._filters.append(flt.mqtt)
        for level in flt.levels:
            if level == "#":
                node.rest.append(value)
                return
            node = node.children.setdefault(level, _Node())
        node.here.append(value)

    def lookup(self, levels: list[str]) -> list[T]:
        out: list[T] = []
        self._collect(self._root, levels, 0, out, levels[0].startswith("$") if levels else False)
        return out

    def _collect(self, node: _Node[T], levels: list[str], i: int, out: list[T], system: bool) -> None:
        wild_ok = not (system and i == 0)
        if wild_ok and node.rest:
            out.extend(node.rest)
        if i == len(levels):
            out.extend(node.here)
            return
        child = node.children.get(levels[i])
        if child is not None:
            self._collect(child, levels, i + 1, out, system)
        if wild_ok:
            plus = node.children.get("+")
            if plus is not None:
                self._collect(plus, levels, i + 1, out, system)

    def subscriptions(self) -> list[str]:
        return minimal_filters(self._filters)


def covers(general: str, specific: str) -> bool:
    """True when every topic matching ``specific`` also matches ``general``."""
    g, s = general.split("/"), specific.split("/")
    for i, level in enumerate(g):
        if level == "#":
            return True
        if i >= len(s):
            return False
        if s[i] == "#":
            return False
        if level != "+" and level != s[i]:
            return False
        if level != "+" and s[i] == "+":
            return False
    return len(g) == len(s)


def minimal_filters(filters: Iterable[str]) -> list[str]:
    """The filters to subscribe to: duplicates and filters covered by another one removed, so that the
    broker never delivers one message twice for overlapping subscriptions."""
    unique = sorted(set(filters))
    return [f for f in unique if not any(o != f and covers(o, f) for o in unique)]
