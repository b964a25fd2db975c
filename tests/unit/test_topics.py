import pytest

from rules.topics import TopicIndex, compile_filter, covers, minimal_filters


def test_named_segments_compile_to_plus_and_bind_names() -> None:
    f = compile_filter("home/{room}/doorbell")
    assert f.mqtt == "home/+/doorbell"
    assert f.match("home/front/doorbell") == {"room": "front"}
    assert f.match("home/front/window") is None
    assert f.match("home/front/doorbell/extra") is None


def test_hash_matches_parent_and_below() -> None:
    f = compile_filter("devices/{device}/#")
    assert f.match("devices/pump1/status") == {"device": "pump1"}
    assert f.match("devices/pump1/a/b/c") == {"device": "pump1"}
    assert f.match("devices/pump1") == {"device": "pump1"}
    assert f.match("devices") is None


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("", "cannot be empty"),
        ("a/#/b", "must be the last level"),
        ("a/x+/b", "mixes wildcards"),
        ("a/{x}/{x}", "used twice"),
        ("a/{x/b", "mixes wildcards"),
    ],
)
def test_bad_filters_say_what_is_wrong(pattern: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compile_filter(pattern)


def test_wildcards_do_not_match_dollar_topics() -> None:
    assert compile_filter("#").match("$SYS/broker/load") is None
    assert compile_filter("+/broker/load").match("$SYS/broker/load") is None
    idx: TopicIndex[str] = TopicIndex()
    idx.add(compile_filter("#"), "all")
    assert idx.lookup(["$SYS", "x"]) == []
    assert idx.lookup(["a", "x"]) == ["all"]


def test_index_returns_exactly_the_matching_filters() -> None:
    patterns = ["home/{room}/doorbell", "home/+/+", "home/#", "#", "servers/{h}/cpu", "home/front/doorbell"]
    idx: TopicIndex[str] = TopicIndex()
    for p in patterns:
        idx.add(compile_filter(p), p)
    for topic in ["home/front/doorbell", "home/back/doorbell", "servers/a/cpu", "home", "x/y", "home/a/b/c"]:
        expected = {p for p in patterns if compile_filter(p).match(topic) is not None}
        assert set(idx.lookup(topic.split("/"))) == expected, topic


def test_minimal_filters_drop_covered_and_duplicates() -> None:
    assert covers("a/#", "a/b/c")
    assert covers("a/+/c", "a/b/c")
    assert not covers("a/b/c", "a/+/c")
    assert not covers("a/+", "a/b/c")
    assert minimal_filters(["a/+/c", "a/#", "a/b/c", "b/c", "b/c"]) == ["a/#", "b/c"]
