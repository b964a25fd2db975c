"""Configuration of the push providers (APNs, FCM) and of delivery (outbox, retries, reports).

Endpoints and the CA file are settings so that tests, benchmarks and demos point the production clients at
the fakes; nothing else changes. Credentials come inline (``SecretStr``), from ``*_file`` secrets, or from a
``*_path`` the provider reads itself and re-reads when the file changes (credential rotation).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ApnsAppConfig(_Section):
    """One app (bundle id): either token auth (.p8 key, key id, team id) or a client certificate."""

    team_id: str | None = Field(None, pattern=r"^[A-Z0-9]{10}$")
    key_id: str | None = Field(None, pattern=r"^[A-Z0-9]{10}$")
    private_key: SecretStr | None = Field(None, description="the .p8 key's text (or private_key_file)")
    private_key_path: Path | None = Field(None, description="the .p8 file, re-read when it changes")
    certificate_path: Path | None = Field(None, description="client certificate: PEM (cert + key) or PKCS#12")
    password: SecretStr | None = Field(None, description="the PKCS#12 file's password, if any")

    @model_validator(mode="after")
    def _one_credential(self) -> ApnsAppConfig:
        key = self.private_key is not None or self.private_key_path is not None
        if key and self.certificate_path is not None:
            raise ValueError(
                "give either a token key (private_key/private_key_path) or certificate_path, not both"
            )
        if not key and self.certificate_path is None:
            raise ValueError("needs a token key (private_key_path, key_id, team_id) or a certificate_path")
        if key and (self.team_id is None or self.key_id is None):
            raise ValueError("token authentication needs key_id and team_id")
        return self


class ApnsConfig(_Section):
    apps: dict[str, ApnsAppConfig] = Field(default_factory=dict, description="by bundle id")
    production_url: str = "https://api.push.apple.com:443"
    sandbox_url: str = "https://api.sandbox.push.apple.com:443"
    ca_file: Path | None = Field(None, description="trust these CAs instead of the system's (fakes, proxies)")
    timeout_s: float = Field(10.0, gt=0, description="an answer not back by then is retried")
    max_connections: int = Field(10, ge=1)


class FcmConfig(_Section):
    credentials: SecretStr | None = Field(None, description="service-account JSON text (or credentials_file)")
    credentials_path: Path | None = Field(
        None, description="service-account JSON file, re-read when it changes"
    )
    project_id: str | None = Field(None, description="default: the service account's project")
    token_url: str | None = Field(None, description="default: the service account's token_uri")
    send_url: str = "https://fcm.googleapis.com"
    ca_file: Path | None = None
    timeout_s: float = Field(10.0, gt=0)
    max_connections: int = Field(100, ge=1)

    @property
    def configured(self) -> bool:
        return self.credentials is not None or self.credentials_path is not None


class DeliveryConfig(_Section):
    report_retention_s: float = Field(7 * 86400.0, gt=0, description="how long delivery reports are kept")
    retry_base_s: float = Field(0.5, gt=0, description="first retry waits up to this (full jitter)")
    retry_cap_s: float = Field(60.0, gt=0, description="longest wait between retries")
    pause_probe_s: float = Field(30.0, gt=0, description="a paused credential is tried again this often")
    drain_s: float = Field(
        5.0, ge=0, description="at a graceful stop, how long queued deliveries may still go out"
    )
    workers: int = Field(
        64, ge=1, le=10_000, description="deliveries in flight at once (HTTP/2 streams and HTTP connections)"
    )
    max_waiting: int = Field(
        100_000,
        ge=1,
        description="deliveries held in memory for a retry or a paused credential; beyond, a delivery"
        " fails as 'overflow' (counted in tocsin_notifications, its report says so)",
    )
