"""Notification text from sandboxed Jinja2 templates (the language Home Assistant users already know).

Templates are compiled once when rules load; text without ``{`` skips Jinja entirely.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from jinja2 import TemplateSyntaxError, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

_ENV = ImmutableSandboxedEnvironment(undefined=Undefined, autoescape=False, keep_trailing_newline=False)


class Template(Protocol):
    source: str

    def render(self, context: Mapping[str, Any]) -> str: ...


class _Constant:
    __slots__ = ("source",)

    def __init__(self, source: str) -> None:
        self.source = source

    def render(self, context: Mapping[str, Any]) -> str:
        return self.source


class _Jinja:
    __slots__ = ("_template", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self._template = _ENV.from_string(source)

    def render(self, context: Mapping[str, Any]) -> str:
        try:
            return self._template.render(context)
        except Exception as exc:  # a template must never stop a notification
            return f"{self.source} [template error: {type(exc).__name__}: {exc}]"


def compile_template(source: str) -> Template:
    """Raises ValueError with the template's line when its syntax is wrong."""
    if "{" not in source:
        return _Constant(source)
    try:
        return _Jinja(source)
    except TemplateSyntaxError as exc:
        raise ValueError(f"template syntax error on its line {exc.lineno}: {exc.message}") from None
