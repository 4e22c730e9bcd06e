"""Buying credits: payment links, webhook intake, reconciliation, history.

Stripe is reached only through StripeGateway, and never inside a ledger
transaction: network calls happen first, their results are then recorded
in an exclusive ledger operation (`ops.Call`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

import stripe

from server.db.engine import Database
from server.ledger import keys
from server.ledger.model import SYSTEM_REFUNDS, SYSTEM_STRIPE, wallet_id
from server.ledger.ops import Call
from server.ledger.tx import LedgerTx
from server.ledger.writer import LedgerWriter
from server.orgs.models import AccessOf, Right
from server.payments import repository as repo
from server.payments import webhooks
from server.payments.customers import StripeCustomers
from server.payments.events import EventRouter
from server.payments.gateway import StripeGateway, not_configured
from server.payments.models import (
    CREDITED,
    ChargeOutcome,
    PaymentKind,
    PaymentRow,
    PaymentStatus,
    SavedCard,
    StripeObject,
    SubscriptionCheckout,
    dollars,
    stripe_id,
)
from server.platform import errors
from server.platform.auth import Principal, Role
from server.platform.clock import DAY_US, Clock, month_bounds
from server.platform.config import Settings
from server.platform.ids import is_org_id
from server.platform.metrics import METRICS
from server.platform.ratelimit import RateLimiter
from server.platform.units import credits_text

log = logging.getLogger(__name__)


@dataclass
class PaymentLink:
    payment_id: str
    payment_url: str
    expires_at_us: int
    credits: int


@dataclass
class TopUpResult:
    payment: PaymentRow
    payment_url: str = ""  # the bank asks for confirmation: a Checkout link that completes this payment
    balance: int = 0  # millicredits, once credited


@dataclass
class ReturnState:
    payment: PaymentRow
    balance_after: int | None  # millicredits right after the grant, once credited


class WebhookRejected(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class PaymentsService:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        writer: LedgerWriter,
        clock: Clock,
        gateway: StripeGateway,
        events: EventRouter,
        org_access: AccessOf,
    ) -> None:
        self.settings = settings
        self.org_access = org_access
        self.db = db
        self.writer = writer
        self.clock = clock
        self.gateway = gateway
        self.customers = StripeCustomers(gateway, db, writer)
        # Reconciliation: polls made per pending payment (its place on the
        # back-off schedule), and the reads it may make of Stripe per second.
        self._polls: dict[str, int] = {}
        rate = settings.stripe_poll_rate_per_second
        self._stripe_reads = RateLimiter(rate, max(1, int(rate)))
        self.events = events

    def require_configured(self) -> None:
        if not self.gateway.configured:
            raise not_configured()

    async def _exclusive(self, fn: Any) -> Any:
        return await self.writer.submit(Call(fn=fn, accounts={SYSTEM_STRIPE, SYSTEM_REFUNDS}))

    # ---- CreatePaymentLink ------------------------------------------------------------

    def _check_amount(self, amount_cents: int) -> None:
        lo, hi = self.settings.min_purchase_cents, self.settings.max_purchase_cents
        if amount_cents < lo or amount_cents > hi:
            raise errors.InvalidAmount(
                f"amount_cents must be between {lo} and {hi} (US cents)",
                metadata={"field": "amount_cents", "min_cents": lo, "max_cents": hi, "got": amount_cents},
            )

    async def _may_charge(self, tx: LedgerTx, user: str, amount_cents: int) -> None:
        """A card charge a user asks for (TopUp, a payment link): never on a
        flagged account, and within the account's daily and monthly caps, as
        auto-refill has its own. Checked in the payment's own transaction,
        before Stripe is called."""
        if tx.user(user)["flagged_reason"]:
            raise errors.FailedPrecondition(
                "card charges are refused while this account is flagged (a payment dispute is open)",
                reason="ACCOUNT_FLAGGED",
            )
        now = tx.now_us
        for period, since, until, cap in (
            ("day", now - now % DAY_US, now - now % DAY_US + DAY_US, self.settings.user_card_daily_cap_cents),
            ("month", *month_bounds(now), self.settings.user_card_monthly_cap_cents),
        ):
            if not cap:
                continue
            used = await repo.card_charges_since(tx, user, since)
            if used + amount_cents > cap:
                raise errors.ResourceExhausted(
                    f"this charge would take the account's card charges this {period} (UTC) past"
                    f" {dollars(cap)}: {dollars(used)} so far",
                    reason="CARD_CHARGE_CAP_REACHED",
                    metadata={"period": period, "cap_cents": str(cap), "used_cents": str(used),
                              "retry_after_ms": str((until - now) // 1000)},
                )

    async def payer(self, principal: Principal, org_id: str) -> str:
        """Whose wallet a purchase is for: the caller's own (a service or admin
        token has none), or an org's, which only its owners and admins buy for.
        The org's Stripe customer and saved card are the org's own."""
        if not org_id:
            return principal.own_user
        return (await self.org_access(principal, org_id, Right.MANAGE, "")).wallet_owner

    async def create_link(
        self, principal: Principal, *, amount_cents: int, request_id: str, fingerprint: str, org_id: str = ""
    ) -> PaymentLink:
        self.require_configured()
        self._check_amount(amount_cents)
        user = await self.payer(principal, org_id)
        request_key = keys.idempotency(principal.role.value, user, "CreatePaymentLink", request_id)
        # Deterministic: concurrent duplicates of one request name the same payment.
        payment_id = "pay_" + hashlib.sha256(request_key.encode()).hexdigest()[:24]
        credits = self.settings.credits_for_cents(amount_cents)

        async def record(tx: LedgerTx) -> PaymentRow:
            row = await repo.by_request_key(tx, request_key)
            if row is not None:
                if row["fingerprint"] != fingerprint:
                    raise errors.RequestIdReused(
                        "request_id was already used with different parameters", metadata={"request_id": request_id}
                    )
                return row
            await tx.wallet(user)  # the user row holds the Stripe customer id
            await self._may_charge(tx, user, amount_cents)
            new = repo.new_payment(
                payment_id, user, PaymentKind.CHECKOUT, amount_cents, credits, tx.now_us,
                request_key=request_key, fingerprint=fingerprint,
            )
            return await repo.insert_payment(tx, new)

        row: PaymentRow = await self._exclusive(record)
        if row["payment_url"]:
            return _link(row)
        if row["status"] != PaymentStatus.PENDING:
            raise errors.FailedPrecondition(
                "this payment link was abandoned; use a new request_id", reason="PAYMENT_LINK_ABANDONED"
            )
        customer = await self.customers.get_or_create(user)
        base = self.settings.public_base_url.rstrip("/")
        session = await self.gateway.create_checkout_session(
            customer_id=customer,
            user_id=user,
            payment_id=payment_id,
            amount_cents=amount_cents,
            credits_millicredits=credits,
            product_name=f"{credits_text(credits)} FlowNexus credits",
            # Stripe puts the session id in place of the placeholder: the return
            # page finds the payment by it, never by a guessable id.
            success_url=f"{base}/billing/success?session_id={{CHECKOUT_SESSION_ID}}",
            cancel_url=f"{base}/billing/cancel?ref={self.return_ref(payment_id)}",
            idempotency_key=keys.stripe("checkout", payment_id),
        )
        session_id, url = str(session["id"]), str(session.get("url") or "")
        expires_us = int(session.get("expires_at") or 0) * 1_000_000 or None

        async def save(tx: LedgerTx) -> PaymentRow:
            current = await repo.get(tx, payment_id, lock=True)
            assert current is not None
            if not current["payment_url"]:  # a concurrent duplicate may have saved first
                repo.update_payment(
                    tx,
                    current,
                    checkout_session_id=session_id,
                    payment_url=url,
                    expires_at_us=expires_us,
                    updated_at_us=tx.now_us,
                )
            return current

        return _link(await self._exclusive(save))

    # ---- TopUp: the saved card, off-session --------------------------------------------

    async def top_up(
        self, principal: Principal, *, amount_cents: int, request_id: str, fingerprint: str, org_id: str = ""
    ) -> TopUpResult:
        """Charge the saved card now. The payment row is recorded before Stripe is
        called and names the charge's idempotency key, so a retry (a timeout, a
        lost response, a restart) reaches the same PaymentIntent; the credits
        come once through the grant key, from this call or the webhook."""
        self.require_configured()
        self._check_amount(amount_cents)
        user = await self.payer(principal, org_id)
        request_key = keys.idempotency(principal.role.value, user, "TopUp", request_id)
        payment_id = "top_" + hashlib.sha256(request_key.encode()).hexdigest()[:24]
        row = await repo.read(self.db.reader, payment_id)
        if row is not None and row["fingerprint"] != fingerprint:
            raise errors.RequestIdReused(
                "request_id was already used with different parameters", metadata={"request_id": request_id}
            )
        if (row is not None and row["status"] != PaymentStatus.PENDING) or (row is not None and row["payment_url"]):
            return await self._top_up_answer(row)
        customer = await self.customers.known(user)
        saved = await self.charge_card(user) if customer else None
        card = saved.payment_method_id if saved else ""
        if not customer or not card:
            raise errors.FailedPrecondition(
                "no saved card: buy once with CreatePaymentLink or save one with RefillService.CreateSetupLink",
                reason="PAYMENT_METHOD_REQUIRED", metadata={"how": "CreatePaymentLink or CreateSetupLink"},
            )
        credits = self.settings.credits_for_cents(amount_cents)

        async def record(tx: LedgerTx) -> PaymentRow:
            found = await repo.get(tx, payment_id, lock=True)
            if found is not None:
                return found
            await tx.wallet(user)
            await self._may_charge(tx, user, amount_cents)
            new = repo.new_payment(payment_id, user, PaymentKind.TOP_UP, amount_cents, credits, tx.now_us,
                                   request_key=request_key, fingerprint=fingerprint)
            return await repo.insert_payment(tx, new)

        row = await self._exclusive(record)
        if row["fingerprint"] != fingerprint:  # a concurrent first use with other parameters
            raise errors.RequestIdReused(
                "request_id was already used with different parameters", metadata={"request_id": request_id}
            )
        if row["status"] != PaymentStatus.PENDING or row["payment_url"]:
            return await self._top_up_answer(row)
        if row["payment_intent_id"]:
            result = await self.gateway.retrieve_payment_intent(row["payment_intent_id"])
        else:
            result = await self.gateway.charge_off_session(
                customer_id=customer, payment_method=card, amount_cents=amount_cents,
                metadata={"payment_id": payment_id, "user_id": user, "kind": PaymentKind.TOP_UP},
                idempotency_key=keys.stripe("top-up", payment_id),
            )
        return await self._top_up_outcome(row, result)

    async def _top_up_outcome(self, row: PaymentRow, result: dict[str, Any]) -> TopUpResult:
        pid, status = row["id"], str(result.get("status") or "")
        pi_id = str(result.get("id") or "")
        code = str(result.get("decline_code") or result.get("code") or "")
        if status == "succeeded":
            charge = stripe_id(result.get("latest_charge"))

            async def paid(tx: LedgerTx) -> TopUpResult:
                p = await repo.get(tx, pid, lock=True)
                assert p is not None
                await webhooks.mark_paid(tx, p, payment_intent_id=pi_id, charge_id=charge)
                return TopUpResult(p, balance=tx.loaded_wallet(p["user_id"])["balance"])

            done: TopUpResult = await self._exclusive(paid)
            return done
        if status in ("processing", "requires_capture"):
            await self._exclusive(lambda tx: self._set_refs(tx, pid, payment_intent_id=pi_id))
            return TopUpResult(row)
        if "authentication_required" in (code, str(result.get("code") or "")) or status == "requires_action":
            return await self._top_up_confirm_link(row, pi_id)

        async def failed(tx: LedgerTx) -> PaymentRow:
            p = await repo.get(tx, pid, lock=True)
            assert p is not None
            await webhooks.mark_failed(tx, p, code or "card_declined", payment_intent_id=pi_id)
            return p

        return await self._top_up_answer(await self._exclusive(failed))

    async def _set_refs(self, tx: LedgerTx, pid: str, **refs: str) -> None:
        p = await repo.get(tx, pid, lock=True)
        if p is not None and refs.get("payment_intent_id") and not p["payment_intent_id"]:
            repo.update_payment(tx, p, payment_intent_id=refs["payment_intent_id"], updated_at_us=tx.now_us)

    async def _top_up_confirm_link(self, row: PaymentRow, pi_id: str) -> TopUpResult:
        """The bank wants the cardholder: a Checkout Session for this same payment
        (its metadata names it), so that paying it credits this top-up once."""
        base = self.settings.public_base_url.rstrip("/")
        session = await self.gateway.create_checkout_session(
            customer_id=await self.customers.get_or_create(row["user_id"]), user_id=row["user_id"],
            payment_id=row["id"], amount_cents=row["amount_cents"], credits_millicredits=row["credits"],
            product_name=f"{credits_text(row['credits'])} FlowNexus credits",
            success_url=f"{base}/billing/success?session_id={{CHECKOUT_SESSION_ID}}",
            cancel_url=f"{base}/billing/cancel?ref={self.return_ref(row['id'])}",
            idempotency_key=keys.stripe("top-up-confirm", row["id"]),
        )

        async def save(tx: LedgerTx) -> PaymentRow:
            p = await repo.get(tx, row["id"], lock=True)
            assert p is not None
            if not p["payment_url"]:
                repo.update_payment(
                    tx, p, checkout_session_id=str(session["id"]), payment_url=str(session.get("url") or ""),
                    expires_at_us=int(session.get("expires_at") or 0) * 1_000_000 or None,
                    failure_reason="authentication_required", updated_at_us=tx.now_us,
                    **({"payment_intent_id": pi_id} if pi_id and not p["payment_intent_id"] else {}),
                )
            return p

        return await self._top_up_answer(await self._exclusive(save))

    async def _top_up_answer(self, row: PaymentRow) -> TopUpResult:
        """What a settled top-up answers, to its first call and to every retry."""
        if row["status"] in CREDITED:
            return TopUpResult(row, balance=await repo.balance(self.db.reader, wallet_id(row["user_id"])))
        if row["payment_url"] and row["status"] in (PaymentStatus.PENDING, PaymentStatus.FAILED):
            return TopUpResult(row, payment_url=row["payment_url"])
        if row["status"] == PaymentStatus.PENDING:
            return TopUpResult(row)
        code = row["failure_reason"] or "card_declined"
        recovery = ""
        try:
            link = await self.create_link(
                Principal(row["user_id"], Role.USER), amount_cents=row["amount_cents"],
                request_id=f"top-up-recovery-{row['id']}", fingerprint=f"top-up-recovery:{row['id']}",
            )
            recovery = link.payment_url
        except errors.DomainError as exc:
            log.warning("top-up recovery link failed", extra={"payment_id": row["id"], "reason": exc.reason})
        raise errors.FailedPrecondition(
            f"the card was declined ({code}): pay with another card through payment_url",
            reason="PAYMENT_FAILED",
            metadata={"decline_code": code, "payment_id": row["id"], "payment_url": recovery},
        )

    # ---- the Stripe seam: what auto-refill and tiers ask of payments ----------------------
    # Payments owns the Stripe customer, the saved card and the payment rows; the
    # other domains charge and read them only through these methods.

    @property
    def configured(self) -> bool:
        return self.gateway.configured

    async def customer(self, user_id: str) -> str:
        """The user's Stripe customer, created on first use."""
        return await self.customers.get_or_create(user_id)

    async def saved_card(self, user_id: str) -> SavedCard | None:
        """The card recorded for the user (no Stripe call): what a user is shown."""
        row = await repo.read_card(self.db.reader, user_id)
        return _card(row) if row is not None else None

    async def has_card(self, tx: LedgerTx, user_id: str) -> bool:
        """A card, or a setup link's card not yet resolved, is recorded (inside a batch)."""
        row = await repo.card(tx, user_id)
        return row is not None and bool(row["payment_method_id"] or row["setup_intent_id"])

    async def charge_card(self, user_id: str) -> SavedCard | None:
        """The card an off-session charge of the user uses, asking Stripe where
        needed: a card from a setup link, else the one recorded from a
        purchase, else the customer's saved card. Nothing is recorded (keep_card)."""
        self.require_configured()
        row = await repo.read_card(self.db.reader, user_id)
        pm_id = ""
        if row is not None and row["setup_intent_id"]:
            si = await self.gateway.retrieve_setup_intent(str(row["setup_intent_id"]))
            if si.get("status") == "succeeded" and si.get("payment_method"):
                pm_id = stripe_id(si["payment_method"])
        if not pm_id and row is not None and row["payment_method_id"]:
            if row["last4"]:
                return _card(row)
            pm_id = str(row["payment_method_id"])
        if not pm_id:
            customer = await self.customers.known(user_id)
            pm_id = (await self.gateway.saved_payment_method(customer) or "") if customer else ""
        if not pm_id:
            return None
        pm = await self.gateway.retrieve_payment_method(pm_id)
        card = pm.get("card") or {}
        return SavedCard(
            payment_method_id=pm_id, brand=str(card.get("brand") or "")[:32], last4=str(card.get("last4") or "")[:8],
            exp_month=int(card.get("exp_month") or 0), exp_year=int(card.get("exp_year") or 0),
        )

    async def keep_card(self, tx: LedgerTx, user_id: str, card: SavedCard) -> None:
        """Record the card charge_card found, inside the caller's batch."""
        await repo.save_card(
            tx, user_id, payment_method_id=card.payment_method_id, brand=card.brand, last4=card.last4,
            exp_month=card.exp_month, exp_year=card.exp_year, setup_intent_id=None,
        )

    async def card_setup_link(self, user_id: str, idempotency_key: str) -> tuple[str, int]:
        """A setup-mode Checkout link that saves a card (its URL, and when it expires)."""
        self.require_configured()
        base = self.settings.public_base_url.rstrip("/")
        session = await self.gateway.create_setup_session(
            customer_id=await self.customer(user_id), user_id=user_id,
            success_url=f"{base}/billing/card-saved", cancel_url=f"{base}/billing/cancel",
            idempotency_key=idempotency_key,
        )
        return str(session.get("url") or ""), int(session.get("expires_at") or 0) * 1_000_000

    async def open_payment(
        self, tx: LedgerTx, payment_id: str, user_id: str, kind: PaymentKind, amount_cents: int, credits: int
    ) -> PaymentRow:
        """A pending payment, inserted in the caller's batch."""
        return await repo.insert_payment(tx, repo.new_payment(payment_id, user_id, kind, amount_cents, credits, tx.now_us))

    async def payment_in(self, tx: LedgerTx, payment_id: str) -> PaymentRow | None:
        """The payment as the caller's batch sees it (locked on PostgreSQL)."""
        return await repo.get(tx, payment_id, lock=True)

    async def read_payment(self, payment_id: str) -> PaymentRow | None:
        return await repo.read(self.db.reader, payment_id)

    async def charge_off_session(self, payment: PaymentRow, card: SavedCard) -> ChargeOutcome:
        """Charge the saved card for this pending payment, without the user. The
        payment's id is the charge's idempotency key, so a retry (and a payment
        whose PaymentIntent is known already) reaches the same PaymentIntent.
        Network errors raise STRIPE_UNAVAILABLE."""
        if payment["payment_intent_id"]:
            result = await self.gateway.retrieve_payment_intent(payment["payment_intent_id"])
        else:
            customer = await self.customers.known(payment["user_id"])
            if not customer:
                return ChargeOutcome("failed", code="payment_method_missing")
            key = (keys.stripe_refill_charge(payment["id"]) if payment["kind"] == PaymentKind.AUTO_REFILL
                   else keys.stripe("top-up", payment["id"]))
            result = await self.gateway.charge_off_session(
                customer_id=customer, payment_method=card.payment_method_id, amount_cents=payment["amount_cents"],
                metadata={"payment_id": payment["id"], "user_id": payment["user_id"], "kind": payment["kind"]},
                idempotency_key=key,
            )
        return ChargeOutcome(
            status=str(result.get("status") or ""), payment_intent_id=str(result.get("id") or ""),
            charge_id=stripe_id(result.get("latest_charge")), code=str(result.get("code") or ""),
            decline_code=str(result.get("decline_code") or ""),
        )

    async def record_outcome(
        self, tx: LedgerTx, payment: PaymentRow, outcome: ChargeOutcome, *, failure_reason: str = ""
    ) -> None:
        """A charge's outcome on its payment (read through this batch): paid
        grants the credits once; anything else fails it with `failure_reason`."""
        if outcome.succeeded:
            await webhooks.mark_paid(tx, payment, payment_intent_id=outcome.payment_intent_id, charge_id=outcome.charge_id)
            return
        reason = failure_reason or outcome.decline_code or outcome.code or "card_declined"
        await webhooks.mark_failed(tx, payment, reason, payment_intent_id=outcome.payment_intent_id)

    async def charged_cents(self, tx: LedgerTx, user_id: str, kind: PaymentKind, month: tuple[int, int]) -> int:
        """Cents charged (or held) in payments of one kind made in `month` = [start, end)."""
        return await repo.charged_cents(tx, user_id, kind, month)

    async def read_charged_cents(self, user_id: str, kind: PaymentKind, month: tuple[int, int]) -> int:
        return await repo.read_charged_cents(self.db.reader, user_id, kind, month)

    async def declined(
        self, tx: LedgerTx, user_id: str, kind: PaymentKind, after_us: int, current: PaymentRow | None = None
    ) -> int:
        """Failed payments of one kind made after `after_us`; `current`, a payment
        this batch changes, counts by its staged status, not the stored one."""
        if current is None:
            return await repo.declined(tx, user_id, kind, after_us)
        mine = (current["user_id"] == user_id and current["kind"] == kind
                and current["status"] == PaymentStatus.FAILED and current["created_at_us"] > after_us)
        return await repo.declined(tx, user_id, kind, after_us, except_id=current["id"]) + int(mine)

    async def record_invoice(
        self, tx: LedgerTx, user_id: str, invoice: StripeObject, *, paid: bool, credits: int, reason: str = ""
    ) -> PaymentRow | None:
        """A subscription invoice as a payment of the user's history (one per invoice)."""
        return await webhooks.record_invoice(tx, user_id, invoice, paid=paid, credits=credits, reason=reason)

    # Pro's subscription (server/tiers/service.py): payments holds the Stripe
    # calls, tiers the subscription's state.

    async def subscribe_pro(
        self, user_id: str, *, customer: str, payment_method: str, amount_cents: int, idempotency_key: str
    ) -> str:
        """A Pro subscription charged to the saved card now; its Stripe id. A
        decline raises PAYMENT_FAILED, and nothing is left open in Stripe."""
        self.require_configured()
        created = await self.gateway.create_pro_subscription(
            customer_id=customer, user_id=user_id, payment_method=payment_method,
            price_id=self.settings.stripe_pro_price_id, amount_cents=amount_cents, idempotency_key=idempotency_key,
        )
        return stripe_id(created)

    async def pro_checkout(
        self, user_id: str, *, customer: str, amount_cents: int, success_url: str, cancel_url: str,
        idempotency_key: str,
    ) -> SubscriptionCheckout:
        """A subscription-mode Checkout link for Pro, paid with any card."""
        self.require_configured()
        session = await self.gateway.create_subscription_checkout(
            customer_id=customer, user_id=user_id, price_id=self.settings.stripe_pro_price_id,
            amount_cents=amount_cents, success_url=success_url, cancel_url=cancel_url,
            idempotency_key=idempotency_key,
        )
        return SubscriptionCheckout(session_id=stripe_id(session), url=str(session.get("url") or ""))

    async def cancel_at_period_end(self, subscription_id: str, *, idempotency_key: str) -> None:
        """Stripe stops renewing the subscription; it runs to its period's end."""
        self.require_configured()
        await self.gateway.cancel_subscription_at_period_end(subscription_id, idempotency_key=idempotency_key)

    async def cancel_subscription(self, subscription_id: str) -> None:
        """The subscription ends in Stripe now."""
        self.require_configured()
        await self.gateway.cancel_subscription(subscription_id)

    async def link_for(self, user_id: str, amount_cents: int, request_id: str, fingerprint: str) -> str:
        """A Checkout link the user pays with another card (a recovery after a
        decline); keyed by `request_id`, so asking twice gives one link."""
        link = await self.create_link(
            Principal(user_id, Role.USER), amount_cents=amount_cents, request_id=request_id, fingerprint=fingerprint
        )
        return link.payment_url

    # ---- return pages (server/payments/pages.py) ---------------------------------------

    def return_ref(self, payment_id: str) -> str:
        """The cancel page's reference to a payment: its id signed with the
        server's secret, so that nobody can name another user's payment."""
        return f"{payment_id}.{self._ref_mac(payment_id)}"

    def _ref_mac(self, payment_id: str) -> str:
        secret = self.settings.effective_jwt_secret.encode()
        return hmac.new(secret, f"return-page|{payment_id}".encode(), hashlib.sha256).hexdigest()[:32]

    async def by_return_ref(self, ref: str) -> PaymentRow | None:
        pid, _, mac = ref.partition(".")
        if not pid or not hmac.compare_digest(mac.encode(), self._ref_mac(pid).encode()):
            return None
        return await repo.read(self.db.reader, pid)

    async def by_session(self, session_id: str) -> ReturnState | None:
        """The payment of a Checkout Session, and the balance its credits made."""
        row = await repo.by_session(self.db.reader, session_id)
        if row is None:
            return None
        after = await repo.balance_after_grant(self.db.reader, keys.purchase_grant(row["id"]))
        return ReturnState(row, after)

    async def new_link_after_cancel(self, cancelled: PaymentRow) -> PaymentLink:
        """A fresh link for the same amount. Keyed by the cancelled payment, so
        that pressing the button twice gives the same new link."""
        return await self.create_link(
            Principal(cancelled["user_id"], Role.USER),
            amount_cents=cancelled["amount_cents"],
            request_id=f"after-cancel-{cancelled['id']}",
            fingerprint=f"after-cancel:{cancelled['id']}",
        )

    # ---- history ------------------------------------------------------------------------

    async def get(self, principal: Principal, payment_id: str) -> PaymentRow:
        self.require_configured()
        row = await repo.read(self.db.reader, payment_id)
        if row is not None and not principal.privileged and is_org_id(row["user_id"]):
            await self.org_access(principal, row["user_id"], Right.MANAGE, "")  # an org's: its owners and admins
        elif row is None or (not principal.privileged and row["user_id"] != principal.subject):
            # Someone else's payment looks exactly like a missing one.
            raise errors.NotFound("payment not found", reason="PAYMENT_NOT_FOUND", metadata={"payment_id": payment_id})
        return row

    async def list(
        self, principal: Principal, user_id: str, *, limit: int, before: tuple[int, str] | None, org_id: str = ""
    ) -> list[PaymentRow]:
        self.require_configured()
        user = (await self.org_access(principal, org_id, Right.MANAGE, "")).wallet_owner if org_id \
            else principal.resolve_user(user_id)
        return await repo.list_for_user(self.db.reader, user, limit=limit, before=before)

    # ---- webhooks -----------------------------------------------------------------------

    async def receive_webhook(self, payload: bytes, signature: str | None) -> str:
        secret = self.settings.stripe_webhook_secret.get_secret_value()
        if not secret:
            METRICS.webhook_events.labels(type="unverified", result="not_configured").inc()
            raise WebhookRejected(503, "webhooks are not configured: set BILLING_STRIPE_WEBHOOK_SECRET")
        try:
            if not signature:
                raise WebhookRejected(400, "missing Stripe-Signature header")
            try:
                body = StripeGateway.verify_event(payload, signature, secret, tolerance=300)
            except (ValueError, RecursionError, stripe.SignatureVerificationError):
                raise WebhookRejected(400, "invalid signature or payload") from None
            try:
                event = webhooks.check_event(body)
            except webhooks.MalformedEvent as exc:
                log.warning("malformed stripe event refused", extra={"problem": str(exc)})
                raise WebhookRejected(400, f"not a well-formed Stripe event: {exc}") from None
        except WebhookRejected:
            METRICS.webhook_events.labels(type="unverified", result="rejected").inc()
            raise
        etype = str(event["type"])[:100]

        async def apply(tx: LedgerTx) -> str:
            return await webhooks.handle_event(self.events, tx, event, payload)

        try:
            outcome: str = await self._exclusive(apply)
        except Exception:
            METRICS.webhook_events.labels(type=etype, result="error").inc()
            raise
        METRICS.webhook_events.labels(type=etype, result=outcome).inc()
        log.info("stripe event", extra={"event_id": event["id"], "type": event["type"], "outcome": outcome})
        return outcome

    # ---- reconciliation ------------------------------------------------------------------

    async def reconcile(self, *, limit: int = 1_000) -> int:
        """Settle pending payments whose webhook is late or lost, from Stripe's
        own state: each payment on its back-off schedule (`poll_due_at`), in
        turn across users, at most `stripe_poll_rate_per_second` reads."""
        if not self.gateway.configured:
            return 0
        now = self.clock.now_us()
        first = max(int(self.settings.payment_reconcile_after_seconds * 1_000_000), MIN_POLL_US)
        rows = await repo.stale_pending(self.db.reader, older_than_us=now - first, limit=limit)
        due: dict[str, deque[PaymentRow]] = {}
        polls: dict[str, int] = {}
        for row in rows:  # already in turn across users, each user's oldest first
            pid = row["id"]
            done = self._polls.get(pid)
            if done is None:  # first seen (or since a restart): only the latest point passed is due
                done = 0
                while (at := poll_due_at(row["created_at_us"], row["expires_at_us"], done + 1, first)) is not None \
                        and at <= now:
                    done += 1
            polls[pid] = done
            at = poll_due_at(row["created_at_us"], row["expires_at_us"], done, first)
            if at is not None and at <= now:
                due.setdefault(row["user_id"], deque()).append(row)
        self._polls = polls  # settled payments leave; the others keep their count
        budget = max(1, int(self.settings.stripe_poll_rate_per_second * self.settings.worker_interval_seconds))
        settled = 0
        while due and budget > 0:
            for user in list(due):  # one payment of each user in turn
                row = due[user].popleft()
                if not due[user]:
                    del due[user]
                if row["checkout_session_id"]:
                    budget -= 1
                    await self._stripe_read_turn()
                self._polls[row["id"]] = self._polls.get(row["id"], 0) + 1
                try:
                    settled += await self._reconcile_one(row)
                except errors.DomainError as exc:
                    log.warning("reconciliation failed", extra={"payment_id": row["id"], "reason": exc.reason})
                if budget <= 0:
                    break
        return settled

    async def _stripe_read_turn(self) -> None:
        """Waits until reconciliation may read Stripe once more (its global rate)."""
        for _ in range(1_000):
            wait = self._stripe_reads.acquire("reconcile")
            if wait <= 0:
                return
            await asyncio.sleep(wait)

    async def _reconcile_one(self, row: PaymentRow) -> int:
        pid = row["id"]
        if not row["checkout_session_id"]:
            # The link was never created (crash between our record and Stripe).
            async def abandon(tx: LedgerTx) -> int:
                p = await repo.get(tx, pid, lock=True)
                if p and not p["checkout_session_id"]:
                    await webhooks.mark_expired(tx, p)
                    return 1
                return 0

            result: int = await self._exclusive(abandon)
            return result
        session = await self.gateway.retrieve_checkout_session(row["checkout_session_id"])
        pi = stripe_id(session.get("payment_intent"))
        paid = session.get("payment_status") in ("paid", "no_payment_required")
        expired = session.get("status") == "expired"
        if not paid and not expired:
            return 0

        async def settle(tx: LedgerTx) -> int:
            p = await repo.get(tx, pid, lock=True)
            if p is None:
                return 0
            if paid:
                if mismatch := webhooks.amount_mismatch(p, session, "amount_total"):
                    await webhooks.hold_for_review(tx, p, mismatch, "reconciliation", payment_intent_id=pi)
                    return 0
                return 1 if await webhooks.mark_paid(tx, p, payment_intent_id=pi) else 0
            await webhooks.mark_expired(tx, p)
            return 1

        done: int = await self._exclusive(settle)
        return done


# Reconciliation reads a pending Checkout Session from Stripe at its first
# point (BILLING_PAYMENT_RECONCILE_AFTER_SECONDS after creation, at least
# MIN_POLL_US), then at twice, four times... that age, and a minute after the
# session expires. The read after expiry finds it expired (unpaid) and marks
# it so: it is never read again. One Stripe still shows open keeps doubling.
MIN_POLL_US = 1_000_000
EXPIRY_GRACE_US = 60_000_000
MAX_DOUBLINGS = 24


def poll_due_at(created_us: int, expires_us: int | None, polls: int, first_us: int) -> int | None:
    """When a pending payment read `polls` times so far is due again, or None."""
    expiry = None if expires_us is None else expires_us + EXPIRY_GRACE_US
    index = 0
    for doublings in range(MAX_DOUBLINGS + 1):
        point = created_us + (first_us << doublings)
        if expiry is not None and expiry < point:
            if index == polls:
                return expiry
            index, expiry = index + 1, None
        if index == polls:
            return point
        index += 1
    return None


def _card(row: dict[str, Any]) -> SavedCard | None:
    if not row["payment_method_id"]:
        return None
    return SavedCard(str(row["payment_method_id"]), row["brand"], row["last4"], int(row["exp_month"]), int(row["exp_year"]))


def _link(row: PaymentRow) -> PaymentLink:
    return PaymentLink(row["id"], row["payment_url"], row["expires_at_us"] or 0, row["credits"])
