"""Ledger vocabulary: account ids, transfer kinds, lot kinds, and views."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

INT64_MAX = 2**63 - 1
# Larger than any real purchase or spend; keeps every sum far from int64 overflow.
MAX_AMOUNT = 10**15

SYSTEM_STRIPE = "system:stripe_purchases"
SYSTEM_ALLOWANCES = "system:tier_allowances"
SYSTEM_EARNINGS = "system:earnings"
SYSTEM_REVENUE = "system:platform_revenue"
SYSTEM_REFUNDS = "system:refunds"
SYSTEM_HOLDS = "system:holds"
# The other side of admin adjustments (grants, debits) and of expired promotional lots.
SYSTEM_ADJUSTMENTS = "system:adjustments"
SYSTEM_ACCOUNTS = (
    SYSTEM_STRIPE,
    SYSTEM_ALLOWANCES,
    SYSTEM_EARNINGS,
    SYSTEM_REVENUE,
    SYSTEM_REFUNDS,
    SYSTEM_HOLDS,
    SYSTEM_ADJUSTMENTS,
)


def wallet_id(user_id: str) -> str:
    return f"wallet:{user_id}"


class Kind(StrEnum):
    PURCHASE = "purchase"
    SPEND = "spend"
    HOLD = "hold"
    HOLD_CAPTURE = "hold_capture"
    HOLD_RELEASE = "hold_release"
    AWARD = "award"
    ALLOWANCE_GRANT = "allowance_grant"
    ALLOWANCE_EXPIRY = "allowance_expiry"
    REFUND_CLAWBACK = "refund_clawback"
    DISPUTE_CLAWBACK = "dispute_clawback"
    DISPUTE_RESTORE = "dispute_restore"
    AUTO_REFILL = "auto_refill"
    REVENUE_SHARE = "revenue_share"
    ADJUSTMENT = "adjustment"
    # The exact mirror of one earlier transfer (AdminService/ReverseTransaction).
    REVERSAL = "reversal"
    # All or part of a Spend or Capture given back (UsageService/RefundUsage).
    USAGE_REFUND = "usage_refund"


# What ReverseTransaction may reverse; anything else is refused (purchases are
# refunded through Stripe; clawbacks and allowances follow their own events).
REVERSIBLE_KINDS = frozenset({Kind.SPEND, Kind.HOLD_CAPTURE, Kind.AWARD, Kind.ADJUSTMENT, Kind.REVENUE_SHARE})
# Reversible grants into a wallet's lots (a promotional lot may end).
PROMOTIONAL_GRANT_KINDS = frozenset({Kind.AWARD, Kind.ADJUSTMENT})
# What RefundUsage may refund.
REFUNDABLE_KINDS = frozenset({Kind.SPEND, Kind.HOLD_CAPTURE})


# Cached wallet totals are derived from these kinds (and `verify` recomputes them).
SPENT_KINDS = frozenset({Kind.SPEND, Kind.HOLD_CAPTURE})
# Transfers that use a key's budget; every other transfer recorded with a key gives budget back.
KEY_USING_KINDS = frozenset({Kind.SPEND, Kind.HOLD, Kind.HOLD_CAPTURE})
# New spending through a key: held to its budgets, categories and largest spend.
KEY_LIMITED_KINDS = frozenset({Kind.SPEND, Kind.HOLD})
EARNED_KINDS = frozenset({Kind.AWARD, Kind.REVENUE_SHARE})


class LotKind(StrEnum):
    ALLOWANCE = "allowance"
    EARNED = "earned"
    PURCHASED = "purchased"


# Spending draws from lots in this order; clawbacks of purchases in the reverse.
SPEND_ORDER = (LotKind.ALLOWANCE, LotKind.EARNED, LotKind.PURCHASED)
CLAWBACK_ORDER = (LotKind.PURCHASED, LotKind.EARNED, LotKind.ALLOWANCE)
# Lots that can carry an end (expires_at_us > 0): the monthly allowance, and
# promotional credits granted with an expiry. Purchased credits never end.
EXPIRING_KINDS = (LotKind.ALLOWANCE, LotKind.EARNED)


class HoldStatus(StrEnum):
    ACTIVE = "active"
    CAPTURED = "captured"
    RELEASED = "released"
    EXPIRED = "expired"


@dataclass
class TransferView:
    """A transfer as one wallet sees it: signed amount and its balance after."""

    id: int
    kind: str
    amount: int
    balance_after: int
    description: str
    category: str
    ref: str
    created_at_us: int
    metadata: dict[str, str] = field(default_factory=dict)
    key_id: str = ""  # the scoped key it was made through or for
    member_id: str = ""  # on an org's wallet: the member it was spent by

    @classmethod
    def of(cls, row: dict[str, Any], account_id: str) -> TransferView:
        outgoing = row["debit_account"] == account_id
        # A transfer made in this batch carries its metadata parsed already.
        meta = row.get("_metadata", row["metadata"])
        return cls(
            id=row["id"],
            kind=row["kind"],
            amount=-row["amount"] if outgoing else row["amount"],
            balance_after=row["debit_balance_after"] if outgoing else row["credit_balance_after"],
            description=row["description"],
            category=row["category"],
            ref=row["ref"],
            created_at_us=row["created_at_us"],
            metadata=json.loads(meta) if isinstance(meta, str) else dict(meta or {}),
            key_id=row.get("key_id") or "",
            member_id=row.get("member_id") or "",
        )


@dataclass
class HoldView:
    id: str
    user_id: str
    amount: int
    status: str
    expires_at_us: int
    captured: int
    category: str


@dataclass
class BalanceEvent:
    """Published to WatchBalance subscribers after the commit."""

    user_id: str
    kind: str  # transfer | refill_succeeded | refill_failed | refill_paused | action_required | tier_changed | payment_failed
    credits: int | None = None
    pending: int | None = None
    transfer: TransferView | None = None
    message: str = ""
    payment_url: str = ""
    key_id: str = ""  # budget_* events: the key
    member: str = ""  # budget_* events of an org member's budget: the member


# What the credits counters of /metrics add up (server/platform/metrics.py).
GRANT_KINDS = frozenset({Kind.PURCHASE, Kind.AUTO_REFILL, Kind.ALLOWANCE_GRANT, *EARNED_KINDS, Kind.DISPUTE_RESTORE})
CLAWBACK_KINDS = frozenset({Kind.REFUND_CLAWBACK, Kind.DISPUTE_CLAWBACK})


@dataclass
class TransferTally:
    """A batch's transfers by kind, and the credits spent, granted and clawed back."""

    counts: dict[str, int] = field(default_factory=dict)
    spent: int = 0
    granted: int = 0
    clawed: int = 0


def tally(events: list[BalanceEvent]) -> TransferTally:
    """Each transfer is seen from at most two wallets: counted once, by its id."""
    seen: set[int] = set()
    out = TransferTally()
    counts = out.counts
    for e in events:
        t = e.transfer
        if t is None or t.id in seen:
            continue
        seen.add(t.id)
        kind = t.kind
        counts[kind] = counts.get(kind, 0) + 1
        amount = abs(t.amount)
        if kind in SPENT_KINDS:
            out.spent += amount
        elif kind in GRANT_KINDS:
            out.granted += amount
        elif kind in CLAWBACK_KINDS:
            out.clawed += amount
    return out


T = TypeVar("T")


_FIELDS: dict[type, tuple[str, ...] | None] = {}


def _plain(obj: Any) -> Any:
    # dataclasses.asdict deep-copies every leaf; results hold only plain values.
    # Field names are looked up once per class: this runs for every stored response.
    cls = type(obj)
    try:
        names = _FIELDS[cls]
    except KeyError:
        fields = getattr(cls, "__dataclass_fields__", None)
        # A private field is a value derived and kept, never stored.
        names = _FIELDS[cls] = tuple(f for f in fields if not f.startswith("_")) if fields is not None else None
    if names is not None:
        return {name: _plain(getattr(obj, name)) for name in names}
    if cls is list:
        return [_plain(v) for v in obj]
    return obj


# One encoder, built once: json.dumps with options builds a new one per call.
compact_json = json.JSONEncoder(separators=(",", ":")).encode


def to_json(obj: Any) -> bytes:
    return compact_json(_plain(obj)).encode()


def from_json(cls: type[T], data: bytes) -> T:
    return _build(cls, json.loads(data))


def _build(cls: Any, value: Any) -> Any:
    """Rebuild nested dataclasses from plain JSON (enough for our result types)."""
    if value is None:
        return None
    origin = typing.get_origin(cls)
    if origin in (typing.Union, types.UnionType):
        inner = next(a for a in typing.get_args(cls) if a is not type(None))
        return _build(inner, value)
    if isinstance(cls, type) and dataclasses.is_dataclass(cls):
        hints = typing.get_type_hints(cls)
        # A field added since the response was stored (a transfer's member_id) takes its default.
        return cls(**{f.name: _build(hints[f.name], value[f.name]) for f in dataclasses.fields(cls) if f.name in value})
    return value
