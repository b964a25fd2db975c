"""Hands deliveries to their providers from a bounded queue, and acts on each outcome.

``submit`` writes the delivery's outbox row (committed before its first send) and queues it; a worker sends
it and records the outcome: delivered; retry with backoff and jitter (or the provider's Retry-After) while
the notification has not expired; token invalid or suspect (the registration is disabled or marked);
rejected; configuration error: the credential pauses, its deliveries are parked (not burned) and one of them
probes it every ``pause_probe_s``; when a probe gets through, the parked ones go out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Literal, Protocol

from registrations.directory import StoreDirectory
from registrations.store import RegistrationStore, StoreUnavailable
from service.clock import Clock
from service.metrics import Metrics
from service.notify.model import Delivery
from service.outbox import Outbox
from service.providers.base import (
    ConfigError,
    Delivered,
    Outcome,
    Provider,
    Rejected,
    Retry,
    TokenInvalid,
    TokenSuspect,
)
from service.supervisor import Spawn, unsupervised

log = logging.getLogger("tocsin.dispatch")

# What the send guard (the cluster gate) says of a delivery: send it; try again shortly; or leave it: the
# cluster already delivered it, the rule says not to resend what a deposed leader may have sent, or another
# instance (or another worker here) has it.
Verdict = Literal["send", "later", "skip_sent", "skip_ambiguous", "skip", "handed_over"]


# A source that acknowledges its input only once the pushes it caused went out (the Cumulocity runtime, which
# has no disk to keep the outbox on) sets a list here while it hands an event on: each delivery submitted
# meanwhile adds a future, set when the delivery finished (delivered, or failed for good).
watching: ContextVar[list[asyncio.Future[None]] | None] = ContextVar("tocsin_watching", default=None)


class SendGuard(Protocol):
    """Asked before and told after each send (the cluster gate: ledger, self-fencing)."""

    async def before_send(self, delivery: Delivery) -> Verdict: ...

    async def after_send(self, delivery: Delivery, outcome: Outcome | None) -> None:
        """Called after every send the guard allowed; ``outcome`` is None when the send raised."""
        ...


def backoff_delay(
    attempt: int, base: float = 0.5, cap: float = 60.0, rng: random.Random | None = None
) -> float:
    """Exponential backoff with full jitter (attempt 1 waits up to ``base``)."""
    r = rng or random
    return r.uniform(0, min(cap, base * 2 ** (attempt - 1)))


def retry_delay(
    attempt: int,
    after: float | None,
    base: float = 0.5,
    cap: float = 60.0,
    rng: random.Random | None = None,
) -> float:
    """Full jitter on every retry. A provider's Retry-After is the earliest moment, not the moment: the
    retries it asked for spread over as long again (at least the backoff window, at most ``cap``), so a
    throttled burst does not come back within one millisecond."""
    if after is None:
        return backoff_delay(attempt, base, cap, rng)
    r = rng or random
    return after + r.uniform(0, min(cap, max(after, base * 2 ** (attempt - 1))))


class Dispatcher:
    def __init__(
        self,
        providers: Mapping[str, Provider],
        store: RegistrationStore | StoreDirectory,
        metrics: Metrics,
        clock: Clock,
        queue_size: int = 100_000,
        max_attempts: int = 5,
        workers: int = 4,
        outbox: Outbox | None = None,
        retry_base_s: float = 0.5,
        retry_cap_s: float = 60.0,
        pause_probe_s: float = 30.0,
        max_waiting: int = 100_000,
    ) -> None:
        """``max_waiting``: deliveries held for a retry or a paused credential, at most (a bound on
        ``parked`` and the retry timers together)."""
        self.providers, self.metrics, self.clock = providers, metrics, clock
        self.stores = store if isinstance(store, StoreDirectory) else StoreDirectory.single(store)
        self.queue: asyncio.Queue[Delivery] = asyncio.Queue(queue_size)
        self.max_attempts = max_attempts
        self.outbox = outbox
        self.retry_base_s, self.retry_cap_s, self.pause_probe_s = retry_base_s, retry_cap_s, pause_probe_s
        self._workers = workers
        self._tasks: list[asyncio.Task[None]] = []
        self._delayed: set[asyncio.TimerHandle] = set()
        self.config_errors: dict[str, str] = {}
        # (provider, credential) -> why it is paused; its parked deliveries; the delivery probing it
        self.paused: dict[tuple[str, str], str] = {}
        self.parked: dict[tuple[str, str], list[Delivery]] = {}
        self._probes: dict[tuple[str, str], Delivery] = {}
        self.guard: SendGuard | None = None
        self.max_waiting = max_waiting
        self._parked = 0  # deliveries in ``parked``
        self._overflow_warned = False

    async def submit(self, delivery: Delivery) -> None:
        bucket = watching.get()
        if bucket is not None:
            delivery.done = asyncio.get_running_loop().create_future()
            bucket.append(delivery.done)
        if self.outbox is not None:
            self.outbox.add(delivery, self.clock.time())
        await self.resubmit(delivery)

    async def resubmit(self, delivery: Delivery) -> None:
        """Queue a delivery whose outbox row exists already (recovery after a restart)."""
        if self.queue.full():
            await self.queue.put(delivery)  # backpressure: the source waits rather than drop
        else:
            self.queue.put_nowait(delivery)

    def start(self, spawn: Spawn = unsupervised) -> None:
        """``spawn``: the service's supervisor, which restarts a worker that dies."""
        self._tasks = [spawn(f"dispatch-{i}", self._work) for i in range(self._workers)]

    async def drain(self) -> None:
        await self.queue.join()

    async def stop(self) -> None:
        for handle in self._delayed:
            handle.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.outbox is not None:
            await self.outbox.settle()

    @property
    def parked_count(self) -> int:
        return self._parked

    @property
    def waiting(self) -> int:
        """Deliveries held in memory outside the queue: parked, or waiting for a retry."""
        return self._parked + len(self._delayed)

    def _room(self, delivery: Delivery) -> bool:
        """False (and the delivery failed, counted) when ``max_waiting`` deliveries wait already."""
        if self.waiting < self.max_waiting:
            return True
        self.metrics.notifications.inc(delivery.registration.provider, "overflow")
        if not self._overflow_warned:
            self._overflow_warned = True
            log.warning(
                "%d deliveries wait for a retry or a paused credential (delivery.max_waiting): further ones"
                " fail as overflow (counted in tocsin_notifications; said once)",
                self.max_waiting,
            )
        self._finish(delivery, "failed", "overflow")
        return False

    def _park(self, key: tuple[str, str], delivery: Delivery) -> None:
        if self._room(delivery):
            self.parked.setdefault(key, []).append(delivery)
            self._parked += 1

    async def _work(self) -> None:
        while True:
            delivery = await self.queue.get()
            try:
                await self._deliver(delivery)
            except Exception:
                self.metrics.internal_errors.inc("dispatch")
                log.exception("delivery %s failed unexpectedly", delivery.notification.nid)
            finally:
                self.queue.task_done()

    def _finish(self, delivery: Delivery, state: str, reason: str | None = None) -> None:
        if delivery.done is not None and not delivery.done.done():
            delivery.done.set_result(None)
        if self.outbox is not None:
            self.outbox.finish(delivery, state, reason, self.clock.time())

    async def _deliver(self, delivery: Delivery) -> None:
        reg = delivery.registration
        provider = self.providers.get(reg.provider)
        if provider is None:
            self.metrics.notifications.inc(reg.provider, "no_provider")
            log.warning("no provider %r is configured for registration %s", reg.provider, reg.id)
            self._finish(delivery, "failed", "no_provider")
            return
        key = (provider.name, provider.credential_for(reg))
        if key in self.paused and self._probes.get(key) is not delivery:
            self._park(key, delivery)
            return
        if self.clock.time() >= delivery.notification.expires:
            self.metrics.notifications.inc(provider.name, "expired")
            self._finish(delivery, "failed", "expired")
            return
        if self.outbox is not None:
            await self.outbox.written()
            if delivery.attempt == 0 and delivery.notification.options.badge_increment:
                self._badge(delivery, self.outbox)
        o = delivery.notification.options
        if delivery.attempt == 0 and reg.badge is not None and o.badge is None and not o.badge_increment:
            # the count the app registered with
            delivery.notification = dataclasses.replace(
                delivery.notification, options=dataclasses.replace(o, badge=reg.badge)
            )
        if self.guard is not None:
            verdict = await self.guard.before_send(delivery)
            if verdict == "later":
                if self._room(delivery):
                    self._later(asyncio.get_running_loop(), 0.05, delivery)
                return
            if verdict == "skip_sent":
                self._finish(delivery, "delivered")  # by this cluster, under an earlier term
                return
            if verdict == "skip_ambiguous":
                self._finish(delivery, "failed", "ambiguous_skipped")
                return
            if verdict == "handed_over":
                self._finish(delivery, "handed_over")  # to the leader, which sends it (leader_jobs.py)
                return
            if verdict == "skip":
                return  # the leader sends it; its row stays pending here until purged
        delivery.attempt += 1
        outcome: Outcome | None = None
        try:
            outcome = await provider.send(delivery)
        except Exception as exc:  # a provider bug must not strand the delivery: it is retried like an outage
            self.metrics.internal_errors.inc(f"provider_{provider.name}")
            log.exception("provider %s failed on notification %s", provider.name, delivery.notification.nid)
            outcome = Retry(f"internal error in provider {provider.name}: {exc.__class__.__name__}")
        finally:
            if self.guard is not None:
                await self.guard.after_send(delivery, outcome)
        self.metrics.notifications.inc(provider.name, outcome.name)
        if isinstance(outcome, ConfigError):
            delivery.attempt -= 1  # our fault, not the delivery's: it keeps its attempts
            self._pause(key, delivery, outcome)
            return
        if key in self.paused:
            self._resume(key)
        if isinstance(outcome, Delivered):
            self._finish(delivery, "delivered")
        elif isinstance(outcome, Retry):
            self._retry(delivery, outcome)
        elif isinstance(outcome, TokenInvalid | TokenSuspect):
            await self._token(delivery, outcome)
        elif isinstance(outcome, Rejected):
            log.warning(
                "%s refused notification %s: %s", provider.name, delivery.notification.nid, outcome.reason
            )
            self._finish(delivery, "failed", "rejected")

    @staticmethod
    def _badge(delivery: Delivery, outbox: Outbox) -> None:
        """This delivery's own copy of the notification, with the registration's next badge number."""
        n = delivery.notification
        count = outbox.next_badge(delivery.registration.id, delivery.registration.badge or 0)
        options = dataclasses.replace(n.options, badge=count, badge_increment=False)
        delivery.notification = dataclasses.replace(n, options=options)

    async def _token(self, delivery: Delivery, outcome: TokenInvalid | TokenSuspect) -> None:
        reg = delivery.registration
        if isinstance(outcome, TokenInvalid) and outcome.since is not None and reg.updated > outcome.since:
            log.info("registration %s was renewed after its token died (%s): kept", reg.id, outcome.reason)
        else:
            reg.state = "invalid" if isinstance(outcome, TokenInvalid) else "suspect"
            store = self.stores.store(delivery.notification.tenant)
            if store is not None:  # None: the tenant left meanwhile, and its registrations with it
                try:
                    await store.upsert(reg, self.clock.time())
                except StoreUnavailable as exc:  # the next send to it finds out again
                    log.warning("registration %s could not be marked %s: %s", reg.id, reg.state, exc)
            self.metrics.registrations_changed.inc(reg.provider, reg.state)
            log.info("registration %s is now %s: %s", reg.id, reg.state, outcome.reason)
        self._finish(delivery, "failed", outcome.name)

    def _pause(self, key: tuple[str, str], delivery: Delivery, outcome: ConfigError) -> None:
        provider, credential = key
        first = key not in self.paused
        self.paused[key] = outcome.reason
        self.config_errors[provider] = outcome.reason
        self._park(key, delivery)
        self._probes.pop(key, None)
        if first:
            self.metrics.config_errors.inc(provider, credential)
            log.error(
                "provider %s paused%s: configuration error: %s; its deliveries wait (probing every %.0f s)",
                provider,
                f" for {credential}" if credential else "",
                outcome.reason,
                self.pause_probe_s,
            )
            self._probe_later(key)

    def _probe_later(self, key: tuple[str, str]) -> None:
        loop = asyncio.get_running_loop()

        def probe() -> None:
            self._delayed.discard(handle)
            waiting = self.parked.get(key)
            if key not in self.paused:
                return
            if not waiting:
                self._probe_later(key)
                return
            delivery = waiting.pop(0)
            self._parked -= 1
            self._probes[key] = delivery
            self._requeue(loop, delivery)
            self._probe_later(key)  # if the probe is lost in retries, the next one still comes

        handle = loop.call_later(self.pause_probe_s, probe)
        self._delayed.add(handle)

    def _resume(self, key: tuple[str, str]) -> None:
        provider, credential = key
        self.paused.pop(key, None)
        self._probes.pop(key, None)
        waiting = self.parked.pop(key, [])
        self._parked -= len(waiting)
        if not any(k[0] == provider for k in self.paused):
            self.config_errors.pop(provider, None)
        log.warning(
            "provider %s%s works again: sending the %d deliveries that waited",
            provider,
            f" for {credential}" if credential else "",
            len(waiting),
        )
        loop = asyncio.get_running_loop()
        for delivery in waiting:
            self._requeue(loop, delivery)

    def _retry(self, delivery: Delivery, outcome: Retry) -> None:
        n = delivery.notification
        delay = retry_delay(delivery.attempt, outcome.after, self.retry_base_s, self.retry_cap_s)
        if delivery.attempt >= self.max_attempts or self.clock.time() + delay > n.expires:
            self.metrics.notifications.inc(delivery.registration.provider, "gave_up")
            log.warning(
                "giving up on %s to %s after %d attempts: %s",
                n.nid,
                delivery.registration.id,
                delivery.attempt,
                outcome.reason,
            )
            self._finish(delivery, "failed", "gave_up")
            return
        if self._room(delivery):
            self._later(asyncio.get_running_loop(), delay, delivery)

    def _requeue(self, loop: asyncio.AbstractEventLoop, delivery: Delivery) -> None:
        try:
            self.queue.put_nowait(delivery)
        except asyncio.QueueFull:
            self._later(loop, 0.1, delivery)

    def _later(self, loop: asyncio.AbstractEventLoop, delay: float, delivery: Delivery) -> None:
        def requeue() -> None:
            self._delayed.discard(handle)
            try:
                self.queue.put_nowait(delivery)
            except asyncio.QueueFull:
                self._later(loop, 0.1, delivery)  # the queue is busy: try again shortly, never drop

        handle = loop.call_later(delay, requeue)
        self._delayed.add(handle)
