"""tocsin as a multi-tenant Cumulocity microservice: tenants come and go, each with its alarms and registry.

For every subscribed tenant (``SubscriptionPoller``) this keeps:

- its registry: managed objects in the tenant's inventory (or a SQLite file per tenant), added to the
  ``StoreDirectory`` under the tenant's id, so its notifications reach its registrations and nobody else's;
- its ``AlarmStream``, shared by the replicas (a shared token, this replica's consumer name): each alarm
  frame becomes an event (``rules.cumulocity.alarm_event``) for the rule engine. Nothing of it may live only
  in the pod (the platform keeps no disk): the state of the frame's source (alarm versions, open alerts,
  acknowledgements, escalation steps; ``tenant_state.py``) is read from the source's managed object first and
  written back before the frame is acknowledged, which happens once the pushes it caused went out. The
  versions drop redelivered and out-of-order frames; a DELETE frame resolves its alarm's alert;
- a second stream of the tenant's registration managed objects (every replica its own), so that writes
  through another replica are seen at once; its ``severityThreshold``, read again now and then; its
  presence record (``Presence``), which tells the replicas whose repeats and escalations are whose.

When a tenant unsubscribes, its stream stops and its registry is dropped: what it still had in flight finds
no registrations. Acknowledging an alert in tocsin sets the platform alarm to ACKNOWLEDGED; an alarm
acknowledged on the platform stops the alert's repeats and escalation in tocsin.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp

from registrations.auth import AuthError, KeyRing
from registrations.directory import Registry, StoreDirectory
from registrations.inventory_store import MO_TYPE, InventoryRegistrationStore, InventoryWriter
from registrations.sqlite_store import SqliteRegistrationStore
from registrations.writer import BatchWriter
from rules.cumulocity import alarm_event
from rules.engine import TENANT, AlertState, EngineState, RuleEngine, touched_by_event
from rules.event import Event
from rules.state_codec import dump_alert, load_alert
from service.clock import Clock
from service.config import CumulocityConfig
from service.cumulocity.auth import PlatformAuthenticator
from service.cumulocity.client import C8yClient, C8yError, Credentials
from service.cumulocity.env import PlatformEnv
from service.cumulocity.frames import Frame
from service.cumulocity.stream import AlarmStream, metrics_hook
from service.cumulocity.subscriptions import SubscriptionPoller
from service.cumulocity.tenant_state import FRAGMENT, Presence, SourceState, SourceStore, json_safe
from service.metrics import Counter, Metrics
from service.notify.dispatch import watching
from service.notify.model import Notification
from service.notify.noise import Ack, NoiseControl
from service.notify.pipeline import to_notification
from service.supervisor import Spawn, unsupervised

log = logging.getLogger("tocsin.cumulocity")
_TENANT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
ALARM_APIS = ("alarms", "alarmsWithChildren")
ALARM_ACTIONS = ("CREATE", "UPDATE", "DELETE")
START_CONCURRENCY = 16  # tenants started at once
SETTING = "severityThreshold"  # the manifest's setting, a tenant option
SEVERITY_RANK = {"WARNING": 0, "MINOR": 1, "MAJOR": 2, "CRITICAL": 3}


class EngineHost(Protocol):
    """Where the rule engine and its live state are (the service)."""

    engine: RuleEngine
    state: EngineState

    def timers_changed(self) -> None: ...


@dataclass
class Tenant:
    id: str
    client: C8yClient  # as the tenant's service user
    registry: Registry
    stream: AlarmStream
    sources: SourceStore  # the tenant's alarm state, on its sources' managed objects
    presence: Presence  # which replicas are up
    task: asyncio.Task[None] | None = None
    refresher: asyncio.Task[None] | None = None
    changes: AlarmStream | None = None  # registration changes made through any replica
    changes_task: asyncio.Task[None] | None = None
    options_task: asyncio.Task[None] | None = None
    presence_task: asyncio.Task[None] | None = None
    users: dict[str, float] = field(default_factory=dict)  # user name -> until when it is known to exist
    threshold: str = "WARNING"  # the tenant's setting severityThreshold: alarms below it open nothing
    owned: dict[str, set[str]] = field(default_factory=dict)  # source id -> its alerts, as last read/written
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one writer of the tenant's state at a time


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
        host: EngineHost | None = None,
        instance: str = "tocsin",
    ) -> None:
        """``spawn`` starts the long-running tasks (the service's supervisor restarts them if they die);
        ``host`` holds the rule engine and its state (alerts restored from the tenants go there);
        ``instance``: the instance id, whose letters and digits name this replica's consumer."""
        self.spawn = spawn
        self.host = host
        self.consumer = config.consumer or (re.sub(r"[^A-Za-z0-9]", "", instance) or "tocsin")[:64]
        self._steps: dict[str, int] = {}  # follow-up notification id -> the escalation step it is
        self._following: set[tuple[str, str]] = set()  # (alert, episode) whose follow-ups are scheduled here
        self.noise_followups_hook(noise)
        self.platform, self.config, self.store_kind = platform, config, store_kind
        self.data_dir, self.stores, self.on_event, self.settle = data_dir, stores, on_event, settle
        self.noise, self.metrics, self.clock, self.keys = noise, metrics, clock, keys
        self.tenants: dict[str, Tenant] = {}
        self.frames = Counter(
            "tocsin_cumulocity_frames",
            "Alarm frames: handled, deleted, duplicate, stale, below_threshold, unknown_delete, ignored (not"
            " an alarm), foreign, unacked_pushes (acknowledged before its pushes finished).",
            ("outcome",),
        )
        self.state_io = Counter(
            "tocsin_cumulocity_state",
            "The tenants' alarm state on their sources' managed objects: read, written, restored alerts.",
            ("event",),
        )
        self.acks = Counter(
            "tocsin_cumulocity_acknowledgements",
            "Alerts acknowledged in tocsin passed on to the platform, by result.",
            ("result",),
        )
        metrics.extra_counters.extend([self.frames, self.acks, self.state_io])
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
        self._tasks = [self.spawn("cumulocity-subscriptions", self.poller.run)]
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
        if self._session is not None:
            await self._session.close()

    async def stop_streams(self) -> None:
        """Graceful stop: each tenant's stream finishes the frame in hand (its state written, acknowledged)
        and takes no more; whatever else was sent comes again to the next replica or pod."""

        async def stop(t: Tenant) -> None:
            async with t.lock:
                for task in (t.task, t.changes_task, t.presence_task):
                    if task is not None:
                        task.cancel()
            await t.presence.leave()  # its alerts' repeats and escalations move on at once

        await asyncio.gather(*(stop(t) for t in list(self.tenants.values())), return_exceptions=True)

    @property
    def ready(self) -> bool:
        return self.poller is not None and self.poller.ready.is_set()

    def health(self) -> dict[str, object]:
        return {
            "base_url": self.platform.base_url,
            "isolation": self.platform.isolation,
            "subscriptions_read": self.ready,
            "error": self.poller.last_error if self.poller else None,
            "consumer": self.consumer,
            "shared": self.config.shared,
            "tenants": {
                t.id: {
                    "connected": t.stream.connected,
                    "error": t.stream.last_error,
                    "threshold": t.threshold,
                    "registration_changes": t.changes.connected if t.changes is not None else None,
                }
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
        # Several at a time: each start reads the tenant's settings, registrations and kept state.
        gate = asyncio.Semaphore(START_CONCURRENCY)

        async def start(tenant: str, credentials: Credentials) -> None:
            async with gate:
                if tenant in changed:
                    await self._stop_tenant(tenant)  # new service user: start again with it
                if tenant in self.tenants:
                    return
                try:
                    await self._start_tenant(tenant, credentials)
                except Exception as exc:
                    failed.append(tenant)
                    log.error("tenant %s: could not start (%s); retried at the next poll", tenant, exc)

        await asyncio.gather(*(start(t, c) for t, c in {**changed, **added}.items()))
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
            shared=self.config.shared,
            consumer=self.consumer if self.config.shared else None,
        )
        t = Tenant(
            tenant,
            client,
            registry,
            stream,
            SourceStore(client, tenant),
            Presence(client, self.consumer, self.config.presence_s),
            threshold=await self._threshold(tenant, client),
        )
        await t.presence.beat(self.clock.time())
        await self._restore(t)
        self.stores.add(tenant, registry)
        self.tenants[tenant] = t
        t.task = self.spawn(f"cumulocity-alarms-{tenant}", stream.run)
        t.options_task = self.spawn(f"cumulocity-options-{tenant}", lambda: self._watch_options(t))
        t.presence_task = self.spawn(f"cumulocity-presence-{tenant}", lambda: self._beat(t))
        if isinstance(registry.store, InventoryRegistrationStore):
            t.refresher = self.spawn(f"cumulocity-inventory-{tenant}", lambda: self._refresh(t))
            t.changes = self._registration_changes(t, registry.store)
            t.changes_task = self.spawn(f"cumulocity-registrations-{tenant}", t.changes.run)
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
        for task in (t.task, t.refresher, t.changes_task, t.options_task, t.presence_task):
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

    def _registration_changes(self, t: Tenant, store: InventoryRegistrationStore) -> AlarmStream:
        """Every replica follows the registration managed objects of the tenant (its own non-persistent
        subscriber: each replica gets every change), so that a registration written through one replica
        reaches the others at once. Each (re)connection reads all registrations again first: changes made
        while it was down are in that read."""

        async def on_change(frame: Frame) -> None:
            if frame.tenant != t.id or frame.api != "managedobjects":
                return
            if frame.action == "DELETE":
                store.forget(frame.source_id)
            elif frame.body.get("type") == MO_TYPE:
                store.apply(frame.body)

        async def reload() -> None:
            await store.load()

        return AlarmStream(
            t.client,
            t.id,
            on_change,
            subscription=self.config.subscription + "regs",
            subscriber=self.config.subscriber + "regs" + self.consumer,
            token_minutes=self.config.token_minutes,
            clock=self.clock,
            counts=self._counts,
            apis=("managedobjects",),
            type_filter=MO_TYPE,
            non_persistent=True,
            on_connect=reload,
        )

    async def _beat(self, t: Tenant) -> None:
        while True:
            await asyncio.sleep(self.config.presence_s)
            try:
                await t.presence.beat(self.clock.time())
            except C8yError as exc:
                log.warning("tenant %s: marking this replica up failed: %s", t.id, exc)

    async def _watch_options(self, t: Tenant) -> None:
        """The platform sends no notification when a tenant option changes: read them again now and then."""
        while True:
            await asyncio.sleep(self.config.options_poll_s)
            threshold = await self._threshold(t.id, t.client)
            if threshold != t.threshold:
                log.info("tenant %s: %s is now %s (was %s)", t.id, SETTING, threshold, t.threshold)
                t.threshold = threshold

    # -- alarms -------------------------------------------------------------------------------------------
    async def _handle(self, tenant: str, frame: Frame) -> None:
        """Raises when the event could not be handled or its state not kept: the frame then stays
        unacknowledged (and comes again, here or to another replica)."""
        if frame.tenant != tenant:  # never let one tenant's frame into another's registry
            self.frames.inc("foreign")
            log.error("tenant %s's stream carried a frame of tenant %s: dropped", tenant, frame.tenant)
            return
        if frame.api not in ALARM_APIS or frame.action not in ALARM_ACTIONS:
            self.frames.inc("ignored")
            return
        t = self.tenants.get(tenant)
        if t is None:
            raise RuntimeError(f"tenant {tenant} is not followed any more")
        async with t.lock:
            await self._handle_locked(t, frame)

    async def _handle_locked(self, t: Tenant, frame: Frame) -> None:
        source = frame.source_id
        st = await t.sources.load(source)  # read through: another replica or pod may have handled it since
        self.state_io.inc("read")
        self._adopt(t, source, st, follow_up=True)
        alarm: Mapping[str, Any] | None = frame.body
        if frame.action == "DELETE":
            alarm = self._deleted(t, source, st, frame.body)
            if alarm is None:
                self.frames.inc("unknown_delete")
                return
        assert alarm is not None
        verdict = st.check(alarm)
        if verdict != "new":
            self.frames.inc(verdict)
            return
        now = self.clock.time()
        if self._below_threshold(t, st, alarm):
            self.frames.inc("below_threshold")
            return
        pushes: list[asyncio.Future[None]] = []
        touched: set[str] = set()
        tokens = watching.set(pushes), touched_by_event.set(touched)
        try:
            await self.on_event(alarm_event(t.id, alarm, now))
        finally:
            watching.reset(tokens[0])
            touched_by_event.reset(tokens[1])
        if str(alarm.get("status", "")).upper() == "ACKNOWLEDGED":
            self._acknowledged_on_platform(t.id, str(alarm.get("id", "")), now)
        self._capture(t, source, st, touched)
        await self.settle()
        if pushes and self.config.ack_wait_s > 0:
            # No disk survives the pod: the frame is the only durable copy of what it caused, so it is
            # acknowledged once its pushes went out (or after ack_wait_s, while a provider retries).
            _, pending = await asyncio.wait(pushes, timeout=self.config.ack_wait_s)
            if pending:
                self.frames.inc("unacked_pushes")
        st.record(alarm, now)
        st.purge(now - self.config.dedup_retention_s)
        await t.sources.save(source, st)
        self.state_io.inc("written")
        self.frames.inc("deleted" if frame.action == "DELETE" else "handled")

    def _deleted(
        self, t: Tenant, source: str, st: SourceState, body: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """A deleted alarm as a cleared one (so that its alert resolves), from what its alert last saw or
        what was kept of it. None: an alarm this tenant's state knows nothing of."""
        alarm_id = str(body.get("id") or "")
        if not alarm_id:
            return None
        last: Mapping[str, Any] | None = None
        if self.host is not None:
            for aid in t.owned.get(source, ()):
                alert = self.host.state.alerts.get(aid)
                event = alert.last_event if alert is not None else None
                if event is not None and str(event.payload.get("id")) == alarm_id:
                    last = event.payload
        alarm_type = body.get("type") or (last or {}).get("type") or st.type_of(alarm_id)
        if not alarm_type:
            return None
        out = {**(last or {}), **body, "id": alarm_id, "type": alarm_type, "status": "CLEARED"}
        out.setdefault("source", {"id": source})
        out.pop("lastUpdated", None)  # a deletion is newer than any version seen
        out["deleted"] = True
        return out

    def _below_threshold(self, t: Tenant, st: SourceState, alarm: Mapping[str, Any]) -> bool:
        """An alarm below the tenant's threshold opens nothing; once handled, its changes (a clear, a lower
        severity) still go through, so that what it opened can close."""
        if str(alarm.get("status", "")).upper() == "CLEARED":
            return False
        rank = SEVERITY_RANK.get(str(alarm.get("severity", "")).upper(), 0)
        return rank < SEVERITY_RANK[t.threshold] and st.seen(str(alarm.get("id"))) is None

    # -- the tenant's state ---------------------------------------------------------------------------------
    async def _restore(self, t: Tenant) -> None:
        """At start: every source of the tenant that keeps state. Its alerts and acknowledgements come
        back; repeats and escalations resume unless the replica that handled the source last is up (then
        they resume at the source's next frame, wherever it goes)."""
        restored, now = 0, self.clock.time()
        async for mo in t.client.pages(
            "/inventory/managedObjects", "managedObjects", {"fragmentType": FRAGMENT}
        ):
            st = SourceState.from_fragment(mo.get(FRAGMENT))
            mine = st.owner is None or not await t.presence.alive(st.owner, now)
            restored += self._adopt(t, str(mo.get("id")), st, follow_up=mine)
        if restored:
            self.state_io.inc("restored", amount=restored)
            log.info("tenant %s: %d open alerts restored from its inventory", t.id, restored)

    def _adopt(self, t: Tenant, source: str, st: SourceState, follow_up: bool) -> int:
        """Make the engine's and noise control's view of this source's alerts the tenant's (what is kept
        there is newer than anything here: it is written before every acknowledgement)."""
        host = self.host
        if host is None:
            return 0
        state = host.state
        adopted = 0
        for aid in t.owned.get(source, set()) - st.alerts.keys():
            if state.alerts.pop(aid, None) is not None:  # resolved through another replica
                state.touched.add(aid)
                self.noise.acks.closed(aid)
        now = self.clock.time()
        for aid, d in st.alerts.items():
            local = state.alerts.get(aid)
            if local is not None and (local.episode, local.status, local.deadline) == (
                d.get("episode"),
                d.get("status"),
                d.get("deadline"),
            ):
                alert = local
            else:
                try:
                    alert = load_alert(d)
                except (KeyError, TypeError, ValueError, IndexError):
                    log.warning("tenant %s: damaged alert %s kept on source %s: skipped", t.id, aid, source)
                    continue
                state.alerts[aid] = alert
                state.touched.add(aid)
                adopted += 1
                if alert.deadline is not None:
                    heapq.heappush(state.timers, (alert.deadline, aid))
                    host.timers_changed()
            self._reopen(aid, alert, st, now, follow_up)
        t.owned[source] = set(st.alerts)
        return adopted

    def _reopen(self, aid: str, alert: AlertState, st: SourceState, now: float, follow_up: bool) -> None:
        """Noise control's open alert (to acknowledge, repeat, escalate) of a firing alert from the tenant."""
        assert self.host is not None
        acks = self.noise.acks
        n = acks.open.get(aid)
        if n is None or n.episode != alert.episode:
            transition = self.host.engine.reopened(aid, alert)
            if transition is None:
                return
            n = to_notification(transition, now)
            acks.opened(n)
        if follow_up and (aid, alert.episode) not in self._following:
            self._following.add((aid, alert.episode))
            escalated = st.escalated.get(aid) or {}
            sent = escalated.get("steps", []) if escalated.get("episode") == alert.episode else []
            before = self.noise.next_deadline()
            self.noise.followups.resume(n, set(sent), now)
            if self.noise.on_schedule is not None and self.noise.next_deadline() != before:
                self.noise.on_schedule()
        kept = st.acks.get(aid)
        if kept and kept.get("episode") == alert.episode and not acks.acked(n):
            acks.ack(aid, str(kept.get("by", "")), str(kept.get("comment", "")), float(kept.get("time", now)))

    def _capture(self, t: Tenant, source: str, st: SourceState, touched: set[str]) -> None:
        """Put this source's alerts (as the engine has them now, after an event that ``touched`` these) and
        their acknowledgements into ``st``."""
        if self.host is None:
            return
        state = self.host.state
        alerts: dict[str, dict[str, Any]] = {}
        for aid in set(st.alerts) | touched | t.owned.get(source, set()):
            alert = state.alerts.get(aid)
            if alert is None or alert.labels.get(TENANT) != t.id:
                continue
            event = alert.last_event
            if event is None or event.device != source:
                continue
            kept = st.alerts.get(aid)
            if kept is not None and aid not in touched:  # as read (and adopted) before this event
                alerts[aid] = kept
                continue
            alerts[aid] = json_safe(dump_alert(alert))
            if alert.status == "firing" and aid not in st.alerts:  # opened here: noise control follows up
                self._following.add((aid, alert.episode))
        gone = t.owned.get(source, set()) - alerts.keys()
        if gone:
            self._following = {f for f in self._following if f[0] not in gone}
        st.alerts = alerts
        st.acks = {}
        for aid in alerts:
            n = self.noise.acks.open.get(aid)
            a = self.noise.acks.of(aid)
            if n is not None and a is not None and a.episode == n.episode:
                st.acks[aid] = {"episode": a.episode, "by": a.by, "comment": a.comment, "time": a.time}
        st.escalated = {aid: e for aid, e in st.escalated.items() if aid in alerts}
        st.owner = self.consumer
        t.owned[source] = set(alerts)

    # -- repeats and escalations ----------------------------------------------------------------------------
    def noise_followups_hook(self, noise: NoiseControl) -> None:
        def on_step(n: Notification, step: int) -> None:
            if n.tenant is not None:
                if len(self._steps) > 10_000:
                    self._steps.clear()
                self._steps[n.nid] = step  # -1: a repeat

        noise.followups.on_step = on_step

    async def may_follow_up(self, n: Notification) -> bool:
        """Whether this replica sends a repeat or escalation of a tenant's alert: only while it handles the
        alert's source (its frames go to one replica). An escalation step is written to the tenant before
        it goes out, so that no restart sends it again."""
        step = self._steps.pop(n.nid, None)
        if step is None:
            return True  # not a repeat or escalation (a group, a summary)
        source = n.data.get("sourceId")
        t = self.tenants.get(n.tenant) if n.tenant is not None else None
        if t is None or not source:
            return n.tenant is None
        async with t.lock:
            try:
                return await self._claim_follow_up(t, source, n, step)
            except C8yError as exc:
                log.warning("tenant %s: follow-up of %s held back: %s", t.id, n.alert_id, exc)
                return False

    async def _claim_follow_up(self, t: Tenant, source: str, n: Notification, step: int) -> bool:
        st = await t.sources.load(source)
        if n.alert_id not in st.alerts:  # resolved meanwhile, through another replica
            self.noise.acks.closed(n.alert_id)
            return False
        if st.owner not in (None, self.consumer) and await t.presence.alive(st.owner, self.clock.time()):
            return False  # its source is handled by another replica, which is up
        changed = st.owner != self.consumer  # the replica that had it is gone: this one follows up now
        st.owner = self.consumer
        if step >= 0:
            e = st.escalated.get(n.alert_id)
            if e is None or e.get("episode") != n.episode:
                e = st.escalated[n.alert_id] = {"episode": n.episode, "steps": []}
            if step in e["steps"]:
                return False
            e["steps"].append(step)
            changed = True
        if changed:
            await t.sources.save(source, st)
        return True

    def _acknowledged_on_platform(self, tenant: str, alarm_id: str, now: float) -> None:
        """Someone acknowledged the alarm on the platform: its alert's repeats and escalation stop too."""
        for n in list(self.noise.open_alerts().values()):
            if n.tenant == tenant and n.data.get("alarmId") == alarm_id and not self.noise.acks.acked(n):
                self.noise.ack(n.alert_id, "cumulocity", "acknowledged on the platform", now)

    async def acknowledge(self, n: Notification, ack: Ack) -> dict[str, Any] | None:
        """The hook of ``POST /v1/alerts/{id}/ack``: keep the acknowledgement in the tenant (with the
        alert's source), and set the alert's platform alarm to ACKNOWLEDGED."""
        await self._keep_ack(n, ack)
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

    async def _keep_ack(self, n: Notification, ack: Ack) -> None:
        t = self.tenants.get(n.tenant) if n.tenant is not None else None
        source = n.data.get("sourceId")
        if t is None or not source:
            return
        async with t.lock:
            try:
                st = await t.sources.load(source)
                if n.alert_id in st.alerts:
                    st.acks[n.alert_id] = {
                        "episode": ack.episode,
                        "by": ack.by,
                        "comment": ack.comment,
                        "time": ack.time,
                    }
                    await t.sources.save(source, st)
            except C8yError as exc:  # it stands here, and is kept with the source's next frame
                log.warning("tenant %s: keeping the acknowledgement of %s failed: %s", t.id, n.alert_id, exc)

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
