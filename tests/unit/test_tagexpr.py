import pytest

from registrations import tagexpr
from registrations.tagexpr import And, Not, Or, Tag, TagExpressionError, parse


def test_precedence_and_parentheses() -> None:
    assert parse("severity:critical && (deviceId:all || deviceId:4711)") == And(
        (Tag("severity:critical"), Or((Tag("deviceId:all"), Tag("deviceId:4711"))))
    )
    assert parse("a || b && c") == Or((Tag("a"), And((Tag("b"), Tag("c")))))
    assert parse("!a && !(b || c)") == And((Not(Tag("a")), Not(Or((Tag("b"), Tag("c"))))))
    assert parse("  userId:ann_at_example.com  ") == Tag("userId:ann_at_example.com")


@pytest.mark.parametrize(
    ("text", "position", "reason"),
    [
        ("", 1, "empty"),
        ("a &&", 5, "ended"),
        ("a && && b", 6, "expected a tag before '&&'"),
        ("(a || b", 1, "never closed"),
        ("a || b)", 7, "')' without a matching '('"),
        ("a b", 3, "expected '&&' or '||'"),
        ("a && $b", 6, "unexpected character '$'"),
        ("a & b", 3, "expected '&&' or '||'"),
        ("(a b)", 4, "expected ')', '&&' or '||'"),
    ],
)
def test_errors_name_the_position(text: str, position: int, reason: str) -> None:
    with pytest.raises(TagExpressionError) as err:
        parse(text)
    assert err.value.position == position
    assert reason in err.value.reason
    assert str(err.value).endswith(f"at position {position}")


def test_limits() -> None:
    with pytest.raises(TagExpressionError, match="at most 64 tags"):
        parse(" || ".join(f"t{i}" for i in range(65)))
    with pytest.raises(TagExpressionError, match="longer than"):
        parse("a" * 3000)


def test_evaluate_and_driver_options() -> None:
    node = parse("severity:critical && (deviceId:all || deviceId:4711)")
    assert tagexpr.evaluate(node, {"severity:critical", "deviceId:4711"})
    assert not tagexpr.evaluate(node, {"severity:major", "deviceId:all"})
    assert tagexpr.driver_options(node) == [("severity:critical",), ("deviceId:all", "deviceId:4711")]
    assert tagexpr.driver_options(parse("!a")) == []
    assert tagexpr.driver_options(parse("a || !b")) == []
    assert tagexpr.driver_options(parse("(a && b) || c")) == [("a", "c")]


@pytest.mark.parametrize("text", ["(" * 400 + "a" + ")" * 400, "!" * 300 + "a", "(!" * 17 + "a" + ")" * 17])
def test_nesting_deeper_than_the_limit_is_a_located_error(text: str) -> None:
    with pytest.raises(tagexpr.TagExpressionError, match="nests deeper than 32 levels") as info:
        tagexpr.parse(text, tagexpr.MAX_DEPTH)
    assert 30 <= info.value.position <= 35


def test_combined_expressions_get_a_few_more_levels() -> None:
    inner = "(" * 32 + "a" + ")" * 32
    tagexpr.parse(inner, tagexpr.MAX_DEPTH)
    assert tagexpr.evaluate(tagexpr.parse(f"({inner}) || b"), {"a"})
