"""The alarm stream's pure parts: reconnect backoff, the token's expiry and when to renew it, credentials."""

from __future__ import annotations

import base64
import itertools
import json

import pytest

from service.cumulocity.client import C8yError, Credentials, _error_from, redact
from service.cumulocity.stream import backoff_delay, renew_after, token_claims, token_expiry


def jwt(claims: object, *, urlsafe: bool = False, pad: bool = False) -> str:
    raw = json.dumps(claims).encode()
    enc = base64.urlsafe_b64encode(raw) if urlsafe else base64.b64encode(raw)
    payload = enc.decode() if pad else enc.decode().rstrip("=")
    return "eyJhbGciOiJSUzI1NiJ9." + payload + ".c2lnbmF0dXJl"


def test_backoff_is_0_1_s_times_1_5_to_the_n_capped_at_30_s() -> None:
    delays = [backoff_delay(n) for n in range(18)]
    assert delays[:4] == pytest.approx([0.1, 0.15, 0.225, 0.3375])
    assert all(b > a for a, b in itertools.pairwise(delays[:16]))
    assert delays[14] == pytest.approx(29.19, abs=0.01)  # 0.1 * 1.5**14; 1.5**15 would be 43.8
    assert delays[15:] == [30.0, 30.0, 30.0]
    assert backoff_delay(10_000) == 30.0
    assert backoff_delay(3, cap_s=0.2) == 0.2


@pytest.mark.parametrize("pad", [False, True])
@pytest.mark.parametrize("urlsafe", [False, True])
def test_token_expiry_from_the_payload_with_or_without_padding(pad: bool, urlsafe: bool) -> None:
    # "sub" chosen so that its base64 has '+' or '/' (standard) vs '-' or '_' (urlsafe): '>>>?' -> Pj4+Pw
    claims = {
        "sub": ">>>?tocsin",
        "topic": "t1/relnotif/tocsinalarms",
        "iat": 1_700_000_000,
        "exp": 1_700_003_600,
    }
    assert set("+/-_") & set(jwt(claims, urlsafe=urlsafe).split(".")[1])
    token = jwt(claims, urlsafe=urlsafe, pad=pad)
    assert token_expiry(token) == 1_700_003_600.0
    assert token_claims(token)["topic"] == "t1/relnotif/tocsinalarms"


@pytest.mark.parametrize(
    "token",
    ["", "a.b", "a.b.c.d", "x.!!!.y", "x." + base64.b64encode(b"[1]").decode() + ".y", jwt({"sub": "x"})],
)
def test_unreadable_or_missing_expiry_is_none(token: str) -> None:
    assert token_expiry(token) is None


def test_renewal_at_a_fraction_of_the_lifetime_on_the_platforms_clock() -> None:
    token = jwt({"iat": 1000, "exp": 4601})  # an hour (and iat's lost fraction), from a far-off clock
    assert renew_after(token, now=50_000.0, default_lifetime_s=86_400) == pytest.approx(2880.0)
    assert renew_after(jwt({"exp": 1100}), now=1000.0, default_lifetime_s=86_400) == pytest.approx(80.0)
    assert renew_after("not-a-jwt", now=0.0, default_lifetime_s=600, fraction=0.5) == pytest.approx(300.0)
    # an expired-looking token never means "renew now, again and again"
    assert renew_after(jwt({"exp": 10}), now=1000.0, default_lifetime_s=600) == 1.0
    assert renew_after(jwt({"iat": 10, "exp": 11}), now=0.0, default_lifetime_s=600, floor_s=2.5) == 2.5


def test_credentials_hide_the_password_and_make_basic_auth() -> None:
    c = Credentials("t1", "service_tocsin", "s3cret")
    assert "s3cret" not in repr(c) and "s3cret" not in str(c) and "s3cret" not in f"{c}"
    assert c.username == "t1/service_tocsin"
    assert base64.b64decode(c.basic().removeprefix("Basic ")) == b"t1/service_tocsin:s3cret"


def test_platform_errors_are_mapped_and_tokens_redacted() -> None:
    body = json.dumps({"error": "security/Unauthorized", "message": "Invalid credentials!", "info": "x"})
    err = _error_from(401, body.encode(), "GET", "/user/currentUser")
    assert (err.status, err.error, err.message) == (401, "security/Unauthorized", "Invalid credentials!")
    assert str(err) == "GET /user/currentUser: 401 security/Unauthorized: Invalid credentials!"
    plain = _error_from(500, b"<html>oops</html>", "POST", "/x")
    assert isinstance(plain, C8yError) and (plain.error, plain.message) == ("http", "<html>oops</html>")
    assert redact("url='ws://h/notification2/consumer/?token=eyJ.abc.def&consumer=x'") == (
        "url='ws://h/notification2/consumer/?token=***&consumer=x'"
    )
