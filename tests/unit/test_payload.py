import contextlib
import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules.event import EventIdentity
from service.sources.payload import (
    MAX_DEPTH,
    MAX_PAYLOAD_BYTES,
    ORJSON_DEPTH,
    MalformedPayload,
    parse_payload,
)


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b'{"a": 1}', {"a": 1}),
        (b"[1,2]", [1, 2]),
        (b"42", 42),
        (b"21.5", 21.5),
        (b"ON", "ON"),
        (b"", ""),
        (b"true", True),
        (b" 7 ", 7),
    ],
)
def test_json_or_text(raw: bytes, value: object) -> None:
    assert parse_payload(raw) == value


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{bad", "looks like JSON but is not"),
        (b"\xff\xfe", "not UTF-8"),
        (b"x" * (MAX_PAYLOAD_BYTES + 1), "over the"),
    ],
)
def test_malformed(raw: bytes, message: str) -> None:
    with pytest.raises(MalformedPayload, match=message):
        parse_payload(raw)


def test_a_configured_id_field_is_the_identity() -> None:
    ids = EventIdentity("id")
    a = ids("t", b'{"id": 5, "x": 1}', {"id": 5, "x": 1}, 100.0)
    assert a == ids("t", b'{"id": 5, "x": 2}', {"id": 5, "x": 2}, 999.0)
    assert a != ids("u", b'{"id": 5}', {"id": 5}, 100.0)


def test_without_an_id_field_every_message_is_its_own_event_and_instances_agree() -> None:
    one, other = EventIdentity(), EventIdentity()
    stream = [("t", b'{"id": "front"}', 100.1), ("t", b'{"id": "front"}', 100.9), ("t", b"ring", 101.0)]
    ids = [one(t, raw, None, at) for t, raw, at in stream]
    assert len(set(ids)) == 3  # repeats of a payload a moment apart are events of their own
    assert ids == [other(t, raw, None, at) for t, raw, at in stream]  # every instance computes the same
    assert one("t", b"ring", None, 102.5) != ids[2]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"[" * 100_000, "nested deeper than 64"),
        (b'{"a":' * 10_000 + b"1" + b"}" * 10_000, "nested deeper than 64"),
        (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), "nested deeper than 64"),
        (b'{"v": "ring\xff"}', "JSON but is not"),
        (b'  {"v": "\xed\xa0\x80"}', "JSON but is not"),  # a UTF-8-encoded surrogate
        (b'["\\ud800"]', "JSON but is not"),  # a lone surrogate escape: it could not be encoded again
        (b'{"v": NaN}', "JSON but is not"),
        (b"[1e999]", "JSON but is not"),
        (b"[" + b"9" * 5000 + b"]", "JSON but is not"),
        (b"[" + b"1," * 150_000 + b"1]", "over the"),
        (b'{"a": 1,', "JSON but is not"),
        (b"\xc3", "not UTF-8"),
    ],
)
def test_hostile_payloads_are_refused_with_a_reason(raw: bytes, message: str) -> None:
    with pytest.raises(MalformedPayload, match=message):
        parse_payload(raw)


def test_the_depth_limit_is_exact_and_the_value_unwrapped() -> None:
    ok = b"[" * MAX_DEPTH + b"1" + b"]" * MAX_DEPTH
    value = parse_payload(ok)
    for _ in range(MAX_DEPTH):
        assert isinstance(value, list) and len(value) == 1
        value = value[0]
    assert value == 1
    many = [{"t": i} for i in range(200)]  # more brackets than the limit, but shallow
    assert parse_payload(json.dumps(many).encode()) == many
    broken = b"[?" + json.dumps(many).encode()[2:]  # the position is the payload's, not the wrapped one's
    with pytest.raises(MalformedPayload, match=r"at byte 1$"):
        parse_payload(broken)


def test_orjson_still_has_the_depth_limit_the_parser_relies_on() -> None:
    orjson.loads(b"[" * ORJSON_DEPTH + b"]" * ORJSON_DEPTH)
    with pytest.raises(orjson.JSONDecodeError, match="depth"):
        orjson.loads(b"[" * (ORJSON_DEPTH + 1) + b"]" * (ORJSON_DEPTH + 1))


@pytest.mark.parametrize(
    ("raw", "value"),
    [(b"1e999", "1e999"), (b"nan", "nan"), (b"-inf", "-inf"), (b"1_000", "1_000"), (b"9" * 5000, "9" * 5000)],
)
def test_numbers_that_are_not_finite_or_plain_stay_text(raw: bytes, value: str) -> None:
    assert parse_payload(raw) == value


def test_any_other_exception_becomes_a_malformed_payload(monkeypatch: pytest.MonkeyPatch) -> None:
    for error in (MemoryError(), RecursionError("deep"), RuntimeError("surprise")):

        def boom(raw: bytes, error: BaseException = error) -> object:
            raise error

        monkeypatch.setattr(orjson, "loads", boom)
        with pytest.raises(MalformedPayload, match=type(error).__name__):
            parse_payload(b'{"a": 1}')


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.builds(lambda n, tail: b"[" * n + tail, st.integers(0, 2000), st.binary(max_size=20)),
        st.builds(
            lambda v: json.dumps(v).encode(),
            st.recursive(
                st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
                lambda kids: (
                    st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=3), kids, max_size=3)
                ),
                max_leaves=30,
            ),
        ),
    )
)
def test_any_bytes_give_a_value_or_malformed_payload(raw: bytes) -> None:
    with contextlib.suppress(MalformedPayload):
        parse_payload(raw)
