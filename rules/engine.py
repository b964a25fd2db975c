"""The rule engine: pure decisions over events and an injected clock.

``evaluate(event, state, now)`` and ``tick(state, now)`` return the alert transitions they cause. Nothing here
sleeps or reads the wall clock, so a "CPU above 90 for 2 minutes" rule is tested, and a recorded day replayed,
without waiting. For speed the state is updated in place and returned.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from rules.conditions import Predicate, as_number, compile_conditions, get_path
from rules.event import Event, short_hash
from rules.schema import Rule, Threshold
from rules.templates import Template, compile_template
from rules.topics import TopicFilter, TopicIndex, compile_filter, match_levels

TransitionState = Literal["firing", "resolved"]


@dataclass(slots=True)
class Transition:
    """An alert opening or closing. ``alert_id`` and ``episode`` are the same on every instance."""

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
    on_ambiguous: str = "resend"


@dataclass(frozen=True, slots=True)
class CompiledRule:
    rule: Rule
    filter: TopicFilter
    condition: Predicate | None
    title: Template
    body: Template

    @property
    def id(self) -> str:
        return self.rule.id


@dataclass(slots=True)
class AlertState:
    rule: str
    labels: dict[str, str]
    status: Literal["pending", "firing", "watching"]
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


@dataclass(frozen=True, slots=True)
class RuleSet:
    rules: tuple[CompiledRule, ...]
    index: TopicIndex[CompiledRule]

    def subscriptions(self) -> list[str]:
        return self.index.subscriptions()

    def matching(self, topic: str) -> list[CompiledRule]:
        return self.index.lookup(topic.split("/"))


def compile_rules(rules: list[Rule]) -> RuleSet:
    index: TopicIndex[CompiledRule] = TopicIndex()
    compiled = []
    for rule in rules:
        if not rule.enabled:
            continue
        c = CompiledRule(
            rule=rule,
            filter=compile_filter(rule.topic),
            condition=compile_conditions(rule.when),
            title=compile_template(rule.title),
            body=compile_template(rule.body),
        )
        index.add(c.filter, c)
        compiled.append(c)
    return RuleSet(tuple(compiled), index)


def alert_id(rule_id: str, labels: Mapping[str, str]) -> str:
    parts = [rule_id]
    for k in sorted(labels):
        parts += (k, labels[k])
    return short_hash(*parts)


class RuleEngine:
    def __init__(self, ruleset: RuleSet, cache_size: int = 50_000) -> None:
        self.ruleset = ruleset
        self._by_id = {c.id: c for c in ruleset.rules}
        # Devices publish on the same topics again and again: remember which rules (and labels) each topic
        # matches, and each alert's id, instead of walking the index and hashing per event.
        self._topic_cache: dict[str, list[tuple[CompiledRule, dict[str, str]]]] = {}
        self._aid_cache: dict[tuple[str, str], str] = {}
        self._cache_size = cache_size

    def _candidates(self, topic: str) -> list[tuple[CompiledRule, dict[str, str]]]:
        found = self._topic_cache.get(topic)
        if found is None:
            levels = topic.split("/")
            found = []
            for c in self.ruleset.index.lookup(levels):
                labels = match_levels(c.filter, levels)
                if labels is not None:
                    found.append((c, labels))
            if len(self._topic_cache) >= self._cache_size:
                self._topic_cache.clear()
                self._aid_cache.clear()
            self._topic_cache[topic] = found
        return found

    def _alert_id(self, c: CompiledRule, topic: str, labels: dict[str, str]) -> str:
        key = (c.id, topic)
        aid = self._aid_cache.get(key)
        if aid is None:
            aid = self._aid_cache[key] = alert_id(c.id, labels)
        return aid

    # -- events -------------------------------------------------------------------------------------------
    def evaluate(self, event: Event, state: EngineState, now: float) -> tuple[EngineState, list[Transition]]:
        out: list[Transition] = []
        for c, labels in self._candidates(event.topic):
            if c.condition is not None and not c.condition(event.payload):
                continue
            aid = self._alert_id(c, event.topic, labels)
            kind = c.rule.kind
            if kind == "event":
                out.append(self._transition(c, aid, event.id, labels, "firing", event, now, None))
            elif kind == "threshold":
                self._threshold(c, aid, labels, event, state, now, out)
            else:
                self._seen(c, aid, labels, event, state, now, out)
        return state, out

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
        value = as_number(get_path(event.payload, th.value))
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
            del state.alerts[aid]
            if c.rule.resolve_notice:
                out.append(self._transition(c, aid, alert.episode, labels, "resolved", event, now, value))

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
        state.alerts[aid] = AlertState(c.id, labels, "watching", event.id, now, deadline, event)
        heapq.heappush(state.timers, (deadline, aid))

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
            c = self._by_id.get(alert.rule)
            if c is None:
                del state.alerts[aid]
                continue
            alert.status, alert.deadline = "firing", None
            # The transition happens at the deadline, not when the tick ran late.
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
    ) -> Transition:
        ctx: dict[str, Any] = {
            **labels,
            "labels": labels,
            "rule": c.id,
            "severity": c.rule.severity,
            "state": st,
            "value": value,
            "payload": event.payload if event else None,
            "topic": event.topic if event else None,
            "device": event.device if event else None,
            "time": now,
        }
        aud = c.rule.audience
        return Transition(
            alert_id=aid,
            episode=episode,
            rule=c.id,
            labels=labels,
            severity=c.rule.severity,
            state=st,
            title=c.title.render(ctx),
            body=c.body.render(ctx),
            time=now,
            audience_tags=aud.tags,
            audience_users=aud.users,
            on_ambiguous=c.rule.on_ambiguous,
        )


def _beyond(th: Threshold, value: float) -> bool:
    return value > th.above if th.above is not None else value < th.below  # type: ignore[operator]


def _cleared(th: Threshold, value: float) -> bool:
    if th.above is not None:
        return value <= (th.clear if th.clear is not None else th.above)
    assert th.below is not None
    return value >= (th.clear if th.clear is not None else th.below)
