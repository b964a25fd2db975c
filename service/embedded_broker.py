"""When no MQTT broker answers on the local address at start, run one in process (amqtt) so that a
newcomer's first ``tocsin run`` works with nothing else installed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType

log = logging.getLogger("tocsin.broker")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


async def broker_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


class EmbeddedBroker:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._broker: object | None = None

    async def __aenter__(self) -> EmbeddedBroker:
        from amqtt.broker import Broker  # imported here: most deployments never need it

        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.WARNING)
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        broker = Broker(config)
        await broker.start()
        self._broker = broker
        log.warning(
            "no MQTT broker answered on %s:%d, so tocsin started an embedded one there (amqtt). "
            "For production, run Mosquitto or another broker and set mqtt.host/mqtt.port.",
            self.host,
            self.port,
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._broker is not None:
            await self._broker.shutdown()  # type: ignore[attr-defined]
