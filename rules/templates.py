"""Notification text from sandboxed Jinja2 templates (the language Home Assistant users already know).

Templates are compiled once when rules load; text without ``{`` skips Jinja entirely.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from jinja2 import TemplateSyntaxError, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

_ENV = ImmutableSandboxedEnvironment(undefined=Undefined, autoescape=False, keep_trailing_newline=False)
_NOT_TAG = re.compile(r"[^A-Za-z0-9_@#.:\-]")
# ``{{ type | tag }}``: a value made safe to stand in a tag or tag expression (other characters become _).
_ENV.filters["tag"] = lambda value: _NOT_TAG.sub("_", str(value)) or "_"


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


class _Substitution:
    """Text with plain ``{{ name }}`` / ``{{ a.b.c }}`` fields, the common case, rendered without building a
    Jinja context (about ten times faster); output is the same as Jinja's for these templates."""

    __slots__ = ("_parts", "source")

    def __init__(self, source: str, parts: list[tuple[str, tuple[str, ...]]], tail: str) -> None:
        self.source = source
        self._parts = (*parts, (tail, ()))

    def render(self, context: Mapping[str, Any]) -> str:
        out = []
        for text, path in self._parts:
            out.append(text)
            if path:
                value: Any = context
                for key in path:
                    if isinstance(value, Mapping):
                        value = value.get(key, _MISSING)
                    elif isinstance(value, list | tuple) and key.isdigit() and int(key) < len(value):
                        value = value[int(key)]
                    else:
                        value = _MISSING
                    if value is _MISSING:
                        break
                if value is not _MISSING:
                    out.append(str(value))
        return "".join(out)


_MISSING = object()
_FIELD = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)\s*\}\}")


def _substitution(source: str) -> _Substitution | None:
    parts, pos = [], 0
    for m in _FIELD.finditer(source):
        parts.append((source[pos : m.start()], tuple(m.group(1).split("."))))
        pos = m.end()
    tail = source[pos:]
    if any("{" in text or "}" in text for text, _ in parts) or "{" in tail or "}" in tail:
        return None  # anything beyond plain fields goes to Jinja
    return _Substitution(source, parts, tail)


def compile_template(source: str) -> Template:
    """Raises ValueError with the template's line when its syntax is wrong."""
    if "{" not in source:
        return _Constant(source)
    try:
        jinja = _Jinja(source)  # always compiled, so that syntax errors are reported the same way
    except TemplateSyntaxError as exc:
        raise ValueError(f"template syntax error on its line {exc.lineno}: {exc.message}") from None
    return _substitution(source) or jinja


Expression = Callable[[Mapping[str, Any]], Any]


def compile_expression(source: str) -> Expression:
    """A sandboxed Jinja2 expression (``payload.temp > 30 and room == 'cellar'``), for conditions that plain
    ``when:`` operators cannot say. Raises ValueError on bad syntax; at run time an error counts as false."""
    text = source.strip()
    if text.startswith("{{") and text.endswith("}}"):
        text = text[2:-2].strip()
    try:
        compiled = _ENV.compile_expression(text, undefined_to_none=True)
    except TemplateSyntaxError as exc:
        raise ValueError(f"expression syntax error: {exc.message}") from None

    def evaluate(context: Mapping[str, Any]) -> Any:
        try:
            return compiled(**context)
        except Exception:  # a broken expression on one payload must not stop the others
            return None

    return evaluate
