"""How tocsin connects to its MQTT broker: TLS, credentials, protocol version and keepalive built once from
``MqttConfig`` for every client (the paho intake, the cluster channel's aiomqtt client). Pure construction:
the only I/O is reading the certificate files, at start."""

from __future__ import annotations

import logging
import socket
import ssl
from typing import TYPE_CHECKING, Any

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTProtocolVersion

if TYPE_CHECKING:
    from service.config import MqttConfig, MqttTlsConfig

log = logging.getLogger("tocsin.broker")
# paho leaves Nagle's algorithm on; with delayed ACKs every small QoS 1 round trip can wait ~40 ms.
NO_DELAY = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)


class _NamedContext(ssl.SSLContext):
    """A client context that sends ``server_name`` as SNI and checks the certificate against it, whatever
    host the client dialled (paho passes its host as ``server_hostname``)."""

    server_name: str | None = None

    def wrap_socket(
        self,
        sock: socket.socket,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        return super().wrap_socket(
            sock,
            server_side,
            do_handshake_on_connect,
            suppress_ragged_eofs,
            self.server_name or server_hostname,
            session,
        )


def build_tls_context(tls: MqttTlsConfig) -> ssl.SSLContext:
    """The client context for ``tls``; ``ValueError`` naming the field when a file does not load."""
    ctx = _NamedContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.server_name = tls.server_name
    try:
        if tls.ca_file is not None:
            ctx.load_verify_locations(cafile=str(tls.ca_file))
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"ca_file {tls.ca_file}: not a PEM CA certificate bundle ({exc})") from None
    if tls.cert_file is not None:
        password = tls.key_password.get_secret_value() if tls.key_password else None
        try:
            ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None, password)
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(
                f"cert_file {tls.cert_file} / key_file {tls.key_file}: cannot load the client certificate "
                f"and key (not PEM, not a pair, or wrong key_password: {exc})"
            ) from None
    if tls.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def tls_context(cfg: MqttConfig) -> ssl.SSLContext | None:
    """None when ``mqtt.tls.enabled`` is off. Warns each time it makes a context that verifies nothing."""
    if not cfg.tls.enabled:
        return None
    if cfg.tls.insecure_skip_verify:
        log.warning(
            "mqtt.tls.insecure_skip_verify is on: the broker's certificate is NOT checked, so anyone between "
            "tocsin and %s:%d can read and change every message and the credentials. Testing only.",
            cfg.host,
            cfg.port,
        )
    return build_tls_context(cfg.tls)


def paho_protocol(cfg: MqttConfig) -> MQTTProtocolVersion:
    return MQTTProtocolVersion.MQTTv5 if cfg.protocol == "5" else MQTTProtocolVersion.MQTTv311


def credentials(cfg: MqttConfig) -> tuple[str | None, str | None]:
    return cfg.username, cfg.password.get_secret_value() if cfg.password is not None else None


def configure_paho(client: paho.Client, cfg: MqttConfig) -> None:
    """TLS (context, server name, hostname check) and username/password on a paho client made with
    ``protocol=paho_protocol(cfg)``; keepalive is ``connect(..., keepalive=cfg.keepalive_s)``."""
    ctx = tls_context(cfg)
    if ctx is not None:
        client.tls_set_context(ctx)
        if cfg.tls.insecure_skip_verify:
            client.tls_insecure_set(True)
    username, password = credentials(cfg)
    if username is not None or password is not None:
        client.username_pw_set(username, password)


def aiomqtt_options(cfg: MqttConfig) -> dict[str, Any]:
    """Keyword arguments: ``aiomqtt.Client(cfg.host, cfg.port, identifier=..., **aiomqtt_options(cfg))``."""
    username, password = credentials(cfg)
    options: dict[str, Any] = {
        "username": username,
        "password": password,
        "protocol": aiomqtt.ProtocolVersion.V5 if cfg.protocol == "5" else aiomqtt.ProtocolVersion.V311,
        "keepalive": cfg.keepalive_s,
    }
    ctx = tls_context(cfg)
    if ctx is not None:
        options["tls_context"] = ctx
        options["tls_insecure"] = cfg.tls.insecure_skip_verify
    return options
