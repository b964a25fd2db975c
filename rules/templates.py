"""Notification text from sandboxed Jinja2 templates (the language Home Assistant users already know).

Templates are compiled once when rules load; text without ``{`` skips Jinja entirely.
"""

from __future__ import annotations

import contextvars
import operator
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

from jinja2 import TemplateSyntaxError, Undefined, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from registrations import tagexpr

_NOT_TAG = re.compile(r"[^A-Za-z0-9_@#.:\-]")


def as_tag(value: Any) -> str:
    """``{{ type | tag }}``: a value made safe to stand in a tag or tag expression (other characters become
    _)."""
    return _NOT_TAG.sub("_", str(value)) or "_"


# The budget of one render: loop iterations, output characters and time. Over it, the render stops with
# a counted error (``on_error``) and the notification gets a fallback text: never a stall of the loop.
MAX_ITERATIONS = 10_000
MAX_OUTPUT = 16 * 1024
MAX_RENDER_S = 0.005  # CPU time of the rendering thread: a render preempted or waiting for the GIL (another
# thread's turn lasts up to sys.getswitchinterval(), also 5 ms) is not charged for the wait, only its own work
_CHECK_EVERY = 256


class BudgetExceeded(Exception):
    pass


class _Budget:
    __slots__ = ("deadline", "steps")

    def __init__(self) -> None:
        self.steps, self.deadline = 0, time.thread_time() + MAX_RENDER_S

    def step(self) -> None:
        self.steps += 1
        if self.steps > MAX_ITERATIONS:
            raise BudgetExceeded(f"more than {MAX_ITERATIONS} loop iterations")
        if self.steps % _CHECK_EVERY == 0:
            self.check_time()

    def check_time(self) -> None:
        if time.thread_time() > self.deadline:
            raise BudgetExceeded(f"longer than {MAX_RENDER_S * 1000:.0f} ms")


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("template_budget", default=None)


def _budgeted(iterable: Iterable[Any]) -> Iterator[Any]:
    """Wraps every ``{% for %}`` iterable: each iteration spends from the render's budget."""
    budget = _BUDGET.get()
    for item in iterable:
        if budget is not None:
            budget.step()
        yield item


def _sized(value: Any) -> Any:
    if isinstance(value, str | list | tuple | bytes) and len(value) > MAX_OUTPUT:
        raise BudgetExceeded(f"a value longer than {MAX_OUTPUT} characters")
    return value


class _BudgetEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, plus: ``*`` cannot build huge strings or lists, ``**`` huge numbers (both are also
    kept out of constant folding at load, which would otherwise compute them)."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator_: str, left: Any, right: Any) -> Any:
        if operator_ == "**":
            huge_exponent = isinstance(right, int | float) and abs(right) > 64
            if huge_exponent or (isinstance(left, int | float) and abs(left) > 2**64):
                raise BudgetExceeded("a power that large")
            return operator.pow(left, right)
        if operator_ == "*":
            for a, b in ((left, right), (right, left)):
                if isinstance(a, str | list | tuple) and isinstance(b, int) and len(a) * b > MAX_OUTPUT:
                    raise BudgetExceeded(f"a value longer than {MAX_OUTPUT} characters")
            return _sized(operator.mul(left, right))
        return super().call_binop(context, operator_, left, right)


def _environment(**kw: Any) -> _BudgetEnvironment:
    env = _BudgetEnvironment(undefined=Undefined, autoescape=False, keep_trailing_newline=False, **kw)
    env.filters["tag"] = as_tag
    env.globals["_tocsin_budgeted"] = _budgeted
    return env


_ENV = _environment()
# Tag expressions (a rule's audience): every value a template puts in is escaped as by ``| tag``, so a
# payload like ``{"room": "r2 || home"}`` cannot widen the audience.
_TAG_ENV = _environment(finalize=as_tag)


def _uncounted(reason: str) -> None:
    pass


on_error: Callable[[str], None] = _uncounted  # the service counts: tocsin_template_errors_total


def _budgeted_template(env: ImmutableSandboxedEnvironment, source: str) -> Any:
    """The compiled template with every ``{% for %}`` iterable wrapped in ``_budgeted``."""
    tree = env.parse(source)
    for loop in tree.find_all(nodes.For):
        loop.iter = nodes.Call(nodes.Name("_tocsin_budgeted", "load"), [loop.iter], [], None, None)
    return env.template_class.from_code(env, env.compile(tree), env.make_globals(None), None)


class Template(Protocol):
    source: str

    def render(self, context: Mapping[str, Any]) -> str: ...


class _Constant:
    __slots__ = ("source",)

    def __init__(self, source: str) -> None:
        self.source = source

    def render(self, context: Mapping[str, Any]) -> str:
        return self.source


def _check_names(env: ImmutableSandboxedEnvironment, source: str) -> None:
    """Jinja looks up a filter or test inside ``{% if %}`` only when the branch runs: check them now."""
    for node in env.parse(source).find_all((nodes.Filter, nodes.Test)):
        known = env.filters if isinstance(node, nodes.Filter) else env.tests
        if node.name not in known:
            kind = "filter" if isinstance(node, nodes.Filter) else "test"
            raise TemplateSyntaxError(f"No {kind} named {node.name!r}.", node.lineno)


class _Jinja:
    __slots__ = ("_template", "source")

    def __init__(self, source: str, env: ImmutableSandboxedEnvironment = _ENV) -> None:
        self.source = source
        self._template = _budgeted_template(env, source)
        _check_names(env, source)

    def render(self, context: Mapping[str, Any]) -> str:
        budget = _Budget()
        token = _BUDGET.set(budget)
        try:
            out, size = [], 0
            for chunk in self._template.generate(context):
                size += len(chunk)
                if size > MAX_OUTPUT:
                    raise BudgetExceeded(f"output longer than {MAX_OUTPUT} characters")
                budget.check_time()
                out.append(chunk)
            return "".join(out)
        except BudgetExceeded:
            on_error("budget")
        except Exception:  # a template must never stop a notification, nor ship its source or the error
            on_error("error")
        finally:
            _BUDGET.reset(token)
        rule = context.get("rule")
        return f"{rule} (template error)" if isinstance(rule, str) else "(template error)"


class _Substitution:
    """Text with plain ``{{ name }}`` / ``{{ a.b.c }}`` fields, the common case, rendered without building a
    Jinja context (about ten times faster); output is the same as Jinja's for these templates."""

    __slots__ = ("_escape", "_parts", "source")

    def __init__(
        self,
        source: str,
        parts: list[tuple[str, tuple[str, ...]]],
        tail: str,
        escape: Callable[[Any], str] = str,
    ) -> None:
        self.source = source
        self._parts = (*parts, (tail, ()))
        self._escape = escape

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
                out.append(self._escape(value) if value is not _MISSING else self._escape(""))
        return "".join(out)


_MISSING = object()
_FIELD = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)\s*\}\}")


def _substitution(source: str, escape: Callable[[Any], str] = str) -> _Substitution | None:
    parts, pos = [], 0
    for m in _FIELD.finditer(source):
        parts.append((source[pos : m.start()], tuple(m.group(1).split("."))))
        pos = m.end()
    tail = source[pos:]
    if any("{" in text or "}" in text for text, _ in parts) or "{" in tail or "}" in tail:
        return None  # anything beyond plain fields goes to Jinja
    return _Substitution(source, parts, tail, escape)


def compile_template(source: str) -> Template:
    """Raises ValueError with the template's line when its syntax is wrong."""
    if "{" not in source:
        return _Constant(source)
    try:
        jinja = _Jinja(source)  # always compiled, so that syntax errors are reported the same way
    except TemplateSyntaxError as exc:
        raise ValueError(f"template syntax error on its line {exc.lineno}: {exc.message}") from None
    return _substitution(source) or jinja


def compile_tag_template(source: str) -> Template:
    """A templated tag expression: every ``{{ value }}`` is escaped to tag characters (``as_tag``), so what
    an event carries can only ever be one tag. Raises ValueError when the syntax is wrong, or when the
    expression (each value read as one tag) is not a valid tag expression."""
    if "{" not in source:
        check_tag_expression(source)
        return _Constant(source)
    try:
        jinja = _Jinja(source, _TAG_ENV)
    except TemplateSyntaxError as exc:
        raise ValueError(f"template syntax error on its line {exc.lineno}: {exc.message}") from None
    if "{%" not in source and "{#" not in source:  # the shape is static: check it with a stand-in value
        check_tag_expression(_FIELD_ANY.sub("x", source))
    return _substitution(source, as_tag) or jinja


_FIELD_ANY = re.compile(r"\{\{.*?\}\}", re.DOTALL)


def check_tag_expression(text: str) -> None:
    try:
        tagexpr.parse(text, tagexpr.MAX_DEPTH)
    except tagexpr.TagExpressionError as exc:
        raise ValueError(f"not a valid tag expression: {exc}") from None


Expression = Callable[[Mapping[str, Any]], Any]


def compile_expression(source: str) -> Expression:
    """A sandboxed Jinja2 expression (``payload.temp > 30 and room == 'cellar'``), for conditions that plain
    ``when:`` operators cannot say. Raises ValueError on bad syntax; at run time an error counts as false."""
    text = source.strip()
    if text.startswith("{{") and text.endswith("}}"):
        text = text[2:-2].strip()
    try:
        compiled = _ENV.compile_expression(text, undefined_to_none=True)
        _check_names(_ENV, "{{ " + text + " }}")
    except TemplateSyntaxError as exc:
        raise ValueError(f"expression syntax error: {exc.message}") from None

    def evaluate(context: Mapping[str, Any]) -> Any:
        try:
            return compiled(**context)
        except Exception:  # a broken expression on one payload must not stop the others
            return None

    return evaluate
