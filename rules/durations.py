"""Durations as users write them: ``90``, ``30s``, ``2m``, ``1h30m``, ``1d``."""

from __future__ import annotations

import math
import re

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
MAX_DURATION_S = 10 * 366 * 86400.0  # ten years: longer is a typo, and NaN/inf would never expire


def _bounded(seconds: float, value: object) -> float:
    if not math.isfinite(seconds) or seconds > MAX_DURATION_S:
        raise ValueError(f"a duration is at most 10 years, not {value!r}")
    return seconds


def parse_duration(value: object) -> float:
    """Seconds in ``value``; raises ValueError with what was wrong."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or text such as 30s, 2m, 1h30m")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return _bounded(float(value), value)
    if not isinstance(value, str):
        raise ValueError("a duration is a number of seconds or text such as 30s, 2m, 1h30m")
    text = value.strip().replace(" ", "")
    pos, total = 0, 0.0
    while pos < len(text):
        m = _PART.match(text, pos)
        if m is None:
            raise ValueError(f"cannot read {value!r} as a duration (use e.g. 30s, 2m, 1h30m)")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not text:
        raise ValueError("empty duration")
    return _bounded(total, value)
