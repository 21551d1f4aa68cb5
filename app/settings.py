"""Configuration, from the environment only (pydantic-settings). Read here, in app/, and
nowhere in the engine: skiplock/ takes plain keyword arguments."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.tokens import ApiToken, parse_tokens

ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SKIPLOCK_", extra="ignore", populate_by_name=True)

    database_url: str | None = Field(default=None, validation_alias="DATABASE_URL",
                                     description="PostgreSQL URL; unset: the embedded cluster under .skiplock/")
    tasks: str = Field(default="app.tasks", description="Comma-separated modules that define task handlers")
    api_tokens: str = Field(default="", description="Comma-separated bearer tokens, each optionally with :role "
                            "(read, submit, admin) and :rate (N/s, N/m, N/h); empty: no auth, 127.0.0.1 only")
    session_secret: str = Field(default="", description="Key that signs dashboard session cookies; empty: a "
                                "random key per process (sessions end when it restarts)")
    host: str = "127.0.0.1"
    port: int = 8000
    home: Path = Field(default=ROOT / ".skiplock", description="Where the embedded cluster lives")
    embedded_port: int = Field(default=54329, description="Port of the embedded PostgreSQL")
    queues: str = Field(default="", description="Worker queues, comma-separated; empty: all queues")
    concurrency: int = Field(default=10, ge=1, le=10_000)
    lease_seconds: float = Field(default=30.0, gt=0, le=3600,
                                 description="How long a claimed job stays reserved without a heartbeat")
    poll_interval: float = Field(default=1.0, gt=0, le=60)
    grace_seconds: float = Field(default=10.0, ge=0, le=3600)
    rescue_interval: float = Field(default=5.0, gt=0, le=3600)
    retention_seconds: float = Field(default=7 * 86400, ge=0, description="Finished jobs are pruned after this")
    max_args_bytes: int = Field(default=256 * 1024, gt=0, le=64 * 1024 * 1024)
    max_result_bytes: int = Field(default=1024 * 1024, gt=0, le=64 * 1024 * 1024,
                                  description="Bound on a job's result and checkpoint: UTF-8 bytes of the JSON")
    max_body_bytes: int = Field(default=32 * 1024 * 1024, gt=0)
    max_bulk_jobs: int = Field(default=10_000, gt=0, le=100_000)
    allowed_hosts: str = Field(default="", description="Comma-separated host names the API answers to (the Host "
                               "header, port ignored); empty: localhost, 127.0.0.1, [::1] and SKIPLOCK_HOST; *: any")
    max_header_bytes: int = Field(default=32 * 1024, ge=1024, le=1024 * 1024,
                                  description="Bound on a request's line and headers together")
    header_timeout: float = Field(default=10.0, gt=0, le=3600,
                                  description="Seconds a client has to send a request's line and headers")
    body_timeout: float = Field(default=10.0, gt=0, le=3600,
                                description="Longest wait for the next part of a request body (seconds)")
    keep_alive_timeout: int = Field(default=5, ge=1, le=3600,
                                    description="An idle keep-alive connection is closed after this (seconds)")
    statement_timeout: float = Field(default=5.0, gt=0, le=3600,
                                     description="API: longest one query may run (seconds), lock waits included; "
                                                 "beyond it the request answers 503")
    log_level: str = "INFO"

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        v = v.upper()
        if v not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError(f"SKIPLOCK_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, not {v!r}")
        return v

    @field_validator("api_tokens")
    @classmethod
    def _tokens(cls, v: str) -> str:
        parse_tokens(v)  # refuse a bad list at start-up, naming the entry
        return v

    @property
    def task_modules(self) -> list[str]:
        return [m.strip() for m in self.tasks.split(",") if m.strip()]

    @property
    def queue_list(self) -> list[str] | None:
        return [q.strip() for q in self.queues.split(",") if q.strip()] or None

    @property
    def tokens(self) -> list[ApiToken]:
        """The API tokens with their roles and rates (app/tokens.py)."""
        return parse_tokens(self.api_tokens)

    @property
    def token_list(self) -> list[str]:
        return [t.secret.decode() for t in self.tokens]
