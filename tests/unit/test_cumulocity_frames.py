"""The Notifications 2.0 frame format (specs/cumulocity.md §3a): id, description, action, empty line, body."""

from __future__ import annotations

import json

import pytest

from service.cumulocity.frames import Frame, FrameError, parse_frame

ALARM = {"id": "119", "type": "c8y_TemperatureAlarm", "severity": "MAJOR", "source": {"id": "111"}}


def frame(*head: str, body: str = json.dumps(ALARM)) -> str:
    return "\n".join(head) + "\n\n" + body


def test_a_frame_of_the_spec_is_read_whole() -> None:
    got = parse_frame(frame("CMFeEAAgADAB", "/t123/alarms/111", "CREATE"))
    assert got == Frame("CMFeEAAgADAB", "t123", "alarms", "111", "CREATE", ALARM)


def test_unknown_header_lines_are_ignored_and_other_apis_are_read() -> None:
    got = parse_frame(frame("ack1", "/t9/alarmsWithChildren/7", "UPDATE", "X-Future: yes", "another"))
    assert (got.ack_id, got.tenant, got.api, got.source_id, got.action) == (
        "ack1",
        "t9",
        "alarmsWithChildren",
        "7",
        "UPDATE",
    )
    assert got.body == ALARM


def test_a_body_spread_over_lines_is_read_whole() -> None:
    got = parse_frame(frame("a", "/t/alarms/1", "CREATE", body=json.dumps(ALARM, indent=2)))
    assert got.body == ALARM


@pytest.mark.parametrize(("body", "expected"), [("119", {"id": "119"}), ('"119"', {"id": "119"}), ("", {})])
def test_a_delete_may_carry_only_the_id(body: str, expected: dict[str, str]) -> None:
    assert parse_frame(frame("a", "/t/alarms/1", "DELETE", body=body)).body == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (frame("a", "/t/alarms/1", "CREATE", body="{not json"), "not JSON"),
        (frame("a", "/t/alarms/1", "CREATE", body="[1, 2]"), "not a JSON object"),
        (frame("a", "/t/alarms/1", "CREATE", body=""), "not a JSON object"),
        (frame("a", "/t/alarms/1", "UPDATE", body="119"), "not a JSON object"),
        (frame("a", "t/alarms/1", "CREATE"), "is not /<tenant>/<api>/<sourceId>"),
        (frame("a", "/t/alarms", "CREATE"), "is not /<tenant>/<api>/<sourceId>"),
        (frame("a", "/t//1", "CREATE"), "is not /<tenant>/<api>/<sourceId>"),
        (frame("a", "/t/alarms/1/x", "CREATE"), "is not /<tenant>/<api>/<sourceId>"),
        (frame("a", "/t/alarms/1"), "expected at least 3"),
        (frame("a", "/t/alarms/1", " "), "no action"),
        ("a\n/t/alarms/1\nCREATE\n" + json.dumps(ALARM), "no empty line"),
    ],
)
def test_malformed_frames_keep_their_ack_id(text: str, reason: str) -> None:
    with pytest.raises(FrameError, match=reason) as caught:
        parse_frame(text)
    assert caught.value.ack_id == "a"


@pytest.mark.parametrize("text", ["", "\n/t/alarms/1\nCREATE\n\n{}", "   \nx"])
def test_a_frame_without_an_ack_id_cannot_be_acknowledged(text: str) -> None:
    with pytest.raises(FrameError) as caught:
        parse_frame(text)
    assert caught.value.ack_id is None
