"""Validators refuse a trailing newline (a regex ending in ``$`` matches before a final ``\\n``)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from registrations.model import check_quiet_hours, check_tag, check_token
from registrations.schemas import RegistrationIn

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
