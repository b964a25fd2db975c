"""Hands deliveries to their providers from a bounded queue, and acts on each outcome.

Full retry policy, the durable outbox and token hygiene deepen here (push delivery issue); the seam is this
class: ``submit`` a delivery, a worker sends it and records the outcome.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping
from typing import Literal, Protocol

from registrations.store import RegistrationStore
from service.clock import Clock
from service.metrics import Metrics
from service.notify.model import Delivery
from service.providers.base import (
    ConfigError,
    Delivered,
    Outcome,
    Provider,
    Retry,
    TokenInvalid,
    TokenSuspect,
)

log = logging.getLogger("tocsin.dispatch")


Verdict = Literal["send", "skip", "later"]


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


class Dispatcher:
    def __init__(
        self,
        providers: Mapping[str, Provider],
        store: RegistrationStore,
        metrics: Metrics,
        clock: Clock,
        queue_size: int = 100_000,
        max_attempts: int = 5,
        workers: int = 4,
    ) -> None:
        self.providers, self.store, self.metrics, self.clock = providers, store, metrics, clock
        self.queue: asyncio.Queue[Delivery] = asyncio.Queue(queue_size)
        self.max_attempts = max_attempts
        self._workers = workers
        self._tasks: list[asyncio.Task[None]] = []
        self._delayed: set[asyncio.TimerHandle] = set()
        self.config_errors: dict[str, str] = {}
        self.guard: SendGuard | None = None

    async def submit(self, delivery: Delivery) -> None:
        if self.queue.full():
            await self.queue.put(delivery)  # backpressure: the source waits rather than drop
        else:
            self.queue.put_nowait(delivery)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work(), name=f"dispatch-{i}") for i in range(self._workers)]

    async def drain(self) -> None:
        await self.queue.join()

    async def stop(self) -> None:
        for handle in self._delayed:
            handle.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

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

    async def _deliver(self, delivery: Delivery) -> None:
        reg = delivery.registration
        provider = self.providers.get(reg.provider)
        if provider is None:
            self.metrics.notifications.inc(reg.provider, "no_provider")
            log.warning("no provider %r is configured for registration %s", reg.provider, reg.id)
            return
        if self.guard is not None:
            verdict = await self.guard.before_send(delivery)
            if verdict == "later":
                self._later(asyncio.get_running_loop(), 0.05, delivery)
            if verdict != "send":
                return
        delivery.attempt += 1
        outcome: Outcome | None = None
        try:
            outcome = await provider.send(delivery)
        finally:
            if self.guard is not None:
                await self.guard.after_send(delivery, outcome)
        self.metrics.notifications.inc(provider.name, outcome.name)
        if isinstance(outcome, Delivered):
            return
        if isinstance(outcome, Retry):
            self._retry(delivery, outcome)
        elif isinstance(outcome, TokenInvalid | TokenSuspect):
            reg.state = "invalid" if isinstance(outcome, TokenInvalid) else "suspect"
            self.store.upsert(reg, self.clock.time())
            log.info("registration %s is now %s: %s", reg.id, reg.state, outcome.reason)
        elif isinstance(outcome, ConfigError):
            self.config_errors[provider.name] = outcome.reason
            log.error("provider %s has a configuration error: %s", provider.name, outcome.reason)

    def _retry(self, delivery: Delivery, outcome: Retry) -> None:
        n = delivery.notification
        delay = outcome.after if outcome.after is not None else backoff_delay(delivery.attempt)
        if delivery.attempt >= self.max_attempts or self.clock.time() + delay > n.expires:
            self.metrics.notifications.inc(delivery.registration.provider, "gave_up")
            log.warning(
                "giving up on %s to %s after %d attempts: %s",
                n.nid,
                delivery.registration.id,
                delivery.attempt,
                outcome.reason,
            )
            return
        loop = asyncio.get_running_loop()

        self._later(loop, delay, delivery)

    def _later(self, loop: asyncio.AbstractEventLoop, delay: float, delivery: Delivery) -> None:
        def requeue() -> None:
            self._delayed.discard(handle)
            try:
                self.queue.put_nowait(delivery)
            except asyncio.QueueFull:
                self._later(loop, 0.1, delivery)  # the queue is busy: try again shortly, never drop

        handle = loop.call_later(delay, requeue)
        self._delayed.add(handle)
