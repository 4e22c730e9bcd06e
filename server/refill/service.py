"""Auto-refill rules: configuration, the trigger inside every ledger batch,
and reactions to Stripe events. Stripe is never called inside a ledger
transaction and never on the Spend path (the worker charges in the background)."""

from __future__ import annotations

import logging
import uuid
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
from server.payments.gateway import StripeGateway, not_configured
from server.platform import errors
from server.platform.auth import Principal
from server.platform.clock import Clock, from_us, month_bounds
from server.platform.config import Settings
from server.refill import repository as repo
from server.refill.models import RefillStatus

log = logging.getLogger(__name__)

Row = dict[str, Any]

PAYMENT_METHOD_REQUIRED = "PAYMENT_METHOD_REQUIRED"
AUTO_REFILL_FAILED = "AUTO_REFILL_FAILED"
# A disputed payment flagged the account: charging the same cardholder again
# while they dispute a charge invites more disputes, so refills wait for the
# dispute to be won.
ACCOUNT_FLAGGED = "ACCOUNT_FLAGGED"


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
    state: str  # disabled | idle | in_flight | retry_scheduled | action_required | paused
    paused_reason: str
    recovery_url: str
    next_retry_at_us: int
    last_failure_reason: str


def dollars(cents: int) -> str:
    return f"${cents // 100:,}.{cents % 100:02d}"


def skip_set(tx: LedgerTx) -> set[str]:
    """Users whose refill was settled in this transaction: no new job for them here."""
    found: set[str] | None = getattr(tx, "_refill_skip", None)
    if found is None:
        found = set()
        tx._refill_skip = found  # type: ignore[attr-defined]
    return found


# ---- Stripe events (inside the webhook's transaction; registered on the
# webhook router by server/refill/grpc.py) ----

async def on_stripe_event(tx: LedgerTx, etype: str, payment: Row | None, obj: Row) -> None:
    if payment is not None and etype.startswith("charge.dispute."):
        await _follow_account_flag(tx, payment["user_id"])
    if payment is not None and payment["kind"] == "auto_refill":
        if etype == "payment_intent.succeeded":
            job = await repo.job_by_payment(tx.conn, payment["id"])
            if job is not None:
                await finish_success(tx, job, payment)
        return
    raw_meta = obj.get("metadata")
    meta: Row = raw_meta if isinstance(raw_meta, dict) else {}
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
    if user in tx.users:
        return bool(tx.user(user)["flagged_reason"])
    found = await tx.conn.execute(select(users.c.flagged_reason).where(users.c.user_id == user))
    return bool(found.scalar())


async def _follow_account_flag(tx: LedgerTx, user: str) -> None:
    """Pause an active refill while a dispute flags the account; resume one
    paused for that reason once the flag is lifted (dispute won). Refills
    paused for other reasons keep their own reason."""
    flagged = await _flagged(tx, user)
    cfg = await repo.config(tx.conn, user)
    if cfg is None:
        return
    if flagged and cfg["state"] == repo.ACTIVE:
        await repo.update_config(tx.conn, user, state=repo.PAUSED, paused_reason=ACCOUNT_FLAGGED, updated_at_us=tx.now_us)
        if cfg["enabled"]:
            tx.notify(BalanceEvent(user_id=user, kind="refill_paused",
                                   message=f"Auto-refill paused ({ACCOUNT_FLAGGED}): a payment on this account is disputed"))
    elif not flagged and cfg["state"] == repo.PAUSED and cfg["paused_reason"] == ACCOUNT_FLAGGED:
        await repo.update_config(tx.conn, user, state=repo.ACTIVE, paused_reason="", updated_at_us=tx.now_us)
        log.info("auto-refill resumed after a won dispute", extra={"user_id": user})


async def _saved_card(tx: LedgerTx, user: str, *, payment_method_id: str = "", setup_intent_id: str = "") -> None:
    """A card the user just saved or paid with: remember it, and resume a
    refill paused for card trouble (the user fixed the method), unless a
    dispute flags the account."""
    cfg = await repo.config(tx.conn, user)
    exists = cfg is not None
    row = cfg or repo.new_config(user, tx.now_us)
    if payment_method_id:
        if row["payment_method_id"] != payment_method_id:
            row.update(pm_brand="", pm_last4="", pm_exp_month=0, pm_exp_year=0)
        row.update(payment_method_id=payment_method_id, setup_intent_id=None)
    if setup_intent_id:
        row.update(setup_intent_id=setup_intent_id)
    if await _flagged(tx, user):
        # A new card does not lift a dispute's pause; the won dispute does.
        row.update(state=repo.PAUSED, paused_reason=ACCOUNT_FLAGGED, recovery_url="", updated_at_us=tx.now_us)
        await repo.upsert_config(tx.conn, row, exists=exists)
        return
    resumed = row["state"] != repo.ACTIVE
    row.update(state=repo.ACTIVE, paused_reason="", recovery_url="", updated_at_us=tx.now_us)
    await repo.upsert_config(tx.conn, row, exists=exists)
    if resumed and row["enabled"]:
        log.info("auto-refill resumed after a new card", extra={"user_id": user})

# ---- outcomes shared with the worker ---------------------------------------------------

async def finish_success(tx: LedgerTx, job: Row, payment: Row) -> bool:
    """Close the job once, whichever of the worker and the webhook gets here first."""
    skip_set(tx).add(job["user_id"])
    if job["status"] not in repo.IN_FLIGHT:
        return False
    await repo.update_job(tx.conn, job["id"], status="succeeded", last_error="", lease_until_us=0, updated_at_us=tx.now_us)
    job["status"] = "succeeded"
    await repo.update_config(tx.conn, job["user_id"], last_failure_reason="", recovery_url="", updated_at_us=tx.now_us)
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
        payments: Any,
    ) -> None:
        self.settings = settings
        self.db = db
        self.writer = writer
        self.clock = clock
        self.gateway = gateway
        self.payments = payments  # server.payments.service.PaymentsService (customers, recovery links)

    # ---- the trigger: runs inside every ledger batch (hot path: one SELECT) ---------------

    async def trigger(self, tx: LedgerTx, ops: list[Any]) -> None:
        balances = {a["user_id"]: a["balance"] for a in tx.accounts.values() if a["kind"] == "wallet" and a["user_id"]}
        if not balances:
            return
        rows = await repo.due_configs(tx.sql, sorted(balances), tx.now_us)
        if not rows:
            return
        skip = skip_set(tx)
        jobs = [
            self._new_job(r["user_id"], r["amount_cents"], tx.now_us)
            for r in rows
            if r["user_id"] not in skip and balances[r["user_id"]] < r["threshold"]
        ]
        if jobs:
            # Same transaction as the balance change: durable once the Spend is acknowledged.
            tx.defer(repo.insert_jobs_ignoring_in_flight(tx.conn.dialect.name), jobs)

    def _new_job(self, user_id: str, amount_cents: int, now_us: int) -> Row:
        return {
            "id": "rfj_" + uuid.uuid4().hex[:24],
            "user_id": user_id,
            "status": "queued",
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
        if idem.replay(await stored_responses(self.db.reader, idem.lookup_keys())) is not None:
            return await self.view(user)
        card: Row | None = None
        if enabled:
            self._validate(threshold, amount_cents)
            card = await self._resolve_card(user)
            if card is None:
                raise errors.FailedPrecondition(
                    "auto-refill needs a saved card: open the link from RefillService.CreateSetupLink, "
                    "or buy credits once with PaymentsService.CreatePaymentLink (the card is saved), then retry",
                    reason=PAYMENT_METHOD_REQUIRED,
                    metadata={"how": "CreateSetupLink or CreatePaymentLink"},
                )

        async def apply(tx: LedgerTx) -> None:
            await tx.wallet(user)  # the trigger hook sees this wallet: enabling below the threshold refills
            if enabled and tx.user(user)["flagged_reason"]:
                raise errors.FailedPrecondition(
                    "auto-refill cannot be enabled while a payment dispute on this account is open",
                    reason=ACCOUNT_FLAGGED,
                )
            cfg = await repo.config(tx.conn, user)
            exists = cfg is not None
            row = cfg or repo.new_config(user, tx.now_us)
            row.update(enabled=enabled, updated_at_us=tx.now_us)
            if enabled:
                assert card is not None
                # Re-enabling resumes a paused refill. The monthly-cap block was
                # computed for the old amount: the worker checks the cap again.
                row.update(
                    threshold=threshold, amount_cents=amount_cents, state=repo.ACTIVE, paused_reason="", recovery_url="",
                    cap_blocked_until_us=0, **card,
                )
            else:
                # Disabling always works; valid new values are kept for the next enable.
                if threshold > 0:
                    row["threshold"] = min(threshold, self.settings.refill_max_threshold_credits * 1000)
                if self.settings.min_purchase_cents <= amount_cents <= self.settings.max_purchase_cents:
                    row["amount_cents"] = amount_cents
            await repo.upsert_config(tx.conn, row, exists=exists)

        await self.writer.submit(Call(fn=apply, accounts={wallet_id(user)}, idempotency=idem))
        return await self.view(user)

    async def _resolve_card(self, user: str) -> Row | None:
        """The card refills will charge, with brand/last4: a card from a setup
        link, else the one recorded from a purchase, else the customer's saved card."""
        if not self.gateway.configured:
            raise not_configured()
        cfg = await repo.read_config(self.db.reader, user) or {}
        pm_id: str | None = None
        if cfg.get("setup_intent_id"):
            si = await self.gateway.retrieve_setup_intent(str(cfg["setup_intent_id"]))
            if si.get("status") == "succeeded" and si.get("payment_method"):
                pm = si["payment_method"]
                pm_id = str(pm.get("id") if isinstance(pm, dict) else pm)
        if pm_id is None and cfg.get("payment_method_id"):
            if cfg.get("pm_last4"):
                return {k: cfg[k] for k in ("payment_method_id", "pm_brand", "pm_last4", "pm_exp_month", "pm_exp_year")} | {"setup_intent_id": None}
            pm_id = str(cfg["payment_method_id"])
        if pm_id is None:
            customer = await self.payments.customers.known(user)
            if customer:
                pm_id = await self.gateway.saved_payment_method(customer)
        if not pm_id:
            return None
        return await self.card_details(pm_id)

    async def card_details(self, pm_id: str) -> Row:
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
        async with self.db.reader.connect() as conn:
            cfg = await repo.config(conn, user) or repo.new_config(user, now)
            job = await repo.in_flight_job(conn, user)
            used = await repo.month_used_cents(conn, user, month)
        cap = self.settings.refill_monthly_cap_cents
        enabled = bool(cfg["enabled"])
        state = "disabled"
        next_retry = 0
        if enabled:
            if cfg["state"] in (repo.PAUSED, repo.ACTION_REQUIRED):
                state = cfg["state"]
            elif job is not None and job["status"] == "retry_scheduled":
                state, next_retry = "retry_scheduled", int(job["next_run_at_us"])
            elif job is not None:
                state = "in_flight"
            else:
                state = "idle"
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
            recovery_url=cfg["recovery_url"] if state == "action_required" else "",
            next_retry_at_us=next_retry,
            last_failure_reason=cfg["last_failure_reason"],
        )

    def _next_charge(self, cfg: Row, state: str, credits: int, used: int, next_retry: int, month_end: int) -> str:
        if state == "disabled":
            return "Auto-refill is off."
        if state == "paused" and cfg["paused_reason"] == ACCOUNT_FLAGGED:
            return f"Paused ({ACCOUNT_FLAGGED}): resumes by itself when the payment dispute is won."
        if state == "paused":
            return f"Paused ({cfg['paused_reason']}): update the card or re-enable auto-refill to resume."
        if state == "action_required":
            return "Your bank needs you to confirm the card: open recovery_url."
        card = f"{cfg['pm_brand'] or 'card'} ending {cfg['pm_last4'] or '????'}"
        amount = dollars(int(cfg["amount_cents"]))
        if state == "retry_scheduled":
            return f"A declined charge of {amount} to {card} is retried at {from_us(next_retry).isoformat()}."
        if state == "in_flight":
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
