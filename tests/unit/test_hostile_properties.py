"""Property tests (issue 14): the tag-expression parser against a reference evaluator, and the rule loader,
which for any YAML raises nothing but a located RuleLoadError."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from registrations import tagexpr
from rules.loader import RuleLoadError, load_rules

TAGS = ["a", "b", "c:1", "d@x"]
Tree = tuple[Any, ...]

trees = st.recursive(
    st.sampled_from(TAGS).map(lambda t: ("tag", t)),
    lambda inner: st.one_of(
        inner.map(lambda t: ("not", t)),
        st.lists(inner, min_size=2, max_size=3).map(lambda ts: ("and", *ts)),
        st.lists(inner, min_size=2, max_size=3).map(lambda ts: ("or", *ts)),
    ),
    max_leaves=12,
)


def text_of(tree: Tree) -> str:
    kind = tree[0]
    if kind == "tag":
        return str(tree[1])
    if kind == "not":
        return "!" + f"({text_of(tree[1])})"
    joiner = " && " if kind == "and" else " || "
    return joiner.join(f"({text_of(t)})" for t in tree[1:])


def reference(tree: Tree, tags: set[str]) -> bool:
    kind = tree[0]
    if kind == "tag":
        return tree[1] in tags
    if kind == "not":
        return not reference(tree[1], tags)
    values = [reference(t, tags) for t in tree[1:]]
    return all(values) if kind == "and" else any(values)


@settings(max_examples=300, deadline=None)
@given(trees, st.sets(st.sampled_from(TAGS)))
def test_the_parser_agrees_with_a_reference_evaluator(tree: Tree, tags: set[str]) -> None:
    text = text_of(tree)
    try:
        node = tagexpr.parse(text, tagexpr.MAX_DEPTH)
    except tagexpr.TagExpressionError as exc:
        assert "nests deeper" in exc.reason
        return
    assert tagexpr.evaluate(node, tags) == reference(tree, tags)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab:!()&| \t\n\x00é", max_size=80))
def test_any_text_parses_or_is_a_positioned_error(text: str) -> None:
    try:
        tagexpr.parse(text, tagexpr.MAX_DEPTH)
    except tagexpr.TagExpressionError as exc:
        assert 1 <= exc.position <= len(text) + 1


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["home/{room}/x", "{{ room }}", "{% for %}", "1h", "soon", "major", "a/#/b", "$x", "~"]),
    st.text(max_size=20),
)
KEYS = [
    "id",
    "topic",
    "title",
    "body",
    "audience",
    "tags",
    "threshold",
    "above",
    "for",
    "severity",
    "absent",
    "when",
    "expr",
    "expression",
    "change",
    "alarm",
    "group",
    "escalate",
    "locales",
    "rules",
    "x",
]
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=6)
    ),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None)
@given(st.one_of(documents.map(lambda d: {"rules": d}), documents.map(lambda d: {"rules": [d]}), documents))
def test_any_yaml_loads_or_is_a_located_rule_load_error(document: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.yaml"
        path.write_text(yaml.safe_dump(document, allow_unicode=True))
        try:
            load_rules([path])
        except RuleLoadError as exc:
            assert exc.errors and all(e.file == str(path) and e.line >= 1 for e in exc.errors)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_text_loads_or_is_a_located_rule_load_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            load_rules([path])
        except RuleLoadError as exc:
            assert exc.errors and all(e.line >= 1 for e in exc.errors)
