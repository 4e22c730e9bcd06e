"""The refill worker: claims durable jobs, charges the saved card off-session
and records the outcome. Claiming goes through the single ledger writer (on
PostgreSQL with FOR UPDATE SKIP LOCKED, so replicas never share a job); the
Stripe call happens between two short transactions, never inside one."""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable

from server.ledger import keys
from server.ledger.model import BalanceEvent, wallet_id
from server.ledger.ops import Call
from server.ledger.tx import LedgerTx
from server.ledger.writer import LedgerWriter
from server.payments.models import CREDITED, ChargeOutcome, PaymentKind, PaymentRow, PaymentStatus
from server.payments.service import PaymentsService
from server.platform import errors
from server.platform.clock import month_bounds
from server.platform.config import Settings
from server.platform.metrics import METRICS
from server.refill import repository as repo
from server.refill.models import (
    IN_FLIGHT,
    Claimed,
    ConfigState,
    Decline,
    JobStatus,
    PausedReason,
    RefillConfigRow,
    RefillJobRow,
)
from server.refill.service import SETTLED, dollars, finish_success

log = logging.getLogger(__name__)

AUTH_CODES = frozenset({"authentication_required", "payment_intent_authentication_failure"})
# The card itself is unusable: pause at once, retrying cannot help.
CARD_GONE = frozenset(
    {"expired_card", "resource_missing", "payment_method_unactivated", "incorrect_number", "invalid_request"}
)
# Issuers say never retry these (Stripe's guidance on hard declines).
NO_RETRY = frozenset(
    {"lost_card", "stolen_card", "pickup_card", "fraudulent", "do_not_try_again", "revocation_of_authorization",
     "revocation_of_all_authorizations", "security_violation"}
)


def classify_decline(status: str, code: str = "", decline_code: str = "") -> tuple[Decline, str]:
    """What a PaymentIntent that did not succeed (nor is processing) means, and
    the code to record: the decline code when Stripe gives one, else its code."""
    reason = decline_code or code
    if status == "requires_action" or reason in AUTH_CODES or code in AUTH_CODES:
        return Decline.AUTHENTICATION, "authentication_required"
    reason = reason or "card_declined"
    if reason in CARD_GONE or code in CARD_GONE:
        return Decline.CARD_GONE, reason
    if reason in NO_RETRY:
        return Decline.HARD, reason
    return Decline.SOFT, reason


class RefillWorker:
    def __init__(self, settings: Settings, writer: LedgerWriter, payments: PaymentsService, *, batch: int = 20) -> None:
        self.s = settings
        self.writer = writer
        self.payments = payments  # the Stripe seam: the saved card, the charge, its payment
        self.batch = batch

    async def run(self) -> int:
        if not self.payments.configured:
            return 0
        claimed: list[Claimed] = await self.writer.submit(Call(fn=self._claim))
        for item in claimed:
            try:
                await self._charge(item)
            except Exception:
                # The lease expires and the job is claimed again, with the same attempt id.
                log.exception("refill attempt failed unexpectedly", extra={"job": item.job["id"]})
        return len(claimed)

    async def run_for(self, user: str) -> Claimed | None:
        """The user's due refill, now (ConfigureAutoRefill below the threshold):
        the same claim, charge and outcomes as the background run."""
        if not self.payments.configured:
            return None
        claimed: list[Claimed] = await self.writer.submit(
            Call(fn=lambda tx: self._claim(tx, user), accounts={wallet_id(user)})
        )
        for item in claimed:
            await self._charge(item)
        return claimed[0] if claimed else None

    async def pause_first(self, item: Claimed, detail: str) -> None:
        """The first refill, charged while the user enabled auto-refill, was
        declined: pause instead of retrying behind the user's back (the
        answer tells them). A card gone or a hard decline paused it already."""

        async def apply(tx: LedgerTx) -> None:
            job = await repo.job(tx, item.job["id"], lock=True)
            if job is not None and job["status"] == JobStatus.RETRY_SCHEDULED:
                self._pause(tx, job, await repo.config(tx, job["user_id"]), PausedReason.AUTO_REFILL_FAILED, detail)

        await self._record(item, apply)

    # ---- claim (one transaction) ---------------------------------------------------------

    async def _claim(self, tx: LedgerTx, user: str = "") -> list[Claimed]:
        out: list[Claimed] = []
        for job in await repo.claimable(tx, self.batch, user):
            item = await self._prepare(tx, job)
            if item is not None:
                out.append(item)
        return out

    def _end(self, tx: LedgerTx, job: RefillJobRow, status: JobStatus, error: str) -> None:
        repo.update_job(tx, job, status=status, last_error=error[:200], lease_until_us=0)

    async def _prepare(self, tx: LedgerTx, job: RefillJobRow) -> Claimed | None:
        user = job["user_id"]
        wallet = await tx.wallet(user)  # the wallet's lock first, like every other refill operation
        cfg = await repo.config(tx, user)
        if job["payment_id"]:
            p = await self.payments.payment_in(tx, job["payment_id"])
            if p is not None and p["status"] in CREDITED:
                await finish_success(tx, job, p)  # the webhook settled it while we were away
                return None
            if p is not None and p["status"] == PaymentStatus.PENDING:
                return self._lease(tx, job, cfg, p)  # same attempt, same idempotency key
        # A new attempt: every gate is checked under the transaction.
        if cfg is None or not cfg["enabled"] or cfg["state"] != ConfigState.ACTIVE:
            self._end(tx, job, JobStatus.SKIPPED, "auto-refill disabled or paused")
            return None
        if wallet["balance"] >= cfg["threshold"]:
            self._end(tx, job, JobStatus.SKIPPED, "balance is above the threshold again")
            return None
        if tx.user(user)["flagged_reason"]:  # e.g. a config an older release left active on a flagged account
            self._pause(tx, job, cfg, PausedReason.ACCOUNT_FLAGGED, "a payment on this account is disputed")
            return None
        if not await self.payments.has_card(tx, user):
            self._pause(tx, job, cfg, PausedReason.PAYMENT_METHOD_REQUIRED, "no saved card")
            return None
        # The month is [start, end): blocked until `end`, the first instant of the next UTC month.
        start, end = month_bounds(tx.now_us)
        used = await self.payments.charged_cents(tx, user, PaymentKind.AUTO_REFILL, (start, end))
        if used + job["amount_cents"] > self.s.refill_monthly_cap_cents:
            METRICS.refill_attempts.labels("cap_reached").inc()
            self._end(tx, job, JobStatus.SKIPPED, "monthly cap reached")
            repo.save_config(tx, cfg, user, cap_blocked_until_us=end, last_failure_reason="MONTHLY_CAP_REACHED")
            tx.notify(
                BalanceEvent(
                    user_id=user,
                    kind="refill_failed",
                    message=f"Auto-refill skipped: {dollars(job['amount_cents'])} would exceed the monthly cap of "
                    f"{dollars(self.s.refill_monthly_cap_cents)} ({dollars(used)} used)",
                )
            )
            return None
        # Declines in (now - 30 days, now]: one exactly 30 days old no longer counts.
        if await self._declines(tx, user) >= self.s.refill_max_declines_30d:
            self._pause(tx, job, cfg, PausedReason.AUTO_REFILL_FAILED, "too many declined charges in 30 days")
            return None
        attempt = job["attempts"] + 1
        pid = keys.refill_attempt(job["id"][4:], attempt)
        p = await self.payments.open_payment(tx, pid, user, PaymentKind.AUTO_REFILL, job["amount_cents"], job["credits"])
        repo.update_job(tx, job, payment_id=pid, attempts=attempt)
        return self._lease(tx, job, cfg, p)

    def _lease(self, tx: LedgerTx, job: RefillJobRow, cfg: RefillConfigRow | None, p: PaymentRow) -> Claimed:
        lease = tx.now_us + int(self.s.refill_lease_seconds * 1_000_000)
        repo.update_job(tx, job, status=JobStatus.RUNNING, lease_until_us=lease)
        return Claimed(job=job, payment_id=p["id"], payment_intent_id=str(p.get("payment_intent_id") or ""))

    async def _declines(self, tx: LedgerTx, user: str, current: PaymentRow | None = None) -> int:
        """Declined refills in (now - 30 days, now] (DECLINE_WINDOW_US): one made
        exactly 30 days ago no longer counts. No upper bound: a decline another
        replica (clock ahead) just recorded counts too."""
        after = tx.now_us - repo.DECLINE_WINDOW_US
        return await self.payments.declined(tx, user, PaymentKind.AUTO_REFILL, after, current)

    def _pause(
        self, tx: LedgerTx, job: RefillJobRow, cfg: RefillConfigRow | None, reason: PausedReason, detail: str
    ) -> None:
        failed = reason == PausedReason.AUTO_REFILL_FAILED
        self._end(tx, job, JobStatus.FAILED if failed else JobStatus.PAUSED, detail)
        if cfg is not None:
            repo.save_config(tx, cfg, job["user_id"], state=ConfigState.PAUSED, paused_reason=reason)
        METRICS.refill_attempts.labels("paused").inc()
        tx.notify(BalanceEvent(user_id=job["user_id"], kind="refill_paused", message=f"Auto-refill paused ({reason}): {detail}"))

    # ---- charge (Stripe, outside any transaction) ------------------------------------------

    async def _charge(self, item: Claimed) -> None:
        user = item.job["user_id"]
        try:
            # A card saved through a setup link is resolved (and kept) when first charged.
            card = await self.payments.charge_card(user)
            if card is not None and card != await self.payments.saved_card(user):
                found = card

                async def keep(tx: LedgerTx) -> None:
                    await self.payments.keep_card(tx, user, found)

                await self._record(item, keep)
        except errors.DomainError:
            card = await self.payments.saved_card(user)  # fall back to the card we had
        if card is None:
            await self._record(item, lambda tx: self._fail(tx, item, "payment_method_missing", Decline.CARD_GONE))
            return
        payment = await self.payments.read_payment(item.payment_id)
        if payment is None:
            return
        try:
            outcome = await self.payments.charge_off_session(payment, card)  # a retried call never charges twice
        except errors.Unavailable:
            METRICS.refill_attempts.labels("network_error").inc()
            await self._record(item, lambda tx: self._retry_same_attempt(tx, item))
            return
        if outcome.succeeded:
            METRICS.refill_attempts.labels("succeeded").inc()
            await self._record(item, lambda tx: self._succeed(tx, item, outcome))
            return
        if outcome.status == "processing":
            await self._record(item, lambda tx: self._retry_same_attempt(tx, item))  # settle later from Stripe's state
            return
        kind, code = classify_decline(outcome.status, outcome.code, outcome.decline_code)
        if kind == Decline.AUTHENTICATION:
            METRICS.refill_attempts.labels("action_required").inc()
            url = await self._recovery_link(item)
            await self._record(item, lambda tx: self._action_required(tx, item, outcome, url))
            return
        METRICS.refill_attempts.labels("paused" if kind == Decline.CARD_GONE else "declined").inc()
        await self._record(item, lambda tx: self._fail(tx, item, code, kind, outcome))

    async def _recovery_link(self, item: Claimed) -> str:
        """A Checkout link for the same amount: paying it grants the credits and saves the card again."""
        try:
            return await self.payments.link_for(
                item.job["user_id"], item.job["amount_cents"],
                f"refill-recovery-{item.payment_id}", f"refill-recovery:{item.payment_id}",
            )
        except errors.DomainError as exc:
            log.warning("recovery link failed", extra={"payment_id": item.payment_id, "reason": exc.reason})
            return ""

    async def _record(self, item: Claimed, fn: Callable[[LedgerTx], Awaitable[None]]) -> None:
        await self.writer.submit(Call(fn=fn, accounts={wallet_id(item.job["user_id"])}))

    async def _current(self, tx: LedgerTx, item: Claimed) -> tuple[RefillJobRow, PaymentRow] | None:
        """The job and its payment as this batch sees them (locked): the rows to change."""
        job = await repo.job(tx, item.job["id"], lock=True)
        p = await self.payments.payment_in(tx, item.payment_id)
        if job is None or p is None or job["payment_id"] != item.payment_id:
            return None
        return job, p

    async def _succeed(self, tx: LedgerTx, item: Claimed, outcome: ChargeOutcome) -> None:
        cur = await self._current(tx, item)
        if cur is None:
            return
        job, p = cur
        # Grants once (transfer key grant:{payment_id}); the webhook may have done it already.
        await self.payments.record_outcome(tx, p, outcome)
        await finish_success(tx, job, p)

    async def _retry_same_attempt(self, tx: LedgerTx, item: Claimed) -> None:
        """Stripe did not answer: the same attempt (same idempotency key) runs again later."""
        cur = await self._current(tx, item)
        if cur is None or cur[0]["status"] not in IN_FLIGHT:
            return
        next_at = tx.now_us + int(self.s.refill_network_retry_seconds * 1_000_000)
        repo.update_job(
            tx, cur[0], status=JobStatus.RETRY_SCHEDULED, next_run_at_us=next_at, lease_until_us=0,
            last_error="stripe_unavailable",
        )

    async def _action_required(self, tx: LedgerTx, item: Claimed, outcome: ChargeOutcome, url: str) -> None:
        cur = await self._current(tx, item)
        if cur is None:
            return
        job, p = cur
        tx.batch_add(SETTLED, job["user_id"])
        await self.payments.record_outcome(tx, p, outcome, failure_reason="authentication_required")
        if job["status"] not in IN_FLIGHT:
            return
        self._end(tx, job, JobStatus.ACTION_REQUIRED, "authentication_required")
        await repo.set_config(
            tx, job["user_id"], state=ConfigState.ACTION_REQUIRED, paused_reason=PausedReason.AUTHENTICATION_REQUIRED,
            recovery_url=url, last_failure_reason="authentication_required",
        )
        tx.notify(
            BalanceEvent(
                user_id=job["user_id"],
                kind="action_required",
                message="Your bank asks you to confirm the auto-refill charge: open the link to pay and save the card",
                payment_url=url,
            )
        )

    async def _fail(
        self, tx: LedgerTx, item: Claimed, code: str, kind: Decline, outcome: ChargeOutcome | None = None
    ) -> None:
        cur = await self._current(tx, item)
        if cur is None:
            return
        job, p = cur
        tx.batch_add(SETTLED, job["user_id"])
        await self.payments.record_outcome(tx, p, outcome or ChargeOutcome("failed", code=code), failure_reason=code)
        if job["status"] not in IN_FLIGHT:
            return
        user = job["user_id"]
        cfg = await repo.set_config(tx, user, last_failure_reason=code[:200])
        if kind == Decline.CARD_GONE:
            reason = PausedReason.PAYMENT_METHOD_EXPIRED if code == "expired_card" else PausedReason.PAYMENT_METHOD_REQUIRED
            self._pause(tx, job, cfg, reason, f"the saved card cannot be charged ({code})")
            return
        declines = await self._declines(tx, user, current=p)  # this decline included
        exhausted = (
            kind == Decline.HARD
            or job["attempts"] >= self.s.refill_max_attempts
            or declines >= self.s.refill_max_declines_30d
        )
        if exhausted:
            tx.notify(BalanceEvent(user_id=user, kind="refill_failed", message=f"Auto-refill charge declined ({code})"))
            self._pause(tx, job, cfg, PausedReason.AUTO_REFILL_FAILED, f"declined {job['attempts']} time(s), last: {code}")
            return
        delay = self.backoff_seconds(job["attempts"])
        next_at = tx.now_us + int(delay * 1_000_000)
        repo.update_job(
            tx, job, status=JobStatus.RETRY_SCHEDULED, payment_id=None, next_run_at_us=next_at, lease_until_us=0,
            last_error=code[:200],
        )
        tx.notify(
            BalanceEvent(
                user_id=user,
                kind="refill_failed",
                message=f"Auto-refill charge declined ({code}); retry {job['attempts'] + 1} of "
                f"{self.s.refill_max_attempts} in about {delay / 3600:.1f} h",
            )
        )

    def backoff_seconds(self, attempts: int) -> float:
        """base * 2^(attempts-1), capped, with +-jitter so that retries of many
        accounts never line up."""
        s = self.s
        delay = min(s.refill_retry_base_seconds * 2 ** max(attempts - 1, 0), s.refill_retry_max_seconds)
        return delay * (1 + random.uniform(-s.refill_retry_jitter, s.refill_retry_jitter))
