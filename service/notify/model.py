"""A notification (one per alert transition) and a delivery (one per notification and registration)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from registrations.model import Audience, Registration
from rules.event import short_hash
from rules.policy import Policy
from service.notify.options import DEFAULT_OPTIONS, PushOptions


@dataclass(slots=True)
class Notification:
    nid: str  # the default apns-collapse-id and Android tag: an escaped duplicate replaces the first
    alert_id: str
    episode: str
    rule: str
    state: str
    severity: str
    title: str
    body: str
    labels: Mapping[str, str]
    audience: Audience
    created: float
    expires: float
    data: Mapping[str, str] = field(default_factory=dict)
    # Push type, priority, sound, category, collapse key, badge, ...: the one place a push field lives,
    # whether it came from a rule, the push API or a webhook's answer (providers map them).
    options: PushOptions = DEFAULT_OPTIONS
    on_ambiguous: str = "resend"
    # "rule": computed by every instance from the shared event stream, so the cluster picks one sender;
    # "api": known only to the instance that took the request, which must send it itself.
    # "schedule": a scheduled push, replicated to every instance; the leader sends it, through the ledger.
    origin: str = "rule"
    # From the rule (see rules/schema.py); defaults keep notifications built elsewhere valid.
    texts: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # locale -> (title, body)
    policy: Policy | None = None
    count: int = 1  # alerts this notification stands for (grouping, rate-limit summaries)
    # The Cumulocity tenant it belongs to: targeted at that tenant's registrations only. None: the
    # deployment's own registrations (MQTT rules, API-key callers).
    tenant: str | None = None
    # False when nothing will resolve it (an event rule's alert, an API push): it is an open alert only
    # while its repeats or escalation are pending.
    resolves: bool = True

    def text_for(self, locale: str | None) -> tuple[str, str]:
        """Title and body for a locale: exact (``de-AT``), then language (``de``), then the default."""
        if locale and self.texts:
            found = self.texts.get(locale) or self.texts.get(locale.replace("_", "-").split("-")[0])
            if found is not None:
                return found
        return self.title, self.body


CHANNEL_TAG = "channel:"  # a rule's audience channel <name> reaches registrations tagged channel:<name>


def describe(n: Notification) -> dict[str, Any]:
    """The fields that say what a notification is, as JSON-ready values: the common part of what the log
    provider prints, the outbox stores and a rule's webhook receives."""
    return {
        "nid": n.nid,
        "alert_id": n.alert_id,
        "episode": n.episode,
        "rule": n.rule,
        "state": n.state,
        "severity": n.severity,
        "title": n.title,
        "body": n.body,
        "labels": dict(n.labels),
    }


def effective_priority(o: PushOptions) -> str:
    """``high`` or ``normal``/``low``: what the providers send when the options leave it open."""
    return o.priority or ("high" if o.push_type == "alert" else "normal")


def notification_key(alert_id: str, episode: str, state: str) -> str:
    return short_hash(alert_id, episode, state)


@dataclass(slots=True)
class Delivery:
    notification: Notification
    registration: Registration
    attempt: int = 0
    term: int = 0  # the cluster term it was sent in: a fencing token the app can check
    done: asyncio.Future[None] | None = None  # set when it finished, for a waiting source (dispatch.watching)
