"""Wires the parts into one running service: sources → rule engine → notify pipeline → providers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from types import TracebackType

from aiohttp import web

from registrations.model import Registration
from registrations.sqlite_store import SqliteRegistrationStore
from rules.engine import EngineState, RuleEngine, RuleSet
from rules.event import Event
from rules.loader import EXAMPLES_DIR, load_rules
from service import __version__
from service.api import build_app
from service.clock import Clock, SystemClock
from service.config import Config
from service.embedded_broker import LOCAL_HOSTS, EmbeddedBroker, broker_answers
from service.metrics import Metrics
from service.notify.dispatch import Dispatcher
from service.notify.model import Delivery
from service.notify.pipeline import Pipeline
from service.notify.stages import DedupStage, NotificationLog, TargetStage
from service.outbox import Outbox
from service.providers.base import Provider
from service.providers.registry import build_providers
from service.report_api import add_report_routes
from service.sources.mqtt import MqttSource

log = logging.getLogger("tocsin")


def rule_paths(config: Config) -> list[Path]:
    return list(config.rules.paths) or [EXAMPLES_DIR]


class Service:
    """``async with Service(config) as s: await s.wait()``: starts everything on enter, stops it on exit."""

    def __init__(
        self,
        config: Config,
        clock: Clock | None = None,
        ruleset: RuleSet | None = None,
        providers: dict[str, Provider] | None = None,
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.metrics = Metrics()
        self.ruleset = ruleset or load_rules(rule_paths(config))
        self.engine = RuleEngine(self.ruleset)
        self.state = EngineState()
        self.store = SqliteRegistrationStore(config.store_path)
        self.providers: dict[str, Provider] = providers or build_providers(config)
        self.outbox = Outbox(config.store_path)
        self.dispatcher = Dispatcher(
            self.providers,
            self.store,
            self.metrics,
            self.clock,
            config.notify.queue_size,
            config.notify.max_attempts,
            outbox=self.outbox,
            retry_base_s=config.delivery.retry_base_s,
            retry_cap_s=config.delivery.retry_cap_s,
            pause_probe_s=config.delivery.pause_probe_s,
            workers=config.delivery.workers,
        )
        self.pipeline = Pipeline(
            DedupStage(NotificationLog(config.notify.dedup_window_s)),
            TargetStage(self.store),
            self.dispatcher,
            self.metrics,
        )
        self.source = MqttSource(
            config.mqtt,
            config.client_id,
            self.ruleset.subscriptions(),
            self.on_event,
            self.metrics,
            self.clock,
        )
        self.http_port: int | None = None
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
            "tocsin_open_alerts", "Alerts pending, firing or watched.", lambda: float(len(self.state.alerts))
        )

    # -- the event path -----------------------------------------------------------------------------------
    async def on_event(self, event: Event) -> None:
        before = self.engine.next_deadline(self.state) if self.state.timers else None
        self.state, transitions = self.engine.evaluate(event, self.state, event.time)
        for t in transitions:
            await self.pipeline.handle(t, self.clock.time())
        if self.state.timers and self.engine.next_deadline(self.state) != before:
            self._timer_changed.set()

    async def _timers(self) -> None:
        """Fires rule timers ('for', 'not seen for') at their deadline; a nearer new one wakes it early."""
        while True:
            deadline = self.engine.next_deadline(self.state)
            wait = 3600.0 if deadline is None else max(0.0, deadline - self.clock.time())
            self._timer_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._timer_changed.wait(), timeout=wait)
            self.state, transitions = self.engine.tick(self.state, self.clock.time())
            for t in transitions:
                try:
                    await self.pipeline.handle(t, self.clock.time())
                except Exception:
                    self.metrics.internal_errors.inc("timers")
                    log.exception("handling a timer transition of rule %s failed", t.rule)

    # -- health -------------------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.source.is_connected

    def health(self) -> dict[str, object]:
        degraded = {name: reason for name, reason in self.dispatcher.config_errors.items()}
        for name, p in self.providers.items():
            if p.degraded:
                degraded[name] = p.degraded
        broker: dict[str, object] = {
            "connected": self.source.is_connected,
            "host": self.config.mqtt.host,
            "port": self.config.mqtt.port,
        }
        if self.source.last_error:
            broker["error"] = self.source.last_error
        status = "ok" if self.source.is_connected and not degraded else "degraded"
        return {
            "status": status,
            "version": __version__,
            "instance": self.config.instance.id,
            "broker": broker,
            "providers": {n: {"degraded": degraded.get(n)} for n in self.providers},
            "rules": len(self.ruleset.rules),
        }

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
        self._stack.callback(self.store.close)
        self._stack.callback(self.outbox.close)
        now = self.clock.time()
        for seed in cfg.registrations.seed:
            self.store.upsert(
                Registration(seed.provider, seed.token, user_id=seed.user_id, tags=seed.tags), now
            )
        local = cfg.mqtt.embedded_broker == "auto" and cfg.mqtt.host in LOCAL_HOSTS
        if local and not await broker_answers(cfg.mqtt.host, cfg.mqtt.port):
            await self._stack.enter_async_context(EmbeddedBroker(cfg.mqtt.host, cfg.mqtt.port))
        self.dispatcher.start()
        self._stack.push_async_callback(self._close_providers)
        self._stack.push_async_callback(self.dispatcher.stop)
        self._background = [
            asyncio.create_task(self._recover(), name="outbox-recovery"),
            asyncio.create_task(self._purge_reports(), name="report-retention"),
        ]
        self._stack.push_async_callback(self._cancel_background)
        if cfg.http.enabled:
            app = build_app(self, self.metrics)
            add_report_routes(app, self.outbox)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            self._stack.push_async_callback(runner.cleanup)
            site = web.TCPSite(runner, cfg.http.host, cfg.http.port)
            await site.start()
            sockets = getattr(site._server, "sockets", None) or []
            self.http_port = sockets[0].getsockname()[1] if sockets else cfg.http.port
            log.info(
                "HTTP API on http://%s:%d (health: /health, metrics: /metrics)", cfg.http.host, self.http_port
            )
        self._tasks = [
            asyncio.create_task(self.source.run(), name="mqtt-source"),
            asyncio.create_task(self._timers(), name="rule-timers"),
        ]
        self._stack.push_async_callback(self._cancel_tasks)
        log.info(
            "tocsin %s started as %s with %d rules; data in %s",
            __version__,
            cfg.instance.id,
            len(self.ruleset.rules),
            cfg.store_path,
        )

    async def _recover(self) -> None:
        """After a restart: send again every outbox row still pending (never sent, or never answered)."""
        now = self.clock.time()
        pending = list(self.outbox.pending())
        resent = 0
        for n, provider, token, attempts in pending:
            reg = self.store.get(provider, token)
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
                self.metrics.internal_errors.inc("outbox_purge")
                log.exception("purging old delivery reports failed")
            await asyncio.sleep(min(3600.0, retention / 10))

    async def _cancel_background(self) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    async def _cancel_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _close_providers(self) -> None:
        for provider in self.providers.values():
            await provider.close()

    def stop(self) -> None:
        self._stopped.set()

    async def wait(self) -> None:
        """Until ``stop()`` or a background task dies unexpectedly (which is then raised)."""
        stopped = asyncio.create_task(self._stopped.wait())
        done, _ = await asyncio.wait([stopped, *self._tasks], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        for task in done:
            if task is not stopped and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()
