"""Where the cluster meets the event path.

Every instance runs the rules; the gate decides what happens to each transition: the leader hands it to the
notify pipeline, a follower keeps it in its buffer. On becoming leader an instance hands its buffer on, and
every send asks the gate first: the ledger says whether the delivery was already sent (skip), begun and never
confirmed (ambiguous: the rule decides), or not seen; then ``intent`` is published, the lease re-checked right
before the send (self-fencing), and ``sent`` published after it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import aiomqtt

from rules.engine import Transition
from rules.event import short_hash
from service.clock import Clock
from service.cluster.election import RoleChange
from service.cluster.ledger import FollowerBuffer
from service.cluster.node import ClusterNode
from service.metrics import Counter, Metrics
from service.notify.dispatch import Verdict
from service.notify.model import Delivery, notification_key
from service.notify.pipeline import Pipeline
from service.providers.base import Delivered, Outcome
from service.ratelimit import RateLimitedLog

if TYPE_CHECKING:
    from service.cluster.leader_jobs import LeaderJobs

log = logging.getLogger("tocsin.cluster")
# Test-only fault injection, inert unless set: "after_intent:N" or "after_send:N" kills this process with
# SIGKILL at that point of the N-th send, to measure the ambiguous window of a crash inside a send.
FAULT_ENV = "TOCSINTEST_FAULT"  # outside the TOCSIN_ configuration namespace


def _fault_from_env() -> tuple[str, int] | None:
    value = os.environ.get(FAULT_ENV, "")
    point, _, count = value.partition(":")
    if point in ("after_intent", "after_send") and count.isdigit():
        return point, int(count)
    return None


ROLE_VALUE = {"follower": 0.0, "candidate": 1.0, "leader": 2.0}
# Notifications every instance knows (from the shared event stream, or replicated): the leader sends them,
# through the ledger. Others ("api") are known only to the instance that took them, which sends them itself.
LEDGERED = ("rule", "schedule")


def delivery_key(d: Delivery) -> str:
    """The same on every instance (registration ids are local to each store; provider and token are not)."""
    return short_hash(d.notification.nid, d.registration.provider, d.registration.token)


class ClusterGate:
    def __init__(
        self, node: ClusterNode, pipeline: Pipeline, metrics: Metrics, clock: Clock, window_s: float
    ):
        self.node, self.pipeline, self.metrics, self.clock = node, pipeline, metrics, clock
        self.buffer: FollowerBuffer[Transition] = FollowerBuffer(window_s)
        self._mine: set[str] = set()  # keys whose intent this instance published while leading
        self._sending: set[str] = set()  # keys between their intent and the end of their send
        self._catching_up: asyncio.Task[None] | None = None
        self._fault = _fault_from_env()
        self._log = RateLimitedLog(log, clock, 10.0)
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._sends = 0
        # Awaited before each intent: the noise state behind the send is on the cluster channel first.
        self.barrier: Callable[[], Awaitable[None]] | None = None
        # Where a delivery goes when this instance is no longer the leader (service/cluster/leader_jobs.py).
        self.jobs: LeaderJobs | None = None
        self.events = Counter(
            "tocsin_cluster_sends", "Send decisions of the cluster gate, by kind.", ("kind",)
        )
        metrics.extra_counters.append(self.events)
        metrics.gauge(
            "tocsin_cluster_role",
            "0 follower, 1 candidate, 2 leader.",
            lambda: ROLE_VALUE[self.node.election.role],
        )
        metrics.gauge("tocsin_cluster_term", "The highest term seen.", lambda: float(self.node.election.term))
        metrics.gauge(
            "tocsin_cluster_takeovers",
            "Times this instance became leader.",
            lambda: float(self.node.election.takeovers),
        )
        metrics.gauge(
            "tocsin_cluster_buffered_transitions",
            "Transitions a follower holds for a takeover.",
            lambda: float(len(self.buffer)),
        )
        metrics.gauge(
            "tocsin_cluster_ledger_entries", "Ledger records held.", lambda: float(len(self.node.ledger))
        )

    @property
    def leading(self) -> bool:
        """Leader and not handing over: what may start new work (scheduled pushes, handovers)."""
        return self.node.is_leader and not self._closing

    async def route(self, transition: Transition, now: float) -> None:
        nid = notification_key(transition.alert_id, transition.episode, transition.state)
        # Buffered whatever the role: a leader frozen and woken handles its backlog as leader before it learns
        # it was deposed, and drops those sends; they must still be here when it leads again.
        self.buffer.add(nid, transition, self.clock.monotonic(), transition.on_ambiguous)  # type: ignore[arg-type]
        if self.node.is_leader and self._catching_up is None:
            await self.pipeline.handle(transition, now)
        elif not self.node.is_leader:
            self.pipeline.observe(transition, now)  # what is open here too, for acks and a takeover

    def on_change(self, change: RoleChange) -> None:
        if change.role == "leader":
            self._catching_up = asyncio.get_running_loop().create_task(self._catch_up(change.term))
        else:
            self._mine.clear()

    async def _catch_up(self, term: int) -> None:
        try:
            # The claim already waited out the old leader's lease, so its last ledger records are in. Hand on
            # everything recent, past this instance's own dedup memory: the ledger decides what was sent.
            seq, total = 0, 0
            while True:
                items = self.buffer.since(seq)
                if not items:
                    break
                for b in items:
                    await self.pipeline.handle(b.item, self.clock.time(), dedup=False)
                seq, total = items[-1].seq, total + len(items)
            log.info(
                "term %d: handed on %d recent transitions; the ledger decides what was sent", term, total
            )
        finally:
            self._catching_up = None

    async def before_send(self, d: Delivery) -> Verdict:
        if d.notification.origin not in LEDGERED:
            return "send"  # an API push reached only this instance: no other one can send it
        key = delivery_key(d)
        if not self.node.is_leader or self._closing:
            return await self._not_mine(key, d)
        if key in self._sending:
            self.events.inc("already_under_way")  # a takeover re-handed what a worker is sending right now
            return "skip"
        state = self.node.ledger.status(key)
        if state == "sent":
            self.events.inc("already_sent")
            return "skip_sent"
        ambiguous = state == "intent" and key not in self._mine
        if ambiguous and d.notification.on_ambiguous == "skip":
            self.events.inc("ambiguous_skipped")
            return "skip_ambiguous"
        if not self.node.may_send():
            self.events.inc("later_fenced")
            e = self.node.election
            echo = e.last_echo_at
            self._log.warning(
                "fenced",
                "holding sends: role %s, connected %s, last heartbeat echo %s s ago",
                e.role,
                self.node.connected.is_set(),
                "never" if echo is None else f"{self.clock.monotonic() - echo:.2f}",
            )
            return "later"
        self._sending.add(key)
        if self.barrier is not None:
            await self.barrier()
        try:
            await self.node.record("intent", key)
        except aiomqtt.MqttError as exc:
            self._sending.discard(key)
            self.events.inc("later_intent_failed")
            self._log.warning("intent", "could not publish an intent (%s); will retry", exc)
            return "later"
        self._mine.add(key)
        self._sends += 1
        self._maybe_crash("after_intent")
        if not self.node.may_send():  # self-fencing, right before the push
            self._sending.discard(key)
            self.events.inc("later_fenced")
            return "later"
        if ambiguous:  # counted once, when the resend really goes ahead
            self.events.inc("ambiguous_resent")
            log.info("resending %s: the previous leader began it and never confirmed it", key)
        d.term = self.node.election.term
        self._in_flight += 1
        self._idle.clear()
        return "send"

    async def _not_mine(self, key: str, d: Delivery) -> Verdict:
        """Another instance sends: hand the delivery to the leader (its outbox row here then ends), or hold it
        while nobody leads (it may be this instance's to send)."""
        if self.jobs is None:
            self.events.inc("dropped_not_leader")  # the new leader has it in its buffer
            return "skip"
        leader = self.node.election.leader
        if not self._closing and (leader is None or leader == self.node.me.id):
            self.events.inc("later_no_leader")
            return "later"
        try:
            await self.jobs.hand_over(key, d)
        except Exception as exc:  # ReplicaUnavailable, the transport's errors: the row stays pending
            self.events.inc("later_handover_failed")
            self._log.warning(
                "handover", "could not hand a delivery over to the leader (%s); will retry", exc
            )
            return "later"
        self.events.inc("handed_over")
        return "handed_over"

    def _maybe_crash(self, point: str) -> None:
        if self._fault is not None and self._fault == (point, self._sends):
            log.warning("fault injection: killing this process %s of send %d", point, self._sends)
            sys.stdout.flush()  # what the provider accepted is out, as it would be on a phone
            os.kill(os.getpid(), signal.SIGKILL)

    async def after_send(self, d: Delivery, outcome: Outcome | None) -> None:
        if d.notification.origin not in LEDGERED:
            return
        try:
            await self._confirm(d, outcome)
        finally:
            self._sending.discard(delivery_key(d))
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def drain(self, timeout: float) -> bool:
        """Graceful stop: send nothing new (the followers hold it), let sends under way finish and their
        ``sent`` go out, so the next leader's ledger is complete. Returns whether everything finished."""
        self._closing = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def _confirm(self, d: Delivery, outcome: Outcome | None) -> None:
        if not isinstance(outcome, Delivered) or d.notification.origin not in LEDGERED:
            return
        key = delivery_key(d)
        self._mine.discard(key)
        self._maybe_crash("after_send")
        try:
            await self.node.record("sent", key)
        except aiomqtt.MqttError as exc:
            self.events.inc("sent_unrecorded")
            log.warning("could not record %s as sent (%s): a takeover now may resend it", key, exc)
