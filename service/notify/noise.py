"""Noise control: the notify stages that keep people from being flooded.

Each stage is a pure decision over a notification and the time it is given, plus one side effect on its own
state. Stages that act later (grouping, repeats, escalation, rate-limit summaries) say when with
``next_deadline()`` and hand over what is due with ``due(now)``; the service runs one timer for all of them.
"""

from __future__ import annotations

import heapq
import itertools
import math
import re
import uuid
from collections import deque
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, time
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from registrations.model import Audience, Registration
from rules.event import short_hash
from service.notify.model import CHANNEL_TAG, Notification

# A change of the state that must be the same on every instance of a cluster: (kind, key, value or None).
# ``NoiseControl.on_state`` receives the leader's own changes; ``NoiseControl.import_state`` applies another
# instance's (service/cluster/replicated_noise.py carries them over the cluster channel).
StateHook = Callable[[str, str, Any], None]
STATE_KINDS = ("ack", "cooldown", "followup")
MAX_TRACKED = 100_000


def _no_state(kind: str, key: str, value: Any) -> None:
    return None


# -- silences ------------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Silence:
    """Mutes notifications whose fields match every matcher between ``start`` and ``end``.

    A matcher names ``rule``, ``severity``, ``alert_id``, ``state`` or a label; its value is the exact text,
    or a regular expression when it starts with ``~`` (``{"room": "~^cell"}``)."""

    matchers: dict[str, str]
    start: float
    end: float
    comment: str = ""
    created_by: str = ""
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    _compiled: tuple[tuple[str, Callable[[str], bool]], ...] = ()

    def __post_init__(self) -> None:
        if not (math.isfinite(self.start) and math.isfinite(self.end) and self.start < self.end):
            raise ValueError(f"a silence needs finite start < end, not {self.start!r}..{self.end!r}")
        checks = []
        for name, value in self.matchers.items():
            if value.startswith("~"):
                rx = re.compile(value[1:])
                checks.append((name, lambda v, rx=rx: rx.search(v) is not None))
            else:
                checks.append((name, lambda v, want=value: v == want))
        self._compiled = tuple(checks)

    def active(self, now: float) -> bool:
        return self.start <= now < self.end

    def matches(self, n: Notification) -> bool:
        for name, check in self._compiled:
            value = _field(n, name)
            if value is None or not check(value):
                return False
        return True

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Silence:
        return cls(dict(d["matchers"]), d["start"], d["end"], d["comment"], d["created_by"], d["id"])

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "matchers": self.matchers,
            "start": self.start,
            "end": self.end,
            "comment": self.comment,
            "created_by": self.created_by,
        }


def _field(n: Notification, name: str) -> str | None:
    if name in ("rule", "severity", "alert_id", "state"):
        return str(getattr(n, name))
    if name == "tenant" and n.tenant is not None:
        return n.tenant  # a Cumulocity tenant's silences match its own alerts only
    return n.labels.get(name)


class Silences:
    def __init__(self) -> None:
        self._by_id: dict[str, Silence] = {}
        # Expired or expired early (removed), newest last, with when: what the console lists as expired.
        self.expired: deque[tuple[Silence, float]] = deque(maxlen=200)
        self.on_change: Callable[[list[Silence]], None] | None = None  # e.g. to store them

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(list(self._by_id.values()))

    def add(self, silence: Silence) -> Silence:
        self._by_id[silence.id] = silence
        self._changed()
        return silence

    def remove(self, silence_id: str, now: float | None = None) -> bool:
        found = self._by_id.pop(silence_id, None)
        if found is not None:
            self.expired.append((found, found.end if now is None else min(now, found.end)))
            self._changed()
        return found is not None

    def get(self, silence_id: str) -> Silence | None:
        return self._by_id.get(silence_id)

    def list(self, now: float) -> list[Silence]:
        for s in [s for s in self._by_id.values() if s.end <= now]:
            del self._by_id[s.id]  # expired
            self.expired.append((s, s.end))
        return sorted(self._by_id.values(), key=lambda s: s.start)

    def silencing(self, n: Notification, now: float) -> Silence | None:
        for s in self._by_id.values():
            if s.active(now) and s.matches(n):
                return s
        return None


def _silence_detail(s: Silence) -> str:
    matchers = ", ".join(f"{k}={v}" for k, v in s.matchers.items())
    by = f" by {s.created_by}" if s.created_by else ""
    return f"silence {s.id}{by}: {matchers}" + (f" — {s.comment}" if s.comment else "")


# -- acknowledgements ----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Ack:
    alert_id: str
    episode: str
    by: str
    comment: str
    time: float


class Acks:
    """Acknowledged alerts (per episode): an acknowledged alert is not repeated or escalated."""

    def __init__(self) -> None:
        self._acks: dict[str, Ack] = {}
        self.open: dict[str, Notification] = {}  # firing alerts by id: what can be acknowledged
        # Whether the rules still see an alert firing (the service asks its engine state): an alert a rule
        # forgot without a resolve notice (resolve_notice: false, the device limit) closes here too.
        self.live: Callable[[str], bool] | None = None

    def ack(self, alert_id: str, by: str, comment: str, now: float) -> Ack | None:
        n = self.open.get(alert_id)
        if n is None:
            return None
        a = self._acks[alert_id] = Ack(alert_id, n.episode, by, comment, now)
        return a

    def export(self, a: Ack) -> dict[str, Any]:
        return {"episode": a.episode, "by": a.by, "comment": a.comment, "time": a.time}

    def import_(self, alert_id: str, value: Mapping[str, Any] | None) -> None:
        """Another instance's acknowledgement (``None``: forgotten)."""
        if value is None:
            self._acks.pop(alert_id, None)
            return
        a = Ack(
            alert_id, str(value["episode"]), str(value["by"]), str(value["comment"]), float(value["time"])
        )
        if a.alert_id in self._acks or len(self._acks) < MAX_TRACKED:
            self._acks[alert_id] = a

    def of(self, alert_id: str) -> Ack | None:
        return self._acks.get(alert_id)

    def acked(self, n: Notification) -> bool:
        a = self._acks.get(n.alert_id)
        return a is not None and a.episode == n.episode

    def opened(self, n: Notification) -> None:
        if n.origin in ("api", "schedule"):  # a push through the API is no alert: nothing resolves it
            return
        if not n.resolves and (n.policy is None or not (n.policy.repeat or n.policy.escalate)):
            return  # an event rule's alert: open (acknowledgeable) only while follow-ups are pending
        self.open.pop(n.alert_id, None)
        self.open[n.alert_id] = n
        if len(self.open) > 100_000:  # event alerts (a doorbell) never resolve: forget the oldest
            del self.open[next(iter(self.open))]

    def closed(self, alert_id: str) -> None:
        self.open.pop(alert_id, None)
        self._acks.pop(alert_id, None)

    def gone(self, n: Notification) -> bool:
        """True when the rules forgot a resolving alert without a resolve notice."""
        return n.resolves and self.live is not None and not self.live(n.alert_id)

    def prune(self) -> None:
        for aid in [aid for aid, n in self.open.items() if self.gone(n)]:
            self.closed(aid)


# -- cooldown ------------------------------------------------------------------------------------------------
class Cooldown:
    """After a notification of an alert, hold back its new firing notifications for the rule's cooldown."""

    name = "cooldown"

    def __init__(self, max_entries: int = 100_000) -> None:
        # alert id -> (when, notification key, its cooldown) last admitted
        self._last: dict[str, tuple[float, str, float]] = {}
        self.max_entries = max_entries
        self.on_state: StateHook = _no_state

    def admit(self, n: Notification, now: float) -> bool:
        p = n.policy
        if p is None or p.cooldown <= 0 or n.state != "firing":
            return True
        last = self._last.get(n.alert_id)
        if last is not None:
            if last[1] == n.nid:
                return True  # the same notification handed on again (a takeover): the send ledger decides
            if now - last[0] < p.cooldown:
                return False
        self._last.pop(n.alert_id, None)
        self._last[n.alert_id] = (now, n.nid, p.cooldown)
        self.on_state("cooldown", n.alert_id, {"at": now, "nid": n.nid, "for": p.cooldown})
        if len(self._last) > self.max_entries:  # forget cooldowns that ended, else the oldest half
            live = {k: v for k, v in self._last.items() if now - v[0] < v[2]}
            if len(live) > self.max_entries // 2:
                live = dict(list(live.items())[len(live) - self.max_entries // 2 :])
            self._last = live
        return True

    def import_(self, alert_id: str, value: Mapping[str, Any] | None) -> None:
        if value is None:
            self._last.pop(alert_id, None)
        elif alert_id in self._last or len(self._last) < self.max_entries:
            held = float(value.get("for", float("inf")))  # records of earlier versions: kept until pruned
            self._last[alert_id] = (float(value["at"]), str(value["nid"]), held)


# -- grouping ------------------------------------------------------------------------------------------------
class Grouping:
    """Collects a rule's notifications with the same ``group.by`` labels for ``group.wait``, then sends one,
    such as "3 sensors offline in the cellar"."""

    name = "group"

    def __init__(self) -> None:
        self._groups: dict[tuple[str, ...], tuple[float, list[Notification]]] = {}
        self._heap: list[tuple[float, tuple[str, ...]]] = []

    def admit(self, n: Notification, now: float) -> bool:
        """False when the notification was taken into a group (it comes out of ``due`` later)."""
        p = n.policy
        if p is None or p.group_by is None:
            return True
        # The tenant is part of the key: one tenant's alerts are never summed up for another tenant.
        key = (n.rule, n.state, n.tenant or "", *(n.labels.get(k, "") for k in p.group_by))
        found = self._groups.get(key)
        if found is None:
            deadline = now + p.group_wait
            self._groups[key] = (deadline, [n])
            heapq.heappush(self._heap, (deadline, key))
        else:
            found[1].append(n)
        return False

    def next_deadline(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def due(self, now: float) -> list[Notification]:
        out = []
        while self._heap and self._heap[0][0] <= now:
            _, key = heapq.heappop(self._heap)
            _, members = self._groups.pop(key)
            out.append(members[0] if len(members) == 1 else _combine(members))
        return out


def _combine(members: list[Notification]) -> Notification:
    first = members[0]
    assert first.policy is not None and first.policy.group_by is not None
    labels = {k: first.labels.get(k, "") for k in first.policy.group_by}
    ctx: dict[str, Any] = {
        "count": len(members),
        "labels": labels,
        **labels,
        "rule": first.rule,
        "state": first.state,
        "severity": first.severity,
        "alerts": [{"labels": dict(m.labels), "title": m.title, "body": m.body} for m in members],
    }
    p = first.policy
    title = p.group_title.render(ctx) if p.group_title is not None else f"{len(members)} alerts"
    body = p.group_body.render(ctx) if p.group_body is not None else ""
    return replace(
        first,
        nid=short_hash("group", *(m.nid for m in members)),
        alert_id=short_hash("group", first.rule, first.tenant or "", *labels.values()),
        title=title,
        body=body,
        labels=labels,
        texts={},
        count=len(members),
    )


# -- repeats and escalation ----------------------------------------------------------------------------------
class FollowUps:
    """Repeats a firing alert every ``repeat`` and escalates along its chain until it is resolved or
    acknowledged."""

    def __init__(self, acks: Acks) -> None:
        self.acks = acks
        self._heap: list[tuple[float, int, str, str, int]] = []  # (at, seq, alert_id, episode, step)
        self._seq = itertools.count()
        # alert id -> (episode, when its follow-ups started, scheduled here): the same on every instance of a
        # cluster, so a new leader repeats and escalates on the old leader's schedule, not from its takeover.
        self.started: dict[str, tuple[str, float, bool]] = {}
        self.on_state: StateHook = _no_state
        # Called with each follow-up due (its notification, the escalation step's index or -1 for a
        # repeat), where state is kept elsewhere (the Cumulocity tenant), so that a restart does not send an
        # escalation step again and only one replica follows an alert up.
        self.on_step: Callable[[Notification, int], None] | None = None

    def resume(self, n: Notification, sent: Container[int], now: float) -> None:
        """Schedules what is left of a restored firing alert: the escalation steps not ``sent`` (at their
        time after ``n.created``, or now when that passed) and the next repeat."""
        p = n.policy
        if p is None:
            return
        if p.repeat > 0:
            k = max(1, int((now - n.created) // p.repeat) + 1)
            heapq.heappush(self._heap, (n.created + k * p.repeat, next(self._seq), n.alert_id, n.episode, -1))
        for i, step in enumerate(p.escalate):
            if i not in sent:
                at = max(n.created + step.after, now)
                heapq.heappush(self._heap, (at, next(self._seq), n.alert_id, n.episode, i))

    def opened(self, n: Notification, now: float) -> None:
        p = n.policy
        if p is None or not (p.repeat > 0 or p.escalate):
            return
        found = self.started.get(n.alert_id)
        if found is not None and found[0] == n.episode:
            self.observed(n)  # handed on again (a takeover), or started by another instance: its schedule
            return
        self._start(n, now)
        self.on_state("followup", n.alert_id, {"episode": n.episode, "opened": now})

    def _start(self, n: Notification, at: float) -> None:
        p = n.policy
        assert p is not None
        self.started[n.alert_id] = (n.episode, at, True)
        if len(self.started) > MAX_TRACKED:
            del self.started[next(iter(self.started))]
        if p.repeat > 0:
            heapq.heappush(self._heap, (at + p.repeat, next(self._seq), n.alert_id, n.episode, -1))
        for i, step in enumerate(p.escalate):
            heapq.heappush(self._heap, (at + step.after, next(self._seq), n.alert_id, n.episode, i))

    def observed(self, n: Notification) -> None:
        """The alert is open here: schedule what another instance started for it, if not yet done."""
        found = self.started.get(n.alert_id)
        if found is not None and found[0] == n.episode and not found[2] and n.policy is not None:
            self._start(n, found[1])

    def import_(self, alert_id: str, value: Mapping[str, Any] | None) -> None:
        if value is None:
            self.started.pop(alert_id, None)
            return
        episode, at = str(value["episode"]), float(value["opened"])
        found = self.started.get(alert_id)
        if found is not None and found[:2] == (episode, at):
            return
        if found is None and len(self.started) >= MAX_TRACKED:
            return
        self.started[alert_id] = (episode, at, False)
        n = self.acks.open.get(alert_id)
        if n is not None:
            self.observed(n)

    def closed(self, alert_id: str) -> None:
        self.started.pop(alert_id, None)

    def next_deadline(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def due(self, now: float) -> list[Notification]:
        out = []
        while self._heap and self._heap[0][0] <= now:
            at, _, aid, episode, step = heapq.heappop(self._heap)
            n = self.acks.open.get(aid)
            if n is None or n.episode != episode or self.acks.acked(n) or n.policy is None:
                continue  # resolved, a new episode, or acknowledged: nothing more to say
            if self.acks.gone(n):
                self.acks.closed(aid)
                continue
            if step < 0:
                if at + n.policy.repeat <= now:  # a new leader behind the schedule: only the latest repeat
                    heapq.heappush(self._heap, (at + n.policy.repeat, next(self._seq), aid, episode, -1))
                    continue
                k = int((at - n.created) // n.policy.repeat) if n.policy.repeat else 0
                out.append(replace(n, nid=short_hash(n.nid, "repeat", str(k)), created=at))
                if self.on_step is not None:
                    self.on_step(out[-1], -1)
                heapq.heappush(self._heap, (at + n.policy.repeat, next(self._seq), aid, episode, -1))
            else:
                s = n.policy.escalate[step]
                audience = Audience(tags=s.tags + tuple(CHANNEL_TAG + c for c in s.channels), users=s.users)
                out.append(replace(n, nid=short_hash(n.nid, "escalate", str(step)), audience=audience))
                if self.on_step is not None:
                    self.on_step(out[-1], step)
                last = max(e.after for e in n.policy.escalate)
                if not n.resolves and not n.policy.repeat and s.after == last:
                    self.acks.closed(aid)  # an event rule's alert: nothing more will come of it
        return out


# -- per recipient: quiet hours and rate limit ---------------------------------------------------------------
def _clock_time(text: str) -> time:
    return time.fromisoformat(text)


class QuietHours:
    """No notifications between ``start`` and ``end`` in the recipient's time zone (its registration's, else
    ``default_tz``), unless the rule overrides quiet hours (for critical alerts)."""

    name = "quiet_hours"

    def __init__(self, start: str, end: str, default_tz: str = "UTC") -> None:
        self.start, self.end = _clock_time(start), _clock_time(end)
        self.default = ZoneInfo(default_tz)
        self._zones: dict[str, ZoneInfo] = {}

    def _zone(self, name: str | None) -> ZoneInfo:
        if not name:
            return self.default
        z = self._zones.get(name)
        if z is None:
            try:
                z = ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                z = self.default
            if len(self._zones) >= 1000:  # names come from registrations: a bounded cache
                self._zones.clear()
            self._zones[name] = z
        return z

    def quiet(self, reg: Registration, now: float, window: tuple[time, time] | None = None) -> bool:
        start, end = window or (self.start, self.end)
        if start == end:
            return False
        local = datetime.fromtimestamp(now, self._zone(reg.timezone)).time()
        if start < end:
            return start <= local < end
        return local >= start or local < end  # across midnight

    def allows(self, n: Notification, reg: Registration, now: float) -> bool:
        """A rule's own quiet hours replace the configured ones; ``override`` ignores both."""
        p = n.policy
        if p is not None and p.quiet_override:
            return True
        return not self.quiet(reg, now, p.quiet_window if p is not None else None)


@dataclass(slots=True)
class _Window:
    start: float
    reg: Registration
    sent: int = 0
    held: int = 0
    last: Notification | None = None


class RateLimit:
    """At most ``limit`` notifications per recipient per ``per`` seconds; what is held back is summed up in
    one "and N more" notification when the window ends."""

    name = "rate_limit"

    def __init__(self, limit: int, per: float) -> None:
        self.limit, self.per = limit, per
        self._windows: dict[str, _Window] = {}
        self._ended: dict[tuple[str, float], _Window] = {}  # windows whose summary is due
        self._heap: list[tuple[float, str, float]] = []  # (end, registration id, window start)
        self._prune_at = 10_000

    def allows(self, n: Notification, reg: Registration, now: float) -> bool:
        w = self._windows.get(reg.id)
        if w is None or now >= w.start + self.per:
            if w is not None and w.held:
                self._ended[(reg.id, w.start)] = w
            w = self._windows[reg.id] = _Window(now, reg)
            if len(self._windows) > self._prune_at:
                self._prune(now)
        if w.sent < self.limit:
            w.sent += 1
            return True
        if w.held == 0:
            heapq.heappush(self._heap, (w.start + self.per, reg.id, w.start))
        w.held += 1
        w.last = n
        return False

    def _prune(self, now: float) -> None:
        """Forgets windows that ended with nothing held (those with a summary due leave at ``due``)."""
        self._windows = {k: w for k, w in self._windows.items() if w.held or now < w.start + self.per}
        self._prune_at = max(10_000, 2 * len(self._windows))

    def __len__(self) -> int:
        return len(self._windows)

    def next_deadline(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def due(self, now: float) -> list[tuple[Notification, Registration]]:
        out = []
        while self._heap and self._heap[0][0] <= now:
            at, reg_id, start = heapq.heappop(self._heap)
            w = self._ended.pop((reg_id, start), None)
            if w is None:
                current = self._windows.get(reg_id)
                if current is not None and current.start == start:
                    w = self._windows.pop(reg_id)
            if w is None or w.last is None or not w.held:
                continue
            summary = replace(
                w.last,
                nid=short_hash("summary", reg_id, str(w.start)),
                title=f"… and {w.held} more",
                body=f"{w.held} more notifications were held back (at most {self.limit} per {self.per:g} s).",
                texts={},
                count=w.held,
                created=at,
            )
            out.append((summary, w.reg))
        return out


# -- all together --------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Due:
    notifications: list[Notification]  # to target and deliver
    deliveries: list[tuple[Notification, Registration]]  # already addressed (rate-limit summaries)


class NoiseControl:
    """The stages in their order: silences → cooldown → grouping (before targeting); quiet hours → rate
    limit (per recipient); repeats, escalation, group flushes and summaries when due."""

    def __init__(
        self,
        quiet_hours: QuietHours | None = None,
        rate_limit: RateLimit | None = None,
        on_schedule: Callable[[], None] | None = None,
        on_held: Callable[[str], None] | None = None,
        explain: Callable[[Notification, str, str, str | None], None] | None = None,
    ) -> None:
        self.silences = Silences()
        self.acks = Acks()
        self.cooldown = Cooldown()
        self.grouping = Grouping()
        self.followups = FollowUps(self.acks)
        # Without configured quiet hours, rules may still have their own (an empty window otherwise).
        self.quiet_hours = quiet_hours or QuietHours("00:00", "00:00")
        self.rate_limit = rate_limit
        self.on_schedule = on_schedule
        self.on_held = on_held
        self.explain = explain  # (notification, stage, detail, registration id): service/notify/explain.py
        self.suppressed: dict[str, int] = {}
        self.on_state: StateHook = _no_state  # this instance's changes of the shared state (a cluster's)
        self.cooldown.on_state = self.followups.on_state = self._state

    def _state(self, kind: str, key: str, value: Any) -> None:
        self.on_state(kind, key, value)

    def import_state(self, kind: str, key: str, value: Any) -> None:
        """Another instance's change of the shared state (``STATE_KINDS``); bad values raise ValueError."""
        try:
            if kind == "ack":
                self.acks.import_(key, value)
            elif kind == "cooldown":
                self.cooldown.import_(key, value)
            elif kind == "followup":
                self.followups.import_(key, value)
                if self.on_schedule is not None:
                    self.on_schedule()
            else:
                raise ValueError(f"no noise state of kind {kind!r}")
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"bad {kind} state for {key}: {exc!r}") from None

    def export_state(self) -> dict[str, dict[str, Any]]:
        """The shared state as ``import_state`` takes it, by kind and key (equal on converged instances)."""
        return {
            "ack": {k: self.acks.export(a) for k, a in sorted(self.acks._acks.items())},
            "cooldown": {
                k: {"at": at, "nid": nid, "for": held}
                for k, (at, nid, held) in sorted(self.cooldown._last.items())
            },
            "followup": {
                k: {"episode": e, "opened": at} for k, (e, at, _) in sorted(self.followups.started.items())
            },
        }

    def observe(self, n: Notification) -> None:
        """A follower saw the transition: what is open (so it can be acknowledged anywhere) and its follow-ups
        (scheduled as the leader started them), ready for a takeover."""
        if n.state == "resolved":
            self.acks.closed(n.alert_id)
            self.followups.closed(n.alert_id)
        elif n.state == "firing":
            self.acks.opened(n)
            self.followups.observed(n)

    def _held(
        self,
        stage: str,
        n: Notification,
        detail: str = "",
        reg: Registration | None = None,
        count: bool = True,
    ) -> None:
        if count:  # a grouped notification is explained but not counted: it goes out in the group's one
            self.suppressed[stage] = self.suppressed.get(stage, 0) + 1
            if self.on_held is not None:
                self.on_held(stage)
        if self.explain is not None:
            self.explain(n, stage, detail, reg.id if reg is not None else None)

    def before_target(self, n: Notification, now: float) -> list[Notification]:
        """What to send now for this notification (nothing, or it): silence, cooldown, grouping."""
        if n.state == "resolved":
            self.acks.closed(n.alert_id)
            self.followups.closed(n.alert_id)
        elif n.state == "firing":
            self.acks.opened(n)  # open (and acknowledgeable) even when silenced or cooled down
        silence = self.silences.silencing(n, now)
        if silence is not None:
            self._held("silence", n, _silence_detail(silence))
            return []
        if not self.cooldown.admit(n, now):
            self._held(self.cooldown.name, n)
            return []
        if n.state == "firing" and n.policy is not None:
            before = self.next_deadline()
            self.followups.opened(n, now)
            grouped = not self.grouping.admit(n, now)
            if self.on_schedule is not None and self.next_deadline() != before:
                self.on_schedule()
            if grouped:
                self._held(self.grouping.name, n, count=False)
                return []
        elif n.policy is not None and n.policy.group_by is not None and not self.grouping.admit(n, now):
            if self.on_schedule is not None:
                self.on_schedule()
            self._held(self.grouping.name, n, count=False)
            return []
        return [n]

    def for_recipient(self, n: Notification, reg: Registration, now: float) -> bool:
        if n.policy is not None and not self.quiet_hours.allows(n, reg, now):
            self._held(self.quiet_hours.name, n, reg=reg)
            return False
        if n.policy is None and self.quiet_hours.quiet(reg, now):
            self._held(self.quiet_hours.name, n, reg=reg)
            return False
        if self.rate_limit is not None:
            before = self.rate_limit.next_deadline()
            if not self.rate_limit.allows(n, reg, now):
                self._held(self.rate_limit.name, n, reg=reg)
                if self.on_schedule is not None and self.rate_limit.next_deadline() != before:
                    self.on_schedule()  # a summary is due at the end of the window
                return False
        return True

    def next_deadline(self) -> float | None:
        times = [
            t
            for t in (
                self.grouping.next_deadline(),
                self.followups.next_deadline(),
                self.rate_limit.next_deadline() if self.rate_limit else None,
            )
            if t is not None
        ]
        return min(times) if times else None

    def due(self, now: float) -> Due:
        notes = self.grouping.due(now)
        for n in self.followups.due(now):
            silence = self.silences.silencing(n, now)
            if silence is None:
                notes.append(n)
            else:
                self._held("silence", n, _silence_detail(silence))
        deliveries = self.rate_limit.due(now) if self.rate_limit else []
        return Due(notes, deliveries)

    def ack(self, alert_id: str, by: str, comment: str, now: float) -> Ack | None:
        return self.acks.ack(alert_id, by, comment, now)

    def open_alerts(self) -> Mapping[str, Notification]:
        """Firing alerts: what GET /v1/alerts lists and tocsin_open_alerts counts."""
        self.acks.prune()
        return self.acks.open
