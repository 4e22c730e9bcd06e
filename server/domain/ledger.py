"""Balance, usage, history and earnings: the rules around the ledger."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from server import errors
from server.auth import Principal, Role
from server.clock import Clock
from server.config import Settings
from server.ledger.model import Kind
from server.ledger.ops import (
    Award,
    Capture,
    EnsureWallet,
    HoldResult,
    Idempotency,
    Release,
    Reserve,
    RevenueShare,
    Spend,
    SpendResult,
)
from server.ledger.repository import LedgerReader, UserStats, WalletState
from server.ledger.writer import LedgerWriter


@dataclass
class RefillStatus:
    enabled: bool = False
    threshold: int = 0
    paused_reason: str = ""


RefillLookup = Callable[[str], Awaitable[RefillStatus]]


async def _no_refill(user_id: str) -> RefillStatus:
    return RefillStatus()


class LedgerService:
    def __init__(self, writer: LedgerWriter, reader: LedgerReader, clock: Clock, settings: Settings) -> None:
        self.writer = writer
        self.reader = reader
        self.clock = clock
        self.settings = settings
        # The refill domain replaces this so CheckBalance reports its data.
        self.refill_lookup: RefillLookup = _no_refill

    @staticmethod
    def idem(principal: Principal, method: str, request_id: str, fingerprint: str) -> Idempotency:
        return Idempotency.of(principal.role.value, principal.subject, method, request_id, fingerprint)

    # ---- balances --------------------------------------------------------------------

    async def wallet(self, user_id: str, *, with_lots: bool = False) -> WalletState:
        state = await self.reader.wallet(user_id, with_lots=with_lots)
        now = self.clock.now_us()
        if state is None or state.period_end_us <= now or 0 < state.next_expiry_us <= now:
            # New user (free allowance), a period that ended, or an allowance lot
            # that ended before its period did (the free month of a user now on
            # Pro): let the writer create or roll the wallet over, exactly once.
            await self.writer.submit(EnsureWallet(user_id))
            state = await self.reader.wallet(user_id, with_lots=with_lots)
        assert state is not None
        return state

    async def check_balance(self, principal: Principal) -> tuple[WalletState, RefillStatus]:
        state = await self.wallet(principal.subject)
        return state, await self.refill_lookup(principal.subject)

    async def get_balance(self, principal: Principal, user_id: str) -> WalletState:
        return await self.wallet(principal.resolve_user(user_id), with_lots=True)

    # ---- usage ----------------------------------------------------------------------

    def _share(self, user_id: str, app_id: str, publisher: str) -> RevenueShare | None:
        if not app_id and not publisher:
            return None
        if not app_id or not publisher:
            raise errors.InvalidArgument(
                "app_id and publisher_user_id go together", reason="INVALID_REVENUE_SHARE"
            )
        if publisher == user_id:
            raise errors.InvalidArgument("a publisher cannot earn from their own spend", reason="SELF_REVENUE_SHARE")
        return RevenueShare(app_id, publisher, self.settings.revenue_share_percent)

    async def spend(
        self,
        principal: Principal,
        *,
        user_id: str,
        amount: int,
        request_id: str,
        fingerprint: str,
        category: str,
        description: str,
        metadata: dict[str, str],
        app_id: str,
        publisher_user_id: str,
    ) -> SpendResult:
        user = principal.resolve_user(user_id)
        op = Spend(
            user_id=user,
            amount=amount,
            category=category,
            description=description,
            metadata=metadata,
            share=self._share(user, app_id, publisher_user_id),
            idempotency=self.idem(principal, "Spend", request_id, fingerprint),
        )
        result: SpendResult = await self.writer.submit(op)
        return result

    async def reserve(
        self,
        principal: Principal,
        *,
        user_id: str,
        amount: int,
        ttl_seconds: float,
        request_id: str,
        fingerprint: str,
        category: str,
        description: str,
    ) -> HoldResult:
        user = principal.resolve_user(user_id)
        if ttl_seconds < 0 or ttl_seconds > self.settings.max_hold_ttl_seconds:
            raise errors.InvalidArgument(
                f"ttl must be between 1s and {self.settings.max_hold_ttl_seconds}s", reason="INVALID_TTL"
            )
        ttl = ttl_seconds or self.settings.default_hold_ttl_seconds
        op = Reserve(
            user_id=user,
            amount=amount,
            ttl_us=int(ttl * 1_000_000),
            category=category,
            description=description,
            idempotency=self.idem(principal, "Reserve", request_id, fingerprint),
        )
        result: HoldResult = await self.writer.submit(op)
        return result

    async def capture(
        self,
        principal: Principal,
        *,
        hold_id: str,
        amount: int,
        request_id: str,
        fingerprint: str,
        description: str,
        app_id: str,
        publisher_user_id: str,
    ) -> HoldResult:
        owner = None if principal.privileged else principal.subject
        hold = await self.reader.hold(hold_id)
        if hold is None or (owner and hold["user_id"] != owner):
            raise errors.NotFound("hold not found", reason="HOLD_NOT_FOUND")
        op = Capture(
            hold_id=hold_id,
            amount=amount,
            description=description,
            share=self._share(hold["user_id"], app_id, publisher_user_id),
            owner=owner,
            idempotency=self.idem(principal, "Capture", request_id, fingerprint),
        )
        result: HoldResult = await self.writer.submit(op)
        return result

    async def release(self, principal: Principal, *, hold_id: str, request_id: str, fingerprint: str) -> HoldResult:
        owner = None if principal.privileged else principal.subject
        op = Release(hold_id=hold_id, owner=owner, idempotency=self.idem(principal, "Release", request_id, fingerprint))
        result: HoldResult = await self.writer.submit(op)
        return result

    # ---- earnings -----------------------------------------------------------------------

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
            idempotency=self.idem(principal, "AwardCredits", request_id, fingerprint),
            # Per-user, per-source daily cap (BILLING_AWARD_DAILY_LIMIT_*), checked in the ledger batch.
            daily_limit=int(getattr(self.settings, f"award_daily_limit_{source}", 0)) * 1000,
        )
        result: SpendResult = await self.writer.submit(op)
        return result

    async def stats(self, principal: Principal, user_id: str) -> UserStats:
        return await self.reader.stats(principal.resolve_user(user_id))

    # ---- history ---------------------------------------------------------------------------

    async def history(
        self,
        principal: Principal,
        *,
        user_id: str,
        limit: int,
        before_id: int | None,
        kinds: list[Kind],
        start_us: int | None,
        end_us: int | None,
    ):  # type: ignore[no-untyped-def]
        user = principal.resolve_user(user_id)
        await self.wallet(user)
        return await self.reader.history(
            user, limit=limit, before_id=before_id, kinds=[str(k) for k in kinds], start_us=start_us, end_us=end_us
        )

    async def spending_report(self, principal: Principal, user_id: str, start_us: int | None, end_us: int | None):  # type: ignore[no-untyped-def]
        user = principal.resolve_user(user_id)
        now = self.clock.now_us()
        end = end_us or now + 1  # the window includes this instant
        start = start_us or end - 30 * 86400 * 1_000_000
        if start >= end:
            raise errors.InvalidArgument("start_time must be before end_time", reason="INVALID_TIME_RANGE")
        state = await self.wallet(user)
        rows = await self.reader.spending_by_category(user, start, end)
        return state, rows, start, end
