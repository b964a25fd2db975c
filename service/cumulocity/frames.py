"""The Notifications 2.0 consumer frame (specs/cumulocity.md §3a), parsed without side effects.

A frame is ``<ackId>\\n/<tenant>/<api>/<sourceId>\\n<ACTION>\\n[more header lines]\\n\\n<body>``; unknown
header lines are ignored. The body is the JSON object of the alarm; a DELETE may carry only the id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


class FrameError(ValueError):
    """A frame that cannot be read; ``ack_id`` is its first line when there is one (so it can be acked)."""

    def __init__(self, reason: str, ack_id: str | None = None) -> None:
        super().__init__(reason)
        self.ack_id = ack_id


@dataclass(frozen=True)
class Frame:
    ack_id: str
    tenant: str
    api: str  # "alarms", "alarmsWithChildren", "managedobjects", ...
    source_id: str
    action: str  # "CREATE", "UPDATE", "DELETE" (more may come)
    body: dict[str, Any]


def parse_frame(text: str) -> Frame:
    """The frame in ``text``; ``FrameError`` when it is not one."""
    head, sep, raw_body = text.partition("\n\n")
    lines = head.split("\n")
    ack_id = lines[0].strip() or None
    if ack_id is None:
        raise FrameError("no acknowledgement id on the first line")
    if not sep:
        raise FrameError("no empty line between the header and the body", ack_id)
    if len(lines) < 3:
        raise FrameError(f"{len(lines)} header lines, expected at least 3 (id, description, action)", ack_id)
    description, action = lines[1].strip(), lines[2].strip()
    parts = description.split("/")
    if len(parts) != 4 or parts[0] or not all(parts[1:]):
        raise FrameError(f"description {description[:100]!r} is not /<tenant>/<api>/<sourceId>", ack_id)
    if not action:
        raise FrameError("no action on the third line", ack_id)
    return Frame(ack_id, parts[1], parts[2], parts[3], action, _body(raw_body.strip(), action, ack_id))


def _body(raw: str, action: str, ack_id: str) -> dict[str, Any]:
    try:
        value = json.loads(raw) if raw else None
    except ValueError:
        if action == "DELETE" and raw and "\n" not in raw:
            return {"id": raw}  # the real-time API sends only the id on a delete
        raise FrameError(f"the body is not JSON: {raw[:100]!r}", ack_id) from None
    if isinstance(value, dict):
        return value
    if action == "DELETE" and isinstance(value, str | int) and not isinstance(value, bool):
        return {"id": str(value)}
    if value is None and action == "DELETE":
        return {}
    raise FrameError(f"the body is not a JSON object: {raw[:100]!r}", ack_id)
