"""One YAML configuration file, environment overrides (``TOCSIN_SECTION__FIELD``) and secrets from files,
validated with pydantic before anything starts. Every error names where the value came from, the field and
the reason; secrets are ``SecretStr`` so they never print."""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from registrations.model import ProviderName
from rules import yaml_source
from service.cluster.timing import ClusterTiming
from service.providers import plugins
from service.providers.plugins import ProvidersBase
from service.push_config import DeliveryConfig

ENV_PREFIX = "TOCSIN_"
NOT_SETTINGS = frozenset({"TOCSIN_CONFIG", "TOCSIN_API_KEY"})  # read by the CLI, not configuration
# A field named like this may instead be given as <name>_file: the path of a file holding the secret.
SECRET_FIELDS = frozenset({"password", "key_password", "token", "api_key", "private_key", "credentials"})


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "tocsin"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class InstanceConfig(_Section):
    id: str = Field(default_factory=lambda: os.uname().nodename or "tocsin", pattern=r"^[A-Za-z0-9_.-]+$")


def _switch(value: Any) -> Any:
    """YAML reads on/off (and yes/no, true/false) as booleans; a three-way switch takes them too."""
    return ("on" if value else "off") if isinstance(value, bool) else value


Switch = Annotated[Literal["auto", "on", "off"], BeforeValidator(_switch)]


def _readable(value: Path | None) -> Path | None:
    """A file named in the configuration must be readable now, not at the first connection attempt."""
    if value is None:
        return None
    path = value.expanduser()
    try:
        with path.open("rb") as f:
            f.read(1)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc.__class__.__name__}") from None
    return path


class MqttTlsConfig(_Section):
    """TLS to the broker. ``ca_file`` unset: the system's trust store (what a hosted broker needs)."""

    enabled: bool = Field(False, description="on: connect with TLS (a hosted broker: port 8883)")
    ca_file: Path | None = Field(None, description="PEM CA bundle the broker's certificate must chain to")
    cert_file: Path | None = Field(None, description="PEM client certificate (may hold the key too)")
    key_file: Path | None = Field(None, description="PEM private key of cert_file")
    key_password: SecretStr | None = Field(None, description="passphrase of key_file (or key_password_file)")
    server_name: str | None = Field(
        None, description="name sent as SNI and checked against the certificate; default: mqtt.host"
    )
    insecure_skip_verify: bool = Field(
        False, description="accept any certificate: testing only, anyone on the path can read everything"
    )

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _file(cls, v: Path | None) -> Path | None:
        return _readable(v)

    @model_validator(mode="after")
    def _consistent(self) -> MqttTlsConfig:
        given = [
            n for n in ("ca_file", "cert_file", "key_file", "server_name") if getattr(self, n) is not None
        ]
        if given and not self.enabled:
            raise ValueError(f"{', '.join(given)} given but enabled is false (set mqtt.tls.enabled: true)")
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file needs cert_file (the client certificate)")
        if self.enabled:
            from service.sources.broker import build_tls_context  # the same code that connects

            build_tls_context(self)
        return self


class MqttConfig(_Section):
    enabled: Switch = Field(
        "auto", description="auto: off on Cumulocity (the Cumulocity source is on) unless a host is set"
    )
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    client_id: str | None = Field(
        None, description="default: tocsin-<instance id>; fixed, for a persistent session"
    )
    keepalive_s: int = Field(30, ge=5, le=3600)
    tls: MqttTlsConfig = MqttTlsConfig()
    embedded_broker: Literal["auto", "never"] = Field(
        "auto", description="auto: start an in-process broker when none answers on 127.0.0.1 at start"
    )
    reconnect_min_s: float = Field(0.2, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)
    protocol: Annotated[Literal["auto", "3.1.1", "5"], BeforeValidator(lambda v: str(v))] = Field(
        "auto",
        description="MQTT version; auto: 5 (which lets tocsin bound what the broker sends unacknowledged),"
        " 3.1.1 when the broker refuses 5",
    )
    max_inflight: int = Field(
        1000,
        ge=1,
        le=65535,
        description="messages received and not yet acknowledged at most (MQTT 5 Receive Maximum; with"
        " 3.1.1 the broker's own max_inflight_messages applies); a slow provider then slows the broker",
    )
    batch_max: int = Field(500, ge=1, le=65535, description="messages taken into one durable commit at most")
    session_expiry_s: int = Field(
        86400, ge=0, description="how long the broker keeps the session (and queues) while tocsin is away"
    )
    event_id_field: str | None = Field(
        None,
        description="payload field that is an event's own identity: a repeat of its value on the same"
        " topic is a duplicate and dropped; none: every message is an event",
    )


class HttpConfig(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    keepalive_s: float = Field(
        15.0, gt=0, le=3600, description="close connections idle this long (before or between requests)"
    )
    body_timeout_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="a request body must arrive within this (else 408, connection closed)",
    )
    max_connections_per_client: int = Field(
        256, ge=1, description="open connections per client address; past it: 429 and closed, counted"
    )


if TYPE_CHECKING:
    ProvidersConfig = ProvidersBase
else:  # one sub-section per provider plug-in (service/providers/plugins.py)
    ProvidersConfig = plugins.providers_config_model()


class SeedRegistration(_Section):
    provider: ProviderName
    token: str = Field(min_length=1)
    user_id: str | None = None
    tags: tuple[str, ...] = ()


def _console() -> list[SeedRegistration]:
    return [SeedRegistration(provider="log", token="console", user_id="console", tags=("home", "ops"))]


class RegistrationsConfig(_Section):
    store: Literal["auto", "sqlite", "cumulocity"] = Field(
        "auto",
        description="where a Cumulocity tenant's registrations live: 'cumulocity' (the tenant's inventory), "
        "'sqlite' (a file per tenant under <data_dir>/tenants); auto: the inventory. The deployment's own "
        "registrations are always in the SQLite file at 'path'",
    )
    path: Path | None = Field(None, description="default: <data_dir>/tocsin.db")
    seed: list[SeedRegistration] = Field(
        default_factory=_console, description="registrations created at start (the console one by default)"
    )


class ApiKeyConfig(_Section):
    """One API key: ``role: admin`` for everything, or ``role: app`` with ``app`` for that app's tokens only.

    Give the key itself as ``api_key`` (or ``api_key_file``), or only its SHA-256 hex digest as
    ``api_key_sha256``; the service keeps nothing but the digest."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")
    role: Literal["admin", "app"]
    app: str | None = None
    api_key: SecretStr | None = None
    api_key_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")

    @model_validator(mode="after")
    def _complete(self) -> ApiKeyConfig:
        if (self.api_key is None) == (self.api_key_sha256 is None):
            raise ValueError("give exactly one of api_key, api_key_file or api_key_sha256")
        if self.api_key is not None and len(self.api_key.get_secret_value()) < 16:
            raise ValueError("an API key is at least 16 characters")
        if (self.role == "app") != (self.app is not None):
            raise ValueError("an app key names its app; an admin key names none")
        return self


class ApiConfig(_Section):
    keys: list[ApiKeyConfig] = Field(
        default_factory=list,
        description="none: callers on the loopback interface are admin while http.host is loopback",
    )


class RulesConfig(_Section):
    paths: list[Path] = Field(default_factory=list, description="rule files or directories; empty: examples")
    watch_s: float = Field(
        2.0, ge=0, description="how often to look for changed rule files; 0: only on SIGHUP"
    )
    max_tracked_per_rule: int = Field(
        100_000,
        ge=1,
        description="devices (alert ids) one rule keeps state for; beyond, the least recently seen is"
        " forgotten, counted in tocsin_rule_devices_evicted and warned about once per rule",
    )
    persist_s: float = Field(
        1.0,
        gt=0,
        description="deprecated, ignored: open alerts are committed with the events that changed them",
    )


class QuietHoursConfig(_Section):
    start: str = Field(description="local time quiet hours begin, e.g. 22:00")
    end: str = Field(description="local time they end, e.g. 07:00")
    timezone: str = Field("UTC", description="for registrations that carry no time zone")

    @field_validator("start", "end")
    @classmethod
    def _clock(cls, v: str) -> str:
        try:
            time.fromisoformat(v)
        except ValueError:
            raise ValueError(f"{v!r} is not a time of day such as 22:00") from None
        return v

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}") from None
        return v


class RateLimitConfig(_Section):
    max: int = Field(ge=1, description="notifications per recipient per window")
    per_s: float = Field(gt=0, description="the window, in seconds")


class NotifyConfig(_Section):
    dedup_window_s: float = Field(3600.0, gt=0, description="how long a sent notification key is remembered")
    dedup_max: int = Field(
        100_000, ge=1000, description="notification keys remembered at most (oldest forgotten first)"
    )
    queue_size: int = Field(100_000, ge=100)
    max_attempts: int = Field(30, ge=1, description="sends per delivery; retries also stop at its expiry")
    quiet_hours: QuietHoursConfig | None = None
    rate_limit: RateLimitConfig | None = None


class ClusterConfig(_Section):
    name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="set to run with other instances; none: a single instance",
    )
    priority: int = Field(100, ge=0, description="lower leads first; ties broken by instance id")
    timing: ClusterTiming = ClusterTiming()
    buffer_window_s: float = Field(
        120.0, gt=0, description="how long a follower keeps transitions for a takeover"
    )
    ledger_retention_s: float = Field(3600.0, gt=0)


class CumulocityConfig(_Section):
    """The Cumulocity source: runs when the platform's environment (C8Y_BASEURL, ...) is there."""

    enabled: Switch = Field(
        "auto", description="auto: on when C8Y_BASEURL is set (running as a microservice); on: required"
    )
    subscription: str = Field(
        "tocsinalarms", pattern=r"^[a-zA-Z0-9]+$", description="Notifications 2.0 subscription (per tenant)"
    )
    subscriber: str = Field("tocsin", pattern=r"^[a-zA-Z0-9]+$", description="its consumer's name")
    token_minutes: int = Field(1440, ge=1, le=525600, description="validity of a consumer token")
    poll_s: float = Field(60.0, gt=0, description="how often the tenant subscriptions are read")
    inventory_refresh_s: float = Field(
        300.0, gt=0, description="how often a tenant's registrations are read again from its inventory"
    )
    auth_cache_s: float = Field(60.0, ge=0, description="how long a caller's checked credentials are trusted")
    admin_role: str = Field(
        "ROLE_TOCSIN_ADMIN", description="a tenant user's role for everything in its tenant"
    )
    user_role: str = Field(
        "ROLE_TOCSIN_READ", description="a tenant user's role for registering own devices, acknowledging"
    )
    acknowledge_alarms: bool = Field(
        True, description="acknowledging an alert sets its Cumulocity alarm to ACKNOWLEDGED"
    )
    dedup_retention_s: float = Field(
        7 * 86400.0, gt=0, description="how long alarm versions are remembered to drop redelivered frames"
    )
    shared: bool = Field(
        True,
        description="replicas share each tenant's alarm stream (shared consumer token, split by source)",
    )
    consumer: str | None = Field(
        None,
        pattern=r"^[a-zA-Z0-9]+$",
        description="this replica's stable consumer name on the shared stream; default: the instance id,"
        " letters and digits only",
    )
    options_poll_s: float = Field(
        30.0, gt=0, description="how often a tenant's options (severityThreshold) are read again"
    )
    presence_s: float = Field(
        10.0,
        gt=0,
        description="how often a replica marks itself up in each tenant (repeats and escalations of a stopped"
        " replica's alerts move to another after three periods)",
    )
    ack_wait_s: float = Field(
        10.0,
        ge=0,
        description="how long a frame waits for the pushes it caused before it is acknowledged anyway",
    )


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class StoreConfig(_Section):
    """Where the state lives: SQLite files under ``data_dir`` (the default), or a PostgreSQL database shared
    by every instance (``store: postgresql://user@host/db``, or a mapping with ``url`` and ``password_file``).
    """

    synchronous: Literal["normal", "full"] = Field(
        "normal",
        description="normal: a commit survives the process crashing (WAL); full: also a power cut, at an"
        " fsync per commit",
    )
    url: str | None = Field(
        None,
        description="a libpq URL (postgresql://user@host:5432/db?sslmode=verify-full): registrations in that "
        "PostgreSQL database; unset: SQLite",
    )
    password: SecretStr | None = Field(
        None, description="the database user's password (give it as password_file, never in the URL)"
    )
    pool_size: int = Field(10, ge=1, le=100, description="connections to PostgreSQL per instance")

    @model_validator(mode="before")
    @classmethod
    def _from_url(cls, value: Any) -> Any:
        return {"url": value} if isinstance(value, str) else value

    @field_validator("url")
    @classmethod
    def _libpq_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from urllib.parse import urlsplit

        parts = urlsplit(v)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError("a libpq URL starting with postgresql:// (SQLite needs no url)")
        if parts.password is not None:
            raise ValueError("the URL must not hold the password: give it as store.password_file")
        return v

    @property
    def postgresql(self) -> bool:
        return self.url is not None


class Config(_Section):
    data_dir: Path = Field(default_factory=default_data_dir)
    store: StoreConfig = StoreConfig()
    instance: InstanceConfig = InstanceConfig()
    mqtt: MqttConfig = MqttConfig()
    http: HttpConfig = HttpConfig()
    providers: ProvidersConfig = ProvidersConfig()
    registrations: RegistrationsConfig = RegistrationsConfig()
    rules: RulesConfig = RulesConfig()
    api: ApiConfig = ApiConfig()
    notify: NotifyConfig = NotifyConfig()
    cluster: ClusterConfig = ClusterConfig()
    cumulocity: CumulocityConfig = CumulocityConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    logging: LoggingConfig = LoggingConfig()

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return v.expanduser()

    @property
    def store_path(self) -> Path:
        return self.registrations.path or self.data_dir / "tocsin.db"

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"tocsin-{self.instance.id}"


class ConfigError(Exception):
    """Every problem found, each as '<where>: <field>: <reason>'."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def load_config(path: Path | None, environ: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` (or nothing: embedded defaults), apply the environment, read secret files, validate."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    origin: dict[tuple[str | int, ...], str] = {}
    located: yaml_source.Located | None = None
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError([f"{path}: cannot read configuration file: {exc}"]) from None
        try:
            located = yaml_source.load(text, str(path))
        except yaml_source.YamlError as exc:
            raise ConfigError([str(exc)]) from None
        if located.data is None:
            located.data = {}
        if not isinstance(located.data, dict):
            raise ConfigError([f"{path}:1: the configuration must be a mapping of sections"])
        data = located.data

    problems: list[str] = []
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name in NOT_SETTINGS:
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX) :].split("__")]
        if not all(keys):
            problems.append(f"environment {name}: empty section name (use TOCSIN_SECTION__FIELD)")
            continue
        value: Any = raw
        if keys[-1] not in SECRET_FIELDS and not keys[-1].endswith("_file"):
            try:
                value = yaml.safe_load(raw) if raw.strip() else raw
            except yaml.YAMLError:
                value = raw
        target = data
        for key in keys[:-1]:
            nxt = target.setdefault(key, {})
            if not isinstance(nxt, dict):
                problems.append(f"environment {name}: {'.'.join(keys[:-1])} is not a section")
                break
            target = nxt
        else:
            target[keys[-1]] = value
            origin[tuple(keys)] = f"environment {name}"

    def where(loc: tuple[str | int, ...]) -> str:
        for end in range(len(loc), 0, -1):
            if loc[:end] in origin:
                return origin[loc[:end]]
        if located is not None:
            return f"{located.filename}:{located.position_of(loc).line}"
        return "embedded defaults"

    _read_secret_files(data, (), where, problems)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(err["loc"])
            field = ".".join(str(p) for p in loc)
            reason = (
                "unknown field"
                if err["type"] == "extra_forbidden"
                else err["msg"].removeprefix("Value error, ")
            )
            problems.append(f"{where(loc)}: {field}: {reason}")
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    return config


def _read_secret_files(
    node: dict[str, Any], path: tuple[str | int, ...], where: Any, problems: list[str]
) -> None:
    for key in list(node):
        value = node[key]
        if isinstance(value, dict):
            _read_secret_files(value, (*path, key), where, problems)
        elif isinstance(value, list):  # e.g. api.keys[i].api_key_file
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    _read_secret_files(item, (*path, key, i), where, problems)
        elif isinstance(key, str) and key.endswith("_file") and key.removesuffix("_file") in SECRET_FIELDS:
            loc = (*path, key)
            field = ".".join(str(p) for p in loc)
            try:
                secret = Path(str(value)).expanduser().read_text(encoding="utf-8").rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as exc:
                problems.append(
                    f"{where(loc)}: {field}: cannot read secret file {value}: {exc.__class__.__name__}"
                )
                del node[key]
                continue
            del node[key]
            node[key.removesuffix("_file")] = secret
