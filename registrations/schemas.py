"""Request bodies of the registration APIs, validated strictly: unknown fields and wrong types are errors."""

from __future__ import annotations

import re
import zoneinfo
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from registrations.model import check_quiet_hours, check_tag, check_token

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
            except (ValueError, zoneinfo.ZoneInfoNotFoundError):
                raise ValueError("a time zone is an IANA name such as 'Europe/Berlin'") from None
        return v

    @field_validator("quiet_hours")
    @classmethod
    def _quiet(cls, v: str | None) -> str | None:
        return None if v is None else check_quiet_hours(v)


class RegistrationIn(RegistrationFields):
    """``POST /v1/registrations``: register a token, or update it when it is registered already."""

    provider: Literal["apns", "fcm", "log"]
    token: str = Field(min_length=1, max_length=4096)
    app: str | None = None

    _check_app = field_validator("app")(_app)

    @field_validator("token")
    @classmethod
    def _token_shape(cls, v: str, info: ValidationInfo) -> str:
        """Checked as the token's own field (the error names it); the provider is validated before it."""
        provider = info.data.get("provider")
        return check_token(provider, v) if provider is not None else v


class RegistrationPatch(RegistrationFields):
    """``PATCH /v1/registrations/{provider}/{token}``: only the fields given change."""

    environment: Literal["production", "sandbox"] = "production"


class AudienceIn(Strict):
    users: list[str] = Field(default_factory=list, max_length=10_000)
    tokens: list[str] = Field(default_factory=list, max_length=10_000)
    tags: str | None = Field(default=None, description="tag expression, e.g. 'a && (b || !c)'")
    channels: list[str] = Field(default_factory=list, max_length=MAX_TAGS)
    platforms: list[Literal["apns", "fcm", "log"]] = Field(default_factory=list)
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


class C8yReceiver(C8yStrict):
    userIds: list[str] = Field(default_factory=list, max_length=10_000)
    deviceTokens: list[str] = Field(default_factory=list, max_length=10_000)


class C8yBody(C8yStrict):
    alarmId: str = Field(min_length=1, max_length=255)


class C8yMessage(C8yStrict):
    title: str = Field(min_length=1, max_length=1000)
    body: C8yBody


class C8yNotification(C8yStrict):
    receiver: C8yReceiver | None = None
    tags: list[str] = Field(default_factory=list, max_length=MAX_TAGS)
    message: C8yMessage
