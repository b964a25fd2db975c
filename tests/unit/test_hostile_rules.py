"""Rules against hostile events and careless authors (issue 14): audience injection, static expressions."""

from __future__ import annotations

from pathlib import Path

import pytest

from registrations import tagexpr
from rules.engine import EngineState, RuleEngine
from rules.event import Event
from rules.loader import RuleLoadError, load_rules
from rules.templates import compile_tag_template

RULE = """rules:
  - id: room
    topic: home/{{room}}/x
    title: t
    audience: {{expression: "{expression}"}}
"""


def _errors(tmp_path: Path, expression: str) -> list[str]:
    (tmp_path / "r.yaml").write_text(RULE.format(expression=expression))
    with pytest.raises(RuleLoadError) as info:
        load_rules([tmp_path])
    return [str(e) for e in info.value.errors]


@pytest.mark.parametrize(
    "source", ["vip && room:{{ payload.room }}", "vip && room:{% if 1 %}{{ payload.room }}{% endif %}"]
)
def test_event_values_in_an_audience_expression_are_escaped(source: str) -> None:
    rendered = compile_tag_template(source).render({"payload": {"room": "r2 || home"}})
    node = tagexpr.parse(rendered)
    assert not tagexpr.evaluate(node, {"home"}) and not tagexpr.evaluate(node, {"vip", "home"})
    assert tagexpr.evaluate(node, {"vip", "room:r2____home"})


def test_the_tag_filter_still_works_and_is_not_applied_twice() -> None:
    t = compile_tag_template("severity:all || severity:{{ alarm.severity | lower | tag }}")
    assert t.render({"alarm": {"severity": "MAJOR"}}) == "severity:all || severity:major"


@pytest.mark.parametrize("expression", ["home && ", "home && (vip", "room:{{ room }} ||"])
def test_an_audience_expression_that_does_not_parse_is_a_located_load_error(
    tmp_path: Path, expression: str
) -> None:
    errors = _errors(tmp_path, expression)
    assert len(errors) == 1, errors
    assert "r.yaml:5" in errors[0] and "audience.expression" in errors[0], errors
    assert "not a valid tag expression" in errors[0], errors


def test_a_valid_templated_audience_expression_loads(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(RULE.format(expression="vip && room:{{ room }}"))
    assert [r.id for r in load_rules([tmp_path]).rules] == ["room"]


def test_the_engine_escapes_the_payload_in_the_audience_it_hands_on(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(RULE.format(expression="vip && room:{{ payload.room }}"))
    engine = RuleEngine(load_rules([tmp_path]))
    event = Event("e1", "mqtt", "home/hall/x", None, 0.0, {"room": "r2 || home"})
    _, out = engine.evaluate(event, EngineState(), 0.0)
    assert [t.audience_expression for t in out] == ["vip && room:r2____home"]
