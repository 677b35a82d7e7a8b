"""All configuration, from `WORKSESSION_*` environment variables with embedded defaults."""

from __future__ import annotations

import hashlib
import ipaddress
import os
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from domain.nonconformance import Deadlines

MIN_SECRET_BYTES = 32
HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")  # all a shared secret can sign with

# Settings that are secrets: each can also be read from the file WORKSESSION_<NAME>_FILE
# names (how containers get secrets), and none is ever logged or shown in /readyz.
SECRET_SETTINGS = ("jwt_secret", "database_url", "temporal_api_key", "s3_access_key_id",
                   "s3_secret_access_key", "webhook_key")


def https_or_loopback(url: str) -> bool:
    """An identity provider's address we may trust what we read from: https, or plain http to
    this machine only (a provider in a test, or one beside the service)."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed [ of an IPv6 address
        return False
    host = parts.hostname or ""
    if parts.scheme == "https" and host:
        return True
    if parts.scheme != "http":
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def derived_webhook_key(jwt_secret: bytes | None) -> bytes | None:
    """The webhook key when none is set: the JWT secret's SHA-256 under a label (never the
    same bytes as the JWT secret itself)."""
    if not jwt_secret:
        return None
    return hashlib.sha256(b"worksession webhook key\0" + jwt_secret).digest()


class _SecretFiles(PydanticBaseSettingsSource):
    """WORKSESSION_<NAME>_FILE: the file's text (without a final line break) is the secret.
    Setting both it and WORKSESSION_<NAME> is refused: which one wins would be a guess."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads them all at once

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name in SECRET_SETTINGS:
            var = f"WORKSESSION_{name.upper()}"
            path = os.environ.get(f"{var}_FILE")
            if path is None:
                continue
            if var in os.environ:
                raise SystemExit(f"both {var} and {var}_FILE are set: set one")
            try:
                values[name] = Path(path).read_text().rstrip("\r\n")
            except OSError as e:
                raise SystemExit(f"{var}_FILE: cannot read {path} ({e.strerror})") from None
        return values


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WORKSESSION_", extra="ignore")

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings],
                                   init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _SecretFiles(settings_cls), dotenv_settings,
                file_secret_settings)

    data_dir: Path = Path("./data")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy async URL; default SQLite under data_dir")
    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    # The connection to Temporal's frontend (worksession/temporal.py `connect`, used by every
    # process; docs/deployment.md, "Temporal over TLS"). TLS is on when asked, or when any of
    # the settings below is set. The CA: the server's, PEM; unset, the system's trust store.
    # The client certificate and key (mTLS), PEM: both or neither. The server name: the one
    # the server's certificate must carry when it is not the address's host. The API key
    # (Temporal Cloud) goes as a bearer token, over TLS. Files are read at connect time.
    temporal_tls: bool = False
    temporal_tls_ca_file: Path | None = None
    temporal_tls_cert_file: Path | None = None
    temporal_tls_key_file: Path | None = None
    temporal_tls_server_name: str | None = None
    temporal_api_key: SecretStr | None = None
    task_queue: str = "work-sessions"
    temporal_ui_url: str = "http://127.0.0.1:8233"
    jwt_secret: SecretStr | None = None
    jwt_algorithms: list[str] = ["HS256"]  # the shared secret's: HMAC ones only
    # An OpenID Connect provider's tokens (api/oidc.py), besides the shared secret's: its
    # issuer (discovery at <issuer>/.well-known/openid-configuration), or its JWKS address
    # (the issuer still names what `iss` must be), and the audience its tokens must name.
    oidc_issuer: str | None = None
    jwks_url: str | None = None
    jwt_audience: str | None = None
    role_claim: str = "role"
    # The web console's sign-in through that provider (CONTRACT.md, "Sign-in to the web
    # console"): its client id there, a public client (code flow with PKCE, no secret), with
    # `<api>/app/` as its redirect and post-logout address; the scopes it asks for
    # (`offline_access`: a refresh token, for renewal without a trip to the provider); the
    # provider's name on the button (default: the issuer's host).
    oidc_client_id: str | None = None
    oidc_scope: str = "openid profile offline_access"
    oidc_provider_name: str | None = None
    # A claim's values -> roles, e.g. {"floor-staff": "worker", "leads": "supervisor"}.
    role_map: dict[str, Literal["worker", "supervisor", "admin"]] = {}
    # Evidence files (CONTRACT.md, "Evidence files"): where their bytes are kept, a directory
    # (default <data_dir>/evidence) or S3-compatible object storage, `s3://bucket/prefix`,
    # with the endpoint (MinIO and others; unset: AWS) and credentials (unset: the SDK's own
    # chain, e.g. an instance role). The API and the worker (its cleanup) need the same one.
    evidence_store: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    max_evidence_bytes: int = Field(default=20 * 1024 * 1024, ge=1)
    # An upload no check took within this time may be removed (checked hourly).
    evidence_cleanup_after: timedelta = timedelta(hours=24)
    # Electronic signatures (CONTRACT.md): a signing request's token must say its holder
    # authenticated (`auth_time`, else `iat`) at most this many seconds ago.
    signature_max_age: int = Field(default=300, ge=1)
    # Webhooks (CONTRACT.md, "Webhooks"; docs/webhooks.md). The key that seals subscription
    # secrets in the database (at least 32 bytes; unset: derived from the JWT secret). The API
    # and the worker need the same one. Plain http and loopback or private receivers only
    # when allowed (`worksession dev` allows them).
    webhook_key: SecretStr | None = None
    webhook_allow_insecure: bool = False
    webhook_timeout: timedelta = timedelta(seconds=10)  # one attempt, connection to answer
    webhook_retry_for: timedelta = timedelta(hours=24)  # then a delivery is `failed`
    webhook_retry_first: timedelta = timedelta(seconds=5)  # doubling from there...
    webhook_retry_most: timedelta = timedelta(hours=1)  # ...up to this
    # The backstop: how often it looks for deliveries whose start was lost, and how old
    # they must be (docs/webhooks.md).
    webhook_sweep_every: timedelta = timedelta(minutes=1)
    webhook_sweep_grace: timedelta = timedelta(minutes=1)
    webhook_heartbeat: timedelta = timedelta(seconds=30)
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    request_timeout_seconds: float = 10.0
    max_body_bytes: int = 256 * 1024
    # Load shedding (api/front_door.py): requests one API process lets in at once; the next
    # waits for a place at most `admission_wait`, then is answered 503 with this Retry-After.
    # Sizing: docs/deployment.md.
    max_in_flight: int = Field(default=12, ge=1)
    # Evidence uploads in one API process at once, in a pool of their own (each may last as
    # long as a phone's slow link; each holds at most ~1 MiB in memory and its file on disk).
    max_uploads_in_flight: int = Field(default=20, ge=1)
    admission_wait: timedelta = timedelta(milliseconds=100)
    retry_after_seconds: int = Field(default=1, ge=1)
    idle_timeout: timedelta = timedelta(hours=8)
    escalate_after_failures: int = 3
    # Nonconformances (CONTRACT.md): containment due within this (a critical one: the
    # second), closure within the third, from the NC's opening.
    nc_contain_within: timedelta = timedelta(hours=1)
    nc_contain_critical_within: timedelta = timedelta(minutes=15)
    nc_close_within: timedelta = timedelta(days=7)
    # How long a run lets a change it took go unwritten by itself (docs/architecture.md).
    write_behind: timedelta = timedelta(minutes=10)
    workflow_cache_size: int = Field(
        default=600, ge=1,
        description="session runs a worker keeps in memory; one not kept replays its history "
                    "on its next request (see docs/operations.md)")
    @property
    def nc_deadlines(self) -> Deadlines:
        return Deadlines(self.nc_contain_within, self.nc_contain_critical_within,
                         self.nc_close_within)

    log_level: str = "info"
    # Prometheus metrics, each process on a port of its own, never the API's (CONTRACT.md);
    # 0 turns a process's metrics off. `metrics_host` 0.0.0.0 in a container.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9464, ge=0, le=65535)
    worker_metrics_port: int = Field(default=9465, ge=0, le=65535)
    # How often an API process recounts stuck sessions and those needing attention for its
    # gauges (each round describes every running session workflow); 0 turns it off.
    metrics_refresh: timedelta = timedelta(seconds=30)
    # Traces over OTLP/HTTP to this collector (e.g. http://otel-collector:4318); unset, the
    # service is not instrumented at all (worksession/tracing.py).
    otlp_endpoint: str | None = None
    # `json` in production (docker-compose.yml): one object per line, with the request,
    # session, worker, workflow, run and trace ids (worksession/logs.py). `text` reads better
    # in a terminal (`worksession dev`).
    log_format: Literal["json", "text"] = "text"

    @model_validator(mode="after")
    def _tls_implied(self) -> Settings:
        if any(v is not None for v in (
                self.temporal_tls_ca_file, self.temporal_tls_cert_file,
                self.temporal_tls_key_file, self.temporal_tls_server_name,
                self.temporal_api_key)):
            self.temporal_tls = True
        return self

    @property
    def evidence_location(self) -> str:
        return self.evidence_store or str((self.data_dir / "evidence").resolve())

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'worksession.db').resolve()}"

    @model_validator(mode="after")
    def _sign_in_sound(self) -> Settings:
        """Settings under which tokens would be checked wrongly are refused at start, each
        with one line (SystemExit passes through pydantic as it is)."""
        if not self.jwt_algorithms or not set(self.jwt_algorithms) <= set(HMAC_ALGORITHMS):
            raise SystemExit(f"WORKSESSION_JWT_ALGORITHMS is {self.jwt_algorithms}: the shared "
                             f"secret signs with HMAC, name some of {', '.join(HMAC_ALGORITHMS)}")
        if self.oidc_client_id is not None and not self.oidc_issuer:
            raise SystemExit("WORKSESSION_OIDC_CLIENT_ID is set but WORKSESSION_OIDC_ISSUER "
                             "is not: the console's sign-in needs the provider's issuer")
        if not (self.oidc_issuer or self.jwks_url):
            return self
        if not (self.oidc_issuer and self.jwt_audience):
            raise SystemExit("an identity provider needs WORKSESSION_OIDC_ISSUER (what its "
                             "tokens' iss must be) and WORKSESSION_JWT_AUDIENCE (what their "
                             "aud must name)")
        for name, url in (("OIDC_ISSUER", self.oidc_issuer), ("JWKS_URL", self.jwks_url)):
            if url is not None and not https_or_loopback(url):
                raise SystemExit(f"WORKSESSION_{name} must be an https address (plain http "
                                 f"only to this machine), not {url!r}")
        if self.role_claim != "role" and not self.role_map:
            # Unmapped, the claim's values are taken as role names: anyone in a group called
            # "admin" would be an admin.
            raise SystemExit(f"WORKSESSION_ROLE_CLAIM is {self.role_claim!r} but "
                             "WORKSESSION_ROLE_MAP is not set: map its values to worker, "
                             "supervisor or admin")
        return self

    def webhook_key_material(self, jwt_secret: bytes | None = None) -> bytes | None:
        """What seals webhook secrets: WORKSESSION_WEBHOOK_KEY, else a key derived from the
        JWT secret (this one's, or `jwt_secret`), else None (no webhooks)."""
        key = self.webhook_key.get_secret_value().encode() if self.webhook_key else None
        if key is not None and len(key) < MIN_SECRET_BYTES:
            raise SystemExit(f"WORKSESSION_WEBHOOK_KEY is too short: {len(key)} bytes, at "
                             f"least {MIN_SECRET_BYTES} are needed")
        if jwt_secret is None and self.jwt_secret is not None:
            jwt_secret = self.jwt_secret.get_secret_value().encode()
        return key if key is not None else derived_webhook_key(jwt_secret)

    def require_jwt_secret(self) -> bytes | None:
        """Outside `worksession dev` the API refuses to start without a way to check tokens:
        a strong shared secret, an identity provider, or both. None: the provider's only."""
        if self.jwt_secret is None:
            if self.oidc_issuer:
                return None
            raise SystemExit("WORKSESSION_JWT_SECRET is not set (at least 32 bytes are "
                             "needed), and no identity provider (WORKSESSION_OIDC_ISSUER) is")
        secret = self.jwt_secret.get_secret_value().encode()
        if len(secret) < MIN_SECRET_BYTES:
            raise SystemExit(f"WORKSESSION_JWT_SECRET is too short: {len(secret)} bytes, "
                             f"at least {MIN_SECRET_BYTES} are needed")
        return secret
