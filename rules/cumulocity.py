"""Cumulocity alarms as tocsin events, and SmartREST alarm lines (static templates 301-307) read from MQTT.

The event shape a Cumulocity source produces (and that alarm rules match):

- ``source`` is ``"cumulocity"``; ``topic`` is ``cumulocity/<tenant>/alarm/<source id>/<type>`` (see
  ``alarm_topic``), so rules select by tenant, device and type with ordinary topic filters;
- ``device`` is the alarm's source id;
- ``payload`` is the alarm as the platform sends it: ``type``, ``severity`` (CRITICAL, MAJOR, MINOR,
  WARNING), ``status`` (ACTIVE, ACKNOWLEDGED, CLEARED), ``text``, ``source`` ``{id, name}``, ``time``,
  ``count`` and custom fragments;
- ``attributes`` repeat ``tenant``, ``type``, ``severity`` and ``status`` as text.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from rules.event import Event, short_hash

SEVERITIES = ("CRITICAL", "MAJOR", "MINOR", "WARNING")
STATUSES = ("ACTIVE", "ACKNOWLEDGED", "CLEARED")
_RAISE = {"301": "CRITICAL", "302": "MAJOR", "303": "MINOR", "304": "WARNING"}


@dataclass(frozen=True, slots=True)
class Alarm:
    """What an alarm rule looks at. ``severity`` is None when the message does not say (306, 307)."""

    type: str
    severity: str | None
    status: str
    text: str
    source: str | None = None


def alarm_topic(tenant: str, source_id: str, alarm_type: str) -> str:
    """The event topic of a platform alarm; '/' and MQTT wildcards in names are replaced by '_'."""
    return "/".join(_level(p) for p in ("cumulocity", tenant, "alarm", source_id, alarm_type))


def _level(text: str) -> str:
    return text.replace("/", "_").replace("+", "_").replace("#", "_") or "_"


def alarm_from_payload(payload: Any) -> Alarm | None:
    """An alarm from a platform alarm (JSON), or None when the payload is not one."""
    if not isinstance(payload, Mapping):
        return None
    alarm_type = payload.get("type")
    if not isinstance(alarm_type, str) or not alarm_type:
        return None
    severity = payload.get("severity")
    status = payload.get("status") or "ACTIVE"
    source = payload.get("source")
    source_id = source.get("id") if isinstance(source, Mapping) else None
    return Alarm(
        alarm_type,
        str(severity).upper() if severity is not None else None,
        str(status).upper(),
        str(payload.get("text") or ""),
        str(source_id) if source_id is not None else None,
    )


def alarms_from_smartrest(payload: Any) -> Iterator[Alarm]:
    """The alarm changes in SmartREST 2.0 lines: 301-304 raise (CRITICAL, MAJOR, MINOR, WARNING), 305 changes
    the severity of the active alarm of a type, 306 clears it, 307 removes fragments (no change of state, so
    skipped). Other templates and malformed lines are skipped."""
    if isinstance(payload, bytes):
        payload = payload.decode("utf-8", "replace")
    if not isinstance(payload, str):
        return
    for row in csv.reader(payload.splitlines(), escapechar="\\", skipinitialspace=False):
        if len(row) < 2 or not row[1]:
            continue
        code, alarm_type = row[0].strip(), row[1]
        if code in _RAISE:
            text = row[2] if len(row) > 2 and row[2] else f"Alarm of type {alarm_type} raised"
            yield Alarm(alarm_type, _RAISE[code], "ACTIVE", text)
        elif code == "305" and len(row) > 2 and row[2].upper() in SEVERITIES:
            yield Alarm(alarm_type, row[2].upper(), "ACTIVE", "")
        elif code == "306":
            yield Alarm(alarm_type, None, "CLEARED", "")


def alarm_event(tenant: str, alarm: Mapping[str, Any], received: float) -> Event:
    """The event for a platform alarm (for the Cumulocity source). Its id is the same on every instance and
    for a redelivery of the same change (alarm id, status, severity, count), and differs for a real change."""
    source = alarm.get("source")
    source_id = str(source.get("id")) if isinstance(source, Mapping) and source.get("id") is not None else "_"
    alarm_type = str(alarm.get("type") or "_")
    status = str(alarm.get("status") or "ACTIVE").upper()
    severity = str(alarm.get("severity") or "").upper()
    eid = short_hash(
        "c8y",
        tenant,
        str(alarm.get("id") or ""),
        status,
        severity,
        str(alarm.get("count") or ""),
        str(alarm.get("time") or ""),
    )
    attributes = {"tenant": tenant, "type": alarm_type, "severity": severity, "status": status}
    return Event(
        eid,
        "cumulocity",
        alarm_topic(tenant, source_id, alarm_type),
        source_id,
        received,
        dict(alarm),
        attributes,
    )
