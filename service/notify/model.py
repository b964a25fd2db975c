"""A notification (one per alert transition) and a delivery (one per notification and registration)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from registrations.model import Audience, Registration
from rules.event import short_hash
from service.notify.options import DEFAULT_OPTIONS, PushOptions


@dataclass(slots=True)
class Notification:
    nid: str  # doubles as apns-collapse-id and Android tag: an escaped duplicate replaces the first
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
    options: PushOptions = DEFAULT_OPTIONS  # push type, priority, badge, sound, ... (providers map them)


def notification_key(alert_id: str, episode: str, state: str) -> str:
    return short_hash(alert_id, episode, state)


@dataclass(slots=True)
class Delivery:
    notification: Notification
    registration: Registration
    attempt: int = 0
