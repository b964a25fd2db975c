import pytest

from rules.conditions import compile_conditions


def check(when, payload) -> bool:
    predicate = compile_conditions(when)
    assert predicate is not None
    return predicate(payload)


def test_equality_and_operators() -> None:
    assert check({"event": "ring"}, {"event": "ring"})
    assert not check({"event": "ring"}, {"event": "knock"})
    assert not check({"event": "ring"}, "ring")  # plain text has no fields
    assert check({"$": "ring"}, "ring")
    assert check({"temp": {"gt": 20, "le": 30}}, {"temp": 25})
    assert not check({"temp": {"gt": 20}}, {"temp": "n/a"})
    assert check({"temp": {"gt": 20}}, {"temp": "21.5"})
    assert check({"a.b.1": 5}, {"a": {"b": [4, 5]}})
    assert check({"state": {"in": ["crashed", "failed"]}}, {"state": "failed"})
    assert check({"msg": {"regex": "^ERR"}}, {"msg": "ERR disk"})
    assert check({"battery": {"exists": False}}, {"x": 1})
    assert not check({"battery": {"exists": True}}, {"x": 1})
    assert check({"count": 3}, {"count": "3"})


def test_no_conditions_compiles_to_none() -> None:
    assert compile_conditions({}) is None


@pytest.mark.parametrize(
    ("when", "message"),
    [
        ({"x": {"gt": "high"}}, "when.x: gt needs a number"),
        ({"x": {"regex": "("}}, "when.x: bad regular expression"),
        ({"x": {"between": 1}}, "when.x: unknown operator 'between'"),
        ({"x": {"in": 3}}, "when.x: in needs a list"),
    ],
)
def test_bad_conditions_name_the_field(when, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compile_conditions(when)
