"""Decisions by the user's own server: for a rule with ``webhook:``, tocsin posts the would-be
notification and the server answers with changes or a decision not to send. No answer in time (or a bad
one) means the rule's ``default``.

Request body: ``{"notification": {nid, alert_id, episode, rule, state, severity, title, body, labels,
audience: {tags, users}, data, sound, category, priority, collapse_key}}``.
Answers: 204, or ``{"send": true, "changes": {...}}`` with any of ``title``, ``body``, ``sound``,
``category``, ``priority`` (high|normal), ``data`` (text to text), ``audience`` ({tags, users});
``{"send": false}`` drops it.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import aiohttp

from registrations.model import Audience
from service.notify.model import Notification, describe, effective_priority

log = logging.getLogger("tocsin.webhook")
_TEXT_FIELDS = ("title", "body")
_OPTION_TEXT_FIELDS = ("sound", "category")


class BadAnswer(ValueError):
    pass


def request_body(n: Notification) -> dict[str, Any]:
    return {
        "notification": {
            **describe(n),
            "audience": {"tags": list(n.audience.tags), "users": list(n.audience.users)},
            "data": dict(n.data),
            "sound": n.options.sound,
            "category": n.options.category,
            "priority": effective_priority(n.options),
            "collapse_key": n.options.collapse_key,
        }
    }


def _texts(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise BadAnswer(f"{what} must be a list of text")
    return tuple(value)


def apply_answer(n: Notification, answer: Any) -> Notification | None:
    """The notification as the server wants it, or None for "don't send"; BadAnswer when it makes no sense."""
    if not isinstance(answer, dict):
        raise BadAnswer("the answer must be a JSON object")
    send = answer.get("send", True)
    if not isinstance(send, bool):
        raise BadAnswer("'send' must be true or false")
    if not send:
        return None
    changes = answer.get("changes") or {}
    if not isinstance(changes, dict):
        raise BadAnswer("'changes' must be an object")
    out: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for key, value in changes.items():
        if key in _OPTION_TEXT_FIELDS:
            if not isinstance(value, str):
                raise BadAnswer(f"changes.{key} must be text")
            options[key] = value
        elif key in _TEXT_FIELDS:
            if not isinstance(value, str):
                raise BadAnswer(f"changes.{key} must be text")
            out[key] = value
        elif key == "priority":
            if value not in ("high", "normal"):
                raise BadAnswer("changes.priority must be high or normal")
            options[key] = value
        elif key == "data":
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                raise BadAnswer("changes.data must map names to text")
            out[key] = {str(k): v for k, v in value.items()}
        elif key == "audience":
            if not isinstance(value, dict):
                raise BadAnswer("changes.audience must be an object")
            tags = _texts(value.get("tags", []), "changes.audience.tags")
            users = _texts(value.get("users", []), "changes.audience.users")
            out[key] = Audience(tags=tags, users=users)
        else:
            raise BadAnswer(f"changes.{key} cannot be changed")
    if "title" in out or "body" in out:
        out["texts"] = {}  # the server's text replaces the per-locale variants
    if options:
        out["options"] = replace(n.options, **options)
    return replace(n, **out) if out else n


class WebhookDecider:
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self.outcomes: dict[str, int] = {}

    def _count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    async def decide(self, n: Notification) -> Notification | None:
        wh = n.policy.webhook if n.policy is not None else None
        if wh is None:
            return n
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.post(
                wh.url, json=request_body(n), timeout=aiohttp.ClientTimeout(total=wh.timeout)
            ) as r:
                if r.status == 204:
                    self._count("unchanged")
                    return n
                if r.status >= 300:
                    raise BadAnswer(f"HTTP {r.status}")
                decided = apply_answer(n, await r.json(content_type=None))
        except (TimeoutError, aiohttp.ClientError, BadAnswer, ValueError) as exc:
            self._count("fallback")
            log.warning(
                "webhook %s for rule %s: %s; using the default (%s)",
                wh.url,
                n.rule,
                exc or "timeout",
                wh.default,
            )
            return n if wh.default == "send" else None
        self._count("dropped" if decided is None else "changed")
        return decided

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
