"""Validators refuse a trailing newline (a regex ending in ``$`` matches before a final ``\\n``)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from registrations.model import check_quiet_hours, check_tag, check_token
from registrations.schemas import RegistrationIn
from rules.durations import parse_duration
from service.config import ConfigError, load_config
from service.notify.noise import Silence

APNS = "b" * 64


@pytest.mark.parametrize(
    ("check", "value"),
    [
        (lambda v: check_token("apns", v), APNS),
        (lambda v: check_token("fcm", v), "f" * 40 + ":" + "g" * 40),
        (lambda v: check_token("log", v), "console"),
        (check_tag, "home"),
        (check_quiet_hours, "22:00-07:00"),
    ],
)
def test_a_trailing_newline_is_refused(check: object, value: str) -> None:
    assert callable(check)
    check(value)
    with pytest.raises(ValueError):
        check(value + "\n")


@pytest.mark.parametrize(
    ("name", "good"),
    [("app", "com.example.a"), ("channels", ["door"]), ("locale", "de"), ("tags", ["home"]), ("token", APNS)],
)
def test_registration_fields_refuse_a_trailing_newline(name: str, good: object) -> None:
    body: dict[str, object] = {"provider": "apns", "token": APNS}
    RegistrationIn.model_validate({**body, name: good})
    bad = [good[0] + "\n"] if isinstance(good, list) else f"{good}\n"
    with pytest.raises(ValidationError):
        RegistrationIn.model_validate({**body, name: bad})


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e12, "99999999999d", "9" * 400 + "s"])
def test_durations_are_finite_and_bounded(value: object) -> None:
    with pytest.raises(ValueError, match="at most 10 years"):
        parse_duration(value)
    assert parse_duration("3650d") == 3650 * 86400


def test_a_silence_is_finite() -> None:
    with pytest.raises(ValueError, match="finite"):
        Silence({"rule": "x"}, float("nan"), 10.0)
    with pytest.raises(ValueError, match="finite"):
        Silence({"rule": "x"}, 0.0, float("inf"))


def test_the_configuration_refuses_nan() -> None:
    load_config(None, {"TOCSIN_NOTIFY__DEDUP_WINDOW_S": "2.5"})
    with pytest.raises(ConfigError, match="dedup_window_s"):
        load_config(None, {"TOCSIN_NOTIFY__DEDUP_WINDOW_S": ".nan"})
