"""APNs provider tokens (JWT): one per signing key (team id, key id), shared by every connection and app.

Apple's rule (spec §1.4): a token is refreshed no more than once every 20 minutes and no less than once every
60; an older one is answered 403 ``ExpiredProviderToken``, more frequent changes 429
``TooManyProviderTokenUpdates``. So a token is minted once per key and renewed when ``renew_after_s`` old
(50 minutes by default), whichever transport and however many connections carry it; ``get_header`` is the
interface aioapns's connections call per request.

Pure logic over an injected clock and signer; nothing here does I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from service.clock import Clock, SystemClock

log = logging.getLogger("tocsin.apns")
MIN_AGE_S = 20 * 60.0  # Apple: not renewed more often than this
MAX_AGE_S = 60 * 60.0  # Apple: a token older than this is expired
DEFAULT_RENEW_S = 50 * 60.0


def es256(key_pem: str) -> Callable[[str, str, int], str]:
    """The signer: an ES256 JWT with ``kid`` in the header and ``iss``/``iat`` as claims (PyJWT).

    The key is parsed here, once: a malformed .p8 is a ValueError now, not at the first request."""
    key = load_pem_private_key(key_pem.encode(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("an APNs signing key is an EC (P-256) private key")

    def sign(team_id: str, key_id: str, issued_at: int) -> str:
        claims = {"iss": team_id, "iat": issued_at}
        return jwt.encode(claims, key, algorithm="ES256", headers={"kid": key_id})

    return sign


@dataclass
class ProviderToken:
    """The current token of one signing key."""

    team_id: str
    key_id: str
    sign: Callable[[str, str, int], str]
    clock: Clock = field(default_factory=SystemClock)
    renew_after_s: float = DEFAULT_RENEW_S

    def __post_init__(self) -> None:
        if not MIN_AGE_S <= self.renew_after_s < MAX_AGE_S:
            raise ValueError(f"renew_after_s must be within [{MIN_AGE_S:.0f}, {MAX_AGE_S:.0f}) seconds")
        self._header: str | None = None
        self.issued_at = 0.0  # wall-clock seconds of the current token's iat
        self.minted = 0  # tokens made so far (tests and metrics read it)

    @property
    def age(self) -> float:
        return self.clock.time() - self.issued_at

    def get_header(self) -> str:
        """``bearer <jwt>`` for the next request; the token is renewed once ``renew_after_s`` old."""
        if self._header is None or self.age >= self.renew_after_s:
            self._mint()
        assert self._header is not None
        return self._header

    def expired(self) -> bool:
        """APNs answered ``ExpiredProviderToken``. Renew, unless the current token is younger than 20 minutes:
        then the answer was about its predecessor still in flight, or this machine's clock is off, and a new
        token now would be answered ``TooManyProviderTokenUpdates``. True when a new token was made."""
        if self._header is not None and self.age < MIN_AGE_S:
            return False
        self._mint()
        return True

    def _mint(self) -> None:
        iat = int(self.clock.time())
        self._header = f"bearer {self.sign(self.team_id, self.key_id, iat)}"
        self.issued_at = float(iat)
        self.minted += 1
        log.debug("new APNs provider token for key %s of team %s", self.key_id, self.team_id)


class ProviderTokens:
    """The tokens of every signing key in use: apps, environments and connections sharing a key share one."""

    def __init__(self, clock: Clock | None = None, renew_after_s: float = DEFAULT_RENEW_S) -> None:
        self.clock = clock or SystemClock()
        self.renew_after_s = renew_after_s
        self._tokens: dict[tuple[str, str], tuple[str, ProviderToken]] = {}

    def for_key(self, team_id: str, key_id: str, key_pem: str) -> ProviderToken:
        """The token of (team, key); a changed key text (rotation under the same key id) starts afresh."""
        found = self._tokens.get((team_id, key_id))
        if found is not None and found[0] == key_pem:
            return found[1]
        token = ProviderToken(team_id, key_id, es256(key_pem), self.clock, self.renew_after_s)
        self._tokens[(team_id, key_id)] = (key_pem, token)
        return token
