"""Provider-token policy (service/providers/apns_token.py) over a manual clock and a counting signer."""

from __future__ import annotations

import pytest

from service.clock import ManualClock
from service.providers.apns_token import ProviderToken, ProviderTokens, es256
from tests.fakes.keys import ApnsKey


def _token(clock: ManualClock, renew_after_s: float = 50 * 60) -> ProviderToken:
    return ProviderToken(
        "TEAM123456", "KEY1234567", lambda team, kid, iat: f"{team}.{kid}.{iat}", clock, renew_after_s
    )


def test_renewed_only_once_old_enough_and_never_outside_apples_window() -> None:
    clock = ManualClock(1_000_000.0)
    t = _token(clock)
    assert t.get_header() == "bearer TEAM123456.KEY1234567.1000000"
    clock.advance(50 * 60 - 1)
    assert t.get_header().endswith(".1000000") and t.minted == 1
    clock.advance(1)
    assert t.get_header().endswith(f".{1_000_000 + 3000}") and t.minted == 2
    for bad in (19 * 60, 60 * 60, 3 * 3600):
        with pytest.raises(ValueError, match="renew_after_s"):
            _token(clock, bad)


def test_expired_answer_renews_only_a_token_at_least_20_minutes_old() -> None:
    clock = ManualClock(1_000_000.0)
    t = _token(clock)
    t.get_header()
    clock.advance(19 * 60)
    assert t.expired() is False and t.minted == 1  # about its predecessor, or the clock is off
    clock.advance(60)
    assert t.expired() is True and t.minted == 2 and t.age == 0


def test_tokens_are_shared_per_key_and_start_afresh_when_the_key_text_changes() -> None:
    tokens = ProviderTokens(ManualClock())
    a, b = ApnsKey.generate(), ApnsKey.generate()
    first = tokens.for_key(a.team_id, a.key_id, a.p8)
    assert tokens.for_key(a.team_id, a.key_id, a.p8) is first
    assert tokens.for_key(a.team_id, a.key_id, b.p8) is not first  # rotated under the same key id
    with pytest.raises(ValueError):
        es256("not a key")
