"""The one interface every event source implements, and the sink they feed.

A source turns what it receives into ``rules.event.Event`` and hands each to ``EventSink.handle``; after a
batch it awaits ``EventSink.commit``, and only once that returned does it acknowledge the batch to whoever
sent it (MQTT PUBACK, the Cumulocity frame acknowledgement, an HTTP 2xx). So nothing is acknowledged before
the outbox rows and the state changes it caused are durable.
"""

from __future__ import annotations

from typing import Any, Protocol

from rules.event import Event


class EventSink(Protocol):
    async def handle(self, event: Event) -> None:
        """Rules, then the notify pipeline; what that wrote is buffered until ``commit``."""
        ...

    async def commit(self) -> None:
        """Everything handled so far is durable when this returns; raises if it could not be written."""
        ...


class Source(Protocol):
    name: str

    async def run(self, sink: EventSink) -> None:
        """Receive until cancelled or ``stop()``; reconnects by itself."""
        ...

    async def stop(self) -> None:
        """Graceful: take nothing new, finish and acknowledge the batch under way, disconnect."""
        ...

    @property
    def ready(self) -> bool: ...

    def health(self) -> dict[str, Any]: ...
