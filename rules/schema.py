"""What a rule file may say, validated with pydantic (unknown keys are errors, not silently ignored)."""

from __future__ import annotations

from datetime import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from rules.conditions import compile_conditions, parse_path
from rules.durations import parse_duration
from rules.templates import compile_expression, compile_tag_template, compile_template
from rules.topics import compile_filter

Duration = Annotated[float, BeforeValidator(parse_duration)]
Severity = Literal["info", "warning", "minor", "major", "critical"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True, allow_inf_nan=False)


class Threshold(_Strict):
    value: str = Field("$", description="payload path of the number to watch; $ is the whole payload")
    above: float | None = None
    below: float | None = None
    clear: float | None = Field(None, description="the level that clears a firing alert (hysteresis)")
    for_: Duration = Field(0.0, alias="for", description="how long the level must hold before firing")
    keep_firing_for: Duration = Field(0.0, description="stay firing this long after the level cleared")

    @model_validator(mode="after")
    def _one_direction(self) -> Threshold:
        if (self.above is None) == (self.below is None):
            raise ValueError("give exactly one of 'above' or 'below'")
        if self.clear is not None:
            if self.above is not None and self.clear > self.above:
                raise ValueError(f"'clear' ({self.clear}) must not be above 'above' ({self.above})")
            if self.below is not None and self.clear < self.below:
                raise ValueError(f"'clear' ({self.clear}) must not be below 'below' ({self.below})")
        return self


Scalar = str | int | float | bool


class Availability(_Strict):
    """A device's online/offline topic (an MQTT last will, or a Home Assistant availability topic)."""

    topic: str = Field(description="a topic filter with the same named segments as the rule's topic")
    value: str = Field("$", description="payload path of the state; $ is the whole payload")
    online: tuple[Scalar, ...] = ("online",)
    offline: tuple[Scalar, ...] = ("offline",)

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        compile_filter(v)
        return v


class Absence(_Strict):
    for_: Duration = Field(alias="for", description="fire when nothing matched for this long")
    availability: Availability | None = None

    @field_validator("for_")
    @classmethod
    def _positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("must be longer than zero")
        return v


class Change(_Strict):
    """A state change: fires when the value moves from one of ``from`` (any other value when empty) to one of
    ``to``; the alert resolves when the value leaves ``to``."""

    value: str = Field("$", description="payload path of the state; $ is the whole payload")
    from_: tuple[Scalar, ...] = Field((), alias="from")
    to: tuple[Scalar, ...] = Field(min_length=1)

    @field_validator("value")
    @classmethod
    def _path(cls, v: str) -> str:
        parse_path(v)
        return v


class AlarmMatch(_Strict):
    """Cumulocity alarms: events from the Cumulocity source, or SmartREST lines 301-307 (``smartrest``)."""

    types: tuple[str, ...] = Field((), description="alarm types; empty: any")
    severity: tuple[Literal["CRITICAL", "MAJOR", "MINOR", "WARNING"], ...] = Field(
        (), description="severities that open an alert; empty: any"
    )
    status: tuple[Literal["ACTIVE", "ACKNOWLEDGED"], ...] = Field(
        ("ACTIVE",), description="statuses that open"
    )
    smartrest: bool = Field(False, description="the payload is SmartREST 2.0 text (301-307), not alarm JSON")

    @field_validator("severity", "status", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [v]
        return [x.upper() if isinstance(x, str) else x for x in v] if isinstance(v, list | tuple) else v


def _as_text(value: object) -> str:
    return value if isinstance(value, str) else str(value)


def _check_template(value: object) -> str:
    compile_template(_as_text(value))  # runs before Text's own conversion
    return _as_text(value)


def _check_expression(value: object) -> str:
    compile_expression(_as_text(value))
    return _as_text(value)


def _check_tag_template(value: object) -> str:
    compile_tag_template(_as_text(value))
    return _as_text(value)


Text = Annotated[str, BeforeValidator(lambda v: v if isinstance(v, str) else str(v))]
TemplateText = Annotated[Text, BeforeValidator(_check_template)]
TagExpressionText = Annotated[Text, BeforeValidator(_check_tag_template)]


class Audience(_Strict):
    tags: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    channels: tuple[str, ...] = Field((), description="channels: registrations tagged 'channel:<name>'")
    expression: TagExpressionText | None = Field(
        None,
        description="a tag expression, templated per alert, e.g. the Cumulocity alarm app's watch list: "
        '"severity:all || severity:{{ alarm.severity | lower | tag }}"',
    )

    @model_validator(mode="after")
    def _someone(self) -> Audience:
        if not self.tags and not self.users and not self.channels and not self.expression:
            raise ValueError("name at least one tag, user, channel or expression")
        return self


class LocaleText(_Strict):
    title: TemplateText | None = None
    body: TemplateText | None = None


class Group(_Strict):
    """Alerts of one rule with the same values of ``by`` labels, collected for ``wait``, sent as one."""

    by: tuple[str, ...] = ()
    wait: Duration = 30.0
    title: TemplateText = Field(
        "{{ count }} alerts: {{ rule }}", description="context: count, labels (shared by the group), alerts"
    )
    body: TemplateText = ""


class Escalation(_Strict):
    after: Duration
    audience: Audience


class QuietHours(_Strict):
    override: bool = Field(False, description="deliver during quiet hours anyway (e.g. for critical alerts)")
    start: str | None = Field(None, description="this rule's own quiet hours, e.g. 22:00 (recipient's time)")
    end: str | None = None

    @field_validator("start", "end")
    @classmethod
    def _clock(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                time.fromisoformat(v)
            except ValueError:
                raise ValueError(f"{v!r} is not a time of day such as 22:00") from None
        return v

    @model_validator(mode="after")
    def _both(self) -> QuietHours:
        if (self.start is None) != (self.end is None):
            raise ValueError("give both 'start' and 'end', or neither")
        return self


class Webhook(_Strict):
    url: str = Field(pattern=r"^https?://")
    timeout: Duration = 2.0
    default: Literal["send", "drop"] = Field("send", description="what to do when the server does not answer")


class Rule(_Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=128)
    description: str = ""
    enabled: bool = True
    topic: str = Field("", description="MQTT topic filter; alarm rules default to every Cumulocity alarm")
    when: dict[str, Any] = Field(default_factory=dict)
    expr: Annotated[str, BeforeValidator(_check_expression)] | None = Field(
        None, description="a sandboxed Jinja2 expression that must be true, for what 'when' cannot say"
    )
    threshold: Threshold | None = None
    absent: Absence | None = None
    change: Change | None = None
    alarm: AlarmMatch | None = None
    severity: Severity = "info"
    title: TemplateText
    body: TemplateText = ""
    locales: dict[str, LocaleText] = Field(default_factory=dict, description="title/body per locale")
    resolved: LocaleText | None = Field(None, description="title/body of the resolve notice")
    sound: str | None = None
    category: str | None = None
    priority: Literal["high", "normal"] | None = Field(None, description="default: high for major/critical")
    collapse_key: TemplateText | None = None
    data: dict[str, TemplateText] = Field(default_factory=dict, description="for the app, e.g. a deep link")
    audience: Audience
    resolve_notice: bool = Field(True, description="send a notice when a threshold or absence alert clears")
    on_ambiguous: Literal["resend", "skip"] = Field(
        "resend",
        description="after a failover, a send the old leader began but never confirmed: resend it (the phone "
        "replaces a duplicate by its collapse key) or skip it",
    )
    cooldown: Duration = Field(
        0.0, description="after a notification, hold back new ones of the alert this long"
    )
    repeat: Duration = Field(
        0.0, description="repeat a firing alert this often until resolved or acknowledged"
    )
    group: Group | None = None
    quiet_hours: QuietHours = QuietHours()
    escalate: tuple[Escalation, ...] = Field((), description="further audiences, unless acknowledged in time")
    webhook: Webhook | None = None

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        if v:
            compile_filter(v)
        return v

    @field_validator("when")
    @classmethod
    def _when(cls, v: dict[str, Any]) -> dict[str, Any]:
        compile_conditions(v)
        return v

    @model_validator(mode="after")
    def _one_kind(self) -> Rule:
        kinds = [k for k in ("threshold", "absent", "change", "alarm") if getattr(self, k) is not None]
        if len(kinds) > 1:
            raise ValueError(f"a rule has one trigger kind, not {' and '.join(repr(k) for k in kinds)}")
        if not self.topic and (self.alarm is None or self.alarm.smartrest):
            raise ValueError("'topic' is required (only Cumulocity alarm rules have a default)")
        if self.absent is not None and self.absent.availability is not None:
            mine = {n for _, n in compile_filter(self.topic).names}
            theirs = {n for _, n in compile_filter(self.absent.availability.topic).names}
            if mine != theirs:
                raise ValueError(
                    f"absent.availability.topic must name the same segments as 'topic' "
                    f"({', '.join(sorted(mine)) or 'none'}), not {', '.join(sorted(theirs)) or 'none'}"
                )
        return self

    @property
    def kind(self) -> Literal["event", "threshold", "absent", "change", "alarm"]:
        if self.threshold is not None:
            return "threshold"
        if self.absent is not None:
            return "absent"
        if self.change is not None:
            return "change"
        if self.alarm is not None:
            return "alarm"
        return "event"

    @property
    def topic_filter(self) -> str:
        return self.topic or "cumulocity/{tenant}/alarm/{device}/{type}"


class RuleFile(_Strict):
    rules: list[Rule] = Field(default_factory=list)
