"""Which URLs a registration may make tocsin post to: a registration API that posts anywhere is a
request-forgery tool (SSRF), so webhook URLs and Web Push endpoints are checked when they are registered.

A URL passes when its scheme is allowed, it carries no credentials, and its host is on the allow-list
(``example.com`` exactly, ``*.example.com`` for any subdomain). Without an allow-list, hosts that are IP
literals of loopback, private, link-local or otherwise reserved networks are refused; host names are not
resolved here (DNS can change after the check), which is why an allow-list is the real protection.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

MAX_URL = 2048


def host_allowed(host: str, allowed: Iterable[str]) -> bool:
    host = host.lower().rstrip(".")
    for pattern in allowed:
        p = pattern.lower().rstrip(".")
        if p.startswith("*.") and host.endswith(p[1:]) and len(host) > len(p) - 1:
            return True
        if host == p:
            return True
    return False


def _internal(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host == "localhost" or host.endswith(".localhost")
    return not ip.is_global


def check_url(url: str, schemes: tuple[str, ...], allowed_hosts: tuple[str, ...], what: str) -> str:
    """``url`` when it may be posted to, else ValueError saying why (the caller's 400)."""
    if len(url) > MAX_URL:
        raise ValueError(f"a {what} is at most {MAX_URL} characters")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number or out of range
    except ValueError:
        raise ValueError(f"a {what} must be an absolute URL") from None
    if parts.scheme not in schemes:
        raise ValueError(f"a {what} must be {' or '.join(s + '://' for s in schemes)}")
    if not host:
        raise ValueError(f"a {what} needs a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"a {what} must not carry credentials (user:password@); use a secret instead")
    if parts.fragment:
        raise ValueError(f"a {what} has no #fragment")
    if any(c.isspace() or ord(c) < 0x20 for c in url):
        raise ValueError(f"a {what} has no spaces or control characters")
    if allowed_hosts:
        if not host_allowed(host, allowed_hosts):
            raise ValueError(f"host {host} of the {what} is not on the allow-list")
    elif _internal(host):
        raise ValueError(
            f"host {host} of the {what} is an internal address; allow it explicitly with allowed_hosts"
        )
    return url
