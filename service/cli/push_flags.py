"""``tocsin push`` flags made from the body model of ``POST /v1/push`` (``PushIn``): one flag per field, the
field's description as its help, so the CLI can say what the API can and the two cannot drift apart."""

from __future__ import annotations

import argparse
import datetime as dt
import types
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from service.http.push import PushIn

# Flags of their own in the command (audience selectors; title and body with a test default).
_OWN = frozenset({"audience", "title", "body"})


class FlagError(ValueError):
    pass


def _plain(annotation: Any) -> Any:
    """``X | None`` -> ``X``."""
    if get_origin(annotation) in (Union, types.UnionType):
        rest = [a for a in get_args(annotation) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return annotation


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_flags(parser: argparse.ArgumentParser) -> None:
    for name, field in PushIn.model_fields.items():
        if name in _OWN:
            continue
        if not field.description:
            raise TypeError(f"PushIn.{name} has no description: the flag would have no help")
        kind = _plain(field.annotation)
        help_text = field.description
        if kind is bool:
            parser.add_argument(_flag(name), action="store_true", help=help_text)
        elif get_origin(kind) is dict and get_args(kind)[1] is str:
            parser.add_argument(
                _flag(name),
                action="append",
                default=[],
                metavar="KEY=VALUE",
                dest=name,
                help=f"{help_text} (repeatable), e.g. {_flag(name)} door=garage",
            )
        elif get_origin(kind) is dict:  # locale -> text model: a flag per field of the model
            inner: type[BaseModel] = get_args(kind)[1]
            for sub in inner.model_fields:
                parser.add_argument(
                    f"--locale-{sub.replace('_', '-')}",
                    action="append",
                    default=[],
                    metavar="LOCALE=TEXT",
                    dest=f"{name}.{sub}",
                    help=f"the {sub} for one locale (repeatable), e.g. --locale-{sub} de=Hallo; {help_text}",
                )
        elif get_origin(kind) is Literal:
            choices = [str(c) for c in get_args(kind)]
            parser.add_argument(_flag(name), choices=choices, dest=name, help=help_text)
        elif kind is int:
            parser.add_argument(_flag(name), type=int, dest=name, help=help_text)
        elif kind in (str, dt.datetime):
            parser.add_argument(_flag(name), dest=name, help=help_text)
        else:
            raise TypeError(f"PushIn.{name}: no flag for {kind!r}")


def _pairs(flag: str, values: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise FlagError(f"{flag}: expected KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def body_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The request body's fields the flags set (absent ones keep the service's defaults)."""
    body: dict[str, Any] = {}
    for name, field in PushIn.model_fields.items():
        if name in _OWN:
            continue
        kind = _plain(field.annotation)
        if get_origin(kind) is dict and get_args(kind)[1] is not str:
            inner: type[BaseModel] = get_args(kind)[1]
            texts: dict[str, dict[str, str]] = {}
            for sub in inner.model_fields:
                for locale, text in _pairs(f"--locale-{sub}", getattr(args, f"{name}.{sub}")).items():
                    texts.setdefault(locale, {})[sub] = text
            if texts:
                body[name] = texts
            continue
        value = getattr(args, name)
        if get_origin(kind) is dict:
            value = _pairs(_flag(name), value)
        if value not in (None, False, {}, []):
            body[name] = value
    return body
