"""The path from an alert transition to deliveries: notification → dedup → target → dispatch."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from registrations.model import Audience
from registrations.tagexpr import TagExpressionError
from rules.engine import Transition
from service.metrics import Metrics
from service.notify.dispatch import Dispatcher
from service.notify.model import CHANNEL_TAG, Delivery, Notification, notification_key
from service.notify.noise import NoiseControl
from service.notify.options import PushOptions
from service.notify.stages import DedupStage, TargetStage
from service.notify.webhook import WebhookDecider

log = logging.getLogger("tocsin.notify")
DEFAULT_EXPIRY_S = 3600.0


_AudienceKey = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], str | None]
_audiences: dict[_AudienceKey, Audience] = {}


def _audience(
    tags: tuple[str, ...],
    users: tuple[str, ...],
    channels: tuple[str, ...] = (),
    expression: str | None = None,
) -> Audience:
    key = (tags, users, channels, expression)
    found = _audiences.get(key)
    if found is None:
        if len(_audiences) > 10_000:
            _audiences.clear()
        all_tags = tags + tuple(CHANNEL_TAG + c for c in channels)
        found = _audiences[key] = Audience(tags=all_tags, users=users, expression=expression)
    return found


_PLAIN = {p: PushOptions(priority=p) for p in ("high", "normal", "low")}


def rule_options(t: Transition) -> PushOptions:
    """The rule's push fields as the options every provider maps (sound, category, priority, collapse key)."""
    if t.sound is None and t.category is None and t.collapse_key is None and t.priority in _PLAIN:
        return _PLAIN[t.priority]
    return PushOptions(sound=t.sound, category=t.category, priority=t.priority, collapse_key=t.collapse_key)


def to_notification(t: Transition, now: float) -> Notification:
    return Notification(
        nid=notification_key(t.alert_id, t.episode, t.state),
        alert_id=t.alert_id,
        episode=t.episode,
        rule=t.rule,
        state=t.state,
        severity=t.severity,
        title=t.title,
        body=t.body,
        labels=t.labels,
        audience=_audience(t.audience_tags, t.audience_users, t.audience_channels, t.audience_expression),
        created=t.time,
        expires=now + DEFAULT_EXPIRY_S,
        data=t.data,
        options=rule_options(t),
        texts=t.texts,
        policy=t.policy,
        on_ambiguous=t.on_ambiguous,
        tenant=t.tenant,
        resolves=t.resolves,
    )


class Pipeline:
    def __init__(
        self,
        dedup: DedupStage,
        target: TargetStage,
        dispatcher: Dispatcher,
        metrics: Metrics,
        noise: NoiseControl | None = None,
        webhook: WebhookDecider | None = None,
    ) -> None:
        self.dedup, self.target, self.dispatcher, self.metrics = dedup, target, dispatcher, metrics
        self.noise = noise
        self.webhook = webhook
        self._asking: set[asyncio.Task[int]] = set()
        # (notification, stage, detail, registration id) for every suppression here: service/notify/explain.py
        self.explain: Callable[[Notification, str, str, str | None], None] | None = None
        self.last_fired: dict[str, float] = {}  # rule -> when it last produced a firing transition

    async def handle(self, transition: Transition, now: float, dedup: bool = True) -> int:
        """Hand the transition's deliveries to the dispatcher; returns how many there were.

        ``dedup=False`` is for a cluster takeover, where the ledger, not this instance's memory of what it
        handed on before, decides what was already sent."""
        if dedup:
            self.metrics.rule_matches.inc(transition.rule, transition.state)
            if transition.state == "firing" and len(self.last_fired) < 100_000:
                self.last_fired[transition.rule] = now
        return await self.submit(to_notification(transition, now), now, dedup)

    def observe(self, transition: Transition, now: float) -> None:
        """A follower's view of the transition: noise control learns what is open (nothing is sent)."""
        if self.noise is not None:
            self.noise.observe(to_notification(transition, now))

    async def submit(self, n: Notification, now: float, dedup: bool = True) -> int:
        """A notification from a rule or ready-made (``POST /v1/push``, a test push): dedup, noise control,
        then target and dispatch."""
        if dedup and not self.dedup.admit(n, now):
            self.metrics.suppressed.inc(self.dedup.name)
            self._explain(n, self.dedup.name)
            return 0
        if self.noise is None:
            return await self.send(n, now)
        count = 0
        for admitted in self.noise.before_target(n, now):
            count += await self.send(admitted, now)
        return count

    async def send(self, n: Notification, now: float) -> int:
        """Target, per-recipient noise control (quiet hours, rate limit), dispatch. A rule with a webhook asks
        the user's server first, in a task of its own so that the event path does not wait."""
        if self.webhook is not None and n.policy is not None and n.policy.webhook is not None:
            task = asyncio.get_running_loop().create_task(self._ask(self.webhook, n, now))
            self._asking.add(task)
            task.add_done_callback(self._asking.discard)
            return 0
        return await self._send(n, now)

    async def _ask(self, webhook: WebhookDecider, n: Notification, now: float) -> int:
        decided = await webhook.decide(n)
        if decided is None:
            self.metrics.suppressed.inc("webhook")
            self._explain(n, "webhook")
            return 0
        return await self._send(decided, now)

    async def _send(self, n: Notification, now: float) -> int:
        count, held = 0, 0
        noise = self.noise
        try:
            async for batch in self.target.batches(n.audience, n.tenant):
                for registration in batch:
                    if noise is not None and not noise.for_recipient(n, registration, now):
                        held += 1
                        continue
                    await self.dispatcher.submit(Delivery(n, registration))
                    count += 1
        except TagExpressionError as exc:  # a rule's templated expression rendered into something invalid
            self.metrics.suppressed.inc("bad_audience")
            self._explain(n, "bad_audience", str(exc))
            log.error(
                "notification %s (%s): its audience %r is not valid: %s", n.nid, n.rule, n.audience, exc
            )
            return count
        if count == 0 and held == 0:
            self.metrics.suppressed.inc("no_audience")
            self._explain(n, "no_audience")
            log.info("notification %s (%s) has no registration in its audience %s", n.nid, n.rule, n.audience)
        return count

    def _explain(self, n: Notification, stage: str, detail: str = "") -> None:
        if self.explain is not None:
            self.explain(n, stage, detail, None)
