"""Compact JSON text for the hot path (outbox rows, log provider lines): orjson, with the standard library
as the fallback for what orjson refuses (integers beyond 64 bits from an API body, say).

Measured in `scripts/bench e2e`: encoding a notification was 8 % of the event loop's time with ``json.dumps``.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def dumps(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
