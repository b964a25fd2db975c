"""Keys and certificates the tests make at run time: nothing secret is ever stored in the repository."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import secrets
import string
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID


def random_id(n: int = 10) -> str:
    return "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(n))


def apns_token() -> str:
    return secrets.token_hex(32)


@dataclass(frozen=True)
class ApnsKey:
    """An APNs auth key as Apple hands it out: a P-256 key in a .p8 (PKCS#8 PEM), a key id and a team id."""

    key_id: str
    team_id: str
    p8: str
    public_pem: str

    @classmethod
    def generate(cls, team_id: str | None = None) -> ApnsKey:
        key = ec.generate_private_key(ec.SECP256R1())
        p8 = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        pub = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return cls(random_id(), team_id or random_id(), p8, pub.decode())


def service_account(project_id: str, token_uri: str) -> tuple[dict[str, str], str]:
    """A Google service-account JSON (as a dict) with a fresh RSA key, and the key's public PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    info = {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": secrets.token_hex(20),
        "private_key": pem,
        "client_email": f"push@{project_id}.iam.gserviceaccount.com",
        "client_id": str(secrets.randbelow(10**20)),
        "token_uri": token_uri,
    }
    return info, pub.decode()


def write_service_account(path: Path, info: dict[str, str]) -> Path:
    path.write_text(json.dumps(info))
    path.chmod(0o600)
    return path


def self_signed(directory: Path, name: str = "localhost") -> tuple[Path, Path]:
    """A self-signed server certificate for localhost and 127.0.0.1: (cert.pem, key.pem)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}-cert.pem", directory / f"{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def client_certificate(directory: Path, topic: str) -> tuple[Path, str]:
    """An APNs-style client certificate (subject UID = bundle id) as one PEM with its key; and its SHA-256."""
    directory.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name(
        [x509.NameAttribute(NameOID.USER_ID, topic), x509.NameAttribute(NameOID.COMMON_NAME, topic)]
    )
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .sign(key, hashes.SHA256())
    )
    path = directory / f"{topic}.pem"
    path.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)
    return path, cert.fingerprint(hashes.SHA256()).hex()
