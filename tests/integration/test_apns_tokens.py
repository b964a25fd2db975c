"""APNs provider tokens against the fake APNs: one JWT per signing key, renewed between 20 and 60 minutes.

The fake measures token ages and changes with the same manual clock the provider signs with, so an hour of
Apple's rules runs in a moment; it answers TooManyProviderTokenUpdates when a key's token changes more than
once in 20 minutes (over all connections) and ExpiredProviderToken for a token over an hour old.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import jwt
import pytest

from service.clock import ManualClock
from service.providers.apns import ApnsProvider
from service.providers.base import Delivered, Retry
from service.push_config import ApnsConfig
from tests.fakes.apns import FakeAPNs
from tests.fakes.keys import ApnsKey, apns_token
from tests.push_support import BUNDLE, apns_config, delivery, notification, token_app, trusted_key

OTHER = "com.example.other"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(time.time())


@pytest.fixture
async def fake(tmp_path: Path, clock: ManualClock) -> AsyncIterator[FakeAPNs]:
    f = await FakeAPNs(tmp_path / "apns", clock=clock.time).start()
    yield f
    await f.stop()


def _config(fake: FakeAPNs, key: ApnsKey, **kw: object) -> ApnsConfig:
    return apns_config(fake, {BUNDLE: token_app(key), OTHER: token_app(key)}, **kw)


async def _send(p: ApnsProvider, app: str = BUNDLE, environment: str = "production") -> object:
    return await p.send(delivery(notification(), "apns", apns_token(), app=app, environment=environment))


def _iats(fake: FakeAPNs, key: ApnsKey) -> list[int]:
    return sorted(
        int(jwt.decode(t, options={"verify_signature": False})["iat"]) for t in fake.key_tokens[key.key_id]
    )


async def test_one_token_per_key_for_every_connection_app_and_environment(
    fake: FakeAPNs, clock: ManualClock
) -> None:
    key = trusted_key(fake)
    p = ApnsProvider(_config(fake, key, max_connections=4), clock)
    try:
        assert await _send(p) == Delivered()
        sends = [_send(p, app, env) for app in (BUNDLE, OTHER) for env in ("production", "sandbox")] * 40
        assert set(await asyncio.gather(*sends)) == {Delivered()}
        assert fake.connections >= 4  # four clients (app x environment), each with its own connections
        p._drop(BUNDLE)  # connections close (aioapns: after 10 s idle); new ones carry the same token
        assert await _send(p) == Delivered()
        assert (
            len(fake.key_tokens[key.key_id]) == 1
            and p.tokens.for_key(key.team_id, key.key_id, key.p8).minted == 1
        )
        assert fake.rejected == {}
    finally:
        await p.close()


async def test_token_renewed_after_50_minutes_and_not_before(fake: FakeAPNs, clock: ManualClock) -> None:
    key = trusted_key(fake)
    p = ApnsProvider(_config(fake, key), clock)
    try:
        assert await _send(p) == Delivered()
        first = _iats(fake, key)
        clock.advance(49 * 60)
        assert await _send(p, OTHER, "sandbox") == Delivered()
        assert _iats(fake, key) == first  # 49 minutes: still the first token
        clock.advance(60)
        assert await _send(p) == Delivered() and await _send(p, OTHER) == Delivered()
        iats = _iats(fake, key)
        assert len(iats) == 2 and iats[1] - iats[0] == 50 * 60
        clock.advance(55 * 60)  # 55 minutes later the second token is renewed too; never one over 60 old
        assert await _send(p) == Delivered() and len(fake.key_tokens[key.key_id]) == 3
        assert fake.rejected == {}
    finally:
        await p.close()


async def test_fake_refuses_a_second_token_change_within_20_minutes(
    fake: FakeAPNs, clock: ManualClock
) -> None:
    """Three processes with the same key started within 20 minutes (each signs its own token): the third
    is answered TooManyProviderTokenUpdates, keeps its token and gets through once 20 minutes passed."""
    key = trusted_key(fake)
    providers = [ApnsProvider(_config(fake, key), clock) for _ in range(3)]
    try:
        assert await _send(providers[0]) == Delivered()
        clock.advance(60)
        assert await _send(providers[1]) == Delivered()  # the first change
        clock.advance(60)
        assert await _send(providers[2]) == Retry("APNs 429 TooManyProviderTokenUpdates")
        assert fake.rejected == {"TooManyProviderTokenUpdates": 1}
        assert await _send(providers[0]) == Delivered()  # tokens already accepted still work
        clock.advance(19 * 60)  # 20 minutes since the first change
        assert await _send(providers[2]) == Delivered()
        assert providers[2].tokens.for_key(key.team_id, key.key_id, key.p8).minted == 1  # the same token
        assert len(fake.key_tokens[key.key_id]) == 3
    finally:
        for p in providers:
            await p.close()


async def test_expired_provider_token_is_replaced_and_the_send_retried(
    fake: FakeAPNs, clock: ManualClock
) -> None:
    key = trusted_key(fake)
    p = ApnsProvider(_config(fake, key), clock)
    try:
        assert await _send(p) == Delivered()
        clock.advance(30 * 60)
        fake.max_token_age_s = 25 * 60  # APNs considers the 30-minute-old token expired
        assert await _send(p) == Retry("APNs 403 ExpiredProviderToken", after=0.0)
        assert await _send(p) == Delivered()  # the retry carries a new token (the old one is 30 minutes old)
        assert len(fake.key_tokens[key.key_id]) == 2 and p.degraded is None
    finally:
        await p.close()
