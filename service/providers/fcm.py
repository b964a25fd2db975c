"""The FCM HTTP v1 provider: google-auth service-account credentials; sends over HTTP/2 (``http2``,
multiplexed) to an https endpoint, as fcm.googleapis.com, else HTTP/1.1 keep-alive (aiohttp).

The OAuth token comes from google-auth's ``Credentials.refresh`` run in a thread (one refresh at a time,
shared by all senders), only against the configured token endpoint: ``before_request`` is never called, so
no other Google host is contacted (spec §3.5). The refresh goes through google-auth's requests transport
on a session that trusts ``ca_file`` (when set) and gives up after ``timeout_s``; a failure is logged once
and named by ``degraded`` (so ``/health``) until a token is obtained. Sends go to the configured endpoint.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import re
import ssl
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import google.auth.exceptions
import google.auth.transport
import google.auth.transport.requests
import requests
from google.oauth2 import service_account

from registrations.model import Registration
from service.notify.model import Delivery, Notification
from service.providers import apns_payload
from service.providers.base import (
    ConfigError,
    Delivered,
    Outcome,
    Rejected,
    Retry,
    TokenInvalid,
    TokenSuspect,
    retry_after_s,
)
from service.providers.http2 import Http2ConnectionError, Http2Pool, StreamReset
from service.providers.plugin import ProviderPlugin
from service.push_config import FcmConfig

log = logging.getLogger("tocsin.fcm")
SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
MAX_PAYLOAD = 4096  # FCM: a message's keys and values, without its target (spec §3.1, ErrorCode)
_CONFIG_CODES = {"THIRD_PARTY_AUTH_ERROR", "APNS_AUTH_ERROR", "SENDER_ID_MISMATCH"}
_RETRY_STATUS = {429, 500, 502, 503, 504}
_BAD_TOKEN = "not a valid FCM registration token"
_REFRESH_MARGIN = dt.timedelta(minutes=5)
_TOKEN_PROBLEM = "no access token from"
# Registration tokens: "<instance id>:<opaque>" of URL-safe base64 characters, ~150-250 long in practice.
_TOKEN = re.compile(r"[A-Za-z0-9_\-]+(:[A-Za-z0-9_\-]+)?")
TOKEN_LENGTH = (32, 4096)


def check_token(token: str) -> str:
    low, high = TOKEN_LENGTH
    if not (low <= len(token) <= high) or not _TOKEN.fullmatch(token):
        raise ValueError(
            f"an FCM registration token is {low}-{high} characters of letters, digits, '-', '_' "
            "with at most one ':'"
        )
    return token


class _TimedRequest(google.auth.transport.Request):
    """google-auth's requests transport with our CA and our timeout on every call (google-auth itself calls
    the token endpoint with a 120-second default). The CA goes with each request: requests lets
    REQUESTS_CA_BUNDLE from the environment override a session's own ``verify``."""

    def __init__(self, session: requests.Session, timeout_s: float, ca_file: Path | None) -> None:
        self._inner = google.auth.transport.requests.Request(session)
        self._timeout = timeout_s
        self._tls: dict[str, Any] = {"verify": str(ca_file)} if ca_file is not None else {}

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: Any = None,
        headers: Any = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> google.auth.transport.Response:
        response: google.auth.transport.Response = self._inner(
            url, method=method, body=body, headers=headers, timeout=self._timeout, **self._tls, **kwargs
        )
        return response


_TOKEN_PREFIX = '{"message":{"token":'
_EMPTY_TOKEN = _TOKEN_PREFIX + '""'


class _Credential:
    """One service account and its current access token."""

    def __init__(self, config: FcmConfig) -> None:
        if config.credentials is not None:
            info = json.loads(config.credentials.get_secret_value())
        else:
            assert config.credentials_path is not None
            info = json.loads(Path(config.credentials_path).read_text(encoding="utf-8"))
        creds = service_account.Credentials.from_service_account_info(info, scopes=[SCOPE])  # type: ignore[no-untyped-call]
        if config.token_url:
            creds = creds.with_token_uri(config.token_url)
        self.creds = creds
        self.project = config.project_id or str(info.get("project_id") or "")
        if not self.project:
            raise ValueError(
                "no project_id: set providers.fcm.project_id or use a service account that has one"
            )
        self._lock = asyncio.Lock()
        self.session = requests.Session()
        self._request = _TimedRequest(self.session, config.timeout_s, config.ca_file)
        self.token_uri = str(creds._token_uri)

    def fresh(self) -> bool:
        expiry = self.creds.expiry
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)  # google-auth keeps naive UTC
        return self.creds.token is not None and (expiry is None or expiry - _REFRESH_MARGIN > now)

    async def token(self, stale: str | None = None) -> str:
        if self.fresh() and self.creds.token != stale:
            return str(self.creds.token)
        async with self._lock:  # one refresh for everyone waiting
            if not self.fresh() or self.creds.token == stale:
                # Off the loop; each request to the token endpoint is bounded by timeout_s.
                await asyncio.to_thread(self.creds.refresh, self._request)
            return str(self.creds.token)


class FcmProvider:
    name = "fcm"

    def __init__(self, config: FcmConfig) -> None:
        self.config = config
        self._cred: _Credential | None = None
        self._mtime: float | None = None
        self._checked = 0.0
        self._session: aiohttp.ClientSession | None = None
        self.problem: str | None = None
        self._last_body: tuple[Notification, object, str | None, int, str, int] | None = None
        self._h2: tuple[Http2Pool, bytes] | None = None  # (pool, authority) for an https send_url
        self._h2_off = False  # http:// endpoint, or the server refused HTTP/2

    @property
    def degraded(self) -> str | None:
        return self.problem

    def credential_for(self, registration: Registration) -> str:
        return ""

    def _credential(self) -> _Credential:
        path = self.config.credentials_path
        now = time.monotonic()
        if path is not None and now - self._checked >= 1.0:  # rotation: a new file replaces the account
            self._checked = now
            try:
                mtime: float | None = path.stat().st_mtime_ns / 1e9
            except OSError:
                mtime = None
            if self._cred is not None and mtime != self._mtime:
                log.info("FCM service account file changed on disk: using it")
                self._cred.session.close()
                self._cred = None
            self._mtime = mtime
        if self._cred is None:
            self._cred = _Credential(self.config)
        return self._cred

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            ctx: ssl.SSLContext | bool = True
            if self.config.ca_file is not None:
                ctx = ssl.create_default_context(cafile=str(self.config.ca_file))
            connector = aiohttp.TCPConnector(limit=self.config.max_connections, ssl=ctx)
            timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=timeout,
                cookie_jar=aiohttp.DummyCookieJar(),  # no cookies: less work per request
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
        return self._session

    async def send(self, delivery: Delivery) -> Outcome:
        n, reg = delivery.notification, delivery.registration
        remaining = n.expires - time.time()
        if remaining <= 0:
            return Rejected("expired before it could be sent")
        ttl = max(1, int(remaining))
        body, size = self._body(n, reg.token, ttl, reg.locale)
        if size > MAX_PAYLOAD:
            return Rejected(
                f"FCM payload of notification {n.nid} is {size} bytes, over the {MAX_PAYLOAD}-byte limit"
            )
        try:
            cred = self._credential()
        except (OSError, ValueError, KeyError) as exc:
            self.problem = f"cannot load the FCM service account: {exc.__class__.__name__}: {exc}"
            return ConfigError(self.problem)
        url = f"{self.config.send_url.rstrip('/')}/v1/projects/{cred.project}/messages:send"
        stale: str | None = None
        for _ in range(2):  # a rejected access token is refreshed once, as firebase-admin does
            try:
                token = await cred.token(stale)
            except google.auth.exceptions.RefreshError as exc:
                if getattr(exc, "retryable", False):
                    return Retry(self._token_failed(cred, f"answers {_first_line(exc)}"))
                self.problem = f"the token endpoint refused the service account: {_first_line(exc)}"
                log.warning("FCM: %s", self.problem)
                return ConfigError(self.problem)
            except (google.auth.exceptions.TransportError, OSError) as exc:
                return Retry(self._token_failed(cred, _transport_cause(exc, self.config.timeout_s)))
            if self.problem is not None and self.problem.startswith(_TOKEN_PROBLEM):
                log.info("FCM token endpoint answers again")
                self.problem = None
            try:
                status, raw, retry_after = await self._post(url, body, token)
            except TimeoutError:
                return Retry("FCM did not answer in time")
            except (aiohttp.ClientError, OSError, StreamReset) as exc:
                return Retry(f"cannot reach FCM: {exc.__class__.__name__}")
            if status == 401 and _fcm_code(raw) is None and stale is None:
                stale = token
                continue
            return self._outcome(status, raw, retry_after)
        return self._outcome(status, raw, retry_after)

    def _token_failed(self, cred: _Credential, cause: str) -> str:
        """No access token: every send waits for one, so the provider is degraded (/health) and says why."""
        problem = f"{_TOKEN_PROBLEM} {cred.token_uri}: {cause}"
        if problem != self.problem:
            log.warning("FCM: %s", problem)
        self.problem = problem
        return problem

    def _body(self, n: Notification, token: str, ttl: int, locale: str | None) -> tuple[str, int]:
        """``{"message": message(...)}`` as compact JSON, and its size as FCM counts it. A fan-out's
        deliveries share one notification and differ only in the token (the message's first key, which FCM
        does not count): the rest is encoded once per notification, locale and TTL second, and the token
        spliced in, byte for byte what encoding it all would give."""
        key = (n, n.options, locale, ttl)
        last = self._last_body
        if last is None or last[0] is not n or last[1] is not n.options or last[2:4] != key[2:]:
            msg = message(n, "", ttl, locale)
            whole = json.dumps({"message": msg}, separators=(",", ":"))
            last = self._last_body = (
                n,
                n.options,
                locale,
                ttl,
                whole[len(_EMPTY_TOKEN) :],
                payload_size(msg),
            )
        return _TOKEN_PREFIX + json.dumps(token) + last[4], last[5]

    async def _post(self, url: str, body: str, token: str) -> tuple[int, bytes, str | None]:
        """HTTP/2 to an https endpoint (multiplexed: ``fcm_http2``), else HTTP/1.1 keep-alive (aiohttp)."""
        h2 = self._h2_pool(url)
        if h2 is not None:
            pool, path, authority = h2
            headers = [
                (b":method", b"POST"),
                (b":scheme", b"https"),
                (b":path", path),
                (b":authority", authority),
                (b"authorization", b"Bearer " + token.encode()),
                (b"content-type", b"application/json"),
            ]
            try:
                async with asyncio.timeout(self.config.timeout_s):
                    resp = await pool.request(headers, body.encode())
            except Http2ConnectionError:
                if not pool.refused_http2:
                    raise
                log.warning("FCM endpoint %s does not speak HTTP/2: using HTTP/1.1", self.config.send_url)
                self._h2 = None
                self._h2_off = True
            else:
                retry_after = resp.header(b"retry-after")
                return resp.status, resp.body, retry_after.decode() if retry_after is not None else None
        async with self._http().post(
            url,
            data=body,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        ) as r:
            return r.status, await r.read(), r.headers.get("Retry-After")

    def _h2_pool(self, url: str) -> tuple[Http2Pool, bytes, bytes] | None:
        if self._h2_off:
            return None
        if self._h2 is None:
            parts = urlsplit(url)
            if parts.scheme != "https" or not parts.hostname:
                self._h2_off = True
                return None
            ctx = ssl.create_default_context(cafile=str(self.config.ca_file) if self.config.ca_file else None)
            # Multiplexed: a few connections carry all the requests in flight (HTTP/1.1 needs one each).
            pool = Http2Pool(
                parts.hostname, parts.port or 443, ctx, max(1, self.config.max_connections // 32)
            )
            self._h2 = (pool, parts.netloc.encode())
        pool, authority = self._h2
        parts = urlsplit(url)
        return pool, (parts.path + (f"?{parts.query}" if parts.query else "")).encode(), authority

    def _outcome(self, status: int, raw: bytes, retry_after: str | None) -> Outcome:
        if status == 200:
            self.problem = None
            return Delivered()
        code = _fcm_code(raw)
        text = _message(raw)
        what = f"FCM {status} {code or ''} {text}".replace("  ", " ").strip()
        if code == "UNREGISTERED":
            return TokenInvalid(what)
        if code in _CONFIG_CODES or status in (401, 403):
            self.problem = what
            return ConfigError(what)
        if status in _RETRY_STATUS or code in ("QUOTA_EXCEEDED", "UNAVAILABLE", "INTERNAL"):
            return Retry(what, retry_after_s(retry_after))
        if status == 400 and _BAD_TOKEN in text:
            return TokenSuspect(what)
        return Rejected(what)

    async def close(self) -> None:
        if self._cred is not None:
            self._cred.session.close()
        if self._h2 is not None:
            self._h2[0].close()
            self._h2 = None
        if self._session is not None:
            await self._session.close()
            self._session = None


def payload_size(msg: dict[str, Any]) -> int:
    """The size FCM holds to 4096 bytes: every key and value of the message but its target, UTF-8."""
    rest = {k: v for k, v in msg.items() if k != "token"}
    return len(json.dumps(rest, separators=(",", ":"), ensure_ascii=False).encode())


def message(n: Notification, token: str, ttl: int, locale: str | None = None) -> dict[str, Any]:
    """The HTTP v1 message: notification, string-only data, android options, apns and webpush overrides."""
    o = n.options
    title, text = n.text_for(locale)
    collapse = o.collapse_key or n.nid
    background = o.push_type == "background"
    data = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in {**n.data, **o.custom}.items()}
    data["nid"] = n.nid
    android_notification: dict[str, Any] = {"tag": collapse}  # a repeat replaces the first on the phone
    for key, value in (
        ("channel_id", o.android_channel),
        ("sound", o.android_sound or o.sound),
        ("icon", o.android_icon),
        ("color", o.android_color),
        ("image", o.image),
        ("title_loc_key", o.title_loc_key),
        ("body_loc_key", o.loc_key),
    ):
        if value:
            android_notification[key] = value
    if o.title_loc_args:
        android_notification["title_loc_args"] = list(o.title_loc_args)
    if o.loc_args:
        android_notification["body_loc_args"] = list(o.loc_args)
    android: dict[str, Any] = {
        # The v1 schema's AndroidMessagePriority enum: HIGH or NORMAL.
        "priority": (
            o.android_priority or ("normal" if background or o.priority in ("normal", "low") else "high")
        ).upper(),
        "ttl": f"{max(0, min(ttl, 2_419_200))}s",
        "collapse_key": collapse,
    }
    msg: dict[str, Any] = {"token": token, "data": data, "android": android}
    if not background:
        notification: dict[str, Any] = {"title": title, "body": text}
        if o.image:
            notification["image"] = o.image
        msg["notification"] = notification
        android["notification"] = android_notification
    apns = _apns_block(n, collapse)
    if o.fcm_apns:  # the caller's own block wins, key by key
        apns = {**apns, **o.fcm_apns}
    if apns:
        msg["apns"] = apns
    webpush = _webpush_block(n, collapse)
    if o.fcm_webpush:  # the caller's own block wins, key by key
        webpush = {**webpush, **o.fcm_webpush}
    if webpush:
        msg["webpush"] = webpush
    return msg


def _webpush_block(n: Notification, collapse: str) -> dict[str, Any]:
    """What the rule says for browsers reached through FCM: the Web Push ``Urgency`` header from the
    priority, and the collapse key as the Web Notification ``tag`` (a newer one replaces the older)."""
    o = n.options
    block: dict[str, Any] = {}
    if o.priority is not None:
        block["headers"] = {"Urgency": o.priority}  # RFC 8030: very-low, low, normal, high
    if o.collapse_key is not None and o.push_type != "background":
        block["notification"] = {"tag": collapse}
    return block


def _apns_block(n: Notification, collapse: str) -> dict[str, Any]:
    """What the rule says for iOS devices reached through FCM: APNs headers and ``aps`` keys (spec §3)."""
    o = n.options
    headers: dict[str, str] = {}
    if o.priority is not None or o.push_type != "alert":
        headers["apns-priority"] = str(apns_payload.priority(n))
    if o.push_type != "alert":
        headers["apns-push-type"] = o.push_type
    if o.collapse_key is not None:
        headers["apns-collapse-id"] = collapse
    aps = apns_payload.aps_keys(o)  # FCM adds the alert from message.notification
    block: dict[str, Any] = {}
    if headers:
        block["headers"] = headers
    if aps:
        block["payload"] = {"aps": aps}
    return block


def _error(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except ValueError:
        return {}
    err = doc.get("error") if isinstance(doc, dict) else None
    return err if isinstance(err, dict) else {}


def _fcm_code(raw: bytes) -> str | None:
    for detail in _error(raw).get("details") or []:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("FcmError"):
            return str(detail.get("errorCode"))
    return None


def _message(raw: bytes) -> str:
    return str(_error(raw).get("message", ""))[:200]


def _transport_cause(exc: BaseException, timeout_s: float) -> str:
    """What went wrong under google-auth's TransportError, in a few words (the TLS verdict, a timeout)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"its TLS certificate is not trusted ({cause.verify_message}); see providers.fcm.ca_file"
        if isinstance(cause, ssl.SSLError):
            return f"TLS failed: {cause.reason or cause.__class__.__name__}"
        if isinstance(cause, requests.exceptions.Timeout | TimeoutError):
            return f"no answer within {timeout_s:g} s"
        reason = getattr(cause, "reason", None)  # urllib3's MaxRetryError keeps the cause here
        inner = [a for a in (reason, *cause.args) if isinstance(a, BaseException)]
        cause = inner[0] if inner else (cause.__cause__ or cause.__context__)
    if isinstance(exc.__cause__ or exc.__context__, requests.exceptions.ConnectionError) or isinstance(
        exc, ConnectionError
    ):
        return "cannot connect"
    return exc.__class__.__name__


def _first_line(exc: Exception) -> str:
    return str(exc.args[0] if exc.args else exc).splitlines()[0][:200]


def check_credentials(config: FcmConfig) -> list[str]:
    """The service account read and parsed now: a missing or malformed file is named by its path."""
    where = f"{config.credentials_path}: " if config.credentials_path is not None else "credentials: "
    try:
        _Credential(config).session.close()
    except FileNotFoundError:
        return [f"{where}no such file"]
    except PermissionError:
        return [f"{where}not readable (permission denied)"]
    except OSError as exc:
        return [f"{where}cannot read: {exc.strerror or exc.__class__.__name__}"]
    except (ValueError, KeyError, TypeError) as exc:
        return [f"{where}not a usable service account: {_first_line(exc)}"]
    return []


PLUGIN = ProviderPlugin(
    name="fcm",
    config=FcmConfig,
    build=FcmProvider,
    check_token=check_token,
    enabled=lambda c: c.configured,
    check=check_credentials,
    c8y_platform="Android",
    summary="Firebase Cloud Messaging HTTP v1 (service account)",
)
