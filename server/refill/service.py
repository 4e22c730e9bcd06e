"""Auto-refill rules: configuration, the trigger inside every ledger batch,
and reactions to Stripe events. Stripe is never called inside a ledger
transaction and never on the Spend path (the worker charges in the background)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from server.db.engine import Database
from server.db.schema import users
from server.ledger import keys
from server.ledger.model import BalanceEvent, wallet_id
from server.ledger.ops import Call, Idempotency
from server.ledger.repository import stored_responses
from server.ledger.tx import LedgerTx
from server.ledger.writer import LedgerWriter
from server.payments import repository as payrepo
from server.payments.gateway import StripeGateway, not_configured
from server.payments.models import PaymentKind, PaymentStatus
from server.payments.service import PaymentsService
from server.platform import errors
from server.platform.auth import Principal, Role
from server.platform.clock import Clock, from_us, month_bounds
from server.platform.config import Settings
from server.refill import repository as repo
from server.refill.models import (
    IN_FLIGHT,
    ConfigState,
    JobStatus,
    PausedReason,
    RefillConfigRow,
    RefillJobRow,
    RefillStatus,
    ViewState,
)

log = logging.getLogger(__name__)


@dataclass
class AutoRefillView:
    enabled: bool
    threshold: int
    amount_cents: int
    credits: int
    next_charge: str
    pm_brand: str
    pm_last4: str
    pm_exp_month: int
    pm_exp_year: int
    monthly_cap_cents: int
    monthly_used_cents: int
    state: ViewState
    paused_reason: str
    recovery_url: str
    next_retry_at_us: int
    last_failure_reason: str


def dollars(cents: int) -> str:
    return f"${cents // 100:,}.{cents % 100:02d}"


SETTLED = "refill-settled"  # users whose refill was settled in this batch: no new job for them here


# ---- Stripe events (inside the webhook's transaction; registered on the
# webhook router by server/refill/grpc.py) ----

async def on_stripe_event(tx: LedgerTx, etype: str, payment: dict[str, Any] | None, obj: dict[str, Any]) -> None:
    if payment is not None and etype.startswith("charge.dispute."):
        await _follow_account_flag(tx, payment["user_id"])
    if payment is not None and payment["kind"] == PaymentKind.AUTO_REFILL:
        if etype == "payment_intent.succeeded":
            job = await repo.job_by_payment(tx, payment["id"])
            if job is not None:
                await finish_success(tx, job, payment)
        return
    raw_meta = obj.get("metadata")
    meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
    if etype == "payment_intent.succeeded" and payment is not None and obj.get("payment_method"):
        pm = obj["payment_method"]
        pm_id = str(pm.get("id") if isinstance(pm, dict) else pm)
        await _saved_card(tx, payment["user_id"], payment_method_id=pm_id)
    elif etype == "checkout.session.completed" and obj.get("mode") == "setup" and meta.get("purpose") == "auto_refill_setup":
        user = str(meta.get("user_id") or obj.get("client_reference_id") or "")
        si = obj.get("setup_intent")
        si_id = str(si.get("id") if isinstance(si, dict) else si or "")
        if user and si_id:
            await _saved_card(tx, user, setup_intent_id=si_id)

async def _flagged(tx: LedgerTx, user: str) -> bool:
    # Read without loading the wallet: a loaded wallet would run the refill
    # trigger on this transaction, and a webhook is not a balance change.
    try:
        return bool(tx.user(user)["flagged_reason"])  # loaded by this batch: as changed here
    except KeyError:
        return bool(await tx.fetch_scalar(select(users.c.flagged_reason).where(users.c.user_id == user)))


async def _follow_account_flag(tx: LedgerTx, user: str) -> None:
    """Pause an active refill while a dispute flags the account; resume one
    paused for that reason once the flag is lifted (dispute won). Refills
    paused for other reasons keep their own reason."""
    flagged = await _flagged(tx, user)
    cfg = await repo.config(tx, user)
    if cfg is None:
        return
    if flagged and cfg["state"] == ConfigState.ACTIVE:
        repo.save_config(tx, cfg, user, state=ConfigState.PAUSED, paused_reason=PausedReason.ACCOUNT_FLAGGED)
        if cfg["enabled"]:
            tx.notify(BalanceEvent(user_id=user, kind="refill_paused",
                                   message=f"Auto-refill paused ({PausedReason.ACCOUNT_FLAGGED}): a payment on this account is disputed"))
    elif not flagged and cfg["state"] == ConfigState.PAUSED and cfg["paused_reason"] == PausedReason.ACCOUNT_FLAGGED:
        repo.save_config(tx, cfg, user, state=ConfigState.ACTIVE, paused_reason="")
        log.info("auto-refill resumed after a won dispute", extra={"user_id": user})


async def follow_account_flag(tx: LedgerTx, user: str) -> None:
    """The refill side of an account flag set or cleared by an admin
    (server/admin/service.py): the same rule as a dispute opened or won."""
    await _follow_account_flag(tx, user)


async def _saved_card(tx: LedgerTx, user: str, *, payment_method_id: str = "", setup_intent_id: str = "") -> None:
    """A card the user just saved or paid with: remember it, and resume a
    refill paused for card trouble (the user fixed the method), unless a
    dispute flags the account."""
    cfg = await repo.config(tx, user)
    values: dict[str, Any] = {}
    if payment_method_id:
        if cfg is not None and cfg["payment_method_id"] != payment_method_id:
            values.update(pm_brand="", pm_last4="", pm_exp_month=0, pm_exp_year=0)
        values.update(payment_method_id=payment_method_id, setup_intent_id=None)
    if setup_intent_id:
        values.update(setup_intent_id=setup_intent_id)
    if await _flagged(tx, user):
        # A new card does not lift a dispute's pause; the won dispute does.
        repo.save_config(tx, cfg, user, state=ConfigState.PAUSED, paused_reason=PausedReason.ACCOUNT_FLAGGED,
                         recovery_url="", **values)
        return
    resumed = cfg is not None and cfg["state"] != ConfigState.ACTIVE
    row = repo.save_config(tx, cfg, user, state=ConfigState.ACTIVE, paused_reason="", recovery_url="", **values)
    if resumed and row["enabled"]:
        log.info("auto-refill resumed after a new card", extra={"user_id": user})

# ---- outcomes shared with the worker ---------------------------------------------------

async def finish_success(tx: LedgerTx, job: RefillJobRow, payment: Mapping[str, Any]) -> bool:
    """Close the job once, whichever of the worker and the webhook gets here first.
    `job` was read through this batch (it is changed in place)."""
    tx.batch_add(SETTLED, job["user_id"])
    if job["status"] not in IN_FLIGHT:
        return False
    repo.update_job(tx, job, status=JobStatus.SUCCEEDED, last_error="", lease_until_us=0)
    await repo.set_config(tx, job["user_id"], last_failure_reason="", recovery_url="")
    tx.notify(
        BalanceEvent(
            user_id=job["user_id"],
            kind="refill_succeeded",
            message=f"Auto-refill charged {dollars(payment['amount_cents'])} for {payment['credits'] // 1000:,} credits",
        )
    )
    return True


class RefillService:
    def __init__(
        self, settings: Settings, db: Database, writer: LedgerWriter, clock: Clock, gateway: StripeGateway,
        payments: PaymentsService,
    ) -> None:
        self.settings = settings
        self.db = db
        self.writer = writer
        self.clock = clock
        self.gateway = gateway
        self.payments = payments  # customers and recovery links
        self.first_refill: Any = None  # the RefillWorker (server/refill/grpc.py wires it)

    # ---- the trigger: runs inside every ledger batch (hot path: one SELECT) ---------------

    async def trigger(self, tx: LedgerTx, ops: list[Any]) -> None:
        balances = tx.wallet_balances()
        if not balances:
            return
        rows = await repo.due_configs(tx, sorted(balances), tx.now_us)
        if not rows:
            return
        settled = tx.batch_set(SETTLED)
        for r in rows:
            if r["user_id"] not in settled and balances[r["user_id"]] < r["threshold"]:
                # Same transaction as the balance change: durable once the Spend is acknowledged.
                repo.add_job_unless_in_flight(tx, self._new_job(r["user_id"], r["amount_cents"], tx.now_us))

    def _new_job(self, user_id: str, amount_cents: int, now_us: int) -> RefillJobRow:
        return {
            "id": "rfj_" + uuid.uuid4().hex[:24],
            "user_id": user_id,
            "status": JobStatus.QUEUED,
            "amount_cents": amount_cents,
            "credits": self.settings.credits_for_cents(amount_cents),
            "attempts": 0,
            "payment_id": None,
            "next_run_at_us": now_us,
            "lease_until_us": 0,
            "last_error": "",
            "created_at_us": now_us,
            "updated_at_us": now_us,
        }

    # ---- ConfigureAutoRefill ----------------------------------------------------------------

    def _validate(self, threshold: int, amount_cents: int) -> None:
        lo, hi = self.settings.min_purchase_cents, self.settings.max_purchase_cents
        if amount_cents < lo or amount_cents > hi:
            raise errors.InvalidAmount(
                f"amount_cents must be between {lo} and {hi} (US cents)",
                metadata={"field": "amount_cents", "min_cents": lo, "max_cents": hi, "got": amount_cents},
            )
        ceiling = self.settings.refill_max_threshold_credits * 1000
        if threshold <= 0 or threshold > ceiling:
            raise errors.InvalidArgument(
                f"threshold_millicredits must be greater than 0 and at most {ceiling}",
                reason="INVALID_THRESHOLD",
                metadata={"field": "threshold_millicredits", "max": ceiling, "got": threshold},
            )

    async def configure(
        self, principal: Principal, *, enabled: bool, threshold: int, amount_cents: int, request_id: str, fingerprint: str
    ) -> AutoRefillView:
        user = principal.subject
        idem = Idempotency.of(principal.role.value, user, "ConfigureAutoRefill", request_id, fingerprint)
        # A repeat is answered before the card is looked up in Stripe.
        if idem.replay(await stored_responses(self.db.reader, (idem.key,))) is not None:
            return await self.view(user)
        card: dict[str, Any] | None = None
        if enabled:
            self._validate(threshold, amount_cents)
            card = await self._resolve_card(user)
            if card is None:
                raise errors.FailedPrecondition(
                    "auto-refill needs a saved card: open the link from RefillService.CreateSetupLink, "
                    "or buy credits once with PaymentsService.CreatePaymentLink (the card is saved), then retry",
                    reason=PausedReason.PAYMENT_METHOD_REQUIRED,
                    metadata={"how": "CreateSetupLink or CreatePaymentLink"},
                )

        async def apply(tx: LedgerTx) -> None:
            await tx.wallet(user)  # the trigger hook sees this wallet: enabling below the threshold refills
            if enabled and tx.user(user)["flagged_reason"]:
                raise errors.FailedPrecondition(
                    "auto-refill cannot be enabled while a payment dispute on this account is open",
                    reason=PausedReason.ACCOUNT_FLAGGED,
                )
            cfg = await repo.config(tx, user)
            values: dict[str, Any] = {"enabled": enabled}
            if enabled:
                assert card is not None
                # Re-enabling resumes a paused refill. The monthly-cap block was
                # computed for the old amount: the worker checks the cap again.
                values.update(
                    threshold=threshold, amount_cents=amount_cents, state=ConfigState.ACTIVE, paused_reason="",
                    recovery_url="", cap_blocked_until_us=0, **card,
                )
            else:
                # Disabling always works; valid new values are kept for the next enable.
                if threshold > 0:
                    values["threshold"] = min(threshold, self.settings.refill_max_threshold_credits * 1000)
                if self.settings.min_purchase_cents <= amount_cents <= self.settings.max_purchase_cents:
                    values["amount_cents"] = amount_cents
            repo.save_config(tx, cfg, user, **values)

        await self.writer.submit(Call(fn=apply, accounts={wallet_id(user)}, idempotency=idem))
        if enabled and self.first_refill is not None:
            await self._charge_first(user)
        return await self.view(user)

    async def _charge_first(self, user: str) -> None:
        """Enabling auto-refill while the balance is already below the threshold
        queued a refill in that same transaction: it is charged now, and a
        failure is this call's answer (AUTO_REFILL_FAILED), not a surprise
        later. The settings stay saved; after a decline auto-refill is paused
        (no retries on a card the user has just been told about) until it is
        enabled again or a new card is saved."""
        item = await self.first_refill.run_for(user)
        if item is None:
            return
        p = await payrepo.read(self.db.reader, item.payment_id)
        if p is None or p["status"] != PaymentStatus.FAILED:
            return  # paid (or still processing: it settles like any refill)
        code = p["failure_reason"] or "card_declined"
        cfg = await repo.read_config(self.db.reader, user)
        url = str(cfg["recovery_url"] or "") if cfg is not None else ""
        if code != "authentication_required":
            await self.first_refill.pause_first(item, f"the first charge was declined ({code})")
            try:
                link = await self.payments.create_link(
                    Principal(user, Role.USER), amount_cents=p["amount_cents"],
                    request_id=f"refill-first-{p['id']}", fingerprint=f"refill-first:{p['id']}",
                )
                url = link.payment_url
            except errors.DomainError as exc:
                log.warning("recovery link failed", extra={"payment_id": p["id"], "reason": exc.reason})
        raise errors.FailedPrecondition(
            f"auto-refill is saved, but its first charge failed ({code}): the balance is below the threshold. "
            "Pay through payment_url, or save another card with CreateSetupLink and enable again",
            reason=PausedReason.AUTO_REFILL_FAILED,
            metadata={"decline_code": code, "payment_id": p["id"], "payment_url": url,
                      "state": "action_required" if code == "authentication_required" else "paused"},
        )

    async def _resolve_card(self, user: str) -> dict[str, Any] | None:
        """The card refills will charge, with brand/last4: a card from a setup
        link, else the one recorded from a purchase, else the customer's saved card."""
        if not self.gateway.configured:
            raise not_configured()
        cfg = await repo.read_config(self.db.reader, user)
        pm_id: str | None = None
        if cfg is not None and cfg["setup_intent_id"]:
            si = await self.gateway.retrieve_setup_intent(str(cfg["setup_intent_id"]))
            if si.get("status") == "succeeded" and si.get("payment_method"):
                pm = si["payment_method"]
                pm_id = str(pm.get("id") if isinstance(pm, dict) else pm)
        if pm_id is None and cfg is not None and cfg["payment_method_id"]:
            if cfg["pm_last4"]:
                return {
                    "payment_method_id": cfg["payment_method_id"], "pm_brand": cfg["pm_brand"],
                    "pm_last4": cfg["pm_last4"], "pm_exp_month": cfg["pm_exp_month"],
                    "pm_exp_year": cfg["pm_exp_year"], "setup_intent_id": None,
                }
            pm_id = str(cfg["payment_method_id"])
        if pm_id is None:
            customer = await self.payments.customers.known(user)
            if customer:
                pm_id = await self.gateway.saved_payment_method(customer)
        if not pm_id:
            return None
        return await self.card_details(pm_id)

    async def charge_card(self, user: str) -> str | None:
        """The card an off-session charge of the user uses (TopUp): the one
        auto-refill charges."""
        card = await self._resolve_card(user)
        return str(card["payment_method_id"]) if card else None

    async def card_details(self, pm_id: str) -> dict[str, Any]:
        pm = await self.gateway.retrieve_payment_method(pm_id)
        card = pm.get("card") or {}
        return {
            "payment_method_id": pm_id,
            "pm_brand": str(card.get("brand") or "")[:32],
            "pm_last4": str(card.get("last4") or "")[:8],
            "pm_exp_month": int(card.get("exp_month") or 0),
            "pm_exp_year": int(card.get("exp_year") or 0),
            "setup_intent_id": None,
        }

    # ---- GetAutoRefill / CheckBalance ---------------------------------------------------------

    async def lookup(self, user_id: str) -> RefillStatus:
        # On every CheckBalance: one row through the raw driver.
        row = await self.db.fast.fetchrow(repo.LOOKUP_SQL, user_id)
        if row is None:
            return RefillStatus()
        enabled, threshold, paused_reason = bool(row[0]), int(row[1]), row[2]
        return RefillStatus(enabled=enabled, threshold=threshold, paused_reason=paused_reason if enabled else "")

    async def get(self, principal: Principal, user_id: str) -> AutoRefillView:
        return await self.view(principal.resolve_user(user_id))

    async def view(self, user: str) -> AutoRefillView:
        now = self.clock.now_us()
        month = month_bounds(now)  # [start, end) in UTC
        found, job, used = await repo.read_overview(self.db.reader, user, month)
        cfg = found or repo.new_config(user, now)
        cap = self.settings.refill_monthly_cap_cents
        enabled = bool(cfg["enabled"])
        state = ViewState.DISABLED
        next_retry = 0
        if enabled:
            if cfg["state"] == ConfigState.PAUSED:
                state = ViewState.PAUSED
            elif cfg["state"] == ConfigState.ACTION_REQUIRED:
                state = ViewState.ACTION_REQUIRED
            elif job is not None and job["status"] == JobStatus.RETRY_SCHEDULED:
                state, next_retry = ViewState.RETRY_SCHEDULED, int(job["next_run_at_us"])
            elif job is not None:
                state = ViewState.IN_FLIGHT
            else:
                state = ViewState.IDLE
        credits = self.settings.credits_for_cents(cfg["amount_cents"]) if cfg["amount_cents"] else 0
        return AutoRefillView(
            enabled=enabled,
            threshold=int(cfg["threshold"]),
            amount_cents=int(cfg["amount_cents"]),
            credits=credits,
            next_charge=self._next_charge(cfg, state, credits, used, next_retry, month[1]),
            pm_brand=cfg["pm_brand"],
            pm_last4=cfg["pm_last4"],
            pm_exp_month=int(cfg["pm_exp_month"]),
            pm_exp_year=int(cfg["pm_exp_year"]),
            monthly_cap_cents=cap,
            monthly_used_cents=used,
            state=state,
            paused_reason=cfg["paused_reason"] if enabled else "",
            recovery_url=cfg["recovery_url"] if state == ViewState.ACTION_REQUIRED else "",
            next_retry_at_us=next_retry,
            last_failure_reason=cfg["last_failure_reason"],
        )

    def _next_charge(
        self, cfg: RefillConfigRow, state: ViewState, credits: int, used: int, next_retry: int, month_end: int
    ) -> str:
        if state == ViewState.DISABLED:
            return "Auto-refill is off."
        if state == ViewState.PAUSED and cfg["paused_reason"] == PausedReason.ACCOUNT_FLAGGED:
            return f"Paused ({PausedReason.ACCOUNT_FLAGGED}): resumes by itself when the payment dispute is won."
        if state == ViewState.PAUSED:
            return f"Paused ({cfg['paused_reason']}): update the card or re-enable auto-refill to resume."
        if state == ViewState.ACTION_REQUIRED:
            return "Your bank needs you to confirm the card: open recovery_url."
        card = f"{cfg['pm_brand'] or 'card'} ending {cfg['pm_last4'] or '????'}"
        amount = dollars(int(cfg["amount_cents"]))
        if state == ViewState.RETRY_SCHEDULED:
            return f"A declined charge of {amount} to {card} is retried at {from_us(next_retry).isoformat()}."
        if state == ViewState.IN_FLIGHT:
            return f"Charging {amount} to {card} now."
        text = (
            f"When the balance falls below {cfg['threshold'] / 1000:,.3f}".rstrip("0").rstrip(".")
            + f" credits, {amount} is charged to {card} for {credits // 1000:,} credits."
        )
        if used + int(cfg["amount_cents"]) > self.settings.refill_monthly_cap_cents:
            # Blocked until the first instant of the next UTC month, when it is allowed again.
            text += (
                f" The monthly cap of {dollars(self.settings.refill_monthly_cap_cents)} is reached: "
                f"no refill before {from_us(month_end).isoformat()}."
            )
        return text

    # ---- CreateSetupLink ------------------------------------------------------------------------

    async def setup_link(self, principal: Principal, request_id: str) -> tuple[str, int]:
        if not self.gateway.configured:
            raise not_configured()
        user = principal.subject
        customer = await self.payments.customers.get_or_create(user)
        base = self.settings.public_base_url.rstrip("/")
        session = await self.gateway.create_setup_session(
            customer_id=customer,
            user_id=user,
            success_url=f"{base}/billing/card-saved",
            cancel_url=f"{base}/billing/cancel",
            idempotency_key=keys.stripe("setup", principal.role.value, user, request_id),
        )
        return str(session.get("url") or ""), int(session.get("expires_at") or 0) * 1_000_000
