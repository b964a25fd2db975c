"""VAPID (RFC 8292): the application server's P-256 key pair and the signed JWT a push service checks.

The key is a PEM file (``tocsin webpush keys`` makes one). Its public half, as unpadded URL-safe base64 of
the uncompressed point, is the ``applicationServerKey`` a page subscribes with. One JWT per push service
origin (``aud``) is signed with py-vapid and reused until it is within a quarter of its lifetime of
expiring, so a send costs no signature.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02

MAX_LIFETIME_S = 24 * 3600  # RFC 8292 §2: exp no more than 24 hours ahead


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def public_key_b64(key: ec.EllipticCurvePrivateKey) -> str:
    """The ``applicationServerKey``: the uncompressed public point, unpadded URL-safe base64."""
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return b64url(point)


def generate(path: Path) -> str:
    """Write a new private key to ``path`` (PKCS#8 PEM, mode 0600, never overwritten); return the public."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return public_key_b64(key)


def load(path: Path) -> ec.EllipticCurvePrivateKey:
    """The private key in ``path``; ValueError naming the path when it is not a P-256 key."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ValueError(f"cannot read the VAPID key {path}: {exc.strerror}") from None
    except (ValueError, TypeError):
        raise ValueError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ValueError(f"{path} is not a P-256 (prime256v1) key, which VAPID needs")
    return key


class VapidSigner:
    """The ``Authorization: vapid t=..., k=...`` header for a push service origin, cached per origin."""

    def __init__(
        self,
        key: ec.EllipticCurvePrivateKey,
        subject: str,
        lifetime_s: float = 12 * 3600,
        clock: Callable[[], float] | None = None,
        max_origins: int = 1000,
    ) -> None:
        if not 60 <= lifetime_s <= MAX_LIFETIME_S:
            raise ValueError("a VAPID token lives between 60 s and 24 h")
        self._vapid = Vapid02()
        self._vapid.private_key = key
        self.subject = subject
        self.public_key = public_key_b64(key)
        self._lifetime = lifetime_s
        self._clock = clock or time.time
        self._cache: dict[str, tuple[float, str]] = {}  # origin -> (renew at, header)
        self._max = max_origins
        self.signed = 0

    def header(self, origin: str) -> str:
        now = self._clock()
        hit = self._cache.get(origin)
        if hit is not None and now < hit[0]:
            return hit[1]
        exp = int(now + self._lifetime)
        signed = self._vapid.sign({"aud": origin, "exp": exp, "sub": self.subject})
        self.signed += 1
        value = str(signed["Authorization"])
        if len(self._cache) >= self._max:  # bounded: forget the oldest origin
            self._cache.pop(next(iter(self._cache)))
        self._cache[origin] = (now + self._lifetime * 0.75, value)
        return value
