import pytest

from rules.event import EventIdentity
from service.sources.payload import MAX_PAYLOAD_BYTES, MalformedPayload, parse_payload


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
