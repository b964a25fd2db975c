"""A registration: one app install's push token, and who and what it is for."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Literal

Provider = Literal["apns", "fcm", "log"]
Environment = Literal["production", "sandbox"]
State = Literal["active", "suspect", "invalid"]
PROVIDERS: tuple[str, ...] = ("apns", "fcm", "log")
_TAG = re.compile(r"^[A-Za-z0-9_@#.:\-]{1,120}$")


@dataclass(slots=True)
class Registration:
    provider: str
    token: str
    user_id: str | None = None
    app: str | None = None
    environment: str = "production"
    device_name: str | None = None
    tags: tuple[str, ...] = ()
    locale: str | None = None
    timezone: str | None = None
    state: str = "active"
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: float = 0.0
    updated: float = 0.0


def check_tag(tag: str) -> str:
    """Tags are what audiences match on; keep them to characters that tag expressions can carry."""
    if not _TAG.match(tag):
        raise ValueError(f"tag {tag!r} must be 1-120 characters of letters, digits and _@#.:-")
    return tag


@dataclass(frozen=True, slots=True)
class Audience:
    """Who a notification is for: registrations carrying any of ``tags`` or belonging to any of ``users``."""

    tags: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
