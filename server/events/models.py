"""Events vocabulary: the catalogue of types, rows and views."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class EventType(StrEnum):
    """Every event type (docs/events.md documents each payload)."""

    BALANCE_LOW = "balance.low"
    BALANCE_RECOVERED = "balance.recovered"
    CREDITS_EXPIRING = "credits.expiring"
    FORECAST_RUNS_OUT = "forecast.runs_out"
    BUDGET_WARNING = "budget.warning"
    BUDGET_EXHAUSTED = "budget.exhausted"
    BUDGET_RESET = "budget.reset"
    REFILL_SUCCEEDED = "refill.succeeded"
    REFILL_FAILED = "refill.failed"
    REFILL_PAUSED = "refill.paused"
    REFILL_ACTION_REQUIRED = "refill.action_required"
    PAYMENT_SUCCEEDED = "payment.succeeded"
    PAYMENT_FAILED = "payment.failed"
    PAYMENT_REFUNDED = "payment.refunded"
    DISPUTE_OPENED = "dispute.opened"
    DISPUTE_CLOSED = "dispute.closed"
    TIER_CHANGED = "tier.changed"
    HOLD_EXPIRED = "hold.expired"
    ACCOUNT_FLAGGED = "account.flagged"
    KEY_CREATED = "key.created"
    KEY_REVOKED = "key.revoked"
    WEBHOOK_ENDPOINT_DISABLED = "webhook.endpoint_disabled"


EVENT_TYPES = frozenset(t.value for t in EventType)


class EndpointStatus(StrEnum):
    ENABLED = "enabled"
    DISABLED = "disabled"


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


# The batch's list of events emitted so far (LedgerTx.batch_list).
OUTBOX = "events-outbox"

ID_PREFIX = "evt_"


def event_name(event_id: int) -> str:
    """The public id of an event: its webhook-id and cursor."""
    return f"{ID_PREFIX}{event_id}"


@dataclass
class PendingEvent:
    """An event emitted inside a batch, not yet given its id."""

    type: str
    user_id: str
    payload: dict[str, Any]
    dedup_key: str | None = None


@dataclass
class EventView:
    id: int
    type: str
    user_id: str
    created_at_us: int
    payload: str  # JSON object


@dataclass
class AlertsView:
    user_id: str
    thresholds: list[int]
    expiry_lead_seconds: int
    forecast_days: int
    defaults: bool


@dataclass
class EndpointView:
    id: str
    url: str
    event_types: list[str]
    description: str
    status: str
    failing_since_us: int
    created_at_us: int
    updated_at_us: int


@dataclass
class CreatedEndpoint:
    endpoint: EndpointView
    secret: str


@dataclass
class RotatedSecret:
    secret: str
    previous_until_us: int


@dataclass
class DeliveryView:
    endpoint_id: str
    event_id: int
    event_type: str
    status: str
    attempts: int
    last_response_code: int
    last_error: str
    next_attempt_at_us: int
    created_at_us: int
    updated_at_us: int


@dataclass
class EndpointPage:
    endpoints: list[EndpointView] = field(default_factory=list)
    next_token: str = ""


@dataclass
class DeliveryPage:
    deliveries: list[DeliveryView] = field(default_factory=list)
    next_token: str = ""
