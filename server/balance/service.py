"""Balance rules: a wallet is created or rolled into its current period by the
ledger writer, exactly once, before anyone reads it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from server.ledger.ops import EnsureWallet
from server.ledger.repository import LedgerReader, WalletState
from server.ledger.writer import LedgerWriter
from server.orgs.models import Right, WalletOf
from server.platform.auth import Principal
from server.platform.clock import Clock
from server.refill.models import RefillStatus

RefillLookup = Callable[[str], Awaitable[RefillStatus]]


class BalanceService:
    def __init__(
        self, writer: LedgerWriter, reader: LedgerReader, clock: Clock, refill_status: RefillLookup, wallet_of: WalletOf
    ) -> None:
        self.writer = writer
        self.wallet_of = wallet_of
        self.reader = reader
        self.clock = clock
        self.refill_status = refill_status

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

    async def check_balance(self, principal: Principal, org_id: str = "") -> tuple[WalletState, RefillStatus]:
        user = await self.wallet_of(principal, "", org_id, Right.READ) if org_id else principal.own_user
        return await self.wallet(user), await self.refill_status(user)

    async def get_balance(self, principal: Principal, user_id: str, org_id: str = "") -> WalletState:
        return await self.wallet(await self.wallet_of(principal, user_id, org_id, Right.READ), with_lots=True)

    async def watched(self, principal: Principal, user_id: str, org_id: str = "") -> str:
        """The wallet a WatchBalance stream follows."""
        return await self.wallet_of(principal, user_id, org_id, Right.READ)
