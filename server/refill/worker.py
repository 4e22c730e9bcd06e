"""The refill worker: claims durable jobs, charges the saved card off-session
and records the outcome. Claiming goes through the single ledger writer (on
PostgreSQL with FOR UPDATE SKIP LOCKED, so replicas never share a job); the
Stripe call happens between two short transactions, never inside one."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any

from server.ledger import keys
from server.ledger.model import BalanceEvent, wallet_id
from server.ledger.ops import Call
from server.ledger.tx import LedgerTx
from server.payments import repository as payrepo
from server.payments import webhooks
from server.platform import errors
from server.platform.auth import Principal, Role
from server.platform.clock import month_bounds
from server.platform.metrics import METRICS
from server.refill import repository as repo
from server.refill.service import (
    ACCOUNT_FLAGGED,
    AUTO_REFILL_FAILED,
    PAYMENT_METHOD_REQUIRED,
    RefillService,
    dollars,
    finish_success,
    skip_set,
)

log = logging.getLogger(__name__)

Row = dict[str, Any]

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


@dataclass
class Claimed:
    job: Row
    payment_id: str
    customer_id: str
    payment_method_id: str
    setup_intent_id: str
    payment_intent_id: str


class RefillWorker:
    def __init__(self, service: RefillService, *, batch: int = 20) -> None:
        self.service = service
        self.s = service.settings
        self.writer = service.writer
        self.gateway = service.gateway
        self.batch = batch

    async def run(self) -> int:
        if not self.gateway.configured:
            return 0
        claimed: list[Claimed] = await self.writer.submit(Call(fn=self._claim))
        for item in claimed:
            try:
                await self._charge(item)
            except Exception:
                # The lease expires and the job is claimed again, with the same attempt id.
                log.exception("refill attempt failed unexpectedly", extra={"job": item.job["id"]})
        return len(claimed)

    # ---- claim (one transaction) ---------------------------------------------------------

    async def _claim(self, tx: LedgerTx) -> list[Claimed]:
        out: list[Claimed] = []
        for job in await repo.claimable(tx.conn, tx.now_us, self.batch):
            item = await self._prepare(tx, job)
            if item is not None:
                out.append(item)
        return out

    async def _end(self, tx: LedgerTx, job: Row, status: str, error: str) -> None:
        await repo.update_job(tx.conn, job["id"], status=status, last_error=error[:200], lease_until_us=0, updated_at_us=tx.now_us)
        job["status"] = status

    async def _prepare(self, tx: LedgerTx, job: Row) -> Claimed | None:
        user = job["user_id"]
        cfg = await repo.config(tx.conn, user)
        wallet = await tx.wallet(user)
        if job["payment_id"]:
            p = await payrepo.get(tx.conn, job["payment_id"], lock=True)
            if p is not None and p["status"] in webhooks.CREDITED:
                await finish_success(tx, job, p)  # the webhook settled it while we were away
                return None
            if p is not None and p["status"] == webhooks.PENDING:
                return await self._lease(tx, job, cfg, p)  # same attempt, same idempotency key
            job["payment_id"] = None
        # A new attempt: every gate is checked under the transaction.
        if cfg is None or not cfg["enabled"] or cfg["state"] != repo.ACTIVE:
            await self._end(tx, job, "skipped", "auto-refill disabled or paused")
            return None
        if wallet["balance"] >= cfg["threshold"]:
            await self._end(tx, job, "skipped", "balance is above the threshold again")
            return None
        if tx.user(user)["flagged_reason"]:  # e.g. a config an older release left active on a flagged account
            await self._pause(tx, job, ACCOUNT_FLAGGED, "a payment on this account is disputed")
            return None
        if not cfg["payment_method_id"] and not cfg["setup_intent_id"]:
            await self._pause(tx, job, PAYMENT_METHOD_REQUIRED, "no saved card")
            return None
        # The month is [start, end): blocked until `end`, the first instant of the next UTC month.
        start, end = month_bounds(tx.now_us)
        used = await repo.month_used_cents(tx.conn, user, (start, end))
        if used + job["amount_cents"] > self.s.refill_monthly_cap_cents:
            METRICS.refill_attempts.labels("cap_reached").inc()
            await self._end(tx, job, "skipped", "monthly cap reached")
            await repo.update_config(
                tx.conn, user, cap_blocked_until_us=end, last_failure_reason="MONTHLY_CAP_REACHED", updated_at_us=tx.now_us
            )
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
        if await repo.declines_in_window(tx.conn, user, tx.now_us) >= self.s.refill_max_declines_30d:
            await self._pause(tx, job, AUTO_REFILL_FAILED, "too many declined charges in 30 days")
            return None
        attempt = job["attempts"] + 1
        pid = keys.refill_attempt(job["id"][4:], attempt)
        p = payrepo.new_payment(pid, user, "auto_refill", job["amount_cents"], job["credits"], tx.now_us)
        await payrepo.insert_payment(tx.conn, p)
        job.update(payment_id=pid, attempts=attempt)
        await repo.update_job(tx.conn, job["id"], payment_id=pid, attempts=attempt)
        return await self._lease(tx, job, cfg, p)

    async def _lease(self, tx: LedgerTx, job: Row, cfg: Row | None, p: Row) -> Claimed:
        lease = tx.now_us + int(self.s.refill_lease_seconds * 1_000_000)
        await repo.update_job(tx.conn, job["id"], status="running", lease_until_us=lease, updated_at_us=tx.now_us)
        job["status"] = "running"
        cfg = cfg or {}
        return Claimed(
            job=job,
            payment_id=p["id"],
            customer_id=str(tx.user(job["user_id"])["stripe_customer_id"] or ""),
            payment_method_id=str(cfg.get("payment_method_id") or ""),
            setup_intent_id=str(cfg.get("setup_intent_id") or ""),
            payment_intent_id=str(p.get("payment_intent_id") or ""),
        )

    async def _pause(self, tx: LedgerTx, job: Row, reason: str, detail: str) -> None:
        await self._end(tx, job, "paused" if reason != AUTO_REFILL_FAILED else "failed", detail)
        await repo.update_config(tx.conn, job["user_id"], state=repo.PAUSED, paused_reason=reason, updated_at_us=tx.now_us)
        METRICS.refill_attempts.labels("paused").inc()
        tx.notify(BalanceEvent(user_id=job["user_id"], kind="refill_paused", message=f"Auto-refill paused ({reason}): {detail}"))

    # ---- charge (Stripe, outside any transaction) ------------------------------------------

    async def _charge(self, item: Claimed) -> None:
        pm = item.payment_method_id
        if item.setup_intent_id:
            try:
                card = await self.service.card_details(await self._setup_pm(item.setup_intent_id) or pm)
                pm = card["payment_method_id"]
                await self._record(item, lambda tx: repo.update_config(tx.conn, item.job["user_id"], **card))
            except errors.DomainError:
                pass  # fall back to the card we had
        if not pm or not item.customer_id:
            await self._record(item, lambda tx: self._fail(tx, item, "payment_method_missing", gone=True))
            return
        try:
            if item.payment_intent_id:
                result = await self.gateway.retrieve_payment_intent(item.payment_intent_id)
            else:
                result = await self.gateway.charge_off_session(
                    customer_id=item.customer_id,
                    payment_method=pm,
                    amount_cents=item.job["amount_cents"],
                    metadata={"payment_id": item.payment_id, "user_id": item.job["user_id"], "kind": "auto_refill"},
                    idempotency_key=keys.stripe_refill_charge(item.payment_id),  # a retried call never charges twice
                )
        except errors.Unavailable:
            METRICS.refill_attempts.labels("network_error").inc()
            await self._record(item, lambda tx: self._retry_same_attempt(tx, item))
            return
        status = str(result.get("status") or "")
        pi_id = str(result.get("id") or "")
        if status == "succeeded":
            METRICS.refill_attempts.labels("succeeded").inc()
            charge = result.get("latest_charge")
            charge_id = str((charge.get("id") if isinstance(charge, dict) else charge) or "")
            await self._record(item, lambda tx: self._succeed(tx, item, pi_id, charge_id))
            return
        if status == "processing":
            await self._record(item, lambda tx: self._retry_same_attempt(tx, item))  # settle later from Stripe's state
            return
        code = str(result.get("decline_code") or result.get("code") or "")
        if status == "requires_action" or code in AUTH_CODES or result.get("code") in AUTH_CODES:
            METRICS.refill_attempts.labels("action_required").inc()
            url = await self._recovery_link(item)
            await self._record(item, lambda tx: self._action_required(tx, item, pi_id, url))
            return
        code = code or "card_declined"
        gone = code in CARD_GONE or str(result.get("code") or "") in CARD_GONE
        METRICS.refill_attempts.labels("paused" if gone else "declined").inc()
        await self._record(item, lambda tx: self._fail(tx, item, code, gone=gone, pi_id=pi_id))

    async def _setup_pm(self, setup_intent_id: str) -> str:
        si = await self.gateway.retrieve_setup_intent(setup_intent_id)
        pm = si.get("payment_method") if si.get("status") == "succeeded" else None
        return str((pm.get("id") if isinstance(pm, dict) else pm) or "")

    async def _recovery_link(self, item: Claimed) -> str:
        """A Checkout link for the same amount: paying it grants the credits and saves the card again."""
        user = item.job["user_id"]
        try:
            link = await self.service.payments.create_link(
                Principal(user, Role.USER),
                amount_cents=item.job["amount_cents"],
                request_id=f"refill-recovery-{item.payment_id}",
                fingerprint=f"refill-recovery:{item.payment_id}",
            )
            return str(link.payment_url)
        except errors.DomainError as exc:
            log.warning("recovery link failed", extra={"payment_id": item.payment_id, "reason": exc.reason})
            return ""

    async def _record(self, item: Claimed, fn: Any) -> None:
        await self.writer.submit(Call(fn=fn, accounts={wallet_id(item.job["user_id"])}))

    async def _current(self, tx: LedgerTx, item: Claimed) -> tuple[Row, Row] | None:
        job = await repo.job(tx.conn, item.job["id"], lock=True)
        p = await payrepo.get(tx.conn, item.payment_id, lock=True)
        if job is None or p is None or job["payment_id"] != item.payment_id:
            return None
        return job, p

    async def _succeed(self, tx: LedgerTx, item: Claimed, pi_id: str, charge_id: str) -> None:
        cur = await self._current(tx, item)
        if cur is None:
            return
        job, p = cur
        # Grants once (transfer key grant:{payment_id}); the webhook may have done it already.
        await webhooks.mark_paid(tx, p, payment_intent_id=pi_id, charge_id=charge_id)
        await finish_success(tx, job, p)

    async def _retry_same_attempt(self, tx: LedgerTx, item: Claimed) -> None:
        """Stripe did not answer: the same attempt (same idempotency key) runs again later."""
        cur = await self._current(tx, item)
        if cur is None or cur[0]["status"] not in repo.IN_FLIGHT:
            return
        next_at = tx.now_us + int(self.s.refill_network_retry_seconds * 1_000_000)
        await repo.update_job(
            tx.conn, item.job["id"], status="retry_scheduled", next_run_at_us=next_at, lease_until_us=0,
            last_error="stripe_unavailable", updated_at_us=tx.now_us,
        )

    async def _action_required(self, tx: LedgerTx, item: Claimed, pi_id: str, url: str) -> None:
        cur = await self._current(tx, item)
        if cur is None:
            return
        job, p = cur
        skip_set(tx).add(job["user_id"])
        await webhooks.mark_failed(tx, p, "authentication_required", payment_intent_id=pi_id)
        if job["status"] not in repo.IN_FLIGHT:
            return
        await self._end(tx, job, "action_required", "authentication_required")
        await repo.update_config(
            tx.conn, job["user_id"], state=repo.ACTION_REQUIRED, paused_reason="AUTHENTICATION_REQUIRED",
            recovery_url=url, last_failure_reason="authentication_required", updated_at_us=tx.now_us,
        )
        tx.notify(
            BalanceEvent(
                user_id=job["user_id"],
                kind="action_required",
                message="Your bank asks you to confirm the auto-refill charge: open the link to pay and save the card",
                payment_url=url,
            )
        )

    async def _fail(self, tx: LedgerTx, item: Claimed, code: str, *, gone: bool, pi_id: str = "") -> None:
        cur = await self._current(tx, item)
        if cur is None:
            return
        job, p = cur
        skip_set(tx).add(job["user_id"])
        await webhooks.mark_failed(tx, p, code, payment_intent_id=pi_id)
        if job["status"] not in repo.IN_FLIGHT:
            return
        user = job["user_id"]
        await repo.update_config(tx.conn, user, last_failure_reason=code[:200], updated_at_us=tx.now_us)
        if gone:
            reason = "PAYMENT_METHOD_EXPIRED" if code == "expired_card" else PAYMENT_METHOD_REQUIRED
            await self._pause(tx, job, reason, f"the saved card cannot be charged ({code})")
            return
        declines = await repo.declines_in_window(tx.conn, user, tx.now_us)  # this decline included
        exhausted = (
            code in NO_RETRY
            or job["attempts"] >= self.s.refill_max_attempts
            or declines >= self.s.refill_max_declines_30d
        )
        if exhausted:
            tx.notify(BalanceEvent(user_id=user, kind="refill_failed", message=f"Auto-refill charge declined ({code})"))
            await self._pause(tx, job, AUTO_REFILL_FAILED, f"declined {job['attempts']} time(s), last: {code}")
            return
        delay = self.backoff_seconds(job["attempts"])
        next_at = tx.now_us + int(delay * 1_000_000)
        await repo.update_job(
            tx.conn, job["id"], status="retry_scheduled", payment_id=None, next_run_at_us=next_at, lease_until_us=0,
            last_error=code[:200], updated_at_us=tx.now_us,
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
