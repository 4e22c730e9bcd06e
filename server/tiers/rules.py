"""The tier catalogue and the tier rules that run inside ledger transactions.

Free and Enterprise renew by the calendar (the ledger's roll-over grants their
allowance); Pro renews through paid Stripe invoices. When a Pro period ends
without a paid renewal the user keeps Pro (without allowance) for a grace
period, then drops to free. Scheduled downgrades take effect at period end.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from server.ledger.model import BalanceEvent
from server.ledger.tx import LedgerTx, Row, TierPolicy
from server.platform import errors
from server.platform.clock import from_us, month_bounds, to_us
from server.platform.config import Settings
from server.tiers.models import SubscriptionStatus, TierSpec
from server.tiers.repository import load_sub, save_sub

TIER_ORDER = ("free", "pro", "enterprise")


def catalogue(settings: Settings) -> dict[str, TierSpec]:
    cat = {
        "free": TierSpec("free", "Free", settings.free_monthly_credits * 1000, 0,
                         features=("Basic features", "Community support")),
        "pro": TierSpec("pro", "Pro", settings.pro_monthly_credits * 1000, settings.pro_price_cents,
                        features=("Priority access", "Email support")),
        "enterprise": TierSpec("enterprise", "Enterprise", settings.enterprise_monthly_credits * 1000, 0,
                               custom_price=True, unlimited=True,
                               features=("Dedicated resources", "SLA", "Unlimited usage")),
    }
    if settings.tiers_json:
        cat = _overrides(cat, settings.tiers_json)
    return cat


def _overrides(cat: dict[str, TierSpec], raw: str) -> dict[str, TierSpec]:
    """BILLING_TIERS_JSON: {"pro": {"display_name": ..., "monthly_credits": ..., "price_cents": ...,
    "features": [...]}}. Only the three tiers exist; unknown keys are refused at start."""
    try:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("not an object")
        out = dict(cat)
        for name, values in data.items():
            if name not in cat or not isinstance(values, dict):
                raise ValueError(f"unknown tier {name!r}")
            changes: dict[str, Any] = {}
            for key, value in values.items():
                if key == "display_name":
                    changes["display_name"] = str(value)
                elif key == "monthly_credits":
                    changes["monthly_millicredits"] = int(value) * 1000
                elif key == "price_cents":
                    changes["price_cents"] = int(value)
                elif key == "features":
                    changes["features"] = tuple(str(f) for f in value)
                else:
                    raise ValueError(f"unknown field {key!r}")
            if any(v < 0 for k, v in changes.items() if k in ("monthly_millicredits", "price_cents")):
                raise ValueError("negative amount")
            out[name] = replace(cat[name], **changes)
        return out
    except (ValueError, TypeError) as exc:
        raise ValueError(f"BILLING_TIERS_JSON is invalid: {exc}") from None


def add_month(us: int) -> int:
    """The same instant one calendar month later (day clamped to the month's end)."""
    d = from_us(us)
    year, month = d.year + (d.month == 12), d.month % 12 + 1
    _, end = month_bounds(to_us(datetime(year, month, 1, tzinfo=UTC)))
    last_day = from_us(end - 1).day
    return to_us(d.replace(year=year, month=month, day=min(d.day, last_day)))


def prorate(monthly: int, period_start_us: int, period_end_us: int, now_us: int) -> int:
    """The allowance for what is left of a period, rounded down (integer math)."""
    total = period_end_us - period_start_us
    if total <= 0 or now_us >= period_end_us:
        return 0
    left = period_end_us - max(now_us, period_start_us)
    return monthly * left // total


def change_tier(tx: LedgerTx, user: Row, tier: str, *, monthly: int | None = None, why: str = "") -> None:
    """Switch the user's tier (overdraft follows Enterprise) and tell WatchBalance."""
    uid = user["user_id"]
    old = user["tier"]
    tx.set_user(uid, tier=tier, monthly_credits=monthly if tier == "enterprise" else None)
    tx.set_overdraft(uid, tier == "enterprise")
    if old != tier:
        wallet = tx.loaded_wallet(uid)
        tx.notify(BalanceEvent(
            user_id=uid, kind="tier_changed", credits=wallet["balance"], pending=wallet["pending"],
            message=f"tier changed from {old} to {tier}" + (f": {why}" if why else ""),
        ))


class TierRules(TierPolicy):
    def __init__(self, settings: Settings) -> None:
        cat = catalogue(settings)
        super().__init__({
            "free": cat["free"].monthly_millicredits,
            "pro": None,  # renewed by paid invoices, not the calendar
            "enterprise": cat["enterprise"].monthly_millicredits,
        })
        self.grace_us = settings.tier_grace_seconds * 1_000_000

    async def period_ended(self, tx: LedgerTx, user: Row) -> bool:
        uid = user["user_id"]
        sub = await load_sub(tx, uid)
        if sub and sub["pending_tier"] and (sub["pending_change_at_us"] or 0) <= tx.now_us:
            target = sub["pending_tier"]
            change_tier(tx, user, target, why="scheduled change at period end")
            await save_sub(tx, uid, pending_tier=None, pending_change_at_us=None, grace_until_us=None,
                           status=SubscriptionStatus.CANCELED if sub["stripe_subscription_id"] else sub["status"])
            return True
        if self.calendar_allowance(user) is not None:
            return True
        # A paid period is over and no renewal invoice has been paid (yet).
        until = (sub["grace_until_us"] if sub else None) or user["period_end_us"] + self.grace_us
        if sub is None or sub["status"] == SubscriptionStatus.CANCELED or until <= tx.now_us:
            change_tier(tx, user, "free", why="the subscription was not renewed")
            if sub is not None:
                await save_sub(tx, uid, status=SubscriptionStatus.CANCELED, grace_until_us=None, payment_url="",
                               cancel_in_stripe=bool(sub["stripe_subscription_id"])
                               and sub["status"] != SubscriptionStatus.CANCELED)
            return True
        # Grace: Pro stays (without allowance) until the renewal is paid or the grace ends.
        tx.set_user(uid, period_end_us=until)
        await save_sub(tx, uid, grace_until_us=until)
        return False


def tier_policy(settings: Settings) -> TierRules:
    return TierRules(settings)


def tier_rank(name: str) -> int:
    try:
        return TIER_ORDER.index(name)
    except ValueError:
        raise errors.InvalidArgument("unknown tier", reason="INVALID_TIER") from None
