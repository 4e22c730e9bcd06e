"""Auto-refill rules: configuration, the trigger inside every ledger batch,
and reactions to Stripe events. Stripe is never called inside a ledger
transaction and never on the Spend path (the worker charges in the background)."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from server.db.engine import Database
from server.ledger import keys
from server.ledger.model import BalanceEvent, wallet_id
from server.ledger.ops import Call, Idempotency
from server.ledger.repository import stored_responses
from server.ledger.tx import LedgerTx
from server.ledger.writer import LedgerWriter
from server.orgs.models import AccessOf, Right
from server.payments.events import Handled
from server.payments.models import PaymentKind, PaymentRow, PaymentStatus, SavedCard, dollars
from server.payments.service import PaymentsService
from server.platform import errors
from server.platform.auth import Principal
from server.platform.clock import Clock, from_us, month_bounds
from server.platform.config import Settings
from server.platform.units import credits_text
from server.refill import repository as repo
from server.refill.models import (
    IN_FLIGHT,
    Claimed,
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


SETTLED = "refill-settled"  # users whose refill was settled in this batch: no new job for them here


# ---- Stripe events (inside the webhook's transaction; registered on the
# webhook router by server/refill/grpc.py) ----

async def on_stripe_event(tx: LedgerTx, etype: str, handled: Handled) -> None:
    payment = handled.payment
    if payment is not None and etype.startswith("charge.dispute."):
        await _follow_account_flag(tx, payment["user_id"])
    if payment is not None and payment["kind"] == PaymentKind.AUTO_REFILL:
        if etype == "payment_intent.succeeded":
            job = await repo.job_by_payment(tx, payment["id"])
            if job is not None:
                await finish_success(tx, job, payment)
        return
    if handled.card_saved_for:
        await _card_saved(tx, handled.card_saved_for)

async def _flagged(tx: LedgerTx, user: str) -> bool:
    # Read without loading the wallet: a loaded wallet would run the refill
    # trigger on this transaction, and a webhook is not a balance change.
    try:
        return bool(tx.user(user)["flagged_reason"])  # loaded by this batch: as changed here
    except KeyError:
        return await repo.flagged(tx, user)


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


async def _card_saved(tx: LedgerTx, user: str) -> None:
    """The user saved a card or paid with one (payments recorded it): resume a
    refill paused for card trouble (the user fixed the method), unless a
    dispute flags the account."""
    cfg = await repo.config(tx, user)
    if cfg is None:
        return
    if await _flagged(tx, user):
        # A new card does not lift a dispute's pause; the won dispute does.
        repo.save_config(tx, cfg, user, state=ConfigState.PAUSED, paused_reason=PausedReason.ACCOUNT_FLAGGED,
                         recovery_url="")
        return
    resumed = cfg["state"] != ConfigState.ACTIVE
    row = repo.save_config(tx, cfg, user, state=ConfigState.ACTIVE, paused_reason="", recovery_url="")
    if resumed and row["enabled"]:
        log.info("auto-refill resumed after a new card", extra={"user_id": user})

# ---- outcomes shared with the worker ---------------------------------------------------

async def finish_success(tx: LedgerTx, job: RefillJobRow, payment: PaymentRow) -> bool:
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
            message=f"Auto-refill charged {dollars(payment['amount_cents'])} for {credits_text(payment['credits'])} credits",
        )
    )
    return True


class FirstRefill(Protocol):
    """The worker's charge of one user's due refill, now (server/refill/worker.py)."""

    async def run_for(self, user: str) -> Claimed | None: ...
    async def pause_first(self, item: Claimed, detail: str) -> None: ...


class RefillService:
    def __init__(
        self, settings: Settings, db: Database, writer: LedgerWriter, clock: Clock, payments: PaymentsService,
        first_refill: FirstRefill, org_access: AccessOf,
    ) -> None:
        self.settings = settings
        self.org_access = org_access
        self.db = db
        self.writer = writer
        self.clock = clock
        self.payments = payments  # the Stripe seam: customer, saved card, payments
        self.first_refill = first_refill  # enabling below the threshold charges at once

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

    async def _manager_of(self, principal: Principal, org_id: str) -> str:
        """The wallet whose refill the caller changes: its own, or an org's (owners and admins)."""
        if not org_id:
            return principal.own_user
        return (await self.org_access(principal, org_id, Right.MANAGE, "")).wallet_owner

    async def configure(
        self, principal: Principal, *, enabled: bool, threshold: int, amount_cents: int, request_id: str, fingerprint: str,
        org_id: str = "",
    ) -> AutoRefillView:
        user = await self._manager_of(principal, org_id)
        idem = Idempotency.of(principal.role.value, user, "ConfigureAutoRefill", request_id, fingerprint)
        # A repeat is answered before the card is looked up in Stripe.
        if idem.replay(await stored_responses(self.db.reader, (idem.key,))) is not None:
            return await self.view(user)
        card: SavedCard | None = None
        if enabled:
            self._validate(threshold, amount_cents)
            self.payments.require_configured()
            card = await self.payments.charge_card(user)
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
                    recovery_url="", cap_blocked_until_us=0,
                )
                await self.payments.keep_card(tx, user, card)
            else:
                # Disabling always works; valid new values are kept for the next enable.
                if threshold > 0:
                    values["threshold"] = min(threshold, self.settings.refill_max_threshold_credits * 1000)
                if self.settings.min_purchase_cents <= amount_cents <= self.settings.max_purchase_cents:
                    values["amount_cents"] = amount_cents
            repo.save_config(tx, cfg, user, **values)

        await self.writer.submit(Call(fn=apply, accounts={wallet_id(user)}, idempotency=idem))
        if enabled:
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
        p = await self.payments.read_payment(item.payment_id)
        if p is None or p["status"] != PaymentStatus.FAILED:
            return  # paid (or still processing: it settles like any refill)
        code = p["failure_reason"] or "card_declined"
        cfg = await repo.read_config(self.db.reader, user)
        url = str(cfg["recovery_url"] or "") if cfg is not None else ""
        if code != "authentication_required":
            await self.first_refill.pause_first(item, f"the first charge was declined ({code})")
            try:
                url = await self.payments.link_for(
                    user, p["amount_cents"], f"refill-first-{p['id']}", f"refill-first:{p['id']}"
                )
            except errors.DomainError as exc:
                log.warning("recovery link failed", extra={"payment_id": p["id"], "reason": exc.reason})
        raise errors.FailedPrecondition(
            f"auto-refill is saved, but its first charge failed ({code}): the balance is below the threshold. "
            "Pay through payment_url, or save another card with CreateSetupLink and enable again",
            reason=PausedReason.AUTO_REFILL_FAILED,
            metadata={"decline_code": code, "payment_id": p["id"], "payment_url": url,
                      "state": "action_required" if code == "authentication_required" else "paused"},
        )

    # ---- GetAutoRefill / CheckBalance ---------------------------------------------------------

    async def lookup(self, user_id: str) -> RefillStatus:
        # On every CheckBalance: one row through the raw driver.
        row = await self.db.fast.fetchrow(repo.LOOKUP_SQL, user_id)
        if row is None:
            return RefillStatus()
        enabled, threshold, paused_reason = bool(row[0]), int(row[1]), row[2]
        return RefillStatus(enabled=enabled, threshold=threshold, paused_reason=paused_reason if enabled else "")

    async def get(self, principal: Principal, user_id: str, org_id: str = "") -> AutoRefillView:
        if org_id:
            return await self.view((await self.org_access(principal, org_id, Right.MANAGE, "")).wallet_owner)
        return await self.view(principal.resolve_user(user_id))

    async def view(self, user: str) -> AutoRefillView:
        now = self.clock.now_us()
        month = month_bounds(now)  # [start, end) in UTC
        found, job = await repo.read_overview(self.db.reader, user)
        used = await self.payments.read_charged_cents(user, PaymentKind.AUTO_REFILL, month)
        card = await self.payments.saved_card(user) or SavedCard("")
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
            next_charge=self._next_charge(cfg, card, state, credits, used, next_retry, month[1]),
            pm_brand=card.brand,
            pm_last4=card.last4,
            pm_exp_month=card.exp_month,
            pm_exp_year=card.exp_year,
            monthly_cap_cents=cap,
            monthly_used_cents=used,
            state=state,
            paused_reason=cfg["paused_reason"] if enabled else "",
            recovery_url=cfg["recovery_url"] if state == ViewState.ACTION_REQUIRED else "",
            next_retry_at_us=next_retry,
            last_failure_reason=cfg["last_failure_reason"],
        )

    def _next_charge(
        self, cfg: RefillConfigRow, card: SavedCard, state: ViewState, credits: int, used: int, next_retry: int,
        month_end: int,
    ) -> str:
        if state == ViewState.DISABLED:
            return "Auto-refill is off."
        if state == ViewState.PAUSED and cfg["paused_reason"] == PausedReason.ACCOUNT_FLAGGED:
            return f"Paused ({PausedReason.ACCOUNT_FLAGGED}): resumes by itself when the payment dispute is won."
        if state == ViewState.PAUSED:
            return f"Paused ({cfg['paused_reason']}): update the card or re-enable auto-refill to resume."
        if state == ViewState.ACTION_REQUIRED:
            return "Your bank needs you to confirm the card: open recovery_url."
        shown = f"{card.brand or 'card'} ending {card.last4 or '????'}"
        amount = dollars(int(cfg["amount_cents"]))
        if state == ViewState.RETRY_SCHEDULED:
            return f"A declined charge of {amount} to {shown} is retried at {from_us(next_retry).isoformat()}."
        if state == ViewState.IN_FLIGHT:
            return f"Charging {amount} to {shown} now."
        text = (
            f"When the balance falls below {credits_text(cfg['threshold'])} credits, {amount} is charged to {shown} "
            f"for {credits_text(credits)} credits."
        )
        if used + int(cfg["amount_cents"]) > self.settings.refill_monthly_cap_cents:
            # Blocked until the first instant of the next UTC month, when it is allowed again.
            text += (
                f" The monthly cap of {dollars(self.settings.refill_monthly_cap_cents)} is reached: "
                f"no refill before {from_us(month_end).isoformat()}."
            )
        return text

    # ---- CreateSetupLink ------------------------------------------------------------------------

    async def setup_link(self, principal: Principal, request_id: str, org_id: str = "") -> tuple[str, int]:
        user = await self._manager_of(principal, org_id)
        return await self.payments.card_setup_link(user, keys.stripe("setup", principal.role.value, user, request_id))
