"""The path from an alert transition to deliveries: notification → dedup → target → dispatch."""

from __future__ import annotations

import logging

from registrations.model import Audience
from rules.engine import Transition
from service.metrics import Metrics
from service.notify.dispatch import Dispatcher
from service.notify.model import Delivery, Notification, notification_key
from service.notify.stages import DedupStage, TargetStage

log = logging.getLogger("tocsin.notify")
DEFAULT_EXPIRY_S = 3600.0


_audiences: dict[tuple[tuple[str, ...], tuple[str, ...]], Audience] = {}


def _audience(tags: tuple[str, ...], users: tuple[str, ...]) -> Audience:
    found = _audiences.get((tags, users))
    if found is None:
        if len(_audiences) > 10_000:
            _audiences.clear()
        found = _audiences[(tags, users)] = Audience(tags=tags, users=users)
    return found


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
        audience=_audience(t.audience_tags, t.audience_users),
        created=t.time,
        expires=now + DEFAULT_EXPIRY_S,
    )


class Pipeline:
    def __init__(
        self, dedup: DedupStage, target: TargetStage, dispatcher: Dispatcher, metrics: Metrics
    ) -> None:
        self.dedup, self.target, self.dispatcher, self.metrics = dedup, target, dispatcher, metrics

    async def handle(self, transition: Transition, now: float) -> int:
        """Hand the transition's deliveries to the dispatcher; returns how many there were."""
        self.metrics.rule_matches.inc(transition.rule, transition.state)
        return await self.send(to_notification(transition, now), now)

    async def send(self, n: Notification, now: float) -> int:
        """A ready-made notification (``POST /v1/push``, a test push): dedup, target, dispatch."""
        if not self.dedup.admit(n, now):
            self.metrics.suppressed.inc(self.dedup.name)
            return 0
        count = 0
        for batch in self.target.batches(n.audience):
            for registration in batch:
                await self.dispatcher.submit(Delivery(n, registration))
                count += 1
        if count == 0:
            self.metrics.suppressed.inc("no_audience")
            log.info("notification %s (%s) has no registration in its audience %s", n.nid, n.rule, n.audience)
        return count
