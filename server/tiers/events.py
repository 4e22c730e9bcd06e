"""Stripe subscription events -> tier state and allowance grants.

Each handler runs inside the payments domain's exclusive webhook transaction
(server/payments/webhooks.py), so the stored event, the tier change and the
allowance grant commit together. The allowance of a paid invoice is keyed
`allowance:invoice:{invoice_id}`: replays and duplicate event types
(`invoice.paid` and `invoice.payment_succeeded`) grant it once.
"""

from __future__ import annotations

import logging
from typing import Any

from server.ledger import keys
from server.ledger.model import BalanceEvent
from server.ledger.tx import LedgerTx
from server.payments.events import EventRouter, Handled, outcome_only
from server.payments.models import StripeObject, stripe_id
from server.payments.service import PaymentsService
from server.platform import errors
from server.platform.clock import month_bounds
from server.tiers import repository as repo
from server.tiers.models import SubscriptionStatus
from server.tiers.repository import load_sub, save_sub
from server.tiers.rules import TierRules, add_month, change_tier

log = logging.getLogger(__name__)

def _subscription_of(invoice: StripeObject) -> str:
    # API 2025-03-31.basil moved it under parent.subscription_details.
    parent = invoice.get("parent") or {}
    details = parent.get("subscription_details") or {} if isinstance(parent, dict) else {}
    return stripe_id(invoice.get("subscription")) or stripe_id(details.get("subscription"))


def _period_of(invoice: StripeObject) -> tuple[int, int]:
    lines = (invoice.get("lines") or {}).get("data") or []
    for line in lines:
        period = line.get("period") or {}
        if period.get("start") and period.get("end"):
            return int(period["start"]), int(period["end"])
    return int(invoice.get("period_start") or 0), int(invoice.get("period_end") or 0)


async def _user_for(tx: LedgerTx, subscription_id: str, customer_id: str, meta: StripeObject) -> str | None:
    if subscription_id and (found := await repo.user_of_subscription(tx, subscription_id)):
        return found
    if meta.get("user_id"):
        return str(meta["user_id"])
    if customer_id:
        return await repo.user_of_customer(tx, customer_id)
    return None


class TierEvents:
    def __init__(self, rules: TierRules, pro_monthly: int, payments: PaymentsService) -> None:
        self.rules = rules
        self.pro_monthly = pro_monthly
        self.payments = payments  # the invoice is a payment of the user's history

    def register(self, router: EventRouter) -> None:
        """Invoices and subscriptions, and the Checkout of the Pro upgrade (subscription mode)."""
        for event_type, handler in (
            ("invoice.paid", self.invoice_paid),
            ("invoice.payment_succeeded", self.invoice_paid),
            ("invoice.payment_failed", self.invoice_failed),
            ("customer.subscription.updated", self.subscription_updated),
            ("customer.subscription.deleted", self.subscription_deleted),
        ):
            router.on(event_type, outcome_only(handler))
        router.on("checkout.session.completed", self.checkout_completed, mode="subscription")
        router.on("checkout.session.expired", self.checkout_expired, mode="subscription")

    async def checkout_completed(self, tx: LedgerTx, session: StripeObject) -> Handled:
        return Handled(await self.checkout_session(tx, "checkout.session.completed", session))

    async def checkout_expired(self, tx: LedgerTx, session: StripeObject) -> Handled:
        return Handled(await self.checkout_session(tx, "checkout.session.expired", session))

    async def _user(self, tx: LedgerTx, sub_id: str, obj: StripeObject) -> str | None:
        meta = obj.get("metadata") or {} if obj.get("object") == "subscription" else {}
        parent = obj.get("parent") or {}
        if isinstance(parent, dict):
            meta = meta or (parent.get("subscription_details") or {}).get("metadata") or {}
        return await _user_for(tx, sub_id, stripe_id(obj.get("customer")), meta)

    async def checkout_session(self, tx: LedgerTx, etype: str, session: StripeObject) -> str:
        """The Pro upgrade's subscription-mode Checkout. Completed: the new
        subscription (and the customer, whose card Checkout saved) is recorded
        for the user, so that its invoices find the user by subscription id.
        The tier still changes only with the paid invoice (either may come first).
        Expired: the upgrade is abandoned, so that UpgradeTier can make a new link."""
        raw = session.get("metadata")
        meta: StripeObject = raw if isinstance(raw, dict) else {}
        sub_id = stripe_id(session.get("subscription"))
        customer = stripe_id(session.get("customer"))
        uid = str(meta.get("user_id") or session.get("client_reference_id") or "") or await _user_for(
            tx, sub_id, customer, {}
        )
        if not uid:
            return "unmatched"
        await tx.wallet(uid)
        user = tx.user(uid)
        row = await load_sub(tx, uid)
        session_id = stripe_id(session.get("id"))
        if etype == "checkout.session.completed":
            if not sub_id:
                return "awaiting_payment"
            if row and row["stripe_subscription_id"] and row["stripe_subscription_id"] != sub_id and user["tier"] == "pro":
                # Already Pro on another subscription: keep the live one; the extra one is for an operator.
                log.warning("second Pro subscription for a Pro user", extra={"user_id": uid, "subscription": sub_id})
                return "duplicate_subscription"
            values: dict[str, Any] = {"stripe_subscription_id": sub_id, "checkout_session_id": session_id, "payment_url": ""}
            if customer:
                values["stripe_customer_id"] = customer
            if user["tier"] != "pro":
                values["status"] = SubscriptionStatus.INCOMPLETE  # until invoice.paid
            await save_sub(tx, uid, **values)
            return "subscription_recorded"
        if etype == "checkout.session.expired":
            if row and row["checkout_session_id"] == session_id and row["status"] == SubscriptionStatus.INCOMPLETE and user["tier"] != "pro":
                await save_sub(tx, uid, status=SubscriptionStatus.NONE, payment_url="", checkout_session_id=None)
                return "upgrade_abandoned"
        return "ignored"

    async def invoice_paid(self, tx: LedgerTx, invoice: StripeObject) -> str:
        sub_id = _subscription_of(invoice)
        if not sub_id:
            return "ignored"  # not a subscription invoice
        uid = await self._user(tx, sub_id, invoice)
        if uid is None:
            # Our record of the upgrade may not be committed yet: fail so Stripe retries.
            raise errors.Unavailable("subscription not known yet", reason="SUBSCRIPTION_UNKNOWN")
        key = keys.allowance_invoice(stripe_id(invoice.get("id")))
        # The invoice is a payment in the user's history, once per invoice.
        await self.payments.record_invoice(tx, uid, invoice, paid=True, credits=self.pro_monthly)
        if not await tx.key_unused(key):
            return "duplicate_invoice"
        await tx.wallet(uid)
        user = tx.user(uid)
        start, end = (s * 1_000_000 for s in _period_of(invoice))
        if end <= tx.now_us:
            # Paid after its period was over: a fresh month starts at the payment.
            start, end = tx.now_us, add_month(tx.now_us)
        start = min(start, tx.now_us)
        # Paid at or after the grace end (the user lapsed to free, and the lapsed
        # subscription was queued for cancelling): the customer has just paid for it.
        resume = {"cancel_in_stripe": False} if user["tier"] != "enterprise" else {}
        change_tier(tx, user, "pro", why="subscription invoice paid")
        tx.set_user(uid, period_start_us=start, period_end_us=end)
        await save_sub(tx, uid, status=SubscriptionStatus.ACTIVE, stripe_subscription_id=sub_id,
                       stripe_customer_id=stripe_id(invoice.get("customer")) or None,
                       payment_url="", grace_until_us=None, **resume)
        await tx.grant_allowance(uid, self.pro_monthly, start, end, key=key)
        return "allowance_granted"

    async def invoice_failed(self, tx: LedgerTx, invoice: StripeObject) -> str:
        sub_id = _subscription_of(invoice)
        if not sub_id:
            return "ignored"
        uid = await self._user(tx, sub_id, invoice)
        if uid is None:
            return "unmatched"
        await tx.wallet(uid)
        user = tx.user(uid)
        sub = await load_sub(tx, uid)
        wallet = tx.loaded_wallet(uid)
        raw_charge = invoice.get("charge")
        charge: StripeObject = raw_charge if isinstance(raw_charge, dict) else {}
        err = invoice.get("last_finalization_error") or {}
        reason = charge.get("failure_code") or err.get("decline_code") or err.get("code") or "payment_failed"
        await self.payments.record_invoice(tx, uid, invoice, paid=False, credits=self.pro_monthly, reason=str(reason))
        if user["tier"] != "pro" and sub and sub["stripe_subscription_id"] == sub_id and sub["status"] == SubscriptionStatus.CANCELED:
            # A retry of a renewal that failed past the grace end: the subscription
            # lapsed (the user is on free); it is not a pending first upgrade.
            return "subscription_lapsed"
        if user["tier"] != "pro":
            # The first payment failed: the upgrade stays pending (pay through the link).
            await save_sub(tx, uid, status=SubscriptionStatus.INCOMPLETE, stripe_subscription_id=sub_id)
            message = "payment for the Pro upgrade failed"
        else:
            until = (sub["grace_until_us"] if sub else None) or user["period_end_us"] + self.rules.grace_us
            await save_sub(tx, uid, status=SubscriptionStatus.PAST_DUE, grace_until_us=until)
            message = f"Pro renewal payment failed; Pro stays until the grace period ends at {until // 1_000_000}"
        tx.notify(BalanceEvent(user_id=uid, kind="payment_failed", credits=wallet["balance"],
                               pending=wallet["pending"], message=message,
                               payment_url=str(invoice.get("hosted_invoice_url") or "")))
        return "payment_failed"

    async def subscription_updated(self, tx: LedgerTx, sub: StripeObject) -> str:
        sub_id = stripe_id(sub.get("id"))
        uid = await self._user(tx, sub_id, sub)
        if uid is None:
            return "unmatched"
        status = str(sub.get("status") or "")
        if status in ("canceled", "incomplete_expired", "unpaid"):
            return await self.subscription_deleted(tx, sub)
        await tx.wallet(uid)
        user = tx.user(uid)
        values: dict[str, Any] = {}
        if status == "past_due":  # Stripe's word and ours
            values["status"] = SubscriptionStatus.PAST_DUE
        if user["tier"] == "pro":
            if sub.get("cancel_at_period_end"):
                values.update(pending_tier="free", pending_change_at_us=user["period_end_us"])
            else:
                row = await load_sub(tx, uid)
                if row and row["pending_tier"] == "free":
                    values.update(pending_tier=None, pending_change_at_us=None)
        if values:
            await save_sub(tx, uid, **values)
        return "subscription_updated"

    async def subscription_deleted(self, tx: LedgerTx, sub: StripeObject) -> str:
        sub_id = stripe_id(sub.get("id"))
        uid = await self._user(tx, sub_id, sub)
        if uid is None:
            return "unmatched"
        row = await load_sub(tx, uid)
        if row is None or (row["stripe_subscription_id"] and row["stripe_subscription_id"] != sub_id):
            return "ignored"  # an older subscription
        await tx.wallet(uid)
        user = tx.user(uid)
        await save_sub(tx, uid, status=SubscriptionStatus.CANCELED, pending_tier=None, pending_change_at_us=None,
                       grace_until_us=None, payment_url="", cancel_in_stripe=False)
        if user["tier"] != "pro":
            return "subscription_ended"
        change_tier(tx, user, "free", why="the subscription ended")
        # The free tier renews by the calendar; its allowance comes once per month.
        start, end = month_bounds(tx.now_us)
        tx.set_user(uid, period_start_us=start, period_end_us=end)
        amount = self.rules.calendar_allowance(user)
        if amount:
            await tx.grant_allowance(uid, amount, start, end)
        return "downgraded"
