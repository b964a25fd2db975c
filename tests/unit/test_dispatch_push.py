"""The dispatcher's guarantees that the push delivery work added."""

from __future__ import annotations

from pathlib import Path

from registrations.model import Registration
from registrations.sqlite_store import SqliteRegistrationStore
from service.clock import SystemClock
from service.metrics import Metrics
from service.notify.dispatch import Dispatcher
from service.notify.model import Delivery
from service.outbox import Outbox
from service.providers.base import Delivered, Outcome
from tests.push_support import notification
from tests.support import wait_until


async def test_a_provider_that_raises_is_retried_not_stranded(tmp_path: Path) -> None:
    class Flaky:
        name = "log"
        degraded = None
        calls = 0

        def credential_for(self, registration: Registration) -> str:
            return ""

        async def send(self, delivery: Delivery) -> Outcome:
            Flaky.calls += 1
            if Flaky.calls == 1:
                raise RuntimeError("bug")
            return Delivered()

        async def close(self) -> None:
            pass

    store = SqliteRegistrationStore(tmp_path / "r.db")
    outbox = Outbox(tmp_path / "r.db")
    reg = await store.upsert(Registration("log", "t"), 0.0)
    d = Dispatcher(
        {"log": Flaky()}, store, Metrics(), SystemClock(), outbox=outbox, retry_base_s=0.01, workers=1
    )
    d.start()
    try:
        await d.submit(Delivery(notification("nid-flaky"), reg))
        await wait_until(lambda: (outbox.report("nid-flaky") or {}).get("delivered") == 1, 5, "the retry")
        assert d.metrics.internal_errors.get("provider_log") == 1 and Flaky.calls == 2
    finally:
        await d.stop()
        outbox.close()
        await store.close()
