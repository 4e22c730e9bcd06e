"""Tier rules seen from the API: GetTier, UpgradeTier, DowngradeTier.

Pro goes through Stripe (a subscription on the saved card, else a Checkout
link in subscription mode); the tier changes only when the first invoice is
paid (server/tiers/events.py). Enterprise is set by an admin, at once, with a
prorated allowance for the rest of the period. Downgrades wait for the period end.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from server.balance.service import BalanceService
from server.db.engine import Database
from server.ledger import keys
from server.ledger.model import MAX_AMOUNT, LotKind, from_json, to_json, wallet_id
from server.ledger.ops import Call, Idempotency
from server.ledger.repository import LedgerReader
from server.ledger.tx import LedgerTx
from server.ledger.writer import LedgerWriter
from server.orgs.models import AccessOf, Right
from server.payments.service import PaymentsService
from server.platform import errors
from server.platform.auth import Principal, Role
from server.platform.clock import Clock, month_bounds
from server.platform.config import Settings
from server.tiers.models import SubscriptionStatus, TierChange, TierSpec, TierView, UpgradeStatus
from server.tiers.repository import load_sub, read_sub, save_sub, to_cancel_in_stripe
from server.tiers.rules import TierRules, change_tier, prorate, tier_rank

log = logging.getLogger(__name__)


@dataclass
class TierCall(Call):
    """An exclusive tier change whose response is stored for its request_id."""

    result_type = TierChange  # type: ignore[assignment]

    def encode(self, result: Any) -> bytes:
        return to_json(result)

    def decode(self, data: bytes) -> Any:
        return from_json(TierChange, data)


def upgrade_failed(message: str, **metadata: object) -> errors.DomainError:
    return errors.FailedPrecondition(message, reason="TIER_UPGRADE_FAILED", metadata=metadata)


class TierService:
    def __init__(
        self,
        balance: BalanceService,
        writer: LedgerWriter,
        reader: LedgerReader,
        db: Database,
        clock: Clock,
        settings: Settings,
        tiers: dict[str, TierSpec],
        rules: TierRules,
        payments: PaymentsService,
        org_access: AccessOf,
    ) -> None:
        self.balance = balance
        self.writer = writer
        self.reader = reader
        self.db = db
        self.clock = clock
        self.settings = settings
        self.tiers = tiers
        self.rules = rules
        self.payments = payments  # the Stripe customer, the saved card and the subscription's Stripe calls
        self.org_access = org_access

    # ---- reads ----------------------------------------------------------------------

    async def _sub(self, user_id: str) -> dict[str, Any] | None:
        return dict(found) if (found := await read_sub(self.db.reader, user_id)) else None

    def monthly_of(self, tier: str, custom: int | None) -> int:
        if tier == "enterprise" and custom is not None:
            return custom
        return self.tiers[tier].monthly_millicredits

    async def get(self, principal: Principal, user_id: str, org_id: str = "") -> TierView:
        uid = await self._org_wallet(principal, org_id) if org_id else principal.resolve_user(user_id)
        state = await self.balance.wallet(uid, with_lots=True)
        sub = await self._sub(uid) or {}
        status = str(sub.get("status") or SubscriptionStatus.NONE)
        return TierView(
            tier=state.tier,
            period_start_us=state.period_start_us,
            period_end_us=state.period_end_us,
            monthly=self.monthly_of(state.tier, state.monthly_credits),
            allowance_left=sum(r["remaining"] for r in state.lots if r["kind"] == LotKind.ALLOWANCE),
            pending_tier=str(sub.get("pending_tier") or ""),
            pending_change_at_us=int(sub.get("pending_change_at_us") or 0),
            subscription_status=status,
            payment_url=str(sub.get("payment_url") or "") if status == SubscriptionStatus.INCOMPLETE else "",
        )

    # ---- idempotency ----------------------------------------------------------------------

    async def _stored(self, idem: Idempotency) -> TierChange | None:
        """A repeated request is answered from its stored response before any Stripe call."""
        response = idem.replay(await self.reader.stored_responses((idem.key,)))
        return from_json(TierChange, response) if response is not None else None

    async def _run(self, fn: Any, user_id: str, idem: Idempotency) -> TierChange:
        result: TierChange = await self.writer.submit(
            TierCall(fn=fn, accounts={wallet_id(user_id)}, idempotency=idem)
        )
        return result

    # ---- upgrade --------------------------------------------------------------------------

    async def _org_wallet(self, principal: Principal, org_id: str) -> str:
        # An org's tier is its owners' and admins' to read and change, like its auto-refill.
        return (await self.org_access(principal, org_id, Right.MANAGE, "")).wallet_owner

    def _target_user(self, principal: Principal, user_id: str) -> str:
        # A service or admin token has no tier of its own: only an admin
        # changes a tier other than the caller's, and names the user.
        if principal.role != Role.USER or (user_id and user_id != principal.subject):
            principal.require(Role.ADMIN, what="changing another user's tier")
        return principal.resolve_user(user_id)

    async def upgrade(
        self, principal: Principal, *, user_id: str, tier: str, request_id: str, fingerprint: str, monthly: int,
        org_id: str = "",
    ) -> TierChange:
        uid = await self._org_wallet(principal, org_id) if org_id else self._target_user(principal, user_id)
        idem = Idempotency.of_request(principal, "UpgradeTier", request_id, fingerprint)
        if tier == "enterprise":
            principal.require(Role.ADMIN, what="an Enterprise upgrade")
            if monthly < 0 or monthly > MAX_AMOUNT:
                raise errors.InvalidAmount("monthly_credits_millicredits is out of range")
            return await self._enterprise(uid, monthly or self.tiers["enterprise"].monthly_millicredits, idem)
        if tier == "pro":
            if monthly:
                raise errors.InvalidArgument(
                    "monthly_credits_millicredits is for Enterprise only", reason="INVALID_MONTHLY_CREDITS"
                )
            return await self._pro(uid, idem)
        raise errors.InvalidArgument("upgrade to pro or enterprise", reason="INVALID_TIER")

    async def _enterprise(self, uid: str, monthly: int, idem: Idempotency) -> TierChange:
        async def apply(tx: LedgerTx) -> TierChange:
            await tx.wallet(uid)
            user = tx.user(uid)
            start, end = month_bounds(tx.now_us)
            change_tier(tx, user, "enterprise", monthly=monthly, why="set by an admin")
            tx.set_user(uid, period_start_us=start, period_end_us=end)
            # The rest of this month, prorated and rounded down; once per user and month.
            grant = prorate(monthly, start, end, tx.now_us)
            if grant > 0:
                await tx.grant_allowance(uid, grant, start, end, key=keys.allowance_upgrade(uid, start))
            sub = await load_sub(tx, uid)
            if sub is not None:
                live = bool(sub["stripe_subscription_id"]) and sub["status"] not in (SubscriptionStatus.CANCELED, SubscriptionStatus.NONE)
                await save_sub(tx, uid, status=SubscriptionStatus.CANCELED if live else sub["status"], pending_tier=None,
                               pending_change_at_us=None, grace_until_us=None, payment_url="",
                               cancel_in_stripe=live or bool(sub["cancel_in_stripe"]))
            return TierChange("enterprise", monthly, tx.now_us, UpgradeStatus.COMPLETED)

        return await self._run(apply, uid, idem)

    async def _pro(self, uid: str, idem: Idempotency) -> TierChange:
        stored = await self._stored(idem)
        if stored is not None:
            return stored
        state = await self.balance.wallet(uid)
        if state.tier == "pro":
            raise errors.FailedPrecondition("already on Pro", reason="ALREADY_ON_TIER", metadata={"tier": "pro"})
        if state.tier == "enterprise":
            raise upgrade_failed("Enterprise already includes Pro; an admin can downgrade the account")
        sub = await self._sub(uid) or {}
        if sub.get("status") == SubscriptionStatus.INCOMPLETE:
            # "Using Pro before paying": the link to pay comes with the refusal.
            raise upgrade_failed(
                "payment required: the Pro upgrade waits for its first payment",
                payment_url=sub.get("payment_url") or "",
                subscription_status=SubscriptionStatus.INCOMPLETE,
            )
        if not self.payments.configured:
            raise upgrade_failed(
                "payments are not configured: set BILLING_STRIPE_API_KEY", setting="BILLING_STRIPE_API_KEY"
            )
        customer = await self.payments.customer(uid)
        price = self.tiers["pro"].price_cents
        card = await self.payments.charge_card(uid)  # the card auto-refill and TopUp charge
        pm = card.payment_method_id if card else None
        declined: errors.DomainError | None = None
        if pm:
            try:
                subscription_id = await self.payments.subscribe_pro(
                    uid, customer=customer, payment_method=pm, amount_cents=price,
                    idempotency_key=keys.stripe("subscription", idem.key),
                )
            except errors.DomainError as exc:
                if exc.reason != "PAYMENT_FAILED":
                    raise
                declined = exc
            else:
                return await self._record(uid, idem, customer=customer, subscription_id=subscription_id)
        checkout = await self.payments.pro_checkout(
            uid, customer=customer, amount_cents=price,
            success_url=f"{self.settings.public_base_url}/billing/tier/success",
            cancel_url=f"{self.settings.public_base_url}/billing/tier/cancel",
            idempotency_key=keys.stripe("pro-checkout", idem.key),
        )
        change = await self._record(uid, idem, customer=customer, session_id=checkout.session_id,
                                    payment_url=checkout.url)
        if declined is not None:
            # The saved card declined: say so (PAYMENT_FAILED), with the Checkout
            # link to pay with another card (GetTier shows it too). A retry of
            # this request_id answers that link (PAYMENT_REQUIRED).
            log.info("saved card declined for Pro", extra={"user_id": uid})
            raise errors.FailedPrecondition(
                "the saved card was declined for the Pro subscription: pay through payment_url with another card",
                reason="PAYMENT_FAILED",
                metadata={**declined.metadata, "payment_url": change.payment_url},
            )
        return change

    async def _record(
        self, uid: str, idem: Idempotency, *, customer: str, subscription_id: str = "", session_id: str = "",
        payment_url: str = "",
    ) -> TierChange:
        monthly = self.tiers["pro"].monthly_millicredits

        async def apply(tx: LedgerTx) -> TierChange:
            await tx.wallet(uid)
            user = tx.user(uid)
            values: dict[str, Any] = {"stripe_customer_id": customer, "payment_url": payment_url,
                                      "checkout_session_id": session_id or None, "pending_tier": None,
                                      "pending_change_at_us": None, "grace_until_us": None}
            if subscription_id:
                values["stripe_subscription_id"] = subscription_id
            if user["tier"] != "pro":  # the invoice.paid webhook may already have won the race
                values["status"] = SubscriptionStatus.INCOMPLETE
            await save_sub(tx, uid, **values)
            if subscription_id:
                return TierChange("pro", monthly, tx.now_us, UpgradeStatus.COMPLETED if user["tier"] == "pro" else UpgradeStatus.PENDING)
            return TierChange("pro", monthly, tx.now_us, UpgradeStatus.PAYMENT_REQUIRED, payment_url)

        return await self._run(apply, uid, idem)

    # ---- downgrade ------------------------------------------------------------------------

    async def downgrade(
        self, principal: Principal, *, user_id: str, tier: str, request_id: str, fingerprint: str, org_id: str = ""
    ) -> TierChange:
        uid = await self._org_wallet(principal, org_id) if org_id else self._target_user(principal, user_id)
        idem = Idempotency.of_request(principal, "DowngradeTier", request_id, fingerprint)
        stored = await self._stored(idem)
        if stored is not None:
            return stored
        target = tier or "free"
        state = await self.balance.wallet(uid)
        if target != "free":
            raise errors.InvalidArgument("tiers are downgraded to free", reason="INVALID_TIER",
                                         metadata={"tier": target})
        if tier_rank(state.tier) <= tier_rank(target):
            raise errors.FailedPrecondition("nothing to downgrade", reason="NOT_A_DOWNGRADE",
                                            metadata={"tier": state.tier})
        if state.tier == "enterprise":
            principal.require(Role.ADMIN, what="an Enterprise downgrade")
        sub = await self._sub(uid) or {}
        sub_id = str(sub.get("stripe_subscription_id") or "")
        if state.tier == "pro" and sub_id and sub.get("status") != SubscriptionStatus.CANCELED:
            # Stripe stops renewing; the tier changes at period end (not now).
            await self.payments.cancel_at_period_end(sub_id, idempotency_key=keys.stripe("cancel", idem.key))
        monthly = self.tiers[target].monthly_millicredits

        async def apply(tx: LedgerTx) -> TierChange:
            await tx.wallet(uid)
            user = tx.user(uid)
            if user["tier"] == target:
                return TierChange(target, monthly, tx.now_us, UpgradeStatus.COMPLETED)
            at = user["period_end_us"]
            await save_sub(tx, uid, pending_tier=target, pending_change_at_us=at)
            return TierChange(target, monthly, at, UpgradeStatus.PENDING)

        return await self._run(apply, uid, idem)

    # ---- background ----------------------------------------------------------------------

    async def cancel_lapsed(self) -> int:
        """Cancel in Stripe the subscriptions of users who lapsed or moved to Enterprise."""
        if not self.payments.configured:
            return 0
        rows = await to_cancel_in_stripe(self.db.reader, limit=100)
        done = 0
        for uid, sub_id in rows:
            try:
                await self.payments.cancel_subscription(sub_id)
            except errors.DomainError:
                log.warning("could not cancel a lapsed subscription", extra={"user_id": uid})
                continue

            async def clear(tx: LedgerTx, uid: str = uid, sub_id: str = sub_id) -> None:
                row = await load_sub(tx, uid)
                if row and row["stripe_subscription_id"] == sub_id:
                    await save_sub(tx, uid, cancel_in_stripe=False)

            await self.writer.submit(Call(fn=clear, accounts={wallet_id(uid)}))
            done += 1
        return done
