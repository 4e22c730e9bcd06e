"""Tiers as the rest of the service sees them: the catalogue entry, a tier
change, the tier view, and the subscription row with its states."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypedDict


class SubscriptionStatus(StrEnum):
    """Our record of a user's Pro subscription (stored as these strings)."""

    NONE = "none"
    INCOMPLETE = "incomplete"  # a Pro upgrade waits for its first payment
    ACTIVE = "active"
    PAST_DUE = "past_due"  # a renewal failed: Pro stays until the grace period ends
    CANCELED = "canceled"


class UpgradeStatus(StrEnum):
    COMPLETED = "completed"
    PAYMENT_REQUIRED = "payment_required"
    PENDING = "pending"


class SubscriptionRow(TypedDict):
    user_id: str
    status: str
    stripe_customer_id: str | None
    stripe_subscription_id: str | None
    payment_url: str
    checkout_session_id: str | None
    pending_tier: str | None
    pending_change_at_us: int | None
    grace_until_us: int | None
    cancel_in_stripe: bool
    created_at_us: int
    updated_at_us: int


@dataclass(frozen=True)
class TierSpec:
    name: str
    display_name: str
    monthly_millicredits: int
    price_cents: int
    custom_price: bool = False
    unlimited: bool = False
    features: tuple[str, ...] = field(default_factory=tuple)


@dataclass
class TierChange:
    new_tier: str
    monthly: int
    effective_us: int
    status: UpgradeStatus
    payment_url: str = ""


@dataclass
class TierView:
    tier: str
    period_start_us: int
    period_end_us: int
    monthly: int
    allowance_left: int
    pending_tier: str
    pending_change_at_us: int
    subscription_status: str
    payment_url: str
