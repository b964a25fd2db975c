"""Reading an MQTT payload: JSON when it looks like JSON, else text (a number when it reads as one)."""

from __future__ import annotations

import json
from typing import Any

MAX_PAYLOAD_BYTES = 256 * 1024
_JSON_START = ("{", "[")


class MalformedPayload(ValueError):
    pass


def parse_payload(raw: bytes) -> Any:
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise MalformedPayload(f"payload of {len(raw)} bytes is over the {MAX_PAYLOAD_BYTES}-byte limit")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedPayload(f"payload is not UTF-8 text (byte {exc.start})") from None
    if text[:1] in _JSON_START or text.lstrip()[:1] in _JSON_START:
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise MalformedPayload(
                f"payload looks like JSON but is not: {exc.msg} at character {exc.pos}"
            ) from None
    stripped = text.strip()
    if stripped in ("true", "false"):
        return stripped == "true"
    try:
        return float(stripped) if any(c in stripped for c in ".eE") else int(stripped)
    except ValueError:
        return text
