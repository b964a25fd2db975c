"""A rule's noise settings, compiled, as the notify stages read them from each transition."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import time

from rules.schema import Rule, Webhook
from rules.templates import Template, compile_template


@dataclass(frozen=True, slots=True)
class Step:
    """One escalation step: after ``after`` seconds unacknowledged, notify this audience too."""

    after: float
    tags: tuple[str, ...]
    users: tuple[str, ...]
    channels: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Policy:
    cooldown: float = 0.0
    repeat: float = 0.0
    group_by: tuple[str, ...] | None = None  # None: no grouping
    group_wait: float = 0.0
    group_title: Template | None = None
    group_body: Template | None = None
    quiet_override: bool = False
    quiet_window: tuple[time, time] | None = None  # the rule's own quiet hours (start, end), local time
    escalate: tuple[Step, ...] = ()
    webhook: Webhook | None = None


def compile_policy(rule: Rule) -> Policy | None:
    """None when the rule uses no noise control, so that the common path skips the stages' work."""
    g = rule.group
    steps = tuple(
        Step(e.after, e.audience.tags, e.audience.users, e.audience.channels) for e in rule.escalate
    )
    qh = rule.quiet_hours
    window = (time.fromisoformat(qh.start), time.fromisoformat(qh.end)) if qh.start and qh.end else None
    if not (rule.cooldown or rule.repeat or g or qh.override or window or steps or rule.webhook):
        return None
    return Policy(
        cooldown=rule.cooldown,
        repeat=rule.repeat,
        group_by=g.by if g is not None else None,
        group_wait=g.wait if g is not None else 0.0,
        group_title=compile_template(g.title) if g is not None else None,
        group_body=compile_template(g.body) if g is not None else None,
        quiet_override=qh.override,
        quiet_window=window,
        escalate=steps,
        webhook=rule.webhook,
    )
