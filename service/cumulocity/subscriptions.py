"""The tenants subscribed to the application and their service users (specs/cumulocity.md §1.4).

The platform announces no new subscriptions: ``SubscriptionPoller`` reads
``/application/currentApplication/subscriptions`` with the bootstrap user, first at once and then every
``interval_s``, and reports what changed to ``on_change(added, removed, changed)``. A failed poll is logged
and retried, and changes nothing (a platform hiccup never looks like every tenant unsubscribing). With
PER_TENANT isolation there is one fixed tenant from the environment and nothing to poll.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NamedTuple

from service.cumulocity.client import C8yClient, C8yError, Credentials

log = logging.getLogger("tocsin.cumulocity")
SUBSCRIPTIONS_PATH = "/application/currentApplication/subscriptions"


class SubscriptionDiff(NamedTuple):
    added: dict[str, Credentials]  # tenant -> its service user
    removed: dict[str, Credentials]  # tenant -> the credentials it had
    changed: dict[str, Credentials]  # tenant -> its new service user (e.g. resubscribed: new password)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


OnChange = Callable[
    [dict[str, Credentials], dict[str, Credentials], dict[str, Credentials]], Awaitable[None] | None
]


def diff(old: Mapping[str, Credentials], new: Mapping[str, Credentials]) -> SubscriptionDiff:
    """Tenants in ``new`` only, in ``old`` only, and in both with different credentials."""
    return SubscriptionDiff(
        added={t: c for t, c in new.items() if t not in old},
        removed={t: c for t, c in old.items() if t not in new},
        changed={t: c for t, c in new.items() if t in old and old[t] != c},
    )


def parse_subscriptions(body: Any) -> dict[str, Credentials]:
    """``{"users": [{"tenant", "name", "password"}, ...]}`` as tenant -> credentials; bad entries skipped."""
    users = body.get("users") if isinstance(body, dict) else None
    if not isinstance(users, list):
        raise ValueError("the subscriptions answer has no list 'users'")
    found: dict[str, Credentials] = {}
    for entry in users:
        fields = [entry.get(k) if isinstance(entry, dict) else None for k in ("tenant", "name", "password")]
        if not all(isinstance(f, str) and f for f in fields):
            log.warning("ignoring a subscription entry without tenant, name and password")
            continue
        tenant, name, password = (str(f) for f in fields)
        found[tenant] = Credentials(tenant, name, password)
    return found


class SubscriptionPoller:
    """Follows the subscribed tenants; ``run()`` until cancelled.

    ``on_change`` may be sync or async. When it raises, the change is reported again at the next poll, so it
    must be idempotent (e.g. starting a stream for a tenant that already has one replaces or keeps it).
    """

    def __init__(
        self,
        bootstrap: C8yClient | None,
        interval_s: float,
        on_change: OnChange,
        *,
        fixed: Credentials | None = None,
        retry_s: float = 10.0,
    ) -> None:
        if bootstrap is None and fixed is None:
            raise ValueError("a bootstrap client (MULTI_TENANT) or a fixed tenant (PER_TENANT) is needed")
        self.bootstrap, self.interval_s, self.on_change = bootstrap, interval_s, on_change
        self.fixed, self.retry_s = fixed, min(retry_s, interval_s)
        self.tenants: dict[str, Credentials] = {}
        self.last_error: str | None = None
        self.polls = 0
        self.failures = 0
        self.ready = asyncio.Event()  # set after the first successful poll was reported

    @classmethod
    def per_tenant(cls, credentials: Credentials, on_change: OnChange) -> SubscriptionPoller:
        """PER_TENANT isolation: the environment's one tenant, reported once as added."""
        return cls(None, 3600.0, on_change, fixed=credentials)

    async def fetch(self) -> dict[str, Credentials]:
        if self.fixed is not None:
            return {self.fixed.tenant: self.fixed}
        assert self.bootstrap is not None
        return parse_subscriptions(await self.bootstrap.get(SUBSCRIPTIONS_PATH))

    async def poll_once(self) -> SubscriptionDiff:
        """Fetch, report the difference (if any), remember it; raises what fetching or on_change raised."""
        self.polls += 1
        current = await self.fetch()
        change = diff(self.tenants, current)
        if change:
            result = self.on_change(change.added, change.removed, change.changed)
            if inspect.isawaitable(result):
                await result
        self.tenants = current
        self.ready.set()
        return change

    async def run(self) -> None:
        while True:
            try:
                change = await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                expected = isinstance(exc, C8yError)
                self.last_error = str(exc) if expected else f"{type(exc).__name__}: {exc}"
                log.warning(
                    "following the tenant subscriptions failed (%s); retrying in %.0f s",
                    self.last_error,
                    self.retry_s,
                    exc_info=not expected,  # a platform error is one line; anything else needs its traceback
                )
                await asyncio.sleep(self.retry_s)
                continue
            self.last_error = None
            if change:
                log.info(
                    "tenant subscriptions: %d added, %d removed, %d with new credentials (%d now)",
                    len(change.added),
                    len(change.removed),
                    len(change.changed),
                    len(self.tenants),
                )
            if self.fixed is not None:
                await asyncio.Event().wait()  # one fixed tenant: nothing more will change
            await asyncio.sleep(self.interval_s)
