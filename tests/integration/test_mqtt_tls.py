"""Broker connections over TLS, with client certificates, passwords from secret files and both MQTT
versions, against a real Mosquitto whose certificates the test makes (tests/fakes/certs.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from service.clock import SystemClock
from service.cluster.node import ClusterNode
from service.cluster.records import Presence
from service.cluster.timing import ClusterTiming
from service.config import MqttConfig, load_config
from service.sources.broker import aiomqtt_options, configure_paho, paho_protocol
from tests.fakes.certs import CertificateAuthority
from tests.fakes.keys import random_id
from tests.support import (
    ROOT,
    Mosquitto,
    MosquittoTls,
    ServiceRun,
    free_port,
    port_open,
    wait_until,
    wait_until_sync,
)


def mqtt_config(tmp_path: Path, section: dict[str, Any]) -> MqttConfig:
    """Through the real loader: a YAML file, secret files read, validators run."""
    f = tmp_path / f"tocsin-{random_id(6)}.yaml"
    f.write_text(yaml.safe_dump({"mqtt": section}))
    return load_config(f, {}).mqtt


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority(tmp_path / "pki")


def tls_broker(tmp_path: Path, ca: CertificateAuthority, name: str, **kwargs: Any) -> Iterator[Mosquitto]:
    server = ca.server()
    tls = MosquittoTls(ca.cert, server.cert, server.key, kwargs.pop("require_certificate", False))
    m = Mosquitto(tmp_path / name, tls=tls, **kwargs)
    m.start()
    yield m
    m.stop()


@pytest.fixture
def broker_tls(tmp_path: Path, ca: CertificateAuthority) -> Iterator[Mosquitto]:
    yield from tls_broker(tmp_path, ca, "tls")


@pytest.fixture
def broker_mtls(tmp_path: Path, ca: CertificateAuthority) -> Iterator[Mosquitto]:
    yield from tls_broker(tmp_path, ca, "mtls", require_certificate=True)


def broker_log(m: Mosquitto) -> str:
    return (m.workdir / "mosquitto.log").read_text(errors="replace")


class PahoRun:
    """A paho client built the way the intake builds one, on its own network thread."""

    def __init__(self, cfg: MqttConfig, client_id: str) -> None:
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho_protocol(cfg)
        )
        configure_paho(self.client, cfg)
        self.cfg = cfg
        self.connected = threading.Event()
        self.reason: str | None = None
        self.messages: list[bytes] = []
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda c, u, msg: self.messages.append(bytes(msg.payload))

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.reason = str(reason)
        if not reason.is_failure:
            self.connected.set()

    def __enter__(self) -> PahoRun:
        self.client.connect(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        self.client.loop_start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def tls_section(m: Mosquitto, ca: CertificateAuthority, **extra: Any) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": m.port, "tls": {"enabled": True, "ca_file": str(ca.cert), **extra}}


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_paho_publishes_and_subscribes_over_tls(
    tmp_path: Path, ca: CertificateAuthority, broker_tls: Mosquitto, protocol: str
) -> None:
    cfg = mqtt_config(tmp_path, {**tls_section(broker_tls, ca), "protocol": protocol, "keepalive_s": 17})
    client_id = f"tocsin-paho-{random_id(6)}"
    with PahoRun(cfg, client_id) as run:
        assert run.connected.wait(10), run.reason
        run.client.subscribe("t/tls", qos=1)  # the broker handles one connection's packets in order
        run.client.publish("t/tls", b"over tls", qos=1)
        wait_until_sync(lambda: bool(run.messages), 10, "the message back over TLS")
    assert b"over tls" in run.messages
    # The broker saw the version, keepalive and client id asked for: p2 is MQTT 3.1.1, p5 MQTT 5.
    version = "p5" if protocol == "5" else "p2"
    wait_until_sync(
        lambda: f"as {client_id} ({version}, c1, k17)" in broker_log(broker_tls), 5, "connect log"
    )


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_aiomqtt_publishes_and_subscribes_over_tls(
    tmp_path: Path, ca: CertificateAuthority, broker_tls: Mosquitto, protocol: str
) -> None:
    cfg = mqtt_config(tmp_path, {**tls_section(broker_tls, ca), "protocol": protocol})
    client_id = f"tocsin-aio-{random_id(6)}"
    async with aiomqtt.Client(cfg.host, cfg.port, identifier=client_id, **aiomqtt_options(cfg)) as client:
        await client.subscribe("t/aio", qos=1)
        await client.publish("t/aio", b"hello", qos=1)
        async with asyncio.timeout(10):
            async for message in client.messages:
                assert message.payload == b"hello"
                break
    version = "p5" if protocol == "5" else "p2"
    await wait_until(
        lambda: f"as {client_id} ({version}, c1, k30)" in broker_log(broker_tls), 5, "connect log"
    )


async def test_wrong_ca_is_refused_naming_certificate_verification(
    tmp_path: Path, broker_tls: Mosquitto
) -> None:
    other = CertificateAuthority(tmp_path / "other-pki", name="someone else")
    cfg = mqtt_config(tmp_path, tls_section(broker_tls, other))
    with pytest.raises(aiomqtt.MqttError, match="certificate verify failed"):
        async with aiomqtt.Client(cfg.host, cfg.port, identifier="wrong-ca", **aiomqtt_options(cfg)):
            pass
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        PahoRun(cfg, "wrong-ca-paho").__enter__()


async def test_insecure_skip_verify_connects_to_any_certificate_and_warns(
    tmp_path: Path, broker_tls: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    other = CertificateAuthority(tmp_path / "other-pki", name="someone else")
    cfg = mqtt_config(tmp_path, tls_section(broker_tls, other, insecure_skip_verify=True))
    with caplog.at_level(logging.WARNING, "tocsin.broker"):
        async with aiomqtt.Client(cfg.host, cfg.port, identifier="insecure", **aiomqtt_options(cfg)) as c:
            await c.publish("t/x", b"1", qos=1)
    assert "insecure_skip_verify is on" in caplog.text and "NOT checked" in caplog.text


async def test_server_name_is_sent_and_checked(tmp_path: Path, ca: CertificateAuthority) -> None:
    """A broker whose certificate names only broker.example, dialled by address: server_name makes it fit."""
    server = ca.server("broker.example", ip=None)
    m = Mosquitto(tmp_path / "named", tls=MosquittoTls(ca.cert, server.cert, server.key))
    m.start()
    try:
        plain = mqtt_config(tmp_path, tls_section(m, ca))
        with pytest.raises(aiomqtt.MqttError, match=r"IP address mismatch|doesn't match"):
            async with aiomqtt.Client(plain.host, plain.port, identifier="no-name", **aiomqtt_options(plain)):
                pass
        named = mqtt_config(tmp_path, tls_section(m, ca, server_name="broker.example"))
        async with aiomqtt.Client(named.host, named.port, identifier="named", **aiomqtt_options(named)) as c:
            await c.publish("t/named", b"1", qos=1)
        with PahoRun(named, "named-paho") as run:
            assert run.connected.wait(10), run.reason
    finally:
        m.stop()


async def test_client_certificate_required_accepts_ours_and_refuses_none(
    tmp_path: Path, ca: CertificateAuthority, broker_mtls: Mosquitto
) -> None:
    passphrase = secrets.token_urlsafe(12)
    ours = ca.client("tocsin", password=passphrase)
    secret = tmp_path / "key-passphrase"
    secret.write_text(passphrase + "\n")
    cfg = mqtt_config(
        tmp_path,
        tls_section(
            broker_mtls, ca, cert_file=str(ours.cert), key_file=str(ours.key), key_password_file=str(secret)
        ),
    )
    async with aiomqtt.Client(cfg.host, cfg.port, identifier="with-cert", **aiomqtt_options(cfg)) as c:
        await c.publish("t/mtls", b"1", qos=1)
    with PahoRun(cfg, "with-cert-paho") as run:
        assert run.connected.wait(10), run.reason

    none = mqtt_config(tmp_path, tls_section(broker_mtls, ca))
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(
            none.host, none.port, identifier="no-cert", timeout=5, **aiomqtt_options(none)
        ):
            pass
    await wait_until(
        lambda: "peer did not return a certificate" in broker_log(broker_mtls), 5, "the broker's refusal"
    )


async def test_username_and_password_from_a_secret_file(tmp_path: Path, ca: CertificateAuthority) -> None:
    password = secrets.token_urlsafe(16)
    server = ca.server()
    m = Mosquitto(
        tmp_path / "auth", tls=MosquittoTls(ca.cert, server.cert, server.key), users={"tocsin": password}
    )
    m.start()
    try:
        secret = tmp_path / "mqtt-password"
        secret.write_text(password + "\n")
        cfg = mqtt_config(
            tmp_path, {**tls_section(m, ca), "username": "tocsin", "password_file": str(secret)}
        )
        assert cfg.password is not None and cfg.password.get_secret_value() == password
        assert password not in repr(cfg)
        async with aiomqtt.Client(cfg.host, cfg.port, identifier="auth", **aiomqtt_options(cfg)) as c:
            await c.publish("t/auth", b"1", qos=1)
        with PahoRun(cfg, "auth-paho") as run:
            assert run.connected.wait(10), run.reason

        secret.write_text("not-the-password\n")
        wrong = mqtt_config(
            tmp_path, {**tls_section(m, ca), "username": "tocsin", "password_file": str(secret)}
        )
        with pytest.raises(aiomqtt.MqttError, match=r"[Nn]ot authori[sz]ed|[Bb]ad user name or password"):
            async with aiomqtt.Client(wrong.host, wrong.port, identifier="bad", **aiomqtt_options(wrong)):
                pass
    finally:
        m.stop()


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_cluster_node_joins_over_tls(
    tmp_path: Path, ca: CertificateAuthority, broker_mtls: Mosquitto, protocol: str
) -> None:
    ours = ca.client("tocsin-cluster")
    cfg = mqtt_config(
        tmp_path,
        {
            **tls_section(broker_mtls, ca, cert_file=str(ours.cert), key_file=str(ours.key)),
            "protocol": protocol,
        },
    )
    me = Presence(id="n1", priority=1, boot_id=random_id(), version="test")
    node = ClusterNode(cfg, "tls", me, ClusterTiming(), SystemClock())
    task = asyncio.create_task(node.run())
    try:
        async with asyncio.timeout(10):
            await node.connected.wait()
        async with aiomqtt.Client(cfg.host, cfg.port, identifier="watcher", **aiomqtt_options(cfg)) as c:
            await c.subscribe("tocsin/tls/members/n1", qos=1)
            async with asyncio.timeout(10):
                async for message in c.messages:
                    assert isinstance(message.payload, bytes) and b"n1" in message.payload
                    break
        await node.leave()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    version = "p5" if protocol == "5" else "p2"
    assert f"as tocsin-cluster-n1 ({version}, c1, k5)" in broker_log(broker_mtls)


def test_check_names_a_missing_certificate_file(tmp_path: Path) -> None:
    missing = tmp_path / "client.pem"
    f = tmp_path / "tocsin.yaml"
    f.write_text(f"mqtt:\n  port: 8883\n  tls:\n    enabled: true\n    cert_file: {missing}\n")
    r = subprocess.run(
        [sys.executable, "-m", "service", "check", str(f)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert r.returncode == 2
    assert f"{f}:5: mqtt.tls.cert_file: cannot read {missing}: No such file or directory" in r.stderr


def test_no_embedded_broker_when_tls_is_configured(tmp_path: Path) -> None:
    """Nothing answers on the port, but the broker is a TLS one: starting a plain embedded broker there would
    only hide the mistake."""
    port = free_port()
    run = ServiceRun(
        {
            "XDG_DATA_HOME": str(tmp_path),
            "TOCSIN_MQTT__PORT": str(port),
            "TOCSIN_MQTT__TLS__ENABLED": "true",
            "TOCSIN_HTTP__PORT": str(free_port()),
        }
    )
    lines = run.lines
    try:
        wait_until_sync(
            lambda: any(f"MQTT broker 127.0.0.1:{port}" in line for line in lines),
            30,
            f"the service to try the broker; output: {lines}",
        )
        assert not any("started an embedded one" in line for line in lines), lines
        assert not port_open(port)
    finally:
        assert run.stop() == 0
