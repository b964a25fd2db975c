"""paho-mqtt's client with cheaper I/O for a busy subscriber (the MQTT intake).

paho reads a packet with three or four ``recv`` calls (command byte, each length byte, the rest), writes
each queued packet with its own ``send``, and builds the lookup tables of its ``Properties`` class (30
entries) anew for every MQTT 5 PUBLISH. Under `scripts/bench e2e` those were about a third of the event
loop's time. This keeps paho's protocol code and changes only that I/O:

- ``_sock_recv`` reads up to 64 KiB at once and serves paho's small reads from that buffer; ``buffered``
  tells the intake's reader to go on while whole packets wait there (the socket is then not readable);
- ``_packet_write`` sends a run of queued PUBACKs (4 bytes each under MQTT 5 without a reason code) in
  one ``send``; every other packet goes out as paho writes it;
- PUBLISH properties are decoded with tables built once, and cleared without a look-up of every name
  (``SharedTableProperties``).

These are paho's internals, so the version is pinned (``paho-mqtt>=2.1,<2.3`` in pyproject.toml) and
tests/unit/test_paho_client.py checks each change against paho's own behaviour.
"""

from __future__ import annotations

from typing import Any, ClassVar

import paho.mqtt.client as paho
from paho.mqtt import _packet
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

READ_SIZE = 65536
_PUBACK = 0x40


class SharedTableProperties(Properties):
    """paho's ``Properties`` with its name and type tables shared by every instance (paho never changes
    them after ``__init__``)."""

    _tables: ClassVar[tuple[Any, Any, Any] | None] = None

    def __init__(self, packetType: int) -> None:
        tables = SharedTableProperties._tables
        if tables is None:
            probe = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            tables = SharedTableProperties._tables = (probe.types, probe.names, probe.properties)
        object.__setattr__(self, "packetType", packetType)
        object.__setattr__(self, "types", tables[0])
        object.__setattr__(self, "names", tables[1])
        object.__setattr__(self, "properties", tables[2])

    def clear(self) -> None:
        """paho's looks for each of the 27 names; only what was set is in ``__dict__``."""
        for name in [n for n in vars(self) if n not in _OWN]:
            delattr(self, name)


_OWN = frozenset(("packetType", "types", "names", "properties"))


# decode_publish (paho/mqtt/_packet.py) builds one per PUBLISH; it is paho's only per-message use.
_packet.Properties = SharedTableProperties  # type: ignore[attr-defined]


class IntakeClient(paho.Client):
    """A paho client whose reads are buffered and whose PUBACKs are written in runs."""

    _rbuf: bytes = b""

    @property
    def buffered(self) -> bool:
        """Bytes read from the socket and not yet parsed by paho."""
        return bool(self._rbuf)

    def _sock_recv(self, bufsize: int) -> bytes:
        buf = self._rbuf
        if not buf:
            buf = super()._sock_recv(READ_SIZE)  # raises BlockingIOError when nothing waits
            if not buf:
                return buf  # the peer closed: paho sees the empty read
        taken, self._rbuf = buf[:bufsize], buf[bufsize:]
        return taken

    def _sock_close(self) -> None:
        self._rbuf = b""  # a new connection starts with nothing of the old one
        super()._sock_close()

    def _packet_write(self) -> MQTTErrorCode:
        out = self._out_packet
        if (
            len(out) > 1
            and out[0]["command"] == _PUBACK
            and out[0]["pos"] == 0
            and out[1]["command"] == _PUBACK
        ):
            run: list[bytes | bytearray] = []
            while out and out[0]["command"] == _PUBACK and out[0]["pos"] == 0 and len(run) < 4096:
                run.append(out.popleft()["packet"])
            joined = b"".join(run)
            out.appendleft(
                {
                    "command": _PUBACK,
                    "mid": 0,
                    "qos": 0,
                    "pos": 0,
                    "to_process": len(joined),
                    "packet": joined,
                    "info": None,
                }
            )
        result: MQTTErrorCode = super()._packet_write()
        return result
