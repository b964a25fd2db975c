"""Payload parsing: the standard library's json against orjson (and msgspec when installed), same guards.

Each parser gets the same rules as ``service.sources.payload``: size limit, UTF-8, depth limit (the bracket
count, then a walk of the parsed value), any exception turned into a refusal. Cases: a typical ~100-byte
device message, a text payload, and hostile ones ('[' * 100000, '{"a":' nested 10,000 deep, invalid UTF-8,
a number too big, NaN). Prints µs per parse for each parser and case.
Usage: scripts/bench payload [--seconds 0.3] [--smoke]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

from service.sources.payload import MAX_DEPTH, MAX_PAYLOAD_BYTES, MalformedPayload, parse_payload

TYPICAL = b'{"event": "ring", "battery": 87, "rssi": -61, "id": "front-door", "ts": 1733212345, "ok": true}'
CASES: dict[str, bytes] = {
    "typical_100B": TYPICAL,
    "text_ON": b"ON",
    "array_10KB": json.dumps([{"t": i, "v": i * 0.5} for i in range(500)]).encode(),
    "deep_array_100000": b"[" * 100_000,
    "deep_object_10000": b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    "invalid_utf8": b'{"event": "ring\xff\xfe"}',
    "huge_number": b"[" + b"9" * 5000 + b"]",
    "nan": b'{"v": NaN}',
    "over_limit_300KB": b"[" + b"1," * 150_000 + b"1]",
}


def too_deep(value: Any, limit: int) -> bool:
    """Level by level, without recursion: whether arrays and objects nest deeper than ``limit``."""
    level, depth = [value], 1
    while level:
        if depth > limit:
            return True
        below: list[Any] = []
        for v in level:
            below += [c for c in (v.values() if type(v) is dict else v) if type(c) is dict or type(c) is list]
        level, depth = below, depth + 1
    return False


def _guarded(loads: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """The service's parser with another JSON library, its depth limit checked by walking the value."""

    def parse(raw: bytes) -> Any:
        if raw.lstrip()[:1] not in (b"{", b"["):
            return parse_payload(raw)  # the text path is the same for every JSON library
        if len(raw) > MAX_PAYLOAD_BYTES:
            raise MalformedPayload("too big")
        try:
            value = loads(raw)
        except Exception as exc:
            raise MalformedPayload(type(exc).__name__) from None
        if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and too_deep(value, MAX_DEPTH):
            raise MalformedPayload("too deep")
        return value

    return parse


def parsers() -> dict[str, Callable[[bytes], Any]]:
    found: dict[str, Callable[[bytes], Any]] = {
        "json": _guarded(lambda raw: json.loads(raw.decode("utf-8"))),
        "orjson": parse_payload,  # what the service uses
    }
    try:
        import msgspec  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        pass
    else:
        found["msgspec"] = _guarded(msgspec.json.Decoder().decode)
    return found


def measure(parse: Callable[[bytes], Any], raw: bytes, seconds: float) -> tuple[float, str]:
    """µs per call, and what the parser made of it (ok or the refusal's class)."""
    try:
        parse(raw)
        outcome = "ok"
    except MalformedPayload:
        outcome = "refused"
    except BaseException as exc:  # what the service must never see
        outcome = f"escaped {type(exc).__name__}"
    n, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(20):
            with contextlib.suppress(BaseException):
                parse(raw)
        n += 20
        now = time.perf_counter()
        if now >= deadline:
            return (now - start) / n * 1e6, outcome


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=0.3, help="per parser and case")
    ap.add_argument("--smoke", action="store_true", help="tiny run for the test suite")
    args = ap.parse_args()
    print(json.dumps(bench(0.005 if args.smoke else args.seconds)))


def bench(seconds: float, say: Callable[[str], None] = print) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for pname, parse in parsers().items():
        for case, raw in CASES.items():
            us, outcome = measure(parse, raw, seconds)
            say(f"{pname:8} {case:20} {us:10.2f} µs  {outcome}")
            figures[f"{pname}_{case}_us"] = round(us, 2)
            figures[f"{pname}_{case}"] = outcome
    return figures


if __name__ == "__main__":
    main()
