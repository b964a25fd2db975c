"""The intake's paho client (service/sources/paho_client.py) keeps paho's behaviour with cheaper I/O."""

from __future__ import annotations

import socket
import struct
from typing import Any

from paho.mqtt import _packet
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from service.sources.paho_client import IntakeClient, SharedTableProperties


class CountingSocket:
    """A socket end that counts the calls paho makes on it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.recvs, self.sends = sock, 0, []  # type: ignore[var-annotated]

    def recv(self, n: int) -> bytes:
        self.recvs += 1
        return self.sock.recv(n)

    def send(self, data: Any) -> int:
        self.sends.append(bytes(data))
        return self.sock.send(data)

    def close(self) -> None:
        self.sock.close()

    def fileno(self) -> int:
        return self.sock.fileno()


def client(v5: bool = False) -> IntakeClient:
    protocol = MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311
    return IntakeClient(CallbackAPIVersion.VERSION2, client_id="t", protocol=protocol, manual_ack=True)


def publish_packet(topic: str, payload: bytes, mid: int, props: bytes = b"") -> bytes:
    body = struct.pack("!H", len(topic)) + topic.encode() + struct.pack("!H", mid) + props + payload
    assert len(body) < 128
    return bytes([0x32, len(body)]) + body  # PUBLISH, QoS 1


def test_publish_properties_decode_as_paho_decodes_them() -> None:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.UserProperty = [("site", "berlin")]
    props.MessageExpiryInterval = 30
    packet = publish_packet("a/b", b"{}", 7, props.pack())  # type: ignore[no-untyped-call]
    decoded = _packet.decode_publish(packet[0], packet[2:], MQTTProtocolVersion.MQTTv5)
    assert isinstance(decoded.properties, SharedTableProperties)
    found: Any = decoded.properties
    assert found.UserProperty == [("site", "berlin")]
    assert found.MessageExpiryInterval == 30
    assert (decoded.topic, decoded.mid, decoded.payload) == (b"a/b", 7, b"{}")


def test_reads_are_buffered_and_every_packet_still_reaches_on_message() -> None:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    c = client()
    counting = CountingSocket(ours)
    c._sock = counting  # type: ignore[assignment]
    got: list[tuple[str, int, bytes]] = []
    c.on_message = lambda cl, ud, m: got.append((m.topic, m.mid, bytes(m.payload)))
    theirs.sendall(b"".join(publish_packet(f"t/{i}", b"x" * i, i + 1) for i in range(50)))
    c.loop_read()
    while c.buffered:
        c.loop_read()
    assert got == [(f"t/{i}", i + 1, b"x" * i) for i in range(50)]
    assert counting.recvs == 1  # paho alone: three reads per packet
    theirs.close()
    c._sock_close()


def test_a_packet_split_across_reads_is_put_together() -> None:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    c = client()
    c._sock = CountingSocket(ours)  # type: ignore[assignment]
    got: list[bytes] = []
    c.on_message = lambda cl, ud, m: got.append(bytes(m.payload))
    packet = publish_packet("t", b"hello", 1)
    theirs.sendall(packet[:5])
    c.loop_read()
    assert got == []
    theirs.sendall(packet[5:])
    c.loop_read()
    assert got == [b"hello"]
    theirs.close()
    c._sock_close()


def test_a_run_of_pubacks_is_sent_in_one_write_in_order() -> None:
    ours, theirs = socket.socketpair()
    c = client()
    counting = CountingSocket(ours)
    c._sock = counting  # type: ignore[assignment]
    c.on_socket_register_write = lambda cl, ud, sock: None  # as the intake runs it: writes wait for the loop
    for mid in (1, 2, 3):
        c.ack(mid, 1)
    c.loop_write()
    assert counting.sends == [b"\x40\x02\x00\x01\x40\x02\x00\x02\x40\x02\x00\x03"]
    assert theirs.recv(100) == counting.sends[0]
    c._sock_close()
    theirs.close()


def test_clearing_properties_removes_what_was_set_and_keeps_the_tables() -> None:
    props: Any = SharedTableProperties(PacketTypes.PUBLISH)
    props.ContentType = "application/json"
    props.clear()
    assert not hasattr(props, "ContentType")
    props.ResponseTopic = "r/1"  # the tables still work
    assert props.ResponseTopic == "r/1"
