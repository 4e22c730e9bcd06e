"""The payments domain's types: payment statuses and kinds, and the payments row.

The enums are `StrEnum`s whose values are the strings stored in the
`payments` table, so a member compares equal to the value read back.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypedDict


class PaymentStatus(StrEnum):
    PENDING = "pending"
    PAID = "paid"
    FAILED = "failed"
    EXPIRED = "expired"
    REFUNDED = "refunded"
    PARTIALLY_REFUNDED = "partially_refunded"
    DISPUTED = "disputed"
    # Stripe reported another amount or currency: not credited, for an operator to review.
    AMOUNT_MISMATCH = "amount_mismatch"


class PaymentKind(StrEnum):
    CHECKOUT = "checkout"
    AUTO_REFILL = "auto_refill"
    SUBSCRIPTION = "subscription"
    TOP_UP = "top_up"


# Statuses whose credits were granted (server/ledger/verify.py expects one grant each).
CREDITED: frozenset[PaymentStatus] = frozenset(
    {PaymentStatus.PAID, PaymentStatus.REFUNDED, PaymentStatus.PARTIALLY_REFUNDED, PaymentStatus.DISPUTED}
)


class PaymentRow(TypedDict):
    """A row of `payments` (server/db/schema.py). `status` and `kind` hold the
    values of PaymentStatus and PaymentKind (plain strings when read back)."""

    id: str
    user_id: str
    kind: str
    status: str
    amount_cents: int
    currency: str
    credits: int  # millicredits granted when paid
    request_key: str | None
    fingerprint: str
    checkout_session_id: str | None
    payment_url: str
    expires_at_us: int | None
    payment_intent_id: str | None
    charge_id: str | None
    receipt_url: str
    failure_reason: str
    refunded_cents: int
    refund_clawed: int  # millicredits
    dispute_id: str | None
    dispute_clawed: int  # millicredits
    created_at_us: int
    updated_at_us: int
    paid_at_us: int | None


# A Stripe API object or event, as plain JSON (server/payments/gateway.py's `_plain`).
StripeObject = dict[str, Any]


def stripe_id(value: object) -> str:
    """The id of a Stripe reference, which Stripe sends as an id or, expanded,
    as the object itself ("" when there is none)."""
    if isinstance(value, dict):
        return str(value.get("id") or "")
    return str(value or "")


@dataclass(frozen=True)
class SavedCard:
    """The card off-session charges use, with what a user is shown of it."""

    payment_method_id: str
    brand: str = ""
    last4: str = ""
    exp_month: int = 0
    exp_year: int = 0


@dataclass(frozen=True)
class ChargeOutcome:
    """What Stripe answered to an off-session charge of the saved card.
    `status` is the PaymentIntent's (succeeded, processing, requires_action,
    requires_payment_method, ...); `code` and `decline_code` say why not."""

    status: str
    payment_intent_id: str = ""
    charge_id: str = ""
    code: str = ""
    decline_code: str = ""

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    @property
    def processing(self) -> bool:
        return self.status in ("processing", "requires_capture")


def dollars(cents: int) -> str:
    return f"${cents // 100:,}.{cents % 100:02d}"


@dataclass(frozen=True)
class SubscriptionCheckout:
    """A subscription-mode Checkout session: its id, and the link the user pays through."""

    session_id: str
    url: str
