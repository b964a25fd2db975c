"""A rule's noise settings, compiled, as the notify stages read them from each transition."""

from __future__ import annotations

from dataclasses import dataclass

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
    escalate: tuple[Step, ...] = ()
    webhook: Webhook | None = None


def compile_policy(rule: Rule) -> Policy | None:
    """None when the rule uses no noise control, so that the common path skips the stages' work."""
    g = rule.group
    steps = tuple(
        Step(e.after, e.audience.tags, e.audience.users, e.audience.channels) for e in rule.escalate
    )
    if not (rule.cooldown or rule.repeat or g or rule.quiet_hours.override or steps or rule.webhook):
        return None
    return Policy(
        cooldown=rule.cooldown,
        repeat=rule.repeat,
        group_by=g.by if g is not None else None,
        group_wait=g.wait if g is not None else 0.0,
        group_title=compile_template(g.title) if g is not None else None,
        group_body=compile_template(g.body) if g is not None else None,
        quiet_override=rule.quiet_hours.override,
        escalate=steps,
        webhook=rule.webhook,
    )
