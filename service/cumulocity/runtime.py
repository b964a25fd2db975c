"""tocsin as a multi-tenant Cumulocity microservice: tenants come and go, each with its alarms and registry.

For every subscribed tenant (``SubscriptionPoller``) this keeps:

- its registry: managed objects in the tenant's inventory (or a SQLite file per tenant), added to the
  ``StoreDirectory`` under the tenant's id, so its notifications reach its registrations and nobody else's;
- its ``AlarmStream``: each alarm frame becomes an event (``rules.cumulocity.alarm_event``) for the rule
  engine. A frame is acknowledged only once its event was handled and made durable: the outbox rows of the
  deliveries it caused are committed, and the alarm's version is recorded (``Inbox``), which also drops
  redelivered and out-of-order frames.

When a tenant unsubscribes, its stream stops and its registry is dropped: what it still had in flight finds
no registrations. Acknowledging an alert in tocsin sets the platform alarm to ACKNOWLEDGED; an alarm
acknowledged on the platform stops the alert's repeats and escalation in tocsin.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from registrations.auth import AuthError, KeyRing
from registrations.directory import Registry, StoreDirectory
from registrations.inventory_store import InventoryRegistrationStore, InventoryWriter
from registrations.sqlite_store import SqliteRegistrationStore
from registrations.writer import BatchWriter
from rules.cumulocity import alarm_event
from rules.event import Event
from service.clock import Clock
from service.config import CumulocityConfig
from service.cumulocity.auth import PlatformAuthenticator
from service.cumulocity.client import C8yClient, C8yError, Credentials
from service.cumulocity.env import PlatformEnv
from service.cumulocity.frames import Frame
from service.cumulocity.inbox import Inbox
from service.cumulocity.stream import AlarmStream, metrics_hook
from service.cumulocity.subscriptions import SubscriptionPoller
from service.metrics import Counter, Metrics
from service.notify.model import Notification
from service.notify.noise import Ack, NoiseControl
from service.supervisor import Spawn, unsupervised

log = logging.getLogger("tocsin.cumulocity")
_TENANT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
ALARM_APIS = ("alarms", "alarmsWithChildren")
SETTING = "severityThreshold"  # the manifest's setting, a tenant option
SEVERITY_RANK = {"WARNING": 0, "MINOR": 1, "MAJOR": 2, "CRITICAL": 3}


@dataclass
class Tenant:
    id: str
    client: C8yClient  # as the tenant's service user
    registry: Registry
    stream: AlarmStream
    task: asyncio.Task[None] | None = None
    refresher: asyncio.Task[None] | None = None
    users: dict[str, float] = field(default_factory=dict)  # user name -> until when it is known to exist
    threshold: str = "WARNING"  # the tenant's setting severityThreshold: alarms below it open nothing


class CumulocityRuntime:
    """``async with CumulocityRuntime(...)``: follows the subscriptions until the block ends.

    ``on_event`` hands an event to the rule engine and the notify pipeline; ``settle`` makes what it caused
    durable (commits the outbox)."""

    def __init__(
        self,
        platform: PlatformEnv,
        config: CumulocityConfig,
        store_kind: str,
        data_dir: Path,
        stores: StoreDirectory,
        on_event: Callable[[Event], Awaitable[None]],
        settle: Callable[[], Awaitable[None]],
        noise: NoiseControl,
        metrics: Metrics,
        clock: Clock,
        keys: KeyRing,
        spawn: Spawn = unsupervised,
    ) -> None:
        """``spawn`` starts the long-running tasks (the service's supervisor restarts them if they die)."""
        self.spawn = spawn
        self.platform, self.config, self.store_kind = platform, config, store_kind
        self.data_dir, self.stores, self.on_event, self.settle = data_dir, stores, on_event, settle
        self.noise, self.metrics, self.clock, self.keys = noise, metrics, clock, keys
        self.tenants: dict[str, Tenant] = {}
        self.inbox = Inbox(data_dir / "cumulocity.db")
        self.frames = Counter(
            "tocsin_cumulocity_frames",
            "Alarm frames: handled, duplicate, stale, below_threshold, ignored (not an alarm), foreign.",
            ("outcome",),
        )
        self.acks = Counter(
            "tocsin_cumulocity_acknowledgements",
            "Alerts acknowledged in tocsin passed on to the platform, by result.",
            ("result",),
        )
        metrics.extra_counters.extend([self.frames, self.acks])
        self._counts = metrics_hook(metrics)
        self._session: aiohttp.ClientSession | None = None
        self.bootstrap: C8yClient | None = None
        self.anonymous: C8yClient | None = None
        self.poller: SubscriptionPoller | None = None
        self.authenticator = PlatformAuthenticator(
            None,
            keys,
            self.tenants,
            admin_role=config.admin_role,
            user_role=config.user_role,
            cache_s=config.auth_cache_s,
        )
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle ----------------------------------------------------------------------------------------
    async def __aenter__(self) -> CumulocityRuntime:
        # No connection limit: every tenant's websocket holds a connection for good, and with aiohttp's
        # default of 100 the REST calls (credential checks, inventory, tokens) waited until they timed out.
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        p = self.platform
        base = C8yClient(self._session, p.base_url, p.bootstrap, p.application_key)
        self.bootstrap = base
        # The callers' own credentials go to the platform without our application key.
        self.anonymous = C8yClient(self._session, p.base_url, None, None)
        self.authenticator.client = self.anonymous
        if p.isolation == "PER_TENANT":
            assert p.tenant is not None
            self.poller = SubscriptionPoller.per_tenant(p.tenant, self._on_change)
        else:
            self.poller = SubscriptionPoller(base, self.config.poll_s, self._on_change)
        self._tasks = [
            self.spawn("cumulocity-subscriptions", self.poller.run),
            self.spawn("cumulocity-inbox-purge", self._purge),
        ]
        log.info(
            "Cumulocity: %s at %s, registrations in %s",
            p.isolation,
            p.base_url,
            "the tenants' inventories" if self.store_kind == "cumulocity" else "a SQLite file per tenant",
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for tenant in list(self.tenants):
            await self._stop_tenant(tenant)
        self.inbox.close()
        if self._session is not None:
            await self._session.close()

    @property
    def ready(self) -> bool:
        return self.poller is not None and self.poller.ready.is_set()

    def health(self) -> dict[str, object]:
        return {
            "base_url": self.platform.base_url,
            "isolation": self.platform.isolation,
            "subscriptions_read": self.ready,
            "error": self.poller.last_error if self.poller else None,
            "tenants": {
                t.id: {"connected": t.stream.connected, "error": t.stream.last_error}
                for t in self.tenants.values()
            },
        }

    # -- tenants ------------------------------------------------------------------------------------------
    async def _on_change(
        self, added: dict[str, Credentials], removed: dict[str, Credentials], changed: dict[str, Credentials]
    ) -> None:
        for tenant in removed:
            await self._stop_tenant(tenant)
            log.info("tenant %s unsubscribed: its alarm stream stopped and its registry dropped", tenant)
        failed: list[str] = []
        for tenant, credentials in {**changed, **added}.items():
            if tenant in changed:
                await self._stop_tenant(tenant)  # new service user: start again with it
            if tenant in self.tenants:
                continue
            try:
                await self._start_tenant(tenant, credentials)
            except Exception as exc:
                failed.append(tenant)
                log.error("tenant %s: could not start (%s); retried at the next poll", tenant, exc)
        if failed:
            raise RuntimeError(f"tenants not started: {', '.join(failed)}")

    async def _start_tenant(self, tenant: str, credentials: Credentials) -> None:
        if not _TENANT_ID.fullmatch(tenant):
            raise ValueError(f"unusable tenant id {tenant!r}")
        assert self.bootstrap is not None
        client = self.bootstrap.for_credentials(credentials)
        registry = await self._registry(tenant, client)

        async def handle(frame: Frame) -> None:
            await self._handle(tenant, frame)

        stream = AlarmStream(
            client,
            tenant,
            handle,
            subscription=self.config.subscription,
            subscriber=self.config.subscriber,
            token_minutes=self.config.token_minutes,
            clock=self.clock,
            counts=self._counts,
        )
        t = Tenant(tenant, client, registry, stream, threshold=await self._threshold(tenant, client))
        self.stores.add(tenant, registry)
        self.tenants[tenant] = t
        t.task = self.spawn(f"cumulocity-alarms-{tenant}", stream.run)
        if isinstance(registry.store, InventoryRegistrationStore):
            t.refresher = self.spawn(f"cumulocity-inventory-{tenant}", lambda: self._refresh(t))
        log.info(
            "tenant %s subscribed: %d registrations, alarm stream started",
            tenant,
            await registry.store.count(),
        )

    async def _threshold(self, tenant: str, client: C8yClient) -> str:
        """The tenant's ``severityThreshold`` setting (a tenant option in our category; the manifest gives
        its default). Missing or unreadable: every severity."""
        path = f"/tenant/options/{quote(self.platform.application_name, safe='')}/{SETTING}"
        try:
            option = await client.request("GET", path)
        except C8yError as exc:
            if exc.status != 404:
                log.warning(
                    "tenant %s: reading the setting %s failed (%s): all severities", tenant, SETTING, exc
                )
            return "WARNING"
        value = str(option.get("value", "")).upper() if isinstance(option, dict) else ""
        if value not in SEVERITY_RANK:
            log.warning("tenant %s: setting %s=%r is not a severity: all severities", tenant, SETTING, value)
            return "WARNING"
        return value

    async def _registry(self, tenant: str, client: C8yClient) -> Registry:
        if self.store_kind == "cumulocity":
            store = InventoryRegistrationStore(client, tenant)
            await store.load()
            return Registry(store, InventoryWriter(store, self.clock.time))
        sqlite = SqliteRegistrationStore(self.data_dir / "tenants" / f"{tenant}.db")
        writer = BatchWriter(sqlite, self.clock.time)
        return Registry(sqlite, writer)

    async def _stop_tenant(self, tenant: str) -> None:
        t = self.tenants.pop(tenant, None)
        self.stores.remove(tenant)
        if t is None:
            return
        for task in (t.task, t.refresher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        store, writer = t.registry.store, t.registry.writer
        if isinstance(store, InventoryRegistrationStore):
            await store.drain()
        if isinstance(writer, BatchWriter):
            await writer.close()
        await store.close()

    async def _refresh(self, t: Tenant) -> None:
        """Other instances (or the platform's UI) may change registrations: read them again now and then."""
        store = t.registry.store
        assert isinstance(store, InventoryRegistrationStore)
        while True:
            await asyncio.sleep(self.config.inventory_refresh_s)
            try:
                await store.load()
            except Exception as exc:
                log.warning("tenant %s: reading the registrations again failed: %s", t.id, exc)

    async def _purge(self) -> None:
        while True:
            try:
                self.inbox.purge(self.clock.time() - self.config.dedup_retention_s)
            except Exception:
                log.exception("forgetting old alarm versions failed")
            await asyncio.sleep(3600)

    # -- alarms -------------------------------------------------------------------------------------------
    async def _handle(self, tenant: str, frame: Frame) -> None:
        """Raises when the event could not be handled: the frame then stays unacknowledged."""
        if frame.tenant != tenant:  # never let one tenant's frame into another's registry
            self.frames.inc("foreign")
            log.error("tenant %s's stream carried a frame of tenant %s: dropped", tenant, frame.tenant)
            return
        if frame.api not in ALARM_APIS or frame.action not in ("CREATE", "UPDATE"):
            self.frames.inc("ignored")
            return
        alarm = frame.body
        verdict = self.inbox.check(tenant, alarm)
        if verdict != "new":
            self.frames.inc(verdict)
            return
        if self._below_threshold(tenant, alarm):
            self.frames.inc("below_threshold")
            return
        now = self.clock.time()
        await self.on_event(alarm_event(tenant, alarm, now))
        if str(alarm.get("status", "")).upper() == "ACKNOWLEDGED":
            self._acknowledged_on_platform(tenant, str(alarm.get("id", "")), now)
        await self.settle()
        self.inbox.record(tenant, alarm, now)
        self.frames.inc("handled")

    def _below_threshold(self, tenant: str, alarm: Mapping[str, Any]) -> bool:
        """An alarm below the tenant's threshold opens nothing; once handled, its changes (a clear, a lower
        severity) still go through, so that what it opened can close."""
        t = self.tenants.get(tenant)
        if t is None or str(alarm.get("status", "")).upper() == "CLEARED":
            return False
        rank = SEVERITY_RANK.get(str(alarm.get("severity", "")).upper(), 0)
        return rank < SEVERITY_RANK[t.threshold] and self.inbox.seen(tenant, str(alarm.get("id"))) is None

    def _acknowledged_on_platform(self, tenant: str, alarm_id: str, now: float) -> None:
        """Someone acknowledged the alarm on the platform: its alert's repeats and escalation stop too."""
        for n in list(self.noise.open_alerts().values()):
            if n.tenant == tenant and n.data.get("alarmId") == alarm_id and not self.noise.acks.acked(n):
                self.noise.ack(n.alert_id, "cumulocity", "acknowledged on the platform", now)

    async def acknowledge(self, n: Notification, ack: Ack) -> dict[str, Any] | None:
        """The hook of ``POST /v1/alerts/{id}/ack``: set the alert's platform alarm to ACKNOWLEDGED."""
        alarm_id = n.data.get("alarmId")
        if n.tenant is None or not alarm_id or not self.config.acknowledge_alarms:
            return None
        t = self.tenants.get(n.tenant)
        if t is None:
            self.acks.inc("unsubscribed")
            return {"acknowledged": False, "alarm": alarm_id, "error": f"tenant {n.tenant} is not subscribed"}
        try:
            await t.client.request("PUT", f"/alarm/alarms/{alarm_id}", json={"status": "ACKNOWLEDGED"})
        except C8yError as exc:
            self.acks.inc("failed")
            log.warning(
                "tenant %s: acknowledging alarm %s on the platform failed: %s", n.tenant, alarm_id, exc
            )
            return {"acknowledged": False, "alarm": alarm_id, "error": str(exc)}
        self.acks.inc("acknowledged")
        return {"acknowledged": True, "alarm": alarm_id}

    async def alarm(self, tenant: str, alarm_id: str) -> Mapping[str, Any] | None:
        """The alarm as the tenant's platform has it, None when it has none of that id; the push gateway's
        ``POST /notification`` loads it for its text. ``C8yError`` when the platform cannot answer."""
        t = self.tenants.get(tenant)
        if t is None:
            raise C8yError(503, "unsubscribed", f"tenant {tenant} is not subscribed")
        try:
            doc = await t.client.request("GET", f"/alarm/alarms/{quote(alarm_id, safe='')}")
        except C8yError as exc:
            if exc.status == 404:
                return None
            raise
        return doc if isinstance(doc, dict) else None

    async def user_exists(self, tenant: str, user: str) -> bool:
        """Whether ``user`` is a user of ``tenant`` (the push gateway API registers devices only for them)."""
        t = self.tenants.get(tenant)
        if t is None:
            return False
        now = self.clock.monotonic()
        if t.users.get(user, 0.0) > now:
            return True
        try:
            await t.client.request("GET", f"/user/{tenant}/users/{quote(user, safe='')}")
        except C8yError as exc:
            if exc.status == 404:
                return False
            raise AuthError(503, "the platform could not tell whether the user exists; try again") from exc
        if len(t.users) > 10_000:
            t.users.clear()
        t.users[user] = now + self.config.auth_cache_s
        return True
