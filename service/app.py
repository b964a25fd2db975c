"""Wires the parts into one running service: sources → rule engine → notify pipeline → providers."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import re
import uuid
from pathlib import Path
from types import TracebackType

import aiomqtt
from aiohttp import web

from registrations.auth import Authenticator, KeyRing, Principal, digest
from registrations.directory import Registry, StoreDirectory
from registrations.http import BODY_TIMEOUT_KEY, RegistrationApi
from registrations.model import Registration
from registrations.pg_store import PgRegistrationStore
from registrations.sqlite_store import SqliteRegistrationStore
from registrations.store import RegistrationStore
from registrations.writer import BatchWriter
from rules import templates
from rules.engine import EngineState, RuleEngine, RuleSet, Transition, touched_by_event
from rules.event import Event
from rules.loader import CUMULOCITY_EXAMPLES, EXAMPLES_DIR, RuleLoadError, load_rules
from service import __version__
from service.alert_store import AlertStore
from service.clock import Clock, SystemClock
from service.cluster.election import RoleChange
from service.cluster.gate import ClusterGate
from service.cluster.leader_jobs import LeaderJobs, local_replicator
from service.cluster.ledger_store import LedgerStore
from service.cluster.node import ClusterNode
from service.cluster.records import Presence
from service.cluster.replica import HybridClock, ReplicaStore, Replicator
from service.cluster.replicated_noise import ReplicatedNoise
from service.cluster.replicated_registrations import ReplicatedWriter
from service.cluster.replicated_silences import ReplicatedSilences
from service.config import Config
from service.cumulocity.env import PlatformEnv
from service.cumulocity.runtime import CumulocityRuntime
from service.embedded_broker import LOCAL_HOSTS, EmbeddedBroker, broker_answers
from service.http.alerts import add_alert_routes
from service.http.console import Console, ReloadRecord
from service.http.events import EventsApi
from service.http.limits import ClientConnections, LimitedSite, MalformedRequestLog
from service.http.openapi import document
from service.http.push import PushApi
from service.http.reports import add_report_routes
from service.http.server import admin_only, build_app
from service.http.webpush import add_webpush_routes
from service.journal import Journal
from service.loopwatch import LoopWatch
from service.metrics import Metrics
from service.notify.dispatch import Dispatcher
from service.notify.explain import Explainer
from service.notify.model import Delivery
from service.notify.noise import NoiseControl, QuietHours, RateLimit, Silence
from service.notify.pipeline import Pipeline
from service.notify.stages import DedupStage, NotificationLog, TargetStage
from service.notify.webhook import WebhookDecider
from service.outbox import Outbox
from service.providers import plugins
from service.providers.base import Provider
from service.providers.registry import build_providers
from service.providers.webpush import WebPushConfig
from service.ratelimit import RateLimitedLog
from service.reload import watch
from service.sources.base import Source
from service.sources.mqtt import MqttIntake
from service.supervisor import Supervisor

log = logging.getLogger("tocsin")


def rule_paths(config: Config, on_cumulocity: bool = False) -> list[Path]:
    """The configured rule files; none: the examples (on Cumulocity, the alarm app's rule)."""
    return list(config.rules.paths) or [CUMULOCITY_EXAMPLES if on_cumulocity else EXAMPLES_DIR]


def mqtt_enabled(config: Config, on_cumulocity: bool) -> bool:
    """Auto: on, except on Cumulocity (no broker there) unless a broker host was configured."""
    if config.mqtt.enabled != "auto":
        return config.mqtt.enabled == "on"
    return not on_cumulocity or "host" in config.mqtt.model_fields_set


def keyring(config: Config) -> KeyRing:
    """API keys by SHA-256 digest; the plain keys are not kept."""
    keys = {}
    for k in config.api.keys:
        hashed = k.api_key_sha256 or digest(k.api_key.get_secret_value())  # type: ignore[union-attr]
        keys[hashed] = Principal(k.name, admin=k.role == "admin", app=k.app)
    return KeyRing(keys, open_loopback=config.http.host in LOCAL_HOSTS)


def open_store(config: Config) -> RegistrationStore:
    """The deployment's registrations: PostgreSQL when ``store.url`` names one, else the SQLite file."""
    if config.store.url is not None:
        password = config.store.password.get_secret_value() if config.store.password else None
        return PgRegistrationStore(config.store.url, password, config.store.pool_size)
    return SqliteRegistrationStore(config.store_path)


async def _not_attached(raw: bytes) -> None:
    raise RuntimeError("the replicator publishes through ClusterNode.attach")


class Service:
    """``async with Service(config) as s: await s.wait()``: starts everything on enter, stops it on exit."""

    def __init__(
        self,
        config: Config,
        clock: Clock | None = None,
        ruleset: RuleSet | None = None,
        providers: dict[str, Provider] | None = None,
        platform: PlatformEnv | None = None,
    ) -> None:
        """``platform``: the Cumulocity microservice environment (``platform_of``), when running there."""
        self.config = config
        self.clock = clock or SystemClock()
        self.metrics = Metrics()
        # Every long-running task runs under it: a crash is logged, counted, restarted (service/supervisor.py)
        self.supervisor = Supervisor(self.metrics.internal_errors, self.clock)
        templates.on_error = self.metrics.template_errors.inc  # one service a process
        self.platform = platform if config.cumulocity.enabled != "off" else None
        self.ruleset = ruleset or load_rules(rule_paths(config, self.platform is not None))
        self._evict_warned: set[str] = set()
        self.engine = self._engine(self.ruleset)
        # The one writer of the event path: outbox rows, alert state and the MQTT acknowledgement record of
        # a batch commit together, in a thread (service/journal.py).
        self.journal = Journal(config.store_path, config.store.synchronous)
        # Open alerts and pending timers survive a restart (service/alert_store.py).
        self.alert_store = AlertStore(self.journal, legacy=config.data_dir / "alerts.db")
        self.state: EngineState = self.alert_store.restore({c.id for c in self.ruleset.rules})
        self.alert_store.track(lambda: self.state)
        self.store: RegistrationStore = open_store(config)
        self.writer = BatchWriter(self.store, self.clock.time)
        # The deployment's own registrations; a Cumulocity tenant's are added while it is subscribed.
        self.stores = StoreDirectory(Registry(self.store, self.writer))
        self.providers: dict[str, Provider] = providers or build_providers(config)
        self.outbox = Outbox(self.journal)
        self.dispatcher = Dispatcher(
            self.providers,
            self.stores,
            self.metrics,
            self.clock,
            config.notify.queue_size,
            config.notify.max_attempts,
            outbox=self.outbox,
            retry_base_s=config.delivery.retry_base_s,
            retry_cap_s=config.delivery.retry_cap_s,
            pause_probe_s=config.delivery.pause_probe_s,
            workers=config.delivery.workers,
            max_waiting=config.delivery.max_waiting,
        )
        self.webhook = WebhookDecider()
        self._noise_changed = asyncio.Event()
        self.explainer = Explainer(self.clock.time)  # why notifications were held back (stage, reason)
        qh, rl = config.notify.quiet_hours, config.notify.rate_limit
        self.noise = NoiseControl(
            QuietHours(qh.start, qh.end, qh.timezone) if qh else None,
            RateLimit(rl.max, rl.per_s) if rl else None,
            on_schedule=self._noise_changed.set,
            on_held=self.metrics.suppressed.inc,
            explain=self.explainer.held,
        )
        self.noise.acks.live = self._firing
        for stored in self.alert_store.load_silences():  # silences survive a restart too
            try:
                self.noise.silences.add(Silence.from_json(stored))
            except (KeyError, TypeError, ValueError, re.error) as exc:
                log.warning("skipping a damaged stored silence: %s", exc)
        self.noise.silences.on_change = lambda s: self.alert_store.save_silences([x.to_json() for x in s])
        self.pipeline = Pipeline(
            DedupStage(NotificationLog(config.notify.dedup_window_s, config.notify.dedup_max)),
            TargetStage(self.stores),
            self.dispatcher,
            self.metrics,
            self.noise,
            self.webhook,
        )
        self.pipeline.explain = self.explainer.held
        self.last_reload: ReloadRecord | None = None
        self.keys = keyring(config)
        self.auth: Authenticator = self.keys
        self.cumulocity: CumulocityRuntime | None = None
        if self.platform is not None:
            store_kind = "sqlite" if config.registrations.store == "sqlite" else "cumulocity"
            self.cumulocity = CumulocityRuntime(
                self.platform,
                config.cumulocity,
                store_kind,
                config.data_dir,
                self.stores,
                self.on_event,
                self.commit,
                self.noise,
                self.metrics,
                self.clock,
                self.keys,
                spawn=self.supervisor.spawn,
                host=self,
                instance=config.instance.id,
            )
            self.auth = self.cumulocity.authenticator
        self.mqtt_enabled = mqtt_enabled(config, self.platform is not None)
        rejected = self.metrics.api_rejected
        self.registration_api = RegistrationApi(
            self.stores,
            self.auth,
            lambda route, status: rejected.inc(route, str(status)),
            self.cumulocity.user_exists if self.cumulocity is not None else None,
            plugins.target_check(config.providers),
        )
        self.push_api = PushApi(
            self.pipeline, self.auth, self.clock, lambda route, status: rejected.inc(route, str(status))
        )
        if self.cumulocity is not None:
            self.push_api.load_alarm = self.cumulocity.alarm
        self.source = MqttIntake(
            config.mqtt,
            config.client_id,
            self.ruleset.subscriptions(),
            self.metrics,
            self.clock,
            self.journal,
        )
        # Every source feeds the same sink (``handle`` then ``commit``); the event path names none of them.
        self.sources: list[Source] = [self.source] if self.mqtt_enabled else []
        self.events_api = EventsApi(
            self, self.auth, self.clock, lambda r, st: rejected.inc(r, str(st)), config.mqtt.event_id_field
        )
        self.cluster: ClusterNode | None = None
        self.replicator: Replicator | None = None
        self.silence_writer: ReplicatedSilences | None = None
        self.noise_writer: ReplicatedNoise | None = None
        self.gate: ClusterGate | None = None
        if config.cluster.name:
            me = Presence(config.instance.id, config.cluster.priority, uuid.uuid4().hex, __version__)
            self.ledger_store = LedgerStore(
                self.journal, config.data_dir / "cluster.db", config.cluster.ledger_retention_s
            )
            self.cluster = ClusterNode(
                config.mqtt,
                config.cluster.name,
                me,
                config.cluster.timing,
                self.clock,
                config.cluster.ledger_retention_s,
            )
            self.gate = ClusterGate(
                self.cluster, self.pipeline, self.metrics, self.clock, config.cluster.buffer_window_s
            )
            self.cluster.on_change = self.gate.on_change
            loaded = self.ledger_store.load_into(self.cluster.ledger, self.clock.time())
            self.cluster.ledger.on_record = self.ledger_store.save
            if loaded:
                log.info("cluster ledger: %d records restored from %s", loaded, config.store_path)
            self.dispatcher.guard = self.gate
            # Registrations written through any instance reach every instance (service/cluster/replica.py).
            self.replicator = Replicator(
                config.instance.id,
                ReplicaStore(config.data_dir / "state.jsonl"),
                HybridClock(lambda: int(self.clock.time() * 1000)),
                _not_attached,
            )
            self.cluster.attach(self.replicator)
            if (
                not config.store.postgresql
            ):  # PostgreSQL is shared already: every instance reads the same rows
                self.stores.default.writer = ReplicatedWriter(self.writer, self.replicator)
            self.silence_writer = ReplicatedSilences(self.noise.silences, self.replicator)
            # Acknowledgements, cooldowns, repeats and escalations: the same on every instance.
            self.noise_writer = ReplicatedNoise(self.noise, self.replicator)
            self.gate.barrier = self.noise_writer.flushed
            gate = self.gate
            self.jobs = LeaderJobs(
                self.replicator,
                self.pipeline,
                self.dispatcher,
                self.stores,
                self.clock,
                lambda: gate.leading,
                self.outbox.written,
            )
            self.gate.jobs = self.jobs
            self.cluster.on_change = self._role_changed
        else:
            # Scheduled pushes survive a restart here too: the same records, in this instance's state.jsonl.
            self.jobs = LeaderJobs(
                local_replicator(config.instance.id, config.data_dir / "state.jsonl", self.clock),
                self.pipeline,
                self.dispatcher,
                self.stores,
                self.clock,
                lambda: True,
                self.outbox.written,
            )
        self.push_api.jobs = self.jobs
        self.http_port: int | None = None
        self._connections: ClientConnections | None = None
        self.http_app: web.Application | None = None
        self._stack = contextlib.AsyncExitStack()
        self._tasks: list[asyncio.Task[None]] = []
        self._background: list[asyncio.Task[None]] = []
        self._timer_changed = asyncio.Event()
        self._stopped = asyncio.Event()
        self.metrics.gauge(
            "tocsin_mqtt_connected",
            "1 while connected to the MQTT broker.",
            lambda: float(self.source.is_connected),
        )
        self.metrics.gauge(
            "tocsin_dispatch_queue_depth",
            "Deliveries waiting for a provider.",
            lambda: float(self.dispatcher.queue.qsize()),
        )
        self.metrics.gauge(
            "tocsin_deliveries_parked",
            "Deliveries waiting for a paused provider credential.",
            lambda: float(self.dispatcher.parked_count),
        )
        self.metrics.gauge(
            "tocsin_open_alerts",
            "Firing alerts, as GET /v1/alerts lists them.",
            lambda: float(len(self.noise.open_alerts())),
        )
        self.loop_watch = LoopWatch(self.metrics.loop_stalls)
        self.metrics.gauge(
            "tocsin_event_loop_stall_max_seconds",
            "The longest the event loop ran a timer late since start (service/loopwatch.py).",
            lambda: self.loop_watch.max_s,
        )
        self.metrics.gauge(
            "tocsin_event_loop_stall_busy_max_seconds",
            "The longest lateness of the event loop while the process was on the CPU: the part of a stall"
            " tocsin's own work caused, not waiting for a core (service/loopwatch.py).",
            lambda: self.loop_watch.max_busy_s,
        )
        self.metrics.gauge(
            "tocsin_gc_pause_max_seconds",
            "The longest pass of Python's cyclic garbage collector since start (service/loopwatch.py).",
            lambda: self.loop_watch.max_gc_s,
        )
        self.metrics.gauge(
            "tocsin_scheduled_pushes",
            "Scheduled pushes not yet handed to the providers.",
            lambda: float(len(self.jobs.pushes)),
        )
        self.metrics.gauge(
            "tocsin_tracked_alerts",
            "Alerts the rules track: pending, firing or watched.",
            lambda: float(len(self.state.alerts)),
        )

    def http_connections_open(self) -> dict[str, int]:
        """Open HTTP connections per client address."""
        return dict(self._connections.open) if self._connections is not None else {}

    def _firing(self, alert_id: str) -> bool:
        alert = self.state.alerts.get(alert_id)
        return alert is not None and alert.status in ("firing", "clearing")

    def _engine(self, ruleset: RuleSet) -> RuleEngine:
        return RuleEngine(ruleset, max_tracked=self.config.rules.max_tracked_per_rule, on_evict=self._evicted)

    def _evicted(self, rule: str, limit: int) -> None:
        self.metrics.rule_evictions.inc(rule)
        if rule not in self._evict_warned and len(self._evict_warned) < 10_000:
            self._evict_warned.add(rule)
            log.warning(
                "rule %s tracks %d devices (rules.max_tracked_per_rule): it forgets the least recently seen"
                " from now on (counted in tocsin_rule_devices_evicted; this is said once)",
                rule,
                limit,
            )

    # -- the event path -----------------------------------------------------------------------------------
    async def handle(self, event: Event) -> None:
        """The sink of every source (``service.sources.base.EventSink``)."""
        await self.on_event(event)

    async def commit(self) -> None:
        """Makes everything handled so far durable: outbox rows, alert state, acknowledgement records."""
        await self.journal.commit()

    async def on_event(self, event: Event) -> None:
        before = self.engine.next_deadline(self.state) if self.state.timers else None
        bucket = touched_by_event.get()
        if bucket is None:
            self.state, transitions = self.engine.evaluate(event, self.state, event.time)
        else:  # the alerts this event touched, apart from those touched since the last commit
            pending, self.state.touched = self.state.touched, set()
            self.state, transitions = self.engine.evaluate(event, self.state, event.time)
            bucket |= self.state.touched
            pending |= self.state.touched
            self.state.touched = pending
        for t in transitions:
            await self._route(t)
        if self.state.timers and self.engine.next_deadline(self.state) != before:
            self._timer_changed.set()

    async def _route(self, transition: Transition) -> None:
        """Single instance: straight to the pipeline. In a cluster the gate decides (leader sends, followers
        buffer)."""
        if self.gate is None:
            await self.pipeline.handle(transition, self.clock.time())
        else:
            await self.gate.route(transition, self.clock.time())

    def _role_changed(self, change: RoleChange) -> None:
        assert self.gate is not None
        self.gate.on_change(change)
        self.jobs.wake()  # a new leader sends what is due
        self._noise_changed.set()  # only the leader runs noise control's timers

    def timers_changed(self) -> None:
        """A rule timer was added from outside the event path (alerts restored from a Cumulocity tenant)."""
        self._timer_changed.set()

    def cluster_state(self) -> dict[str, object]:
        if self.cluster is None:
            return {"enabled": False, "role": "leader", "reason": "single instance: no cluster configured"}
        e, now = self.cluster.election, self.clock.monotonic()
        return {
            "enabled": True,
            "cluster": self.config.cluster.name,
            "instance": self.config.instance.id,
            "connected": self.cluster.connected.is_set(),
            "role": e.role,
            "term": e.term,
            "leader": e.leader,
            "may_send": self.cluster.may_send(),
            "lease_age_s": round(e.lease_age(now), 3),
            "echo_age_s": None if e.last_echo_at is None else round(now - e.last_echo_at, 3),
            "cluster_backlog": self.cluster.backlog(),
            "members": [
                {"id": p.id, "priority": p.priority, "rank": i, "version": p.version}
                for i, p in enumerate(e.membership.ranked())
            ],
            "ledger_entries": len(self.cluster.ledger),
            "buffered_transitions": len(self.gate.buffer) if self.gate else 0,
            "takeovers": e.takeovers,
            "leader_since": None
            if e.leader_since is None or e.role != "leader"
            else round(self.clock.time() - (now - e.leader_since), 3),
        }

    async def _timers(self) -> None:
        """Fires rule timers ('for', 'not seen for') at their deadline; a nearer new one wakes it early."""
        while True:
            deadline = self.engine.next_deadline(self.state)
            wait = 3600.0 if deadline is None else max(0.0, deadline - self.clock.time())
            self._timer_changed.clear()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that arrives just as the
            # event is set, and the service then never stops
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._timer_changed.wait()
            self.state, transitions = self.engine.tick(self.state, self.clock.time())
            for t in transitions:
                try:
                    await self._route(t)
                except Exception:
                    self.metrics.internal_errors.inc("rule-timers")
                    log.exception("handling a timer transition of rule %s failed", t.rule)
            if transitions or self.state.touched:
                try:
                    await self.commit()
                except Exception:
                    self.metrics.internal_errors.inc("rule-timers")
                    log.exception(
                        "committing the state after rule timers failed; it is written with the next"
                    )

    async def _noise_timers(self) -> None:
        """Sends what noise control scheduled: group flushes, repeats, escalations, rate-limit summaries."""
        while True:
            # In a cluster only the leader: a follower keeps what is due for a takeover (its keys are the same
            # on every instance, and the send ledger skips what the old leader sent).
            leading = self.cluster is None or self.cluster.is_leader
            deadline = self.noise.next_deadline() if leading else None
            wait = 3600.0 if deadline is None else max(0.0, deadline - self.clock.time())
            self._noise_changed.clear()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that arrives just as the
            # event is set, and the service then never stops
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._noise_changed.wait()
            if not (self.cluster is None or self.cluster.is_leader):
                continue
            now = self.clock.time()
            due = self.noise.due(now)
            try:
                for n in due.notifications:
                    if self.cumulocity is not None and not await self.cumulocity.may_follow_up(n):
                        continue  # its tenant's source is handled by another replica, or it is resolved
                    await self.pipeline.send(n, now)
                for n, registration in due.deliveries:
                    await self.dispatcher.submit(Delivery(n, registration))
            except Exception:
                self.metrics.internal_errors.inc("noise-timers")
                log.exception("sending scheduled notifications failed")

    def rule_paths(self) -> list[Path]:
        return rule_paths(self.config, self.platform is not None)

    # -- rule reloads -------------------------------------------------------------------------------------
    def reload_rules(self) -> list[str]:
        """Load the rule files again; on errors keep the running rules and return the errors."""
        try:
            ruleset = load_rules(rule_paths(self.config, self.platform is not None))
        except RuleLoadError as exc:
            self.metrics.rule_reloads.inc("refused")
            errors = [str(e) for e in exc.errors]
            self.last_reload = ReloadRecord(self.clock.time(), "refused", len(self.ruleset.rules), errors)
            log.error("new rules refused, keeping the %d running ones:\n%s", len(self.ruleset.rules), exc)
            return errors
        # Alerts of rules that stay keep their state; those of removed rules are dropped at their next timer.
        self.ruleset, self.engine = ruleset, self._engine(ruleset)
        self.engine.forget_rules(self.state)
        self.source.set_topics(ruleset.subscriptions())
        self._timer_changed.set()
        self.metrics.rule_reloads.inc("loaded")
        self.last_reload = ReloadRecord(self.clock.time(), "loaded", len(ruleset.rules))
        log.info("rules reloaded: %d rules", len(ruleset.rules))
        return []

    # -- health -------------------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Events can be received (sources connected, tenants read) and no supervised task is down."""
        sources_ok = all(source.ready for source in self.sources)
        return sources_ok and (self.cumulocity is None or self.cumulocity.ready) and not self.supervisor.down

    def health(self) -> dict[str, object]:
        degraded = {name: reason for name, reason in self.dispatcher.config_errors.items()}
        for name, p in self.providers.items():
            if p.degraded:
                degraded[name] = p.degraded
        broker = self.source.health()
        store_error = self.store.error if isinstance(self.store, PgRegistrationStore) else None
        status = "ok" if self.ready and not degraded and store_error is None else "degraded"
        found: dict[str, object] = {
            "status": status,
            "version": __version__,
            "instance": self.config.instance.id,
            "broker": broker if self.mqtt_enabled else {"enabled": False},
            "providers": {n: {"degraded": degraded.get(n)} for n in self.providers},
            "rules": len(self.ruleset.rules),
            "store": {
                "kind": "postgresql" if self.config.store.postgresql else "sqlite",
                "error": store_error,
            },
            "down": self.supervisor.down,  # task -> why: crashed and waiting to restart, or gave up
            "tasks": self.supervisor.states(),
        }
        if self.cumulocity is not None:
            found["cumulocity"] = self.cumulocity.health()
        return found

    # -- lifecycle ----------------------------------------------------------------------------------------
    async def __aenter__(self) -> Service:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def _start(self) -> None:
        cfg = self.config
        self._stack.push_async_callback(self.store.close)
        self._stack.push_async_callback(self.writer.close)
        # Runs after everything else stopped: commits what is left (final states, alert state), then closes.
        self._stack.callback(self.journal.close)
        self._stack.callback(self.outbox.close)
        self._stack.push_async_callback(self.supervisor.close)  # whatever is still running, after the rest
        if isinstance(self.store, PgRegistrationStore):
            await self.store.open()  # connects and applies the migrations not applied yet
        self.journal.start()
        now = self.clock.time()
        seeds = [
            Registration(s.provider, s.token, user_id=s.user_id, tags=s.tags) for s in cfg.registrations.seed
        ]
        if seeds:
            await self.store.upsert_many(seeds, now)
        local = self.mqtt_enabled and cfg.mqtt.embedded_broker == "auto" and cfg.mqtt.host in LOCAL_HOSTS
        # A TLS broker is never the embedded one (that has no TLS listener), whatever answers on the port.
        local = local and not cfg.mqtt.tls.enabled
        if local and not await broker_answers(cfg.mqtt.host, cfg.mqtt.port):
            await self._stack.enter_async_context(EmbeddedBroker(cfg.mqtt.host, cfg.mqtt.port))
            if cfg.mqtt.protocol == "auto":
                self.source.protocol = "3.1.1"  # amqtt speaks 3.1.1 only
        spawn = self.supervisor.spawn
        self.dispatcher.start(spawn)
        self._stack.push_async_callback(self._close_providers)
        self._stack.push_async_callback(self.webhook.close)
        self._stack.push_async_callback(self.dispatcher.stop)
        self._stack.push_async_callback(self.push_api.close)
        self._background = [
            # once: a second run would queue the recovered deliveries twice
            spawn("outbox-recovery", self._recover, forever=False, restart=False),
            spawn("report-retention", self._purge_reports),
            spawn("outbox-checkpoint", self._checkpoint_outbox),
            spawn("loop-watch", self.loop_watch.run),
        ]
        self._stack.push_async_callback(self._cancel_background)
        if cfg.http.enabled:
            if self.keys.open_loopback:
                log.warning("no API keys configured (api.keys): callers on the loopback interface are admin")
            routes = [*self.registration_api.routes(), *self.push_api.routes(), *self.events_api.routes()]
            self.http_app = build_app(self, self.metrics, routes, document())
            add_alert_routes(
                self.http_app,
                self.noise,
                self.clock,
                self.cumulocity.acknowledge if self.cumulocity is not None else None,
                self.silence_writer,
                self.noise_writer,
            )
            add_report_routes(self.http_app, self.outbox, self.explainer)
            add_webpush_routes(self.http_app, cfg.providers.get(WebPushConfig))
            Console(self).add_to(self.http_app)
            self.http_app.middlewares.append(admin_only(self.auth))
            runner = web.AppRunner(
                self.http_app,
                access_log=None,
                keepalive_timeout=cfg.http.keepalive_s,
                logger=MalformedRequestLog(self.clock, self.metrics.http_malformed.inc),
            )
            self.http_app[BODY_TIMEOUT_KEY] = cfg.http.body_timeout_s
            await runner.setup()
            self._stack.push_async_callback(runner.cleanup)
            connections = self._connections = ClientConnections(
                cfg.http.max_connections_per_client,
                self.metrics.http_refused.inc,
                RateLimitedLog(logging.getLogger("tocsin.http"), self.clock, 60.0),
            )
            site = LimitedSite(runner, cfg.http.host, cfg.http.port, connections)
            await site.start()
            sockets = site.sockets
            self.http_port = sockets[0].getsockname()[1] if sockets else cfg.http.port
            log.info(
                "HTTP API on http://%s:%d (health: /health, metrics: /metrics)", cfg.http.host, self.http_port
            )
        self._tasks = [
            spawn("rule-timers", self._timers),
            spawn("noise-timers", self._noise_timers),
            spawn("leader-jobs", self.jobs.run),
        ]
        for source in self.sources:
            self._tasks.append(spawn(f"source-{source.name}", lambda s=source: s.run(self), forever=False))  # type: ignore[misc]
        if not self.mqtt_enabled:
            log.info("MQTT source off (mqtt.enabled)")
        if self.cluster is not None:
            self._tasks.append(spawn("cluster", self.cluster.run, forever=False))  # ends when it left
        if self.cumulocity is not None:
            await self._stack.enter_async_context(self.cumulocity)
        if cfg.rules.watch_s > 0 and cfg.rules.paths:
            paths, interval = list(cfg.rules.paths), cfg.rules.watch_s
            self._tasks.append(spawn("rule-watch", lambda: watch(paths, interval, self.reload_rules)))
        self._stack.push_async_callback(self._cancel_tasks)
        if self.cluster is not None:
            self._stack.push_async_callback(self._leave_cluster)  # hand over, then stop
        self._stack.callback(self.loop_watch.disarm)
        self._stack.push_async_callback(self._stop_sources)  # runs first on exit: take nothing new
        # What is loaded at start (libraries, rules, templates) lives as long as the process: keep it out of
        # the collector's full passes, which otherwise stall the event path for tens of milliseconds.
        gc.collect()
        gc.freeze()
        self.loop_watch.arm()  # what it measures from now on is the running service
        log.info(
            "tocsin %s started as %s with %d rules; data in %s",
            __version__,
            cfg.instance.id,
            len(self.ruleset.rules),
            cfg.store_path,
        )

    async def _stop_sources(self) -> None:
        """Graceful stop: each source finishes, commits and acknowledges its batch and disconnects; then
        the deliveries already queued go out (for a while), so that nothing is left to resend at the next
        start."""
        await asyncio.gather(*(source.stop() for source in self.sources), return_exceptions=True)
        if self.cumulocity is not None:
            await self.cumulocity.stop_streams()  # no new frames; the one in hand is finished and acked
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.delivery.drain_s):
                await self.dispatcher.drain()
        if self.dispatcher.queue.qsize():
            log.warning(
                "%d deliveries still queued at stop: they stay pending and go out at the next start",
                self.dispatcher.queue.qsize(),
            )

    async def _leave_cluster(self) -> None:
        assert self.cluster is not None and self.gate is not None
        if not await self.gate.drain(timeout=3.0):
            log.warning("sends still under way after 3 s: the next leader will treat them as ambiguous")
        try:
            await asyncio.wait_for(self.cluster.leave(), 5)
        except (TimeoutError, aiomqtt.MqttError) as exc:
            log.warning("could not hand over leadership cleanly: %s", exc)

    async def _recover(self) -> None:
        """After a restart: send again every outbox row still pending (never sent, or never answered)."""
        now = self.clock.time()
        pending = list(self.outbox.pending())
        resent = 0
        for n, provider, token, attempts in pending:
            store = self.stores.store(n.tenant)
            reg = await store.get(provider, token) if store is not None else None
            delivery = Delivery(n, reg or Registration(provider, token), attempts)
            if reg is None or reg.state != "active":
                self.outbox.finish(delivery, "failed", "registration_gone", now)
                continue
            await self.dispatcher.resubmit(delivery)
            resent += 1
        if pending:
            log.info("outbox: %d pending deliveries from before the restart queued again", resent)

    async def _purge_reports(self) -> None:
        retention = self.config.delivery.report_retention_s
        while True:
            try:
                removed = self.outbox.purge(self.clock.time() - retention)
                if removed:
                    log.info("forgot the delivery reports of %d notifications past retention", removed)
            except Exception:
                self.metrics.internal_errors.inc("report-retention")
                log.exception("purging old delivery reports failed")
            await asyncio.sleep(min(3600.0, retention / 10))

    async def _checkpoint_outbox(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            running = asyncio.ensure_future(asyncio.to_thread(self.outbox.checkpoint))
            try:
                await asyncio.shield(running)
            except asyncio.CancelledError:
                # Stopping: the thread must be done before the outbox's connection closes under it (that
                # crashed the process with a segmentation fault).
                await asyncio.wait([running])
                raise
            except Exception:
                self.metrics.internal_errors.inc("outbox-checkpoint")
                log.exception("checkpointing the outbox failed")

    async def _cancel_background(self) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    async def _cancel_tasks(self) -> None:
        # Cancel again while a task keeps running: on Python 3.11 asyncio.wait_for (used inside aiomqtt's
        # connect) can swallow a cancel that arrives as the connection completes, and stopping then hung.
        pending = [t for t in self._tasks if not t.done()]
        while pending:
            for task in pending:
                task.cancel()
            _, still = await asyncio.wait(pending, timeout=1.0)
            pending = list(still)
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _close_providers(self) -> None:
        for provider in self.providers.values():
            await provider.close()

    def stop(self) -> None:
        self._stopped.set()

    async def wait(self) -> None:
        """Until ``stop()``. A task that dies does not end it: the supervisor restarts it."""
        await self._stopped.wait()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()
        log.info("stopped")
