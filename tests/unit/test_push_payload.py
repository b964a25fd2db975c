"""Payload and option rules for APNs and FCM, without a network."""

from __future__ import annotations

import pytest

from service.notify.options import PushOptions
from service.providers import apns_payload
from service.providers.fcm import message
from tests.push_support import notification


def test_options_validate_and_round_trip() -> None:
    with pytest.raises(ValueError, match="push type"):
        PushOptions(push_type="telepathy")
    with pytest.raises(ValueError, match="priority"):
        PushOptions(priority="urgent")
    with pytest.raises(ValueError, match="interruption level"):
        PushOptions(interruption_level="loud")
    o = PushOptions(push_type="voip", badge=0, loc_args=("a", "b"), custom={"k": [1]})
    assert o.to_dict() == {"push_type": "voip", "badge": 0, "loc_args": ("a", "b"), "custom": {"k": [1]}}
    assert PushOptions.from_dict({**o.to_dict(), "loc_args": ["a", "b"], "unknown": 1}) == o


def test_priority_and_topic_follow_the_push_type() -> None:
    assert apns_payload.priority(notification()) == 10
    assert apns_payload.priority(notification(push_type="background")) == 5
    assert apns_payload.priority(notification(priority="low")) == 1
    assert apns_payload.topic("com.x", "voip") == "com.x.voip"
    assert apns_payload.topic("com.x", "liveactivity") == "com.x.push-type.liveactivity"
    assert apns_payload.topic("com.x", "alert") == "com.x"


def test_badge_zero_clears_and_content_available_is_the_integer_one() -> None:
    body = apns_payload.payload(notification(badge=0, content_available=True))
    assert body["aps"]["badge"] == 0 and body["aps"]["content-available"] == 1


def test_size_limit_counts_utf8_bytes() -> None:
    n = notification(body="é" * 2100)  # 4,200 bytes in UTF-8, 2,100 characters
    with pytest.raises(apns_payload.PayloadTooLarge, match="4096 bytes"):
        apns_payload.check_size(n, apns_payload.payload(n))


def test_fcm_data_is_strings_and_ttl_is_clamped_to_four_weeks() -> None:
    n = notification(data={"a": "1"}, custom={"n": 2, "l": [1]})
    m = message(n, "tok", 10_000_000)
    assert m["data"] == {"a": "1", "n": "2", "l": "[1]", "nid": "n1"}
    assert m["android"]["ttl"] == "2419200s"
