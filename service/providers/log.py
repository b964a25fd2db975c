"""The ``log`` provider: prints each notification, for newcomers, demos and benchmarks."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from datetime import UTC, datetime
from typing import Literal, TextIO

from pydantic import BaseModel, ConfigDict

from registrations.model import Registration
from service.jsontext import dumps
from service.notify.model import Delivery, describe
from service.providers.base import Delivered, Outcome
from service.providers.plugin import ProviderPlugin

_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)} | {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}
_CONTROL |= {c: f"\\u{c:04x}" for c in (0x85, 0x2028, 0x2029)}  # line breaks to some readers


def escaped(text: str) -> str:
    """Text with control characters written as escapes: one notification is always one line."""
    return text.translate(_CONTROL)


_TOKEN = re.compile(r"[\x21-\x7e]{1,200}")


class LogProviderConfig(BaseModel):
    """``providers.log``: how the log provider writes each notification."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    format: Literal["text", "json"] = "text"
    stream: Literal["stdout", "stderr"] = "stdout"


def check_token(token: str) -> str:
    if not _TOKEN.fullmatch(token):
        raise ValueError("a log token is 1-200 printable characters without spaces")
    return token


class LogProvider:
    name = "log"

    def __init__(self, config: LogProviderConfig, stream: TextIO | None = None) -> None:
        self._json = config.format == "json"
        self._stream = stream or (sys.stdout if config.stream == "stdout" else sys.stderr)
        self._flush_pending = False

    @property
    def degraded(self) -> str | None:
        return None

    def credential_for(self, registration: Registration) -> str:
        return ""

    async def send(self, delivery: Delivery) -> Outcome:
        n, reg = delivery.notification, delivery.registration
        if self._json:
            line = dumps({**describe(n), "to": reg.token, "term": delivery.term, "sent_at": time.time()})
        else:
            stamp = datetime.fromtimestamp(n.created, UTC).strftime("%Y-%m-%d %H:%M:%S")
            state = n.state.upper()
            line = f"[notification] {stamp} {state} {n.rule} ({n.severity}) to {reg.token}: {n.title}"
            if n.body:
                line += f" — {n.body}"
            line = escaped(line)
        self._stream.write(line + "\n")
        if not self._flush_pending:  # one flush per loop iteration, however many lines it wrote
            self._flush_pending = True
            asyncio.get_running_loop().call_soon(self._flush)
        return Delivered()

    def _flush(self) -> None:
        self._flush_pending = False
        self._stream.flush()

    async def close(self) -> None:
        self._stream.flush()


PLUGIN = ProviderPlugin(
    name="log",
    config=LogProviderConfig,
    build=LogProvider,
    check_token=check_token,
    summary="prints each notification (demos, the console, benchmarks)",
)
