"""A registration: one app install's push token, and who and what it is for."""

from __future__ import annotations

import base64
import binascii
import os
import re
import time
from dataclasses import dataclass, field
from typing import Annotated, Literal

from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import AfterValidator, WithJsonSchema

from service.providers import plugins

Environment = Literal["production", "sandbox"]
State = Literal["active", "suspect", "invalid"]
PROVIDERS: tuple[str, ...] = plugins.NAMES  # the provider plug-ins' names
STATES: tuple[str, ...] = ("active", "suspect", "invalid")
_TAG = re.compile(r"[A-Za-z0-9_@#.:\-]{1,120}")
_B64URL = re.compile(r"[A-Za-z0-9_\-]+={0,2}")


@dataclass(slots=True)
class Registration:
    provider: str
    token: str
    user_id: str | None = None
    app: str | None = None  # iOS bundle id or Android package name
    environment: str = "production"  # APNs sandbox or production
    device_name: str | None = None
    tags: tuple[str, ...] = ()
    locale: str | None = None
    timezone: str | None = None
    state: str = "active"
    id: str = field(default_factory=lambda: new_id())
    created: float = 0.0
    updated: float = 0.0
    channels: tuple[str, ...] = ()
    quiet_hours: str | None = None  # "HH:MM-HH:MM" in the registration's time zone
    badge: int | None = None
    last_success: float | None = None
    state_since: float | None = None  # when ``state`` last changed
    # A Web Push subscription's keys (the token is its endpoint): the browser's P-256 public key and auth
    # secret, unpadded URL-safe base64 as PushSubscription.toJSON() gives them (RFC 8291 §3).
    p256dh: str | None = None
    auth: str | None = None


def new_id() -> str:
    """32 hex digits: 48 bits of milliseconds, then 80 random bits (the layout of UUIDv7).

    Ids made one after another sort together, so inserting them touches the end of the index, not a random
    page of it: at a million registrations that is most of the cost of a write."""
    return f"{int(time.time() * 1000):012x}{os.urandom(10).hex()}"


def check_tag(tag: str) -> str:
    """Tags are what audiences match on; keep them to characters that tag expressions can carry."""
    if not _TAG.fullmatch(tag):
        raise ValueError(f"tag {tag!r} must be 1-120 characters of letters, digits and _@#.:-")
    return tag


def check_token(provider: str, token: str) -> str:
    """The token in the shape its provider issues (the provider plug-in's rule), normalised."""
    return plugins.check_token(provider, token)


def check_provider(name: str) -> str:
    if name not in PROVIDERS:
        raise ValueError(f"unknown provider {name!r}: one of {', '.join(PROVIDERS)}")
    return name


# A provider's name in a request or configuration: checked against the plug-ins, an enum in OpenAPI.
ProviderName = Annotated[str, AfterValidator(check_provider), WithJsonSchema({"enum": list(PROVIDERS)})]


def _b64url(text: str, what: str) -> bytes:
    if not _B64URL.fullmatch(text):
        raise ValueError(f"{what} is URL-safe base64")
    try:
        return base64.urlsafe_b64decode(text.rstrip("=") + "=" * (-len(text.rstrip("=")) % 4))
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is URL-safe base64") from None


def check_subscription_keys(p256dh: str, auth: str) -> tuple[str, str]:
    """A push subscription's keys as RFC 8291 §3 has them: p256dh an uncompressed P-256 point (65 bytes,
    0x04 first), auth a 16-byte secret. Returned unpadded, as browsers give them."""
    point = _b64url(p256dh, "keys.p256dh")
    if len(point) != 65 or point[0] != 4:
        raise ValueError("keys.p256dh is the subscription's P-256 public key: 65 bytes, uncompressed")
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except ValueError:
        raise ValueError("keys.p256dh is not a point on the P-256 curve") from None
    if len(_b64url(auth, "keys.auth")) != 16:
        raise ValueError("keys.auth is the subscription's 16-byte authentication secret")
    return p256dh.rstrip("="), auth.rstrip("=")


_HHMM = r"([01]\d|2[0-3]):[0-5]\d"
_QUIET = re.compile(rf"{_HHMM}-{_HHMM}")


def check_quiet_hours(value: str) -> str:
    if not _QUIET.fullmatch(value):
        raise ValueError("quiet hours are 'HH:MM-HH:MM' (24 h clock, may wrap midnight, e.g. 22:00-07:00)")
    return value


@dataclass(frozen=True, slots=True)
class Audience:
    """Who a notification is for.

    Selectors add people: registrations carrying any of ``tags``, matching the tag ``expression``
    (``severity:critical && (deviceId:all || deviceId:4711)``), of any of ``users``, or with any of
    ``tokens``.
    Filters narrow the result: ``channels`` (any of), ``platforms`` (providers), ``apps`` and the tag
    expression ``where``. With filters but no selector, everyone passing the filters is in; an audience
    with neither is empty.
    """

    tags: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    tokens: tuple[str, ...] = ()
    expression: str | None = None
    channels: tuple[str, ...] = ()
    platforms: tuple[str, ...] = ()
    apps: tuple[str, ...] = ()
    where: str | None = None  # a tag expression every member must also satisfy

    @property
    def has_selector(self) -> bool:
        return bool(self.tags or self.users or self.tokens or self.expression)

    @property
    def has_filter(self) -> bool:
        return bool(self.channels or self.platforms or self.apps or self.where)

    @property
    def empty(self) -> bool:
        return not self.has_selector and not self.has_filter
