"""Reading an MQTT payload: JSON when it looks like JSON, else text (a number when it reads as one).

Whatever the bytes, ``parse_payload`` returns a value or raises ``MalformedPayload``, never anything else:
one device's bad payload must not stop the intake. JSON is read with orjson (measured against the standard
library in ``tests/bench/payload.py``, figures in the README): it checks UTF-8, refuses NaN, infinities and
lone surrogates, and stops at depth 1024 without recursion errors. Our own, lower, depth limit (later code,
templates and JSON encoders recurse) costs nothing on payloads with fewer brackets than the limit.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

MAX_PAYLOAD_BYTES = 256 * 1024
MAX_DEPTH = 64  # nested arrays and objects; no rule path goes anywhere near this
ORJSON_DEPTH = 1024  # orjson's own fixed limit (tests/unit/test_payload.py pins it)
WRAP = ORJSON_DEPTH - MAX_DEPTH
_OPEN, _CLOSE = b"[" * WRAP, b"]" * WRAP
_JSON_START = (ord("{"), ord("["))
_SPACE = b" \t\r\n"


class MalformedPayload(ValueError):
    pass


def parse_payload(raw: bytes) -> Any:
    """The payload's value; ``MalformedPayload`` (and nothing else) when it cannot be read."""
    try:
        return _parse(raw)
    except MalformedPayload:
        raise
    except Exception as exc:  # MemoryError, RecursionError, or what no one foresaw: still one bad payload
        raise MalformedPayload(f"payload could not be read ({type(exc).__name__})") from None


def _parse(raw: bytes) -> Any:
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise MalformedPayload(f"payload of {len(raw)} bytes is over the {MAX_PAYLOAD_BYTES}-byte limit")
    first = raw[:1]
    if first and (first[0] in _JSON_START or (first in _SPACE and raw.lstrip(_SPACE)[:1] in (b"{", b"["))):
        return _json(raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedPayload(f"payload is not UTF-8 text (byte {exc.start})") from None
    stripped = text.strip()
    if stripped in ("true", "false"):
        return stripped == "true"
    if not stripped or "_" in stripped:  # int("1_0") would be 10
        return text
    try:
        number = float(stripped) if any(c in stripped for c in ".eE") else int(stripped)
    except ValueError:
        return text
    return number if math.isfinite(number) else text  # "1e999", "nan", "inf" stay what they are: text


def _json(raw: bytes) -> Any:
    # Depth d needs at least d brackets, so a payload with few of them (all typical ones) cannot be too deep.
    deep = raw.count(b"[") + raw.count(b"{") > MAX_DEPTH
    try:
        # Else let orjson check our limit: inside WRAP levels of arrays, its fixed limit is ours. Cheaper than
        # walking the parsed value (tests/bench/payload.py), and bounded whatever the payload.
        value = orjson.loads(_OPEN + raw + _CLOSE) if deep else orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in exc.msg:
            raise MalformedPayload(f"payload is nested deeper than {MAX_DEPTH} levels") from None
        pos = exc.pos - WRAP if deep else exc.pos
        raise MalformedPayload(f"payload looks like JSON but is not: {exc.msg} at byte {pos}") from None
    if deep:
        for _ in range(WRAP):
            value = value[0]
    return value
