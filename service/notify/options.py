"""Per-notification push options: what users set beyond title and body, for APNs and FCM alike."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args

PushType = Literal[
    "alert",
    "background",
    "location",
    "voip",
    "complication",
    "fileprovider",
    "mdm",
    "liveactivity",
    "pushtotalk",
]
PUSH_TYPES: tuple[str, ...] = get_args(PushType)
INTERRUPTION_LEVELS = ("passive", "active", "time-sensitive", "critical")


@dataclass(frozen=True, slots=True)
class PushOptions:
    push_type: str = "alert"
    priority: str | None = None  # "high" | "normal" | "low"; None: high for alerts, normal otherwise
    thread_id: str | None = None
    category: str | None = None
    interruption_level: str | None = None
    relevance_score: float | None = None
    badge: int | None = None
    badge_increment: bool = False  # badge = the registration's stored count + 1 (kept in the outbox store)
    sound: str | None = None
    critical_sound: bool = False
    content_available: bool = False
    mutable_content: bool = False
    subtitle: str | None = None
    title_loc_key: str | None = None
    title_loc_args: tuple[str, ...] = ()
    loc_key: str | None = None
    loc_args: tuple[str, ...] = ()
    custom: Mapping[str, Any] = field(default_factory=dict)  # APNs top-level custom keys
    image: str | None = None
    android_channel: str | None = None
    android_priority: str | None = None  # "high" | "normal"
    android_sound: str | None = None
    android_icon: str | None = None
    android_color: str | None = None
    fcm_apns: Mapping[str, Any] = field(default_factory=dict)  # FCM message.apns override
    fcm_webpush: Mapping[str, Any] = field(default_factory=dict)  # FCM message.webpush override
    collapse_key: str | None = None  # apns-collapse-id and android.collapse_key; None: the notification id

    def __post_init__(self) -> None:
        if self.push_type not in PUSH_TYPES:
            raise ValueError(f"push type {self.push_type!r} is not one of {', '.join(PUSH_TYPES)}")
        if self.priority not in (None, "high", "normal", "low"):
            raise ValueError(f"priority {self.priority!r} must be high, normal or low")
        if self.interruption_level not in (None, *INTERRUPTION_LEVELS):
            raise ValueError(
                f"interruption level {self.interruption_level!r} is not one of {INTERRUPTION_LEVELS}"
            )

    def to_dict(self) -> dict[str, Any]:
        """The options that differ from the defaults (shallow copies). Written per notification into
        the outbox, so it avoids dataclasses.asdict (a deep copy, and a tenth of the event path's CPU)."""
        out: dict[str, Any] = {}
        for name in _NAMES:
            value = getattr(self, name)
            if value != _DEFAULTS[name]:
                out[name] = dict(value) if isinstance(value, Mapping) else value
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PushOptions:
        known = {f.name for f in fields(cls)}
        kw: dict[str, Any] = {k: (tuple(v) if k.endswith("_args") else v) for k, v in d.items() if k in known}
        return cls(**kw)


_NAMES = tuple(f.name for f in fields(PushOptions))
_DEFAULTS = {name: getattr(PushOptions(), name) for name in _NAMES}
DEFAULT_OPTIONS = PushOptions()
