"""A tenant's registrations as managed objects in its Cumulocity inventory.

On the platform the container is stateless: the tenant's inventory is the durable copy, one managed object of
type ``tocsin_Registration`` per (provider, token), visible only inside that tenant. Reads are served from an
in-memory SQLite copy (the same code as the default store, so audiences resolve the same way), loaded when
the tenant subscribes and refreshed now and then to pick up changes made by other instances.

An API write is durable when it returns: the inventory took it, then the copy is changed. Writes from the
delivery path (a token the provider declared dead) change the copy at once and reach the inventory in the
background, retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, Protocol

from registrations.model import Audience, Registration
from registrations.sqlite_store import SqliteRegistrationDb
from registrations.store import StoreUnavailable

log = logging.getLogger("tocsin.registrations.inventory")
MO_TYPE = "tocsin_Registration"
PAGE_SIZE = 2000  # the platform's maximum
_FIELDS = {  # fragment key -> Registration attribute
    "provider": "provider",
    "token": "token",
    "userId": "user_id",
    "app": "app",
    "environment": "environment",
    "deviceName": "device_name",
    "tags": "tags",
    "locale": "locale",
    "timezone": "timezone",
    "state": "state",
    "id": "id",
    "created": "created",
    "updated": "updated",
    "channels": "channels",
    "quietHours": "quiet_hours",
    "badge": "badge",
    "lastSuccess": "last_success",
    "stateSince": "state_since",
    "p256dh": "p256dh",  # a Web Push subscription's keys
    "auth": "auth",
}


class InventoryApi(Protocol):
    """The part of the platform client this store needs (``service.cumulocity.client.C8yClient``)."""

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        retry: bool = True,
    ) -> Any: ...


def to_fragment(r: Registration) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, attr in _FIELDS.items():
        value = getattr(r, attr)
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def from_fragment(f: Mapping[str, Any]) -> Registration:
    """A registration from its managed object's fragment; KeyError/TypeError/ValueError when damaged."""
    provider, token = f["provider"], f["token"]
    if not isinstance(provider, str) or not isinstance(token, str):
        raise TypeError("provider and token must be text")
    reg = Registration(provider, token)
    for key, attr in _FIELDS.items():
        if key in f and f[key] is not None:
            value = f[key]
            setattr(reg, attr, tuple(str(v) for v in value) if attr in ("tags", "channels") else value)
    return reg


class InventoryRegistrationStore:
    def __init__(self, api: InventoryApi, tenant: str, retry_s: float = 5.0) -> None:
        self.api, self.tenant, self.retry_s = api, tenant, retry_s
        self.cache = SqliteRegistrationDb(":memory:")
        self._versions = 0  # versions of the copies replaced by a refresh
        self._ids: dict[tuple[str, str], str] = {}  # (provider, token) -> managed object id
        # One lock per key while anyone holds or waits for it: (lock, how many hold or wait)
        self._locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self.damaged = 0  # managed objects of our type that could not be read

    # -- loading ---------------------------------------------------------------------------------------------
    async def load(self) -> int:
        """Read every registration of the tenant (again) and swap the copy; returns how many."""
        fresh = SqliteRegistrationDb(":memory:")
        ids: dict[tuple[str, str], str] = {}
        regs: list[Registration] = []
        page = 1
        while True:
            params = {"type": MO_TYPE, "pageSize": str(PAGE_SIZE), "currentPage": str(page)}
            body = await self.api.request("GET", "/inventory/managedObjects", params=params)
            objects = body.get("managedObjects", []) if isinstance(body, Mapping) else []
            for mo in objects:
                try:
                    reg = from_fragment(mo[MO_TYPE])
                except (KeyError, TypeError, ValueError) as exc:
                    self.damaged += 1
                    log.warning("tenant %s: managed object %s is not a readable registration: %s",
                                self.tenant, mo.get("id"), exc)  # fmt: skip
                    continue
                regs.append(reg)
                ids[(reg.provider, reg.token)] = str(mo["id"])
            if len(objects) < PAGE_SIZE:
                break
            page += 1
        stamps = [(r.created, r.updated, r.state_since, r.provider, r.token) for r in regs]
        for start in range(0, len(regs), 1000):
            fresh.upsert_many(regs[start : start + 1000], 0.0)
        with fresh.db.conn:  # keep the stored times, not the time of loading
            fresh.db.conn.executemany(
                "UPDATE registrations SET created = ?, updated = ?, state_since = ?"
                " WHERE provider = ? AND token = ?",
                stamps,
            )
        for reg, (created, updated, since, _, _) in zip(regs, stamps, strict=True):
            reg.created, reg.updated, reg.state_since = created, updated, since
        old = self.cache
        self._versions += old.version + 1
        self.cache, self._ids = fresh, ids
        old.close()
        return len(regs)

    def apply(self, mo: Mapping[str, Any]) -> bool:
        """A registration managed object as the platform notified its creation or change (written through
        another replica, or this one): the copy takes it. False when it is not a readable registration."""
        try:
            reg = from_fragment(mo[MO_TYPE])
        except (KeyError, TypeError, ValueError):
            self.damaged += 1
            return False
        created, updated, since = reg.created, reg.updated, reg.state_since
        self.cache.upsert(reg, updated)
        with self.cache.db.conn:  # the stored times, not the time of the notification
            self.cache.db.conn.execute(
                "UPDATE registrations SET created = ?, updated = ?, state_since = ?"
                " WHERE provider = ? AND token = ?",
                (created, updated, since, reg.provider, reg.token),
            )
        self._ids[(reg.provider, reg.token)] = str(mo["id"])
        return True

    def forget(self, mo_id: str) -> bool:
        """The managed object was deleted (through another replica, or this one): so is its copy."""
        for key, found in list(self._ids.items()):
            if found == mo_id:
                del self._ids[key]
                self.cache.remove(*key)
                return True
        return False

    # -- durable writes (the API) ----------------------------------------------------------------------------
    async def upsert_async(self, registration: Registration, now: float) -> Registration:
        key = (registration.provider, registration.token)
        async with self._key_lock(key):
            previous = self.cache.get(*key)
            merged = self.cache.upsert(registration, now)  # fills id, created, state_since like the store
            try:
                await self._write(merged)
            except Exception:
                if previous is not None:  # the inventory did not take it: the copy must not either
                    self.cache.upsert(previous, previous.updated)
                else:
                    self.cache.remove(*key)
                raise
        return merged

    @contextlib.asynccontextmanager
    async def _key_lock(self, key: tuple[str, str]) -> AsyncIterator[None]:
        """Writes of one registration one after another. The lock is dropped only when nobody holds or
        waits for it (dropping it while a waiter held it let a third writer run beside that one)."""
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    async def _write_locked(self, reg: Registration) -> None:
        async with self._key_lock((reg.provider, reg.token)):
            await self._write(reg)

    async def remove_async(self, provider: str | None, token: str) -> bool:
        found = [r for r in self.cache.by_token(token) if provider is None or r.provider == provider]
        for reg in found:
            key = (reg.provider, reg.token)
            mo = self._ids.get(key)
            if mo is not None:
                await self._call("DELETE", f"/inventory/managedObjects/{mo}", ignore_missing=True)
                self._ids.pop(key, None)
            self.cache.remove(reg.provider, reg.token)
        return bool(found)

    async def _write(self, reg: Registration) -> None:
        key = (reg.provider, reg.token)
        fragment = {MO_TYPE: to_fragment(reg)}
        mo = self._ids.get(key)
        if mo is not None:
            try:
                await self._call("PUT", f"/inventory/managedObjects/{mo}", fragment)
                return
            except StoreUnavailable as exc:
                if exc.status != 404:
                    raise
                self._ids.pop(key, None)  # deleted in the inventory meanwhile: create it again
        body = {"type": MO_TYPE, "name": f"tocsin {reg.provider} registration {reg.id}", **fragment}
        # Not retried: a POST whose answer was lost may have created the object, and a retry a second one.
        created = await self._call("POST", "/inventory/managedObjects", body, retry=False)
        if isinstance(created, Mapping) and created.get("id") is not None:
            self._ids[key] = str(created["id"])

    async def _call(
        self, method: str, path: str, body: Any = None, ignore_missing: bool = False, retry: bool = True
    ) -> Any:
        try:
            return await self.api.request(method, path, json=body, retry=retry)
        except Exception as exc:
            status = getattr(exc, "status", None)
            if ignore_missing and status == 404:
                return None
            raise StoreUnavailable(
                f"the inventory of tenant {self.tenant} did not take the change ({exc})",
                status if isinstance(status, int) else None,
            ) from exc

    # -- the RegistrationStore interface (reads from the in-memory copy) -------------------------------------
    async def version(self) -> int:
        return self._versions + self.cache.version

    async def upsert(self, registration: Registration, now: float) -> Registration:
        """From the delivery path (token hygiene): the copy at once, the inventory in the background."""
        merged = self.cache.upsert(registration, now)
        self._in_background(self._write_locked, merged)
        return merged

    async def upsert_many(self, registrations: Sequence[Registration], now: float) -> list[Registration]:
        return [await self.upsert(r, now) for r in registrations]

    async def remove(self, provider: str | None, token: str) -> bool:
        found = bool([r for r in self.cache.by_token(token) if provider is None or r.provider == provider])
        if found:
            self._in_background(lambda _: self.remove_async(provider, token), None)
        return found

    def _in_background(self, write: Any, arg: Any) -> None:
        async def run() -> None:
            for attempt in range(5):
                try:
                    await write(arg)
                    return
                except Exception as exc:
                    log.warning(
                        "tenant %s: inventory write failed (attempt %d): %s", self.tenant, attempt + 1, exc
                    )
                    await asyncio.sleep(self.retry_s * 2**attempt)
            log.error("tenant %s: gave up writing a registration change to the inventory", self.tenant)

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def get(self, provider: str, token: str) -> Registration | None:
        return self.cache.get(provider, token)

    async def app_of(self, provider: str, token: str) -> tuple[bool, str | None]:
        return self.cache.app_of(provider, token)

    async def by_token(self, token: str) -> list[Registration]:
        return self.cache.by_token(token)

    async def count(self) -> int:
        return self.cache.count()

    async def query(
        self, where: Audience, states: Iterable[str] = (), after: str = "", limit: int = 100
    ) -> tuple[list[Registration], str | None]:
        return self.cache.query(where, states, after, limit)

    async def resolve(self, audience: Audience, batch_size: int = 1000) -> AsyncIterator[list[Registration]]:
        for batch in self.cache.resolve(audience, batch_size):
            yield batch
            await asyncio.sleep(0)

    async def drain(self) -> None:
        """Wait for the background writes (at shutdown)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def close(self) -> None:
        for task in self._background:
            task.cancel()
        self.cache.close()


class InventoryWriter:
    """The API's writer for a tenant: durable in the inventory when it returns."""

    def __init__(self, store: InventoryRegistrationStore, clock: Any) -> None:
        self.store, self.clock = store, clock

    async def upsert(self, registration: Registration) -> Registration:
        return await self.store.upsert_async(registration, self.clock())

    async def remove(self, provider: str | None, token: str) -> bool:
        return await self.store.remove_async(provider, token)
