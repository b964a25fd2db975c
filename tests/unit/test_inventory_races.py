"""The Cumulocity inventory store under concurrent writers (issue 14 item 11)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from registrations.inventory_store import InventoryRegistrationStore
from registrations.model import Registration

TOKEN = "c" * 64


class SlowInventory:
    """Answers after a few loop turns, counting writes of the same object that overlap."""

    def __init__(self) -> None:
        self.in_flight = self.max_in_flight = 0
        self.calls: list[tuple[str, bool]] = []

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        retry: bool = True,
    ) -> Any:
        self.calls.append((method, retry))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        for _ in range(5):
            await asyncio.sleep(0)
        self.in_flight -= 1
        return {"id": "42"} if method == "POST" else None


async def test_writers_of_one_registration_never_overlap_and_post_is_not_retried() -> None:
    api = SlowInventory()
    store = InventoryRegistrationStore(api, "t1")
    first = asyncio.create_task(store.upsert_async(Registration("apns", TOKEN), 1.0))
    second = asyncio.create_task(store.upsert_async(Registration("apns", TOKEN, user_id="b"), 2.0))
    await first  # the second now holds the lock: a third writer must wait for it
    third = asyncio.create_task(store.upsert_async(Registration("apns", TOKEN, user_id="c"), 3.0))
    await asyncio.gather(second, third)
    assert api.max_in_flight == 1
    assert api.calls[0] == ("POST", False)
    assert [m for m, _ in api.calls] == ["POST", "PUT", "PUT"]
    assert store._locks == {}
