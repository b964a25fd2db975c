"""What an APNs request carries for a notification: payload and header options (spec §1.2, §1.3)."""

from __future__ import annotations

import json
from typing import Any

from service.notify.model import Notification
from service.notify.options import PushOptions

MAX_PAYLOAD = 4096
MAX_VOIP_PAYLOAD = 5120
_PRIORITY = {"high": 10, "normal": 5, "low": 1}
_TOPIC_SUFFIX = {
    "voip": ".voip",
    "complication": ".complication",
    "fileprovider": ".pushkit.fileprovider",
    "location": ".location-query",
    "liveactivity": ".push-type.liveactivity",
    "pushtotalk": ".voip-ptt",
}


class PayloadTooLarge(ValueError):
    pass


def payload(n: Notification, locale: str | None = None) -> dict[str, Any]:
    """``aps`` and custom keys, in the registration's language (``de-AT`` -> ``de`` -> default)."""
    o = n.options
    title, text = n.text_for(locale)
    aps: dict[str, Any] = {}
    if o.push_type != "background":
        alert: dict[str, Any] = {}
        if title:
            alert["title"] = title
        if o.subtitle:
            alert["subtitle"] = o.subtitle
        if text:
            alert["body"] = text
        if o.title_loc_key:
            alert["title-loc-key"] = o.title_loc_key
            alert["title-loc-args"] = list(o.title_loc_args)
        if o.loc_key:
            alert["loc-key"] = o.loc_key
            alert["loc-args"] = list(o.loc_args)
        if alert:
            aps["alert"] = alert
    aps.update(aps_keys(o))
    body: dict[str, Any] = {"aps": aps}
    body.update(n.data)
    body.update(o.custom)
    return body


def aps_keys(o: PushOptions) -> dict[str, Any]:
    """The ``aps`` keys besides the alert (spec §1.3), for APNs and for iOS apps reached through FCM alike."""
    if o.push_type == "background":
        return {"content-available": 1}  # the integer 1: Apple checks it, "1" does not wake the app
    aps: dict[str, Any] = {}
    if o.badge is not None:
        aps["badge"] = o.badge
    if o.sound:
        aps["sound"] = {"critical": 1, "name": o.sound, "volume": 1.0} if o.critical_sound else o.sound
    if o.thread_id:
        aps["thread-id"] = o.thread_id
    if o.category:
        aps["category"] = o.category
    if o.content_available:
        aps["content-available"] = 1
    if o.mutable_content:
        aps["mutable-content"] = 1
    if o.interruption_level:
        aps["interruption-level"] = o.interruption_level
    if o.relevance_score is not None:
        aps["relevance-score"] = o.relevance_score
    return aps


def encoded_size(body: dict[str, Any]) -> int:
    """The size aioapns will send (it encodes with ensure_ascii=False)."""
    return len(json.dumps(body, ensure_ascii=False).encode())


def check_size(n: Notification, body: dict[str, Any]) -> None:
    limit = MAX_VOIP_PAYLOAD if n.options.push_type == "voip" else MAX_PAYLOAD
    size = encoded_size(body)
    if size > limit:
        raise PayloadTooLarge(
            f"APNs payload of notification {n.nid} is {size} bytes; the limit for "
            f"{n.options.push_type} pushes is {limit} bytes"
        )


def priority(n: Notification) -> int:
    if n.options.priority is not None:
        return _PRIORITY[n.options.priority]
    return 10 if n.options.push_type == "alert" else 5


def topic(bundle_id: str, push_type: str) -> str:
    return bundle_id + _TOPIC_SUFFIX.get(push_type, "")
