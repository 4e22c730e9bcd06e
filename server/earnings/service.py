"""Earnings rules: only service and admin principals award credits, never to
themselves, within a per-source daily limit checked in the ledger batch."""

from __future__ import annotations

from server.earnings.models import UserStats
from server.earnings.repository import EarningsRepository
from server.ledger.ops import Award, Idempotency, SpendResult
from server.ledger.writer import LedgerWriter
from server.platform import errors
from server.platform.auth import Principal, Role
from server.platform.config import Settings


class EarningsService:
    def __init__(self, writer: LedgerWriter, repo: EarningsRepository, settings: Settings) -> None:
        self.writer = writer
        self.repo = repo
        self.settings = settings

    async def award(
        self,
        principal: Principal,
        *,
        user_id: str,
        amount: int,
        reason: str,
        source: str,
        source_ref: str,
        request_id: str,
        fingerprint: str,
    ) -> SpendResult:
        principal.require(Role.SERVICE, Role.ADMIN, what="AwardCredits")
        if user_id == principal.subject:
            raise errors.PermissionDenied("nobody can award credits to themselves", reason="SELF_AWARD")
        op = Award(
            user_id=user_id,
            amount=amount,
            source=source,
            source_ref=source_ref,
            reason=reason,
            idempotency=Idempotency.of_request(principal, "AwardCredits", request_id, fingerprint),
            # Per-user, per-source daily cap (BILLING_AWARD_DAILY_LIMIT_*), checked in the ledger batch.
            daily_limit=int(getattr(self.settings, f"award_daily_limit_{source}", 0)) * 1000,
        )
        result: SpendResult = await self.writer.submit(op)
        return result

    async def stats(self, principal: Principal, user_id: str) -> UserStats:
        return await self.repo.stats(principal.resolve_user(user_id))
