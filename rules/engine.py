"""The rule engine: pure decisions over events and an injected clock.

``evaluate(event, state, now)`` and ``tick(state, now)`` return the alert transitions they cause. Nothing here
sleeps or reads the wall clock, so a "CPU above 90 for 2 minutes" rule is tested, and a recorded day replayed,
without waiting. For speed the state is updated in place and returned.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Literal

from rules.conditions import MISSING, Predicate, as_number, compile_conditions, get_parts, parse_path
from rules.cumulocity import Alarm, alarm_from_payload, alarms_from_smartrest
from rules.event import Event, short_hash
from rules.policy import Policy, compile_policy
from rules.schema import Rule, Threshold
from rules.templates import Expression, Template, compile_expression, compile_tag_template, compile_template
from rules.topics import TopicFilter, TopicIndex, compile_filter, match_levels

TransitionState = Literal["firing", "resolved"]
Kind = Literal["event", "threshold", "absent", "change", "alarm"]
_EMPTY: Mapping[str, Any] = MappingProxyType({})
CUMULOCITY = "cumulocity"  # the source name of platform alarms (rules/cumulocity.py)
TENANT = "tenant"  # their tenant: an attribute of the event and always a label of its alerts


@dataclass(slots=True)
class Transition:
    """An alert opening or closing. ``alert_id`` and ``episode`` are the same on every instance.

    The fields after ``audience_users`` come from the rule's notification settings; they have defaults so
    that code building transitions by hand keeps working."""

    alert_id: str
    episode: str
    rule: str
    labels: Mapping[str, str]
    severity: str
    state: TransitionState
    title: str
    body: str
    time: float
    audience_tags: tuple[str, ...]
    audience_users: tuple[str, ...]
    audience_channels: tuple[str, ...] = ()
    texts: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # locale -> (title, body)
    sound: str | None = None
    category: str | None = None
    priority: str = "normal"
    collapse_key: str | None = None
    data: Mapping[str, str] = field(default_factory=dict)
    policy: Policy | None = None  # the rule's noise control, read by the notify stages
    on_ambiguous: str = "resend"  # after a failover: resend or skip a send the old leader never confirmed
    # The Cumulocity tenant whose alarm caused it (None for every other source): only that tenant's
    # registrations may receive it.
    tenant: str | None = None
    audience_expression: str | None = None  # the rule's templated tag expression, rendered for this alert
    # False for an event rule's alert (a doorbell): nothing resolves it, so it is never an open alert.
    resolves: bool = True


@dataclass(frozen=True, slots=True)
class Rendering:
    """The optional parts of a rule's notification, compiled; None when a rule uses none of them."""

    locales: tuple[tuple[str, Template, Template], ...]
    resolved: tuple[Template, Template] | None
    collapse_key: Template | None
    data: tuple[tuple[str, Template], ...]


@dataclass(frozen=True, slots=True)
class CompiledRule:
    rule: Rule
    filter: TopicFilter
    condition: Predicate | None
    title: Template
    body: Template
    kind: Kind = "event"
    role: Literal["main", "availability"] = "main"
    expr: Expression | None = None
    value: tuple[str, ...] = ()  # the payload path a threshold, change or availability reads
    states: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())  # (from|online, to|offline)
    rendering: Rendering | None = None
    policy: Policy | None = None
    id: str = ""  # the rule's id (a field, not a property: read on every event)
    priority: str = "normal"
    audience_expression: Template | None = None
    # Whether a template of the rule reads the event's payload or attributes: if none does, an absence rule
    # keeps of each device's last event only its id, topic, device and time (a third of its memory).
    reads_payload: bool = True


@dataclass(slots=True)
class AlertState:
    rule: str
    labels: dict[str, str]
    status: Literal["pending", "firing", "watching", "clearing"]
    episode: str
    since: float
    deadline: float | None
    last_event: Event | None
    last_value: float | None = None


@dataclass(slots=True)
class EngineState:
    alerts: dict[str, AlertState] = field(default_factory=dict)
    timers: list[tuple[float, str]] = field(default_factory=list)  # heap of (deadline, alert_id)
    value_errors: int = 0  # threshold events whose value was missing or not a number
    values: dict[str, str] = field(default_factory=dict)  # last state seen by change rules, per alert id
    # Alert ids that evaluate/tick may have changed since the store last looked (service/alert_store.py
    # writes only those); bounded by what happened between two commits.
    touched: set[str] = field(default_factory=set)
    # Per rule, the alert ids it keeps state for (an alert, a change rule's value), least recently seen
    # first: at ``RuleEngine.max_tracked`` the oldest is forgotten. Key "": restored values whose rule is
    # not stored; a rule that sees one again adopts it.
    tracked: dict[str, OrderedDict[str, None]] = field(default_factory=dict)
    evicted: dict[str, int] = field(default_factory=dict)  # per rule: alert ids forgotten at the limit


# A caller that needs to know which alerts one event touched (the Cumulocity runtime, to keep them in the
# tenant) sets a set here while the event is evaluated; the service adds the alert ids to it.
touched_by_event: ContextVar[set[str] | None] = ContextVar("tocsin_touched_by_event", default=None)


@dataclass(frozen=True, slots=True)
class RuleSet:
    rules: tuple[CompiledRule, ...]
    index: TopicIndex[CompiledRule]

    def subscriptions(self) -> list[str]:
        return self.index.subscriptions()

    def matching(self, topic: str) -> list[CompiledRule]:
        return self.index.lookup(topic.split("/"))


def state_text(value: Any) -> str:
    """States compare as lower-case text: ``1``, ``1.0`` and ``"1"`` are one state, ``ON`` and ``on`` too."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).lower()


def _state_set(values: tuple[Any, ...]) -> frozenset[str]:
    """YAML reads on/off/yes/no as booleans; a rule saying ``to: [off]`` means the text too."""
    out: set[str] = set()
    for v in values:
        out.add(state_text(v))
        if isinstance(v, bool):
            out.update(("on", "yes") if v else ("off", "no"))
    return frozenset(out)


def _rendering(rule: Rule) -> Rendering | None:
    if not (rule.locales or rule.resolved or rule.collapse_key or rule.data):
        return None
    locales = tuple(
        (name, compile_template(lt.title or rule.title), compile_template(lt.body or rule.body))
        for name, lt in rule.locales.items()
    )
    resolved = None
    if rule.resolved is not None:
        resolved = (
            compile_template(rule.resolved.title or rule.title),
            compile_template(rule.resolved.body if rule.resolved.body is not None else rule.body),
        )
    return Rendering(
        locales,
        resolved,
        compile_template(rule.collapse_key) if rule.collapse_key else None,
        tuple((k, compile_template(v)) for k, v in rule.data.items()),
    )


def _reads_payload(rule: Rule) -> bool:
    texts = [rule.title, rule.body, rule.collapse_key or "", rule.audience.expression or ""]
    texts += [t for lt in rule.locales.values() for t in (lt.title or "", lt.body or "")]
    texts += list(rule.data.values())
    if rule.resolved is not None:
        texts += [rule.resolved.title or "", rule.resolved.body or ""]
    return any("payload" in t or "attributes" in t for t in texts)


def compile_rule(rule: Rule) -> list[CompiledRule]:
    """The compiled rule, and a second entry for its availability topic when it has one."""
    value: tuple[str, ...] = ()
    states: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())
    if rule.threshold is not None:
        value = parse_path(rule.threshold.value)
    elif rule.change is not None:
        value = parse_path(rule.change.value)
        states = (
            _state_set(rule.change.from_),
            _state_set(rule.change.to),
        )
    main = CompiledRule(
        rule=rule,
        filter=compile_filter(rule.topic_filter),
        condition=compile_conditions(rule.when),
        title=compile_template(rule.title),
        body=compile_template(rule.body),
        kind=rule.kind,
        expr=compile_expression(rule.expr) if rule.expr else None,
        value=value,
        states=states,
        rendering=_rendering(rule),
        policy=compile_policy(rule),
        id=rule.id,
        priority=rule.priority or ("high" if rule.severity in ("major", "critical") else "normal"),
        audience_expression=compile_tag_template(rule.audience.expression)
        if rule.audience.expression
        else None,
        reads_payload=_reads_payload(rule),
    )
    out = [main]
    avail = rule.absent.availability if rule.absent is not None else None
    if avail is not None:
        out.append(
            replace(
                main,
                filter=compile_filter(avail.topic),
                condition=None,
                expr=None,
                role="availability",
                value=parse_path(avail.value),
                states=(
                    _state_set(avail.online),
                    _state_set(avail.offline),
                ),
            )
        )
    return out


def compile_rules(rules: list[Rule]) -> RuleSet:
    index: TopicIndex[CompiledRule] = TopicIndex()
    compiled = []
    for rule in rules:
        if not rule.enabled:
            continue
        entries = compile_rule(rule)
        for c in entries:
            index.add(c.filter, c)
        compiled.append(entries[0])
    return RuleSet(tuple(compiled), index)


def alert_id(rule_id: str, labels: Mapping[str, str]) -> str:
    parts = [rule_id]
    for k in sorted(labels):
        parts += (k, labels[k])
    return short_hash(*parts)


# Called with (rule id, limit) each time a rule forgets its least recently seen device at the limit.
EvictHook = Callable[[str, int], None]


class RuleEngine:
    def __init__(
        self,
        ruleset: RuleSet,
        cache_size: int = 50_000,
        max_tracked: int = 100_000,
        on_evict: EvictHook | None = None,
    ) -> None:
        """``max_tracked``: how many alert ids (devices, label sets) one rule keeps state for."""
        self.ruleset = ruleset
        self.max_tracked = max_tracked
        self.on_evict = on_evict
        self._by_id = {c.id: c for c in ruleset.rules}
        # Devices publish on the same topics again and again: remember which rules (and labels) each topic
        # matches, and each alert's id, instead of walking the index and hashing per event.
        self._topic_cache: dict[str, list[tuple[CompiledRule, dict[str, str], str]]] = {}
        self._alarm_ids: dict[tuple[str, str, str], str] = {}
        self._cache_size = cache_size

    def _candidates(self, topic: str) -> list[tuple[CompiledRule, dict[str, str], str]]:
        """The rules matching ``topic``, with their labels and alert id (alarm rules add the alarm type to
        their labels, so their id is made per alarm)."""
        found = self._topic_cache.get(topic)
        if found is None:
            levels = topic.split("/")
            found = []
            for c in self.ruleset.index.lookup(levels):
                labels = match_levels(c.filter, levels)
                if labels is not None:
                    found.append((c, labels, "" if c.kind == "alarm" else alert_id(c.id, labels)))
            if len(self._topic_cache) >= self._cache_size:
                self._topic_cache.clear()
                self._alarm_ids.clear()
            self._topic_cache[topic] = found
        return found

    # -- events -------------------------------------------------------------------------------------------
    def evaluate(self, event: Event, state: EngineState, now: float) -> tuple[EngineState, list[Transition]]:
        out: list[Transition] = []
        found = self._topic_cache.get(event.topic)
        if found is None:
            found = self._candidates(event.topic)
        tenant = event.attributes.get(TENANT) if event.source == CUMULOCITY else None
        for c, labels, aid in found:
            if c.condition is not None and not c.condition(event.payload):
                continue
            if tenant is not None and labels.get(TENANT) != tenant:
                # A tenant's alarms never share an alert with another tenant's, whatever the rule's topic
                # filter names: the tenant is always one of the labels.
                labels = {**labels, TENANT: tenant}
                aid = "" if c.kind == "alarm" else alert_id(c.id, labels)
            if c.expr is not None and not c.expr(_context(c, labels, "firing", event, now, None)):
                continue
            kind = c.kind
            if kind == "alarm":
                self._alarms(c, labels, event, state, now, out)
                continue
            if kind == "event":  # keeps no state
                out.append(self._transition(c, aid, event.id, labels, "firing", event, now, None))
            elif kind == "threshold":
                state.touched.add(aid)
                self._threshold(c, aid, labels, event, state, now, out)
                self._track(state, c.id, aid)
            elif kind == "absent":
                state.touched.add(aid)
                if c.role == "availability":
                    self._availability(c, aid, labels, event, state, now, out)
                else:
                    self._seen(c, aid, labels, event, state, now, out)
                self._track(state, c.id, aid)
            else:
                state.touched.add(aid)
                self._change(c, aid, labels, event, state, now, out)
                self._track(state, c.id, aid)
        if len(state.timers) > 2 * len(state.alerts) + 1024:
            compact_timers(state)
        return state, out

    # -- bounds -------------------------------------------------------------------------------------------
    def _track(self, state: EngineState, rule: str, aid: str) -> None:
        """Keeps ``aid`` as the most recently seen of ``rule``'s; forgets the least recent at the limit."""
        tracked = state.tracked.get(rule)
        if tracked is None:
            tracked = state.tracked[rule] = OrderedDict()
        if aid not in state.alerts and aid not in state.values:
            tracked.pop(aid, None)
            return
        if aid in tracked:
            tracked.move_to_end(aid)
            return
        tracked[aid] = None
        orphans = state.tracked.get("")
        if orphans:
            orphans.pop(aid, None)
        while len(tracked) > self.max_tracked:
            old, _ = tracked.popitem(last=False)
            state.alerts.pop(old, None)
            state.values.pop(old, None)
            state.touched.add(old)
            state.evicted[rule] = state.evicted.get(rule, 0) + 1
            if self.on_evict is not None:
                self.on_evict(rule, self.max_tracked)

    def forget_rules(self, state: EngineState) -> None:
        """Drops what rules no longer loaded kept (after a reload): their values and tracking; their
        alerts go at their next timer, or now when they have none."""
        for rule in [r for r in state.tracked if r and r not in self._by_id]:
            for aid in state.tracked.pop(rule):
                state.values.pop(aid, None)
                alert = state.alerts.get(aid)
                if alert is not None and alert.deadline is None:
                    del state.alerts[aid]
                state.touched.add(aid)

    def _threshold(
        self,
        c: CompiledRule,
        aid: str,
        labels: dict[str, str],
        event: Event,
        state: EngineState,
        now: float,
        out: list[Transition],
    ) -> None:
        th = c.rule.threshold
        assert th is not None
        value = as_number(get_parts(event.payload, c.value))
        if value is None:
            state.value_errors += 1
            return
        alert = state.alerts.get(aid)
        beyond = _beyond(th, value)
        if alert is None:
            if not beyond:
                return
            if th.for_ <= 0:
                state.alerts[aid] = AlertState(c.id, labels, "firing", event.id, now, None, event, value)
                out.append(self._transition(c, aid, event.id, labels, "firing", event, now, value))
            else:
                deadline = now + th.for_
                state.alerts[aid] = AlertState(c.id, labels, "pending", event.id, now, deadline, event, value)
                heapq.heappush(state.timers, (deadline, aid))
            return
        alert.last_event, alert.last_value = event, value
        if alert.status == "pending":
            if not beyond:
                del state.alerts[aid]  # the level must hold for the whole 'for' period
            elif alert.deadline is not None and now >= alert.deadline:
                alert.status, alert.deadline = "firing", None
                out.append(self._transition(c, aid, alert.episode, labels, "firing", event, now, value))
        elif alert.status == "firing" and _cleared(th, value):
            if th.keep_firing_for > 0:  # stays firing a while, so that a flapping level does not flap alerts
                alert.status, alert.deadline = "clearing", now + th.keep_firing_for
                heapq.heappush(state.timers, (alert.deadline, aid))
                return
            del state.alerts[aid]
            if c.rule.resolve_notice:
                out.append(self._transition(c, aid, alert.episode, labels, "resolved", event, now, value))
        elif alert.status == "clearing" and beyond:
            alert.status, alert.deadline = "firing", None

    def _seen(
        self,
        c: CompiledRule,
        aid: str,
        labels: dict[str, str],
        event: Event,
        state: EngineState,
        now: float,
        out: list[Transition],
    ) -> None:
        ab = c.rule.absent
        assert ab is not None
        alert = state.alerts.get(aid)
        if alert is not None and alert.status == "firing" and c.rule.resolve_notice:
            out.append(self._transition(c, aid, alert.episode, labels, "resolved", event, now, None))
        deadline = now + ab.for_
        if not c.reads_payload and (event.payload is not None or event.attributes):
            event = Event(event.id, event.source, event.topic, event.device, event.time, None, _EMPTY)
        state.alerts[aid] = AlertState(c.id, labels, "watching", event.id, now, deadline, event)
        heapq.heappush(state.timers, (deadline, aid))

    def _availability(
        self,
        c: CompiledRule,
        aid: str,
        labels: dict[str, str],
        event: Event,
        state: EngineState,
        now: float,
        out: list[Transition],
    ) -> None:
        """Online/offline from an availability topic or MQTT last will: offline fires at once, online counts
        as a sign of life."""
        value = get_parts(event.payload, c.value)
        if value is MISSING:
            return
        text = state_text(value)
        online, offline = c.states
        if text in offline:
            alert = state.alerts.get(aid)
            if alert is None or alert.status != "firing":
                state.alerts[aid] = AlertState(c.id, labels, "firing", event.id, now, None, event)
                out.append(self._transition(c, aid, event.id, labels, "firing", event, now, None))
        elif text in online:
            self._seen(c, aid, labels, event, state, now, out)

    def _change(
        self,
        c: CompiledRule,
        aid: str,
        labels: dict[str, str],
        event: Event,
        state: EngineState,
        now: float,
        out: list[Transition],
    ) -> None:
        value = get_parts(event.payload, c.value)
        if value is MISSING:
            state.value_errors += 1
            return
        text = state_text(value)
        before = state.values.get(aid)
        state.values[aid] = text
        from_, to = c.states
        alert = state.alerts.get(aid)
        if text in to:
            if alert is None and before is not None and before != text and (not from_ or before in from_):
                state.alerts[aid] = AlertState(c.id, labels, "firing", event.id, now, None, event)
                out.append(self._transition(c, aid, event.id, labels, "firing", event, now, None))
        elif alert is not None:
            del state.alerts[aid]
            if c.rule.resolve_notice:
                out.append(self._transition(c, aid, alert.episode, labels, "resolved", event, now, None))

    def _alarms(
        self,
        c: CompiledRule,
        labels: dict[str, str],
        event: Event,
        state: EngineState,
        now: float,
        out: list[Transition],
    ) -> None:
        match = c.rule.alarm
        assert match is not None
        if match.smartrest:
            alarms: list[Alarm] = list(alarms_from_smartrest(event.payload))
        else:
            one = alarm_from_payload(event.payload)
            alarms = [one] if one is not None else []
        for a in alarms:
            if match.types and a.type not in match.types:
                continue
            own = labels if "type" in labels else {**labels, "type": a.type}
            key = (c.id, event.topic, a.type)
            aid = self._alarm_ids.get(key)
            if aid is None:
                if len(self._alarm_ids) >= self._cache_size:
                    self._alarm_ids.clear()
                aid = self._alarm_ids[key] = alert_id(c.id, own)
            state.touched.add(aid)
            alert = state.alerts.get(aid)
            severity_ok = not match.severity or a.severity in match.severity
            if a.status == "CLEARED" or (alert is not None and a.severity is not None and not severity_ok):
                if alert is not None:
                    del state.alerts[aid]
                    if c.rule.resolve_notice:
                        out.append(
                            self._transition(c, aid, alert.episode, own, "resolved", event, now, None, a)
                        )
            elif alert is None and a.status in match.status and severity_ok:
                state.alerts[aid] = AlertState(c.id, own, "firing", event.id, now, None, event)
                out.append(self._transition(c, aid, event.id, own, "firing", event, now, None, a))
            elif alert is not None:
                alert.last_event = event
            self._track(state, c.id, aid)

    def reopened(self, aid: str, alert: AlertState) -> Transition | None:
        """The firing transition of an alert restored from storage (not sent again: noise control needs the
        open alert to acknowledge, repeat and escalate it); None when its rule is gone or it is not firing."""
        c = self._by_id.get(alert.rule)
        if c is None or alert.status != "firing":
            return None
        event = alert.last_event
        alarm = alarm_from_payload(event.payload) if c.kind == "alarm" and event is not None else None
        return self._transition(
            c, aid, alert.episode, alert.labels, "firing", event, alert.since, alert.last_value, alarm
        )

    # -- time ---------------------------------------------------------------------------------------------
    def next_deadline(self, state: EngineState) -> float | None:
        timers = state.timers
        while timers:
            deadline, aid = timers[0]
            alert = state.alerts.get(aid)
            if alert is not None and alert.deadline == deadline:
                return deadline
            heapq.heappop(timers)  # stale: the alert moved on or went away
        return None

    def tick(self, state: EngineState, now: float) -> tuple[EngineState, list[Transition]]:
        out: list[Transition] = []
        timers = state.timers
        while timers and timers[0][0] <= now:
            deadline, aid = heapq.heappop(timers)
            alert = state.alerts.get(aid)
            if alert is None or alert.deadline != deadline:
                continue
            state.touched.add(aid)
            c = self._by_id.get(alert.rule)
            if c is None:
                del state.alerts[aid]
                _untrack(state, alert.rule, aid)
                continue
            # Transitions happen at the deadline, not when the tick ran late.
            if alert.status == "clearing":
                del state.alerts[aid]
                _untrack(state, alert.rule, aid)
                if c.rule.resolve_notice:
                    out.append(
                        self._transition(
                            c,
                            aid,
                            alert.episode,
                            alert.labels,
                            "resolved",
                            alert.last_event,
                            deadline,
                            alert.last_value,
                        )
                    )
                continue
            alert.status, alert.deadline = "firing", None
            out.append(
                self._transition(
                    c,
                    aid,
                    alert.episode,
                    alert.labels,
                    "firing",
                    alert.last_event,
                    deadline,
                    alert.last_value,
                )
            )
        return state, out

    # -- rendering ----------------------------------------------------------------------------------------
    def _transition(
        self,
        c: CompiledRule,
        aid: str,
        episode: str,
        labels: Mapping[str, str],
        st: TransitionState,
        event: Event | None,
        now: float,
        value: float | None,
        alarm: Alarm | None = None,
    ) -> Transition:
        ctx = _context(c, labels, st, event, now, value)
        if alarm is not None:
            ctx["alarm"] = {
                "type": alarm.type,
                "severity": alarm.severity,
                "status": alarm.status,
                "text": alarm.text,
            }
        rule = c.rule
        aud = rule.audience
        title_t, body_t = c.title, c.body
        r = c.rendering
        tenant = None
        platform: Mapping[str, str] = _EMPTY
        if event is not None and event.source == CUMULOCITY:
            # What the Cumulocity alarm app expects in a push (alarmId, sourceId), and what acknowledging
            # the alert needs to find the platform alarm again.
            tenant = event.attributes.get(TENANT)
            alarm_id = event.payload.get("id") if isinstance(event.payload, Mapping) else None
            platform = {"alarmId": str(alarm_id), "sourceId": event.device or ""} if alarm_id else _EMPTY
        if r is None:
            return Transition(
                aid,
                episode,
                c.id,
                labels,
                rule.severity,
                st,
                title_t.render(ctx),
                body_t.render(ctx),
                now,
                aud.tags,
                aud.users,
                aud.channels,
                {},
                rule.sound,
                rule.category,
                c.priority,
                None,
                platform,
                c.policy,
                rule.on_ambiguous,
                tenant,
                c.audience_expression.render(ctx) if c.audience_expression is not None else None,
                c.kind != "event",
            )
        t = Transition(
            alert_id=aid,
            episode=episode,
            rule=c.id,
            labels=labels,
            severity=rule.severity,
            state=st,
            title="",
            body="",
            time=now,
            audience_tags=aud.tags,
            audience_users=aud.users,
            audience_channels=aud.channels,
            sound=rule.sound,
            category=rule.category,
            priority=c.priority,
            policy=c.policy,
            on_ambiguous=rule.on_ambiguous,
            tenant=tenant,
            data=platform,
            audience_expression=c.audience_expression.render(ctx)
            if c.audience_expression is not None
            else None,
            resolves=c.kind != "event",
        )
        if r is not None:
            resolve_notice = st == "resolved" and r.resolved is not None
            if resolve_notice:
                assert r.resolved is not None
                title_t, body_t = r.resolved
            if r.locales and not resolve_notice:  # the locales translate the firing text, not the notice
                t.texts = {name: (lt.render(ctx), lb.render(ctx)) for name, lt, lb in r.locales}
            if r.collapse_key is not None:
                t.collapse_key = r.collapse_key.render(ctx)
            if r.data:
                t.data = {**platform, **{k: v.render(ctx) for k, v in r.data}}
        t.title, t.body = title_t.render(ctx), body_t.render(ctx)
        return t


def _untrack(state: EngineState, rule: str, aid: str) -> None:
    tracked = state.tracked.get(rule)
    if tracked is not None and aid not in state.values:
        tracked.pop(aid, None)


def compact_timers(state: EngineState) -> None:
    """Rebuilds the timer heap from the alerts' deadlines: a device seen again and again under an absence
    rule leaves one stale entry each time, which would otherwise wait until its deadline to go."""
    state.timers = [(a.deadline, aid) for aid, a in state.alerts.items() if a.deadline is not None]
    heapq.heapify(state.timers)


def _context(
    c: CompiledRule,
    labels: Mapping[str, str],
    st: TransitionState,
    event: Event | None,
    now: float,
    value: float | None,
) -> dict[str, Any]:
    return {
        **labels,
        "labels": labels,
        "rule": c.id,
        "severity": c.rule.severity,
        "state": st,
        "value": value,
        "payload": event.payload if event else None,
        "topic": event.topic if event else None,
        "device": (event.device if event else None) or labels.get("device"),
        "attributes": event.attributes if event else _EMPTY,
        "time": now,
    }


def _beyond(th: Threshold, value: float) -> bool:
    return value > th.above if th.above is not None else value < th.below  # type: ignore[operator]


def _cleared(th: Threshold, value: float) -> bool:
    if th.above is not None:
        return value <= (th.clear if th.clear is not None else th.above)
    assert th.below is not None
    return value >= (th.clear if th.clear is not None else th.below)
