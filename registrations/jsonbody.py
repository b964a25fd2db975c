"""Strict JSON for request bodies: bounded nesting, no ``NaN``/``Infinity`` (nor numbers that overflow to
them), so a hostile body can neither exhaust the parser's recursion nor store values that a strict JSON
reader refuses later. Every JSON route reads its body through ``loads`` (directly or before its model).
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Any

MAX_DEPTH = 32
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = bytes.maketrans(b"[]{}", b"\x01\xff\x01\xff")


class BodyError(ValueError):
    """A body that is JSON in syntax but refused: too deep, or a non-finite number."""


def depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects, without parsing (strings are skipped)."""
    brackets = _STRINGS.sub(b"", raw).translate(_STEP, _NOT_BRACKETS)
    return max(accumulate(1 if b == 1 else -1 for b in brackets), default=0)


def _constant(name: str) -> Any:
    raise BodyError(f"{name} is not a JSON number (give a finite number)")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BodyError(f"{text} is out of range for a number")
    return value


def check(raw: bytes, max_depth: int = MAX_DEPTH) -> None:
    """Raises BodyError when ``raw`` nests deeper than ``max_depth`` or holds a non-finite number."""
    if depth(raw) > max_depth:
        raise BodyError(f"the body nests deeper than {max_depth} levels")
    try:
        json.loads(raw, parse_constant=_constant, parse_float=_float)
    except BodyError:
        raise
    except ValueError:
        pass  # a syntax error: the caller's parser reports it with its own position


def loads(raw: bytes, max_depth: int = MAX_DEPTH) -> Any:
    """The body's value; BodyError for the refusals above, ValueError for text that is not JSON."""
    if depth(raw) > max_depth:
        raise BodyError(f"the body nests deeper than {max_depth} levels")
    return json.loads(raw, parse_constant=_constant, parse_float=_float)
