"""All configuration, from `WORKSESSION_*` environment variables with embedded defaults."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

MIN_SECRET_BYTES = 32


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WORKSESSION_", extra="ignore")

    data_dir: Path = Path("./data")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy async URL; default SQLite under data_dir")
    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    task_queue: str = "work-sessions"
    temporal_ui_url: str = "http://127.0.0.1:8233"
    jwt_secret: SecretStr | None = None
    jwt_algorithms: list[str] = ["HS256"]
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    request_timeout_seconds: float = 10.0
    max_body_bytes: int = 256 * 1024
    # Load shedding (api/front_door.py): requests one API process lets in at once; the next
    # waits for a place at most `admission_wait`, then is answered 503 with this Retry-After.
    # Sizing: docs/deployment.md.
    max_in_flight: int = Field(default=12, ge=1)
    admission_wait: timedelta = timedelta(milliseconds=100)
    retry_after_seconds: int = Field(default=1, ge=1)
    idle_timeout: timedelta = timedelta(hours=8)
    escalate_after_failures: int = 3
    # How long a run lets a change it took go unwritten by itself (docs/architecture.md).
    write_behind: timedelta = timedelta(minutes=10)
    workflow_cache_size: int = Field(
        default=600, ge=1,
        description="session runs a worker keeps in memory; one not kept replays its history "
                    "on its next request (see docs/operations.md)")
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

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'worksession.db').resolve()}"

    def require_jwt_secret(self) -> bytes:
        """Outside `worksession dev` the API refuses to start without a strong secret."""
        if self.jwt_secret is None:
            raise SystemExit("WORKSESSION_JWT_SECRET is not set (at least 32 bytes are needed)")
        secret = self.jwt_secret.get_secret_value().encode()
        if len(secret) < MIN_SECRET_BYTES:
            raise SystemExit(f"WORKSESSION_JWT_SECRET is too short: {len(secret)} bytes, "
                             f"at least {MIN_SECRET_BYTES} are needed")
        return secret
