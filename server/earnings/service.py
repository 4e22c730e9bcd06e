"""Earnings rules: only service and admin principals award credits, never to
themselves, within a per-source daily limit checked in the ledger batch."""

from __future__ import annotations

from server.earnings.models import UserStats
from server.earnings.repository import EarningsRepository
from server.ledger.ops import Award, Idempotency, SpendResult
from server.ledger.writer import LedgerWriter
from server.orgs.models import Right, WalletOf
from server.platform import errors
from server.platform.auth import Principal, Role
from server.platform.config import Settings


class EarningsService:
    def __init__(self, writer: LedgerWriter, repo: EarningsRepository, settings: Settings, wallet_of: WalletOf) -> None:
        self.wallet_of = wallet_of
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

    async def wallet(self, principal: Principal, user_id: str, org_id: str) -> str:
        """Whose stats a request reads: the user's (as always), or an org's for its members."""
        return await self.wallet_of(principal, user_id, org_id, Right.READ)

    async def wallet_stats(self, wallet_owner: str) -> UserStats:
        """The stats of a wallet `wallet` has allowed."""
        return await self.repo.stats(wallet_owner)
