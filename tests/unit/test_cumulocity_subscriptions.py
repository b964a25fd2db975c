"""Tenant subscriptions (specs/cumulocity.md §1.4): the answer read, and what changed between two polls."""

from __future__ import annotations

import pytest

from service.cumulocity.client import Credentials
from service.cumulocity.subscriptions import SubscriptionDiff, diff, parse_subscriptions

A = Credentials("t1", "service_tocsin", "pa")
B = Credentials("t2", "service_tocsin", "pb")
B2 = Credentials("t2", "service_tocsin", "pb-new")
C = Credentials("t3", "service_tocsin", "pc")


def test_diff_added_removed_changed() -> None:
    change = diff({"t1": A, "t2": B}, {"t2": B2, "t3": C})
    assert change == SubscriptionDiff(added={"t3": C}, removed={"t1": A}, changed={"t2": B2})
    added, removed, changed = change
    assert (added, removed, changed) == ({"t3": C}, {"t1": A}, {"t2": B2})
    assert change


def test_no_change_is_falsy() -> None:
    assert not diff({"t1": A}, {"t1": Credentials("t1", "service_tocsin", "pa")})
    assert not diff({}, {})
    assert diff({}, {"t1": A}) == SubscriptionDiff({"t1": A}, {}, {})
    assert diff({"t1": A}, {}) == SubscriptionDiff({}, {"t1": A}, {})


def test_the_subscriptions_answer() -> None:
    body = {
        "users": [
            {"tenant": "t1", "name": "service_tocsin", "password": "pa"},
            {"tenant": "t2", "name": "service_tocsin"},  # no password: skipped
            "junk",
            {"tenant": "t3", "name": "service_tocsin", "password": "pc"},
        ],
        "self": "http://x/application/currentApplication/subscriptions",
    }
    assert parse_subscriptions(body) == {"t1": A, "t3": C}
    assert parse_subscriptions({"users": []}) == {}


@pytest.mark.parametrize("body", [None, [], {"users": "t1"}, {"self": "x"}])
def test_an_answer_without_users_is_an_error_not_an_empty_list(body: object) -> None:
    with pytest.raises(ValueError, match="users"):
        parse_subscriptions(body)
