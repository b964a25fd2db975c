"""What the webhook receiver posts, and how it is signed (schema ``tocsin.webhook/1``, see the README).

The body follows Alertmanager's webhook where the ideas match (``status`` firing|resolved, ``labels``,
``startsAt``, a ``fingerprint``), with tocsin's own identity of an alert (alert id, episode, notification id)
and one alert per request: every delivery has its own outcome and report.

Signature: ``Tocsin-Signature: v1=<hex HMAC-SHA256(secret, "<Tocsin-Timestamp>." + body)>``, the
timestamp in whole Unix seconds in ``Tocsin-Timestamp``. A receiver recomputes it over the raw body, compares
in constant time and refuses timestamps more than five minutes off (a replayed request).
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from typing import Any

import orjson

from registrations.model import Registration
from service.notify.model import Delivery, Notification, describe, effective_priority

VERSION = "tocsin.webhook/1"
SIGNATURE_HEADER = "Tocsin-Signature"
TIMESTAMP_HEADER = "Tocsin-Timestamp"
ID_HEADER = "Tocsin-Delivery"  # the notification id: the same for every retry, so a receiver can dedupe
TOLERANCE_S = 300


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def status_of(n: Notification) -> str:
    """Alertmanager's word: ``resolved`` once the alert ended, else ``firing`` (acked alerts still fire)."""
    return "resolved" if n.state == "resolved" else "firing"


def body(delivery: Delivery) -> dict[str, Any]:
    n, reg = delivery.notification, delivery.registration
    title, text = n.text_for(reg.locale)
    return {
        "version": VERSION,
        **describe(n),
        "status": status_of(n),
        "fingerprint": n.alert_id,
        "title": title,
        "body": text,
        "data": dict(n.data),
        "priority": effective_priority(n.options),
        "collapse_key": n.options.collapse_key or n.nid,
        "tenant": n.tenant,
        "count": n.count,
        "startsAt": iso(n.created),
        "expiresAt": iso(n.expires),
        "receiver": _receiver(reg),
        "attempt": delivery.attempt,
        "term": delivery.term,
    }


def _receiver(reg: Registration) -> dict[str, Any]:
    return {"id": reg.id, "user_id": reg.user_id, "tags": list(reg.tags)}


def encode(delivery: Delivery) -> bytes:
    return orjson.dumps(body(delivery))


def signature(secret: bytes, timestamp: int, raw: bytes) -> str:
    mac = hmac.new(secret, str(timestamp).encode() + b"." + raw, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def headers(secret: bytes | None, timestamp: int, raw: bytes, nid: str) -> dict[str, str]:
    out = {"Content-Type": "application/json", TIMESTAMP_HEADER: str(timestamp), ID_HEADER: nid}
    if secret is not None:
        out[SIGNATURE_HEADER] = signature(secret, timestamp, raw)
    return out


def verify(secret: bytes, timestamp: str, raw: bytes, header: str, now: float) -> bool:
    """What a receiver does (the README's example, in Python): recompute, compare, refuse stale."""
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs(now - ts) > TOLERANCE_S:
        return False
    expected = signature(secret, ts, raw)
    return any(hmac.compare_digest(expected, part.strip()) for part in header.split(","))
