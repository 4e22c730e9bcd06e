"""Settings from BILLING_* environment variables (documented in docs/configuration.md)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from datetime import timedelta
from functools import cached_property
from pathlib import Path

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_SECRET_FILE = "dev-jwt-secret"
PREFIX = "BILLING_"

# BILLING_* variables read outside Settings, so not typos: the server's var
# directory, the client/MCP side sharing the same shell, the test suite's knobs.
OTHER_VARIABLES = frozenset({
    "BILLING_VAR_DIR", "BILLING_LEDGER_CORE",
    "BILLING_GRPC_TARGET", "BILLING_TOKEN", "BILLING_MCP_RESOURCE_URL", "BILLING_MCP_AUTHORIZATION_SERVER",
    "BILLING_MCP_CONFIRM_ABOVE_USD",
    "BILLING_TEST_PG_DSN", "BILLING_SOAK", "BILLING_CRASH_KILLS", "BILLING_BANK_SECONDS",
    "BILLING_MODEL_EXAMPLES", "BILLING_FUZZ_EXAMPLES",
})


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore")

    database_url: str = "sqlite+aiosqlite:///./var/billing.db"
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    # Empty: a random secret is kept in var/dev-jwt-secret (development only).
    jwt_secret: SecretStr = SecretStr("")
    jwt_issuer: str = "flownexus-billing"
    stripe_api_key: SecretStr = SecretStr("")
    stripe_webhook_secret: SecretStr = SecretStr("")
    stripe_api_base: str = ""
    public_base_url: str = "http://localhost:8080"
    # ---- billing portal ----
    # A portal link opens once, within this many seconds of CreatePortalSession.
    portal_link_ttl_seconds: int = Field(default=300, gt=0, le=3600)
    # The browser session a link opens lasts this long.
    portal_session_ttl_seconds: int = Field(default=3600, gt=0, le=86_400)
    # Who may frame the portal (CSP frame-ancestors), e.g. "https://app.example.com"; 'none' by default.
    portal_frame_ancestors: str = "'none'"
    # return_url may be http:// on a loopback host (development); otherwise https only.
    portal_allow_http_loopback: bool = False
    # Requests per second one portal session may make, and its burst.
    portal_rate_per_second: float = Field(default=5.0, gt=0)
    portal_rate_burst: int = Field(default=40, ge=1)
    # Pending payments older than this are settled from Stripe by the reconciliation job.
    payment_reconcile_after_seconds: float = Field(default=300.0, ge=0)
    # Stripe reads made by reconciliation, per second, at most (Stripe allows
    # 100 a second in live mode, 25 in test mode: polling must leave most of
    # it to the calls customers wait for). docs/fairness.md has the schedule.
    stripe_poll_rate_per_second: float = Field(default=5.0, gt=0)
    credits_per_usd: int = Field(default=10, gt=0)
    min_purchase_cents: int = 1000
    max_purchase_cents: int = 1_000_000
    default_hold_ttl_seconds: int = Field(default=900, gt=0)
    max_hold_ttl_seconds: int = Field(default=7 * 24 * 3600, gt=0)
    # RefundUsage is accepted this many days after the charge.
    refund_window_days: int = Field(default=30, ge=0)
    # Scoped keys (KeysService) a wallet may have, revoked ones included.
    max_keys_per_wallet: int = Field(default=100, gt=0)
    max_orgs_per_user: int = Field(default=20, gt=0)
    free_monthly_credits: int = 100
    pro_monthly_credits: int = 1000
    pro_price_cents: int = 2900
    revenue_share_percent: int = Field(default=70, ge=0, le=100)
    # ---- tiers and earnings ----
    # JSON object overriding catalogue entries, e.g. {"pro": {"features": ["..."]}}.
    tiers_json: str = ""
    enterprise_monthly_credits: int = Field(default=10_000, ge=0)
    # A Pro renewal that stays unpaid this long after the period end drops the user to free.
    tier_grace_seconds: int = Field(default=3 * 86400, ge=0)
    # Optional Stripe Price for Pro; empty: a monthly plan is created from pro_price_cents.
    stripe_pro_price_id: str = ""
    # Earned credits per user, per source, per UTC day (credits; 0 = no limit).
    award_daily_limit_challenge: int = Field(default=1_000, ge=0)
    award_daily_limit_app_usage: int = Field(default=10_000, ge=0)
    award_daily_limit_referral: int = Field(default=500, ge=0)
    # Card charges a user asks for (TopUp, payment links) per account, US
    # cents, per UTC day and calendar month; 0 turns a cap off.
    user_card_daily_cap_cents: int = Field(default=2_000_000, ge=0)
    user_card_monthly_cap_cents: int = Field(default=5_000_000, ge=0)
    # ---- auto-refill; defaults explained in docs/payments.md "Auto-refill" ----
    # The highest threshold a user may set, in credits.
    refill_max_threshold_credits: int = Field(default=1_000_000, gt=0)
    # Auto-refill charges per account per calendar month (UTC), US cents.
    refill_monthly_cap_cents: int = Field(default=100_000, ge=0)
    # Charges tried for one refill (the first plus retries) before pausing.
    refill_max_attempts: int = Field(default=4, ge=1, le=15)
    # Declined charges per account in any 30 days (Visa allows 15 per card).
    refill_max_declines_30d: int = Field(default=10, ge=1, le=15)
    # Backoff after a decline: base * 2^(n-1), capped, with +-jitter.
    refill_retry_base_seconds: float = Field(default=3600.0, gt=0)
    refill_retry_max_seconds: float = Field(default=24 * 3600.0, gt=0)
    refill_retry_jitter: float = Field(default=0.2, ge=0, le=0.5)
    # A Stripe outage or timeout: retry the same attempt (same idempotency key) after this.
    refill_network_retry_seconds: float = Field(default=60.0, gt=0)
    # A claimed job whose worker died is claimed again after this.
    refill_lease_seconds: float = Field(default=300.0, gt=0)
    # Group commit: at most this many operations share one transaction.
    batch_max_ops: int = Field(default=256, gt=0, le=2000)
    max_message_bytes: int = 1024 * 1024
    max_concurrent_rpcs: int = 20000
    # ---- reliability: transport limits and per-caller rate limits ----
    keepalive_time_ms: int = Field(default=60_000, gt=0)
    keepalive_timeout_ms: int = Field(default=20_000, gt=0)
    # Clients pinging more often than this are sent GOAWAY (too_many_pings).
    min_ping_interval_ms: int = Field(default=10_000, ge=0)
    # Token bucket per caller (role/subject); a rate of 0 turns the limit off.
    award_rate_per_second: float = Field(default=50.0, ge=0)
    award_burst: int = Field(default=200, ge=1)
    payment_link_rate_per_second: float = Field(default=1.0, ge=0)
    payment_link_burst: int = Field(default=10, ge=1)
    # ---- shutdown (SIGTERM): first health says NOT_SERVING while calls are
    # still served, so load balancers move traffic away; then the drain.
    shutdown_grace_seconds: float = Field(default=5.0, ge=0, le=3600)
    # The drain: running calls get this long to finish, new ones are refused.
    shutdown_drain_seconds: float = Field(default=5.0, ge=0, le=3600)
    # Each caller's share of max_concurrent_rpcs, so that one token cannot take
    # it all: open WatchBalance streams and unary calls in progress per
    # role/subject. The service_* values apply to service and admin tokens.
    user_max_streams: int = Field(default=20, ge=1)
    service_max_streams: int = Field(default=10_000, ge=1)
    user_max_in_flight: int = Field(default=100, ge=1)
    service_max_in_flight: int = Field(default=10_000, ge=1)
    # Every mutating RPC (one that takes a request_id): one token bucket per
    # caller, besides the per-method limits above; a rate of 0 turns it off.
    user_mutation_rate_per_second: float = Field(default=10.0, ge=0)
    user_mutation_burst: int = Field(default=100, ge=1)
    service_mutation_rate_per_second: float = Field(default=10_000.0, ge=0)
    service_mutation_burst: int = Field(default=20_000, ge=1)
    # Fair share (docs/fairness.md): the calls per second the server is
    # taken to serve; each caller active in the last second may begin calls
    # at its weight's share of it, and waits in its own queue past it (a
    # call examining rows or writing batch items counts as more calls). 0 turns it off.
    # Above what the server can do, not below: the shares together cap the
    # user-token traffic (at 1,000, CheckBalance from 1,000 users fell to 0.26x echo).
    fair_calls_per_second: float = Field(default=10_000.0, ge=0)
    # The event loop lag past which a sample counts as lagging: a window with
    # a tenth of them lagging halves the shares' capacity while several
    # callers are active; 0 keeps it at the ceiling.
    fair_loop_lag_ms: float = Field(default=2.0, ge=0)
    user_fair_weight: int = Field(default=1, ge=1)
    # 0: service and admin calls are not paced (they carry every user's
    # traffic, and a share of a nominal capacity would cap the platform's
    # spends below what the server can do); above 0, their weight.
    service_fair_weight: int = Field(default=0, ge=0)
    # Calls waiting for their turn, in all; past it the heaviest caller's
    # newest waiting call is refused (RESOURCE_EXHAUSTED SERVER_BUSY).
    fair_max_waiting: int = Field(default=1_000, ge=1)
    # Rows one filtered ListTransactions page may examine (half per side of
    # the wallet) before it answers a short page with a next_page_token.
    history_max_rows_examined: int = Field(default=1_000, ge=2)
    # Spends (and as many Captures) a GetSpendingReport sums at most: past
    # it the report covers the newest ones, from a later start_time.
    report_max_rows_examined: int = Field(default=5_000, ge=1)
    # What one caller may store: applied mutating requests (each stores its
    # response and the rows it made) per caller and UTC day; 0 turns it off.
    # Service tokens carry every user's traffic: off by default.
    user_max_stored_requests_per_day: int = Field(default=50_000, ge=0)
    service_max_stored_requests_per_day: int = Field(default=0, ge=0)
    # Stored responses of mutating requests older than this are pruned (a
    # repeat of such a request_id is refused REQUEST_ID_EXPIRED, never applied).
    idempotency_retention: timedelta = Field(default=timedelta(days=7), gt=timedelta(0))
    # The pruning job: rows per batch, batches per worker run.
    idempotency_prune_batch: int = Field(default=1_000, ge=1, le=10_000)
    idempotency_prune_max_batches: int = Field(default=20, ge=1)
    watch_queue_size: int = Field(default=64, gt=1)
    # ---- events, alerts and webhooks (docs/events.md) ----
    # Events (and finished webhook deliveries) older than this are pruned.
    events_retention: timedelta = Field(default=timedelta(days=30), gt=timedelta(0))
    # WatchEvents and the delivery worker look for events committed by other
    # processes this often (this process's own wake them at once).
    events_poll_seconds: float = Field(default=1.0, gt=0)
    # The default balance.low threshold when auto-refill is off: this percent
    # of the monthly allowance (with auto-refill on: its threshold).
    events_default_low_percent: int = Field(default=10, ge=0, le=100)
    # Default lead times of credits.expiring and forecast.runs_out.
    events_expiry_lead_seconds: int = Field(default=3 * 86400, ge=0)
    events_forecast_days: int = Field(default=3, ge=0)
    # Development only: http:// endpoint URLs, and private, loopback or
    # link-local addresses (refused by default: SSRF).
    events_allow_http: bool = False
    events_allow_private_urls: bool = False
    # Delivery: per-attempt timeout, response bytes read, attempts in flight per endpoint.
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    webhook_max_response_bytes: int = Field(default=64 * 1024, ge=0)
    webhook_endpoint_concurrency: int = Field(default=16, ge=1, le=64)
    # A claimed delivery whose process died is claimed again after this.
    webhook_lease_seconds: float = Field(default=60.0, gt=0)
    # Back-off after a failed attempt: base * 2^(n-1), capped, with +-jitter;
    # a delivery still failing this long after its event is marked failed.
    webhook_retry_base_seconds: float = Field(default=10.0, gt=0)
    webhook_retry_max_seconds: float = Field(default=2 * 3600.0, gt=0)
    webhook_retry_jitter: float = Field(default=0.2, ge=0, le=0.5)
    webhook_retry_period_seconds: float = Field(default=27 * 3600.0, gt=0)
    # An endpoint whose every attempt failed for this long is disabled.
    webhook_disable_after_seconds: float = Field(default=5 * 86400.0, gt=0)
    # After RotateWebhookSecret the old secret signs too, this long.
    webhook_secret_grace_seconds: float = Field(default=86400.0, ge=0)
    # The rate card file (TOML, docs/pricing.md) applied at start; empty: the
    # default card shipped with the service (server/pricing/default_rate_card.toml).
    rate_card: str = ""
    # A published version takes effect no sooner than this after it is
    # published, and every process looks for new versions five times as often:
    # every replica knows a version before it prices with it (docs/pricing.md).
    rate_card_lead_seconds: float = Field(default=5.0, ge=0, le=3600)
    worker_interval_seconds: float = 5.0
    log_level: str = "INFO"
    log_json: bool = True
    # TLS for the gRPC listener. A client CA turns on mTLS.
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    # OpenTelemetry tracing of RPCs; needs the `[otel]` extra.
    otel_enabled: bool = False

    @field_validator("idempotency_retention", "events_retention", mode="before")
    @classmethod
    def _seconds(cls, value: object) -> object:
        """A plain number is seconds (`604800`); otherwise ISO 8601 (`P7D`)."""
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return value
        return value

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def var_dir(self) -> Path:
        return Path(os.environ.get("BILLING_VAR_DIR", "./var"))

    @cached_property
    def effective_jwt_secret(self) -> str:
        if secret := self.jwt_secret.get_secret_value():
            return secret
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


class ConfigError(Exception):
    """Bad BILLING_* values: one line per variable, naming it and the rule."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def _variable(loc: tuple[int | str, ...]) -> str:
    return PREFIX + str(loc[0]).upper() if loc else PREFIX + "*"


def load_settings(**overrides: object) -> Settings:
    """Settings() with its errors as ConfigError: `BILLING_GRPC_PORT: must be a
    valid integer, unable to parse string as an integer (got 'abc')`. A secret's
    value is never echoed."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = str(err["loc"][0]) if err["loc"] else ""
            rule = err["msg"].replace("Input should be", "must be", 1)
            field = Settings.model_fields.get(name)
            secret = field is not None and field.annotation is SecretStr
            got = "" if secret or "input" not in err else f" (got {err['input']!r})"
            lines.append(f"{_variable(err['loc'])}: {rule}{got}")
        raise ConfigError(lines) from None


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """BILLING_* variables that no setting reads (a typo, or a setting that
    was removed), sorted."""
    env = os.environ if environ is None else environ
    known = {PREFIX + name.upper() for name in Settings.model_fields} | OTHER_VARIABLES
    return sorted(k for k in env if k.upper().startswith(PREFIX) and k.upper() not in known)
