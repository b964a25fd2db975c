"""The platform client, the subscription poller and the Notifications 2.0 alarm stream against the Cumulocity
double (tests/fakes/cumulocity.py, specs/cumulocity.md §1.4-1.6, §3a)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from service.clock import ManualClock
from service.cumulocity.client import C8yClient, C8yError, C8yUnavailable, Credentials
from service.cumulocity.env import PlatformEnv
from service.cumulocity.frames import Frame
from service.cumulocity.stream import AlarmStream, metrics_hook
from service.cumulocity.subscriptions import SubscriptionPoller
from service.metrics import Metrics
from tests.fakes.cumulocity import FakeCumulocity
from tests.support import free_port, wait_until

SUBSCRIPTIONS = "/notification2/subscriptions"


def creds(c: Any) -> Credentials:
    """The double's credentials as the service's (the service never imports tests)."""
    return Credentials(c.tenant, c.user, c.password)


@pytest.fixture
async def fake() -> AsyncIterator[FakeCumulocity]:
    async with FakeCumulocity(redeliver_after_s=0.3) as c8y:
        yield c8y


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def client_for(fake: FakeCumulocity, session: aiohttp.ClientSession, tenant: str) -> C8yClient:
    user = fake.tenant(tenant).service_user
    assert user is not None
    return C8yClient(session, fake.base_url, creds(user), fake.app_key, retry_backoff_s=0.01)


class Handled:
    """A handler recording frames; ``gate`` (when set) holds it, ``fail`` makes it raise that many times."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.gate: asyncio.Event | None = None
        self.fail = 0

    async def __call__(self, frame: Frame) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            self.fail -= 1
            raise RuntimeError("store unavailable")
        self.frames.append(frame)

    def ids(self) -> list[str]:
        return [f.body["id"] for f in self.frames]


@asynccontextmanager
async def running(stream: AlarmStream) -> AsyncIterator[AlarmStream]:
    task = asyncio.create_task(stream.run())
    try:
        yield stream
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not stream.connected


def stream_for(
    fake: FakeCumulocity,
    session: aiohttp.ClientSession,
    tenant: str,
    handler: Callable[[Frame], Awaitable[None]],
    **kw: Any,
) -> AlarmStream:
    kw.setdefault("refused_retry_s", 0.2)
    return AlarmStream(client_for(fake, session, tenant), tenant, handler, **kw)


def posts(fake: FakeCumulocity, path: str, tenant: str | None = None) -> int:
    return sum(
        1 for r in fake.requests if r.method == "POST" and r.path == path and tenant in (None, r.tenant)
    )


# -- the client


async def test_client_sends_basic_auth_accept_and_the_application_key(fake, session) -> None:
    fake.add_tenant("t1")
    client = client_for(fake, session, "t1")
    me = await client.get("/user/currentUser")
    assert me["userName"] == client.credentials.user  # type: ignore[union-attr]
    last = fake.requests[-1]
    assert (last.path, last.tenant, last.user, last.app_key_sent, last.status) == (
        "/user/currentUser",
        "t1",
        client.credentials.user,  # type: ignore[union-attr]
        True,
        200,
    )
    keyless = C8yClient(session, fake.base_url, client.credentials, None)
    await keyless.get("/user/currentUser")
    assert fake.requests[-1].app_key_sent is False
    other = client.for_credentials(creds(fake.bootstrap))
    assert other.session is session and other.app_key == fake.app_key
    assert (await other.get("/application/currentApplication/subscriptions"))["users"]


async def test_platform_errors_become_c8y_errors(fake, session) -> None:
    fake.add_tenant("t1")
    client = client_for(fake, session, "t1")
    wrong = client.for_credentials(Credentials("t1", client.credentials.user, "wrong"))  # type: ignore[union-attr]
    with pytest.raises(C8yError) as caught:
        await wrong.get("/user/currentUser")
    assert caught.value.status == 401 and caught.value.message and "wrong" not in str(caught.value)
    with pytest.raises(C8yError) as caught:
        await client.get("/alarm/alarms/987654321")
    assert caught.value.status == 404
    with pytest.raises(C8yError) as caught:
        bad = {
            "subscription": "not-alphanumeric",
            "context": "tenant",
            "subscriptionFilter": {"apis": ["alarms"]},
        }
        await client.post(SUBSCRIPTIONS, bad)
    assert caught.value.status == 422 and not isinstance(caught.value, C8yUnavailable)


async def test_gateway_errors_are_retried_then_reported(fake, session) -> None:
    fake.add_tenant("t1")
    client = client_for(fake, session, "t1")
    fake.fail("GET", "/user/currentUser", 503, times=2)
    assert (await client.get("/user/currentUser"))["userName"]
    statuses = [r.status for r in fake.requests if r.path == "/user/currentUser"]
    assert statuses == [503, 503, 200]
    fake.fail("GET", "/user/currentUser", 502, times=4)  # all four attempts
    with pytest.raises(C8yUnavailable) as caught:
        await client.get("/user/currentUser")
    assert caught.value.status == 502
    assert [r.status for r in fake.requests if r.path == "/user/currentUser"][3:] == [502] * 4
    fake.fail("GET", "/user/currentUser", 500, times=1)  # a 500 is the platform's answer: not retried
    with pytest.raises(C8yError) as refused:
        await client.get("/user/currentUser")
    assert refused.value.status == 500 and not isinstance(refused.value, C8yUnavailable)
    assert len([r for r in fake.requests if r.path == "/user/currentUser"]) == 8


async def test_an_unreachable_platform_is_retried_then_reported(session) -> None:
    client = C8yClient(
        session, f"http://127.0.0.1:{free_port()}", Credentials("t", "u", "p"), retry_backoff_s=0.01
    )
    with pytest.raises(C8yUnavailable) as caught:
        await client.get("/user/currentUser")
    assert (caught.value.status, caught.value.error) == (0, "unreachable")


async def test_pages_walks_a_collection(fake, session) -> None:
    t = fake.add_tenant("t1")
    device = t.add_device("Pump")
    for n in range(7):
        t.create_alarm(device, f"c8y_Alarm{n}", f"alarm {n}")
    client = client_for(fake, session, "t1")
    before = len(fake.requests)
    alarms = [a async for a in client.pages("/alarm/alarms", "alarms", {"source": device}, page_size=3)]
    assert sorted(a["type"] for a in alarms) == [f"c8y_Alarm{n}" for n in range(7)]
    assert len(fake.requests) - before == 3


async def test_websocket_url_follows_the_platform_scheme(session) -> None:
    plain = C8yClient(session, "http://cumulocity:8111/", None)
    assert plain.ws_url("/notification2/consumer/", {"token": "a b"}) == (
        "ws://cumulocity:8111/notification2/consumer/?token=a+b"
    )
    tls = C8yClient(session, "https://t1.example.com", None)
    assert (
        tls.ws_url("notification2/consumer/", {"token": "x"})
        == "wss://t1.example.com/notification2/consumer/?token=x"
    )
    with pytest.raises(ValueError, match="http"):
        C8yClient(session, "tcp://cumulocity:1881", None)


# -- the subscription poller


async def test_poller_follows_subscriptions(fake, session) -> None:
    fake.add_tenant("t1")
    fake.add_tenant("t2")
    fake.add_tenant("t3", subscribed=False)
    changes: list[tuple[set[str], set[str], set[str]]] = []

    async def on_change(added, removed, changed) -> None:
        changes.append((set(added), set(removed), set(changed)))

    bootstrap = C8yClient(session, fake.base_url, creds(fake.bootstrap), fake.app_key)
    poller = SubscriptionPoller(bootstrap, 0.05, on_change)
    task = asyncio.create_task(poller.run())
    try:
        await wait_until(lambda: len(changes) == 1, 5, "the first poll")
        assert changes[0] == ({"t1", "t2"}, set(), set())
        assert poller.tenants["t1"] == creds(fake.tenant("t1").service_user)
        fake.unsubscribe("t1")
        fake.subscribe("t3")
        await wait_until(lambda: len(changes) == 2, 5, "the change")
        assert changes[1] == ({"t3"}, {"t1"}, set())
        fake.unsubscribe("t2")
        fake.subscribe("t2")  # a new service user with a new password
        await wait_until(lambda: len(changes) == 3, 5, "the new credentials")
        assert changes[2] == (set(), set(), {"t2"})
        assert poller.tenants["t2"] == creds(fake.tenant("t2").service_user)
        polls = poller.polls
        await wait_until(lambda: poller.polls >= polls + 3, 5, "more polls")
        assert len(changes) == 3  # nothing changed: nothing reported
    finally:
        task.cancel()
    assert all(r.app_key_sent for r in fake.requests if r.path.startswith("/application/"))


async def test_poller_survives_errors_and_reports_again(fake, session) -> None:
    fake.add_tenant("t1")
    calls: list[set[str]] = []
    fail = [1]

    def on_change(added, removed, changed) -> None:
        calls.append(set(added))
        if fail[0]:
            fail[0] -= 1
            raise RuntimeError("could not start the stream")

    fake.fail("GET", "/application/currentApplication/subscriptions", 500, times=1)
    bootstrap = C8yClient(session, fake.base_url, creds(fake.bootstrap), fake.app_key)
    poller = SubscriptionPoller(bootstrap, 0.05, on_change, retry_s=0.05)
    task = asyncio.create_task(poller.run())
    try:
        await wait_until(lambda: poller.failures >= 1 and poller.last_error is not None, 5, "the failed poll")
        assert "500" in (poller.last_error or "")
        await wait_until(lambda: poller.ready.is_set(), 5, "a successful poll")
        assert calls == [{"t1"}, {"t1"}]  # on_change raised: the same change came again
        assert poller.failures == 2 and poller.last_error is None and not task.done()
    finally:
        task.cancel()
    wrong = SubscriptionPoller(
        bootstrap.for_credentials(Credentials("management", "servicebootstrap_tocsin", "nope")),
        0.05,
        on_change,
    )
    with pytest.raises(C8yError) as caught:
        await wrong.poll_once()
    assert caught.value.status == 401


async def test_per_tenant_poller_reports_its_one_tenant_once() -> None:
    seen: list[dict[str, Credentials]] = []
    me = Credentials("t42", "service_tocsin", "pw")
    poller = SubscriptionPoller.per_tenant(me, lambda added, removed, changed: seen.append(added))
    task = asyncio.create_task(poller.run())
    try:
        await wait_until(lambda: poller.ready.is_set(), 5, "the fixed tenant")
        assert seen == [{"t42": me}] and not task.done()
    finally:
        task.cancel()


# -- the alarm stream


async def test_alarms_arrive_in_order_and_are_acknowledged_after_the_handler(fake, session) -> None:
    t = fake.add_tenant("t1")
    device = t.add_device("Pump 7")
    handled = Handled()
    handled.gate = asyncio.Event()
    async with running(stream_for(fake, session, "t1", handled)) as stream:
        await wait_until(lambda: stream.connected, 5, "the stream to connect")
        ids = [t.create_alarm(device, f"c8y_T{n}", f"too hot {n}")["id"] for n in range(5)]
        await wait_until(lambda: t.unacked() >= 1, 5, "a frame in the handler")
        assert handled.frames == [] and stream.stats.acked == 0  # the handler holds it: not acknowledged
        handled.gate.set()
        await wait_until(lambda: len(handled.frames) == 5 and t.unacked() == 0, 5, "all acknowledged")
        assert handled.ids() == ids
        first = handled.frames[0]
        assert (first.tenant, first.api, first.source_id, first.action) == ("t1", "alarms", device, "CREATE")
        assert first.body["severity"] == "MAJOR" and first.body["text"] == "too hot 0"
        t.update_alarm(ids[0], status="CLEARED")
        await wait_until(lambda: len(handled.frames) == 6, 5, "the update")
        assert (handled.frames[5].action, handled.frames[5].body["status"]) == ("UPDATE", "CLEARED")
        assert stream.stats.acked == 6 and stream.stats.received == 6 and stream.last_error is None


async def test_subscription_is_created_once_and_kept_across_restarts_with_the_backlog(fake, session) -> None:
    t = fake.add_tenant("t1")
    device = t.add_device("Pump")
    handled = Handled()
    async with running(stream_for(fake, session, "t1", handled)) as stream:
        await wait_until(lambda: stream.connected, 5, "the stream to connect")
        first = t.create_alarm(device, "c8y_A", "one")["id"]
        await wait_until(lambda: handled.ids() == [first] and t.unacked() == 0, 5, "the first alarm")
    await wait_until(lambda: fake.consumers("t1") == 0, 5, "the consumer to go")
    later = [t.create_alarm(device, f"c8y_B{n}", "while down")["id"] for n in range(3)]  # into the backlog
    async with running(stream_for(fake, session, "t1", handled)) as stream:
        await wait_until(lambda: len(handled.frames) == 4 and t.unacked() == 0, 5, "the backlog")
        assert handled.ids() == [first, *later]  # nothing lost, nothing repeated
    assert posts(fake, SUBSCRIPTIONS) == 1
    listed = await client_for(fake, session, "t1").get(SUBSCRIPTIONS, params={"context": "tenant"})
    assert [s["subscription"] for s in listed["subscriptions"]] == ["tocsinalarms"]
    assert not any(r.path.startswith("/notification2/unsubscribe") for r in fake.requests)
    assert not any(r.method == "DELETE" for r in fake.requests)


async def test_an_existing_subscription_is_found_not_created(fake, session) -> None:
    fake.add_tenant("t1")
    client = client_for(fake, session, "t1")
    body = {"subscription": "tocsinalarms", "context": "tenant", "subscriptionFilter": {"apis": ["alarms"]}}
    made = await client.post(SUBSCRIPTIONS, body)
    stream = stream_for(fake, session, "t1", Handled())
    assert await stream.ensure_subscription() == made["id"]
    assert posts(fake, SUBSCRIPTIONS) == 1


class LateLookup(C8yClient):
    """Another instance creates the subscription between this one's look-up and its create (a 409)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.lookups = 0

    async def pages(self, *args: Any, **kw: Any) -> AsyncIterator[dict[str, Any]]:
        self.lookups += 1
        if self.lookups == 1:
            other = self.for_credentials(self.credentials)  # type: ignore[arg-type]
            body = {
                "subscription": "tocsinalarms",
                "context": "tenant",
                "subscriptionFilter": {"apis": ["alarms"]},
            }
            await other.post(SUBSCRIPTIONS, body)
            return
        async for item in super().pages(*args, **kw):
            yield item


async def test_a_conflict_on_create_means_look_it_up_again(fake, session) -> None:
    fake.add_tenant("t1")
    plain = client_for(fake, session, "t1")
    client = LateLookup(session, fake.base_url, plain.credentials, fake.app_key)
    stream = AlarmStream(client, "t1", Handled())
    sub_id = await stream.ensure_subscription()
    assert [r.status for r in fake.requests if r.method == "POST" and r.path == SUBSCRIPTIONS] == [201, 409]
    listed = await plain.get(SUBSCRIPTIONS, params={"context": "tenant"})
    assert [s["id"] for s in listed["subscriptions"]] == [sub_id] and client.lookups == 2


async def test_the_doubles_environment_makes_working_clients(fake, session) -> None:
    fake.add_tenant("t1")
    env = PlatformEnv.from_environ(fake.environment())
    assert env is not None and env.isolation == "MULTI_TENANT" and env.bootstrap is not None
    assert (env.base_url, env.application_key, env.tenant) == (fake.base_url, fake.app_key, None)
    bootstrap = C8yClient(session, env.base_url, env.bootstrap, env.application_key)
    tenants = await SubscriptionPoller(bootstrap, 60, lambda *change: None).fetch()
    assert set(tenants) == {"t1"}
    me = await bootstrap.for_credentials(tenants["t1"]).get("/user/currentUser")
    assert me["userName"] == tenants["t1"].user
    single = PlatformEnv.from_environ(fake.environment("PER_TENANT", tenant="t1"))
    assert single is not None and single.isolation == "PER_TENANT" and single.tenant == tenants["t1"]


async def test_a_failing_handler_leaves_the_frame_for_redelivery(fake, session, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="tocsin.cumulocity")
    t = fake.add_tenant("t1")
    device = t.add_device("Pump")
    handled = Handled()
    handled.fail = 2
    async with running(stream_for(fake, session, "t1", handled)) as stream:
        await wait_until(lambda: stream.connected, 5, "the stream to connect")
        alarm = t.create_alarm(device, "c8y_A", "one")["id"]
        await wait_until(lambda: stream.stats.failed == 1, 5, "the failure")
        assert t.unacked() == 1 and stream.stats.acked == 0
        await wait_until(lambda: handled.ids() == [alarm] and t.unacked() == 0, 5, "the redelivery")
        assert stream.stats.failed == 2 and stream.stats.received == 3 and stream.stats.acked == 1
    failures = [r for r in caplog.records if "not acknowledged" in r.getMessage()]
    assert len(failures) == 1  # logged once, not at every redelivery


async def test_reconnects_after_the_platform_drops_the_consumer(fake, session) -> None:
    t = fake.add_tenant("t1")
    device = t.add_device("Pump")
    handled = Handled()
    metrics = Metrics()
    async with running(stream_for(fake, session, "t1", handled, counts=metrics_hook(metrics))) as stream:
        await wait_until(lambda: stream.connected and fake.consumers("t1") == 1, 5, "the stream to connect")
        assert fake.drop_consumers("t1") == 1
        await wait_until(lambda: stream.stats.connects == 2 and stream.connected, 5, "the reconnect")
        alarm = t.create_alarm(device, "c8y_A", "after the drop")["id"]
        await wait_until(lambda: handled.ids() == [alarm], 5, "the alarm after the reconnect")
        assert stream.stats.reconnects == 1 and fake.consumers("t1") == 1
    counter = next(c for c in metrics.extra_counters if c.name == "tocsin_cumulocity_stream")
    assert (counter.get("connects"), counter.get("reconnects"), counter.get("acked")) == (2, 1, 1)


def renewed_after(stream: AlarmStream, tokens: int) -> Callable[[], bool]:
    return lambda: stream.stats.tokens > tokens and stream.connected


async def test_platform_errors_while_reconnecting_are_retried_with_backoff(fake, session) -> None:
    t = fake.add_tenant("t1")
    device = t.add_device("Pump")
    handled = Handled()
    async with running(stream_for(fake, session, "t1", handled)) as stream:
        await wait_until(lambda: stream.connected, 5, "the stream to connect")
        fake.fail("POST", "/notification2/token", 500, times=3)
        fake.drop_consumers("t1")
        await wait_until(lambda: "500" in (stream.last_error or ""), 5, "the error to show")
        await wait_until(lambda: stream.connected, 5, "the stream to reconnect")
        assert stream.stats.reconnects == 4 and stream.last_error is None  # the drop and three refusals
        alarm = t.create_alarm(device, "c8y_A", "after the outage")["id"]
        await wait_until(lambda: handled.ids() == [alarm], 5, "the alarm")
    tokens = [r.status for r in fake.requests if r.path == "/notification2/token"]
    assert tokens == [200, 500, 500, 500, 200]


async def test_token_is_renewed_before_it_expires() -> None:
    async with FakeCumulocity(token_lifetime_s=1.5) as fake, aiohttp.ClientSession() as session:
        t = fake.add_tenant("t1")
        device = t.add_device("Pump")
        handled = Handled()
        async with running(stream_for(fake, session, "t1", handled)) as stream:
            await wait_until(lambda: stream.connected, 5, "the stream to connect")
            ids = []
            for n in range(2):
                tokens = stream.stats.tokens
                ids.append(t.create_alarm(device, f"c8y_A{n}", "hot")["id"])
                await wait_until(renewed_after(stream, tokens), 5, "a renewal")
            ids.append(t.create_alarm(device, "c8y_Last", "hot")["id"])
            await wait_until(lambda: len(handled.frames) == 3 and t.unacked() == 0, 5, "all alarms")
            assert handled.ids() == ids
            # renewed by the stream, before the double closes the websocket at the token's expiry
            assert stream.stats.renewals == stream.stats.tokens - 1 and stream.stats.reconnects == 0
            assert stream.stats.connects == stream.stats.tokens  # each token its own connection
            assert stream.last_error is None and fake.consumers("t1") == 1


async def test_renewal_follows_the_injected_clock(fake, session) -> None:
    fake.add_tenant("t1")
    clock = ManualClock(start=0.0)
    stream = stream_for(fake, session, "t1", Handled(), clock=clock, renew_check_s=0.02)
    async with running(stream):
        await wait_until(lambda: stream.connected, 5, "the stream to connect")
        assert stream.stats.tokens == 1 and stream.renew_at is not None
        clock.advance(stream.renew_at - clock.time() - 1)
        await asyncio.sleep(0)
        assert stream.stats.tokens == 1
        clock.advance(2)
        await wait_until(lambda: stream.stats.tokens == 2 and stream.stats.connects == 2, 5, "the renewal")
        assert (stream.stats.renewals, stream.stats.reconnects) == (1, 0)
    requests = [r for r in fake.requests if r.path == "/notification2/token"]
    assert len(requests) == 2


async def test_an_unsubscribed_tenant_is_reported_and_retried_without_crashing(fake, session, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    t = fake.add_tenant("t1")
    password = t.service_user.password
    async with running(stream_for(fake, session, "t1", Handled())) as stream:
        await wait_until(lambda: stream.connected, 5, "the stream to connect")
        fake.unsubscribe("t1")
        await wait_until(lambda: "401" in (stream.last_error or ""), 5, "the refusal")
        assert not stream.connected
        tries = stream.stats.reconnects
        await wait_until(lambda: stream.stats.reconnects > tries, 5, "a slow retry")
        assert "401" in (stream.last_error or "")
    assert password not in caplog.text and "token=ey" not in caplog.text


async def test_a_slow_tenant_does_not_hold_up_another(fake, session) -> None:
    slow, quick = fake.add_tenant("t1"), fake.add_tenant("t2")
    d1, d2 = slow.add_device("A"), quick.add_device("B")
    h1, h2 = Handled(), Handled()
    h1.gate = asyncio.Event()
    async with (
        running(stream_for(fake, session, "t1", h1)) as s1,
        running(stream_for(fake, session, "t2", h2)) as s2,
    ):
        await wait_until(lambda: s1.connected and s2.connected, 5, "both streams")
        slow.create_alarm(d1, "c8y_A", "stuck")
        alarm = quick.create_alarm(d2, "c8y_B", "goes through")["id"]
        await wait_until(lambda: h2.ids() == [alarm], 5, "the other tenant's alarm")
        assert h1.frames == [] and h2.frames[0].tenant == "t2"
        h1.gate.set()
        await wait_until(lambda: len(h1.frames) == 1, 5, "the slow tenant's alarm")
        assert h1.frames[0].tenant == "t1"


class ScriptedPlatform:
    """Just enough of Notifications 2.0 to send frames the double never would (malformed ones)."""

    def __init__(self, frames: list[str | bytes]) -> None:
        self.frames: list[str | bytes] = frames
        self.acks: list[str] = []
        app = web.Application()
        app.router.add_get(SUBSCRIPTIONS, self.subscriptions)
        app.router.add_post(SUBSCRIPTIONS, self.subscribe)
        app.router.add_post("/notification2/token", self.token)
        app.router.add_get("/notification2/consumer/", self.consumer)
        self.runner = web.AppRunner(app)
        self.port = free_port()

    async def __aenter__(self) -> ScriptedPlatform:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()

    async def subscriptions(self, request: web.Request) -> web.Response:
        return web.json_response({"subscriptions": [], "statistics": {"currentPage": 1, "pageSize": 100}})

    async def subscribe(self, request: web.Request) -> web.Response:
        return web.json_response({"id": "1", **(await request.json())}, status=201)

    async def token(self, request: web.Request) -> web.Response:
        return web.json_response({"token": "eyJhbGciOiJSUzI1NiJ9.e30.c2ln"})

    async def consumer(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        for frame in self.frames:
            await (ws.send_bytes(frame) if isinstance(frame, bytes) else ws.send_str(frame))
        async for msg in ws:
            self.acks.append(msg.data)
        return ws


async def test_malformed_frames_are_acknowledged_counted_and_skipped(session, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="tocsin.cumulocity")
    good = 'ok1\n/t1/alarms/5\nCREATE\n\n{"id": "7", "severity": "MAJOR"}'
    frames: list[str | bytes] = [
        "bad1\n/t1/alarms/5\nCREATE\n\n{broken",
        "\n\n",
        "bad2\n/t1\nCREATE\n\n{}",
        good.encode(),
    ]
    async with ScriptedPlatform(frames) as platform:
        handled = Handled()
        client = C8yClient(session, f"http://127.0.0.1:{platform.port}", Credentials("t1", "u", "p"))
        async with running(AlarmStream(client, "t1", handled)) as stream:
            await wait_until(lambda: platform.acks == ["bad1", "bad2", "ok1"], 5, "the acknowledgements")
            assert handled.ids() == ["7"] and stream.connected
            assert (stream.stats.received, stream.stats.malformed, stream.stats.acked) == (4, 3, 3)
    assert len([r for r in caplog.records if "malformed frame" in r.getMessage()]) == 1
