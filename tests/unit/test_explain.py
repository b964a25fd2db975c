"""Suppressions: recorded per notification (bounded) and logged at info, at most a few lines a second."""

from __future__ import annotations

import logging

import pytest

from registrations.model import Audience
from service.notify.explain import Explainer
from service.notify.model import Notification


def note(nid: str) -> Notification:
    return Notification(nid, "a1", "e1", "bell", "firing", "info", "t", "", {}, Audience(), 0.0, 60.0)


def test_logged_rate_limited_and_kept_per_notification(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    ex = Explainer(lambda: now[0], capacity=3, log_per_s=2)
    with caplog.at_level(logging.INFO, "tocsin.notify.explain"):
        for i in range(5):
            ex.held(note(f"n{i}"), "silence", "silence s1 by ann: rule=bell")
        now[0] += 1.5
        ex.held(note("n5"), "rate_limit", registration="r9")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3  # two in the first second, then one that says how many were not logged
    assert lines[0] == (
        "suppressed notification n0 (rule bell, firing) at stage silence: a silence matches it "
        "(silence s1 by ann: rule=bell)"
    )
    assert "for registration r9" in lines[2] and "[3 more suppressions not logged]" in lines[2]
    assert [s.nid for s in ex.recent] == ["n3", "n4", "n5"]
    assert ex.of("n0") == [] and ex.of("n5")[0].stage == "rate_limit"
