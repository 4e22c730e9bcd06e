"""Settings from BILLING_* environment variables (documented in README.md)."""

from __future__ import annotations

import os
import secrets
from functools import cached_property
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_SECRET_FILE = "dev-jwt-secret"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BILLING_", extra="ignore")

    database_url: str = "sqlite+aiosqlite:///./var/billing.db"
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    # Empty: a random secret is kept in var/dev-jwt-secret (development only).
    jwt_secret: str = ""
    jwt_issuer: str = "flownexus-billing"
    stripe_api_key: str = ""
    stripe_webhook_secret: str = ""
    stripe_api_base: str = ""
    public_base_url: str = "http://localhost:8080"
    credits_per_usd: int = Field(default=10, gt=0)
    min_purchase_cents: int = 1000
    max_purchase_cents: int = 1_000_000
    default_hold_ttl_seconds: int = Field(default=900, gt=0)
    max_hold_ttl_seconds: int = Field(default=7 * 24 * 3600, gt=0)
    free_monthly_credits: int = 100
    pro_monthly_credits: int = 1000
    pro_price_cents: int = 2900
    revenue_share_percent: int = Field(default=70, ge=0, le=100)
    # Group commit: at most this many operations share one transaction.
    batch_max_ops: int = Field(default=256, gt=0, le=2000)
    max_message_bytes: int = 1024 * 1024
    max_concurrent_rpcs: int = 20000
    watch_queue_size: int = Field(default=64, gt=1)
    worker_interval_seconds: float = 5.0
    log_level: str = "INFO"
    log_json: bool = True

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def var_dir(self) -> Path:
        return Path(os.environ.get("BILLING_VAR_DIR", "./var"))

    @cached_property
    def effective_jwt_secret(self) -> str:
        if self.jwt_secret:
            return self.jwt_secret
        # Development fallback: one random secret per checkout, shared by
        # `serve` and `token`, never a constant baked into the code.
        path = self.var_dir / DEV_SECRET_FILE
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(48))
        return path.read_text().strip()

    def credits_for_cents(self, cents: int) -> int:
        """Millicredits bought by `cents` US cents (integer arithmetic)."""
        return cents * self.credits_per_usd * 1000 // 100
