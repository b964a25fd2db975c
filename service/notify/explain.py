"""Why a notification was not sent: every suppression (a stage that held a notification back) is recorded
with its stage and reason, kept in a bounded memory for delivery reports and the console, and logged at info
(at most ``log_per_s`` lines a second; the rest are counted and summed up in the next line)."""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from service.notify.model import Notification

log = logging.getLogger("tocsin.notify.explain")

# What each stage means, for logs, reports and `tocsin rules test --explain`.
REASONS = {
    "dedup": "the same notification was handed on within the dedup window",
    "silence": "a silence matches it",
    "cooldown": "the rule's cooldown after its last notification has not passed",
    "group": "taken into a group; one notification for the group follows when the group's wait ends",
    "webhook": "the rule's webhook decided not to send it",
    "quiet_hours": "the recipient's quiet hours",
    "rate_limit": "the recipient's rate limit; a summary follows when the window ends",
    "no_audience": "no registration is in its audience",
    "bad_audience": "its audience is not a valid tag expression",
}


@dataclass(frozen=True, slots=True)
class Suppression:
    nid: str
    alert_id: str
    rule: str
    state: str
    stage: str
    reason: str
    time: float
    registration: str | None = None  # per-recipient stages: whose delivery was held

    def to_json(self) -> dict[str, Any]:
        return {
            "nid": self.nid,
            "alert_id": self.alert_id,
            "rule": self.rule,
            "state": self.state,
            "stage": self.stage,
            "reason": self.reason,
            "time": self.time,
            "registration": self.registration,
        }


class Explainer:
    """The last ``capacity`` suppressions, and those of each notification (at most ``capacity`` notifications,
    at most ``per_notification`` records each)."""

    def __init__(
        self,
        clock: Callable[[], float],
        capacity: int = 2000,
        per_notification: int = 50,
        log_per_s: float = 5.0,
    ) -> None:
        self.clock = clock
        self.recent: deque[Suppression] = deque(maxlen=capacity)
        self._by_nid: OrderedDict[str, list[Suppression]] = OrderedDict()
        self.capacity, self.per_notification = capacity, per_notification
        self.log_per_s = log_per_s
        self._window_start, self._logged, self._unlogged = 0.0, 0, 0

    def held(self, n: Notification, stage: str, detail: str = "", registration: str | None = None) -> None:
        now = self.clock()
        reason = REASONS.get(stage, stage) + (f" ({detail})" if detail else "")
        s = Suppression(n.nid, n.alert_id, n.rule, n.state, stage, reason, now, registration)
        self.recent.append(s)
        records = self._by_nid.get(n.nid)
        if records is None:
            records = self._by_nid[n.nid] = []
            if len(self._by_nid) > self.capacity:
                self._by_nid.popitem(last=False)
        if len(records) < self.per_notification:
            records.append(s)
        self._log(s, now)

    def _log(self, s: Suppression, now: float) -> None:
        if now - self._window_start >= 1.0:
            self._window_start, self._logged = now, 0
        if self._logged >= self.log_per_s:
            self._unlogged += 1
            return
        self._logged += 1
        more, self._unlogged = self._unlogged, 0
        to = f" for registration {s.registration}" if s.registration else ""
        log.info(
            "suppressed notification %s (rule %s, %s)%s at stage %s: %s%s",
            s.nid,
            s.rule,
            s.state,
            to,
            s.stage,
            s.reason,
            f" [{more} more suppressions not logged]" if more else "",
        )

    def of(self, nid: str) -> list[Suppression]:
        return list(self._by_nid.get(nid, ()))
