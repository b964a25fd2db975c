"""Request bodies of the registration APIs, validated strictly: unknown fields and wrong types are errors."""

from __future__ import annotations

import re
import zoneinfo
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from registrations.model import (
    ProviderName,
    check_quiet_hours,
    check_subscription_keys,
    check_tag,
    check_token,
)

MAX_TAGS = 60  # as Azure Notification Hubs allows per installation
_CHANNEL = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")
_LOCALE = re.compile(r"[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8}){0,3}")
_APP = re.compile(r"[A-Za-z0-9_.\-]{1,255}")

Text = Field(default=None, min_length=1, max_length=255)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


def _tags(v: list[str]) -> list[str]:
    return [check_tag(t) for t in v]


def _channels(v: list[str]) -> list[str]:
    for c in v:
        if not _CHANNEL.fullmatch(c):
            raise ValueError(f"channel {c!r} must be 1-64 characters of letters, digits and _.:-")
    return v


def _app(v: str | None) -> str | None:
    if v is not None and not _APP.fullmatch(v):
        raise ValueError("an app is a bundle id or package name: letters, digits and _.-")
    return v


class RegistrationFields(Strict):
    """What a registration may change about itself (the fields of PATCH)."""

    user_id: str | None = Text
    device_name: str | None = Text
    environment: Literal["production", "sandbox"] = "production"
    tags: list[str] = Field(default_factory=list, max_length=MAX_TAGS)
    channels: list[str] = Field(default_factory=list, max_length=MAX_TAGS)
    locale: str | None = None
    timezone: str | None = None
    quiet_hours: str | None = None
    badge: int | None = Field(default=None, ge=0, le=1_000_000)

    _check_tags = field_validator("tags")(_tags)
    _check_channels = field_validator("channels")(_channels)

    @field_validator("locale")
    @classmethod
    def _locale(cls, v: str | None) -> str | None:
        if v is not None and not _LOCALE.fullmatch(v):
            raise ValueError("a locale is a language tag such as 'de' or 'de-DE'")
        return v

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                zoneinfo.ZoneInfo(v)
            except (
                ValueError,
                OSError,
                zoneinfo.ZoneInfoNotFoundError,
            ):  # OSError: a name too long for a path
                raise ValueError("a time zone is an IANA name such as 'Europe/Berlin'") from None
        return v

    @field_validator("quiet_hours")
    @classmethod
    def _quiet(cls, v: str | None) -> str | None:
        return None if v is None else check_quiet_hours(v)


class SubscriptionKeys(Strict):
    p256dh: str = Field(min_length=86, max_length=88, description="the browser's P-256 key (base64url)")
    auth: str = Field(min_length=22, max_length=24, description="the 16-byte auth secret (base64url)")


class PushSubscriptionIn(Strict):
    """A Web Push subscription exactly as the browser's ``PushSubscription.toJSON()`` gives it."""

    endpoint: str = Field(min_length=1, max_length=2048)
    expirationTime: float | None = None
    keys: SubscriptionKeys


class RegistrationIn(RegistrationFields):
    """``POST /v1/registrations``: register a token, or update it when it is registered already.

    A Web Push registration gives ``subscription`` instead of ``token`` (its endpoint becomes the token);
    a webhook registration's token is the URL to post to."""

    provider: ProviderName
    subscription: PushSubscriptionIn | None = Field(None, description="webpush only, instead of token")
    token: str = Field(
        "",
        max_length=4096,
        validate_default=True,
        description="the device token (webhook: the URL); required unless a webpush subscription is given",
    )
    app: str | None = None

    _check_app = field_validator("app")(_app)

    @field_validator("token")
    @classmethod
    def _token_given(cls, v: str, info: ValidationInfo) -> str:
        provider, sub = info.data.get("provider"), info.data.get("subscription")
        if provider == "webpush" and sub is not None:
            if v and v != sub.endpoint:
                raise ValueError("a webpush registration's token, when given, is its subscription's endpoint")
            return str(sub.endpoint)
        if not v:
            raise ValueError("Field required")
        # Checked as the token's own field (the error names it); the provider is validated before it.
        return check_token(provider, v) if provider is not None and provider != "webpush" else v

    @model_validator(mode="after")
    def _token_shape(self) -> RegistrationIn:
        if self.provider == "webpush":
            if self.subscription is None:
                raise ValueError("a webpush registration needs its subscription: {endpoint, keys}")
            check_subscription_keys(self.subscription.keys.p256dh, self.subscription.keys.auth)
        elif self.subscription is not None:
            raise ValueError("only a webpush registration has a subscription")
        normal = check_token(self.provider, self.token) if self.provider == "webpush" else self.token
        if normal != self.token:
            object.__setattr__(self, "token", normal)
        return self

    @property
    def keys(self) -> tuple[str | None, str | None]:
        """(p256dh, auth) of a Web Push subscription, unpadded; (None, None) for other providers."""
        if self.subscription is None:
            return None, None
        return check_subscription_keys(self.subscription.keys.p256dh, self.subscription.keys.auth)


class RegistrationPatch(RegistrationFields):
    """``PATCH /v1/registrations/{provider}/{token}``: only the fields given change."""

    environment: Literal["production", "sandbox"] = "production"


class AudienceIn(Strict):
    users: list[str] = Field(default_factory=list, max_length=10_000)
    tokens: list[str] = Field(default_factory=list, max_length=10_000)
    tags: str | None = Field(default=None, description="tag expression, e.g. 'a && (b || !c)'")
    channels: list[str] = Field(default_factory=list, max_length=MAX_TAGS)
    platforms: list[ProviderName] = Field(default_factory=list)
    apps: list[str] = Field(default_factory=list, max_length=100)

    _check_channels = field_validator("channels")(_channels)

    @model_validator(mode="after")
    def _someone(self) -> AudienceIn:
        if not (self.users or self.tokens or self.tags or self.channels or self.platforms or self.apps):
            raise ValueError("name someone: users, tokens, tags, channels, platforms or apps")
        return self


# -- the Cumulocity push gateway's bodies (specs/cumulocity.md §6), field names as its clients send them --


class C8yStrict(BaseModel):
    """Strict types, but unknown fields are ignored: a newer alarm app sends fields this version lacks."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True, allow_inf_nan=False)


class C8yDevice(C8yStrict):
    deviceName: str | None = Field(default=None, max_length=255)
    deviceToken: str = Field(min_length=1, max_length=4096)
    platform: Literal["IOS", "Android"]


class C8yRegistration(C8yStrict):
    userId: str = Field(min_length=1, max_length=255)
    bundleId: str = Field(min_length=1, max_length=255)
    tags: list[str] = Field(default_factory=list, max_length=MAX_TAGS - 2)
    device: C8yDevice

    _check_tags = field_validator("tags")(_tags)
    _check_app = field_validator("bundleId")(_app)
