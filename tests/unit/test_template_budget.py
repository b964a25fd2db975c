"""Templates with a budget (issue 14 item 4): loops, output and time are bounded, and a failed render sends a
fallback text, never the template's source or the error, and is counted."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from rules import templates
from rules.templates import compile_expression, compile_template

HOSTILE = [
    "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
    "{% for i in range(100000) %}{% for j in payload.l %}{{ j }}{% endfor %}{% endfor %}",
    '{{ "x" * 100000000 }}',
    "{% for i in range(50000) %}xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx{% endfor %}",
    "{{ 2 ** 100000000 }}",
]


@pytest.fixture
def errors() -> Iterator[list[str]]:
    seen: list[str] = []
    before = templates.on_error
    templates.on_error = seen.append
    yield seen
    templates.on_error = before


@pytest.mark.parametrize("source", HOSTILE)
def test_a_render_over_budget_is_a_counted_error_and_never_a_stall(source: str, errors: list[str]) -> None:
    t = compile_template(source)
    started = time.perf_counter()
    out = t.render({"rule": "r1", "payload": {"l": [1, 2, 3]}})
    assert time.perf_counter() - started < 0.05
    assert out == "r1 (template error)"
    assert errors == ["budget"]


def test_a_template_error_sends_neither_the_source_nor_the_exception(errors: list[str]) -> None:
    t = compile_template("{% if x %}{{ secret_source.nope() }}{% endif %}")
    out = t.render({"rule": "r1", "x": 1})
    assert out == "r1 (template error)" and "secret_source" not in out and "Undefined" not in out
    assert errors == ["error"]


def test_ordinary_templates_render_within_the_budget(errors: list[str]) -> None:
    t = compile_template("{{ room }}: {% for s in payload.sensors %}{{ s }} {% endfor %}")
    assert t.render({"room": "hall", "payload": {"sensors": list(range(100))}}).startswith("hall: 0 1 2")
    assert compile_expression("'ab' * 3 == 'ababab'")({})
    assert compile_expression("'x' * 100000000")({}) is None
    assert errors == []
