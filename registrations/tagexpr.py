"""Tag expressions as Azure Notification Hubs and the Cumulocity alarm app write them.

``severity:critical && (deviceId:all || deviceId:4711)``: tags joined by ``&&`` (binds tighter) and ``||``,
negated by ``!``, grouped by parentheses. Errors name the 1-based character position where reading failed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

MAX_LENGTH = 2000
MAX_TAGS = 64
# Parentheses and '!' nest at most this deep (the parser, the evaluator and SQLite's parser recurse per
# level). Expressions tocsin combines itself (the gateway's tag list, a rule's audience) get a few more.
MAX_DEPTH = 32
COMBINED_DEPTH = MAX_DEPTH + 4
_TAG_CHAR = re.compile(r"[A-Za-z0-9_@#.:\-]")


class TagExpressionError(ValueError):
    def __init__(self, reason: str, position: int, expression: str) -> None:
        self.reason, self.position, self.expression = reason, position, expression
        super().__init__(f"{reason} at position {position}")


@dataclass(frozen=True, slots=True)
class Tag:
    name: str


@dataclass(frozen=True, slots=True)
class Not:
    item: Node


@dataclass(frozen=True, slots=True)
class And:
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Or:
    items: tuple[Node, ...]


Node = Tag | Not | And | Or


class _Parser:
    def __init__(self, text: str, max_depth: int) -> None:
        self.text, self.i, self.tags = text, 0, 0
        self.depth, self.max_depth = 0, max_depth

    def fail(self, reason: str, at: int | None = None) -> TagExpressionError:
        return TagExpressionError(reason, (self.i if at is None else at) + 1, self.text)

    def skip(self) -> None:
        while self.i < len(self.text) and self.text[self.i] in " \t":
            self.i += 1

    def peek(self, s: str) -> bool:
        self.skip()
        return self.text.startswith(s, self.i)

    def parse(self) -> Node:
        if not self.text.strip():
            raise self.fail("the expression is empty", 0)
        node = self.or_()
        self.skip()
        if self.i < len(self.text):
            what = "')' without a matching '('" if self.text[self.i] == ")" else "'&&' or '||'"
            raise self.fail(f"expected {what} here" if what.startswith("'&") else f"unexpected {what}")
        return node

    def or_(self) -> Node:
        items = [self.and_()]
        while self.peek("||"):
            self.i += 2
            items.append(self.and_())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def and_(self) -> Node:
        items = [self.unary()]
        while self.peek("&&"):
            self.i += 2
            items.append(self.unary())
        return items[0] if len(items) == 1 else And(tuple(items))

    def unary(self) -> Node:
        self.skip()
        if self.i >= len(self.text):
            raise self.fail("expected a tag, '!' or '(' but the expression ended")
        c = self.text[self.i]
        if c in "!(":
            self.depth += 1
            if self.depth > self.max_depth:
                raise self.fail(f"the expression nests deeper than {self.max_depth} levels")
            node = self.negated() if c == "!" else self.group()
            self.depth -= 1
            return node
        start = self.i
        while self.i < len(self.text) and _TAG_CHAR.match(self.text[self.i]):
            self.i += 1
        if self.i == start:
            if self.text.startswith(("&&", "||"), self.i):
                raise self.fail(f"expected a tag before '{self.text[self.i : self.i + 2]}'")
            raise self.fail(f"unexpected character {c!r}")
        name = self.text[start : self.i]
        if len(name) > 120:
            raise self.fail("a tag is at most 120 characters", start)
        self.tags += 1
        if self.tags > MAX_TAGS:
            raise self.fail(f"at most {MAX_TAGS} tags in one expression", start)
        return Tag(name)

    def negated(self) -> Node:
        self.i += 1
        return Not(self.unary())

    def group(self) -> Node:
        opened = self.i
        self.i += 1
        node = self.or_()
        if not self.peek(")"):
            if self.i >= len(self.text):
                raise self.fail("'(' is never closed", opened)
            raise self.fail("expected ')', '&&' or '||' here")
        self.i += 1
        return node


@lru_cache(maxsize=1024)
def parse(text: str, max_depth: int = COMBINED_DEPTH) -> Node:
    """The expression's tree, or TagExpressionError with the position of the first problem.

    Callers validating what a user wrote pass ``MAX_DEPTH``; the default leaves room for the levels that
    combining expressions adds."""
    if len(text) > MAX_LENGTH:
        raise TagExpressionError(
            f"the expression is longer than {MAX_LENGTH} characters", MAX_LENGTH + 1, text
        )
    return _Parser(text, max_depth).parse()


def any_of(tags: tuple[str, ...]) -> Node:
    nodes = tuple(Tag(t) for t in dict.fromkeys(tags))
    return nodes[0] if len(nodes) == 1 else Or(nodes)


def evaluate(node: Node, tags: frozenset[str] | set[str]) -> bool:
    """The expression on one tag set: the reference the SQL compilation is tested against."""
    if isinstance(node, Tag):
        return node.name in tags
    if isinstance(node, Not):
        return not evaluate(node.item, tags)
    if isinstance(node, And):
        return all(evaluate(n, tags) for n in node.items)
    return any(evaluate(n, tags) for n in node.items)


def driver_options(node: Node) -> list[tuple[str, ...]]:
    """Sets of tags such that every match carries at least one tag of the set.

    Each can drive the search through the tag index; the store picks the one with the fewest rows. Empty
    when there is none (a match may carry no positive tag at all, as in ``!a``).
    """
    if isinstance(node, Tag):
        return [(node.name,)]
    if isinstance(node, Not):
        return []
    if isinstance(node, And):
        return [option for n in node.items for option in driver_options(n)]
    combined: list[str] = []
    for n in node.items:
        options = driver_options(n)
        if not options:
            return []
        shortest: tuple[str, ...] = min(options, key=len)
        combined.extend(shortest)
    return [tuple(dict.fromkeys(combined))]
