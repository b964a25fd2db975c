"""What a rule file may say, validated with pydantic (unknown keys are errors, not silently ignored)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from rules.conditions import compile_conditions
from rules.durations import parse_duration
from rules.templates import compile_template
from rules.topics import compile_filter

Duration = Annotated[float, BeforeValidator(parse_duration)]
Severity = Literal["info", "warning", "minor", "major", "critical"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class Threshold(_Strict):
    value: str = Field("$", description="payload path of the number to watch; $ is the whole payload")
    above: float | None = None
    below: float | None = None
    clear: float | None = Field(None, description="the level that clears a firing alert (hysteresis)")
    for_: Duration = Field(0.0, alias="for", description="how long the level must hold before firing")

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


class Absence(_Strict):
    for_: Duration = Field(alias="for", description="fire when nothing matched for this long")

    @field_validator("for_")
    @classmethod
    def _positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("must be longer than zero")
        return v


class Audience(_Strict):
    tags: tuple[str, ...] = ()
    users: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _someone(self) -> Audience:
        if not self.tags and not self.users:
            raise ValueError("name at least one tag or user")
        return self


def _check_template(value: str) -> str:
    compile_template(value)
    return value


Text = Annotated[str, BeforeValidator(lambda v: v if isinstance(v, str) else str(v))]


class Rule(_Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=128)
    description: str = ""
    enabled: bool = True
    topic: str
    when: dict[str, Any] = Field(default_factory=dict)
    threshold: Threshold | None = None
    absent: Absence | None = None
    severity: Severity = "info"
    title: Annotated[Text, BeforeValidator(_check_template)]
    body: Annotated[Text, BeforeValidator(_check_template)] = ""
    audience: Audience
    resolve_notice: bool = Field(True, description="send a notice when a threshold or absence alert clears")
    on_ambiguous: Literal["resend", "skip"] = Field(
        "resend",
        description="after a failover, a send the old leader began but never confirmed: resend it (the phone "
        "replaces a duplicate by its collapse key) or skip it",
    )

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        compile_filter(v)
        return v

    @field_validator("when")
    @classmethod
    def _when(cls, v: dict[str, Any]) -> dict[str, Any]:
        compile_conditions(v)
        return v

    @model_validator(mode="after")
    def _one_kind(self) -> Rule:
        if self.threshold is not None and self.absent is not None:
            raise ValueError("a rule is either a 'threshold' or an 'absent' rule, not both")
        return self

    @property
    def kind(self) -> Literal["event", "threshold", "absent"]:
        if self.threshold is not None:
            return "threshold"
        if self.absent is not None:
            return "absent"
        return "event"


class RuleFile(_Strict):
    rules: list[Rule] = Field(default_factory=list)
