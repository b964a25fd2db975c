import pytest

from rules.event import event_id
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


def test_event_id_prefers_device_ids_and_coalesces_repeats() -> None:
    a = event_id("t", b'{"id": 5, "x": 1}', {"id": 5, "x": 1}, 100.0)
    assert a == event_id("t", b'{"id": 5, "x": 2}', {"id": 5, "x": 2}, 999.0)
    assert a != event_id("u", b'{"id": 5}', {"id": 5}, 100.0)
    plain = event_id("t", b"ring", "ring", 100.1)
    assert plain == event_id("t", b"ring", "ring", 100.9)  # same 2 s window
    assert plain != event_id("t", b"ring", "ring", 102.5)
