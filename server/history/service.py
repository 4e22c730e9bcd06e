"""History rules: a user reads only their own history; a report's window
defaults to the last 30 days and ends now."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from server.balance.service import BalanceService
from server.history.repository import HistoryRepository, UsageRow
from server.ledger.model import Kind, TransferView
from server.ledger.repository import WalletState
from server.orgs.models import Right
from server.platform import errors
from server.platform.auth import Principal
from server.platform.clock import MIN_US, Clock

DAY_US = 86_400_000_000
# How far the clock may have been set back since a transfer was stamped (a
# replica's clock ahead of this one's, a correction of the host's clock).
CLOCK_STEP_US = DAY_US


@dataclass
class UsageTotals:
    """Priced spend of one meter, or of one value of one of its dimensions."""

    quantity: int = 0
    spent: int = 0
    operations: int = 0

    def add(self, quantity: int, spent: int, operations: int) -> None:
        self.quantity += quantity
        self.spent += spent
        self.operations += operations


@dataclass
class MeterTotals(UsageTotals):
    meter: str = ""
    # (dimension, value) -> its totals, sorted when reported.
    dimensions: dict[tuple[str, str], UsageTotals] = field(default_factory=dict)


def by_meter(rows: list[tuple[str, str, int, int, int]]) -> list[MeterTotals]:
    """(meter, dimensions JSON, quantity, amount, operations) rows, summed by
    meter and, within it, by each dimension's value; meters by name."""
    meters: dict[str, MeterTotals] = {}
    for meter, dims, quantity, spent, ops in rows:
        totals = meters.get(meter)
        if totals is None:
            totals = meters[meter] = MeterTotals(meter=meter)
        totals.add(quantity, spent, ops)
        for name, value in json.loads(dims).items():
            totals.dimensions.setdefault((name, value), UsageTotals()).add(quantity, spent, ops)
    return [meters[m] for m in sorted(meters)]


def forecast(total: int, start_us: int, end_us: int, now_us: int, credits: int) -> tuple[int, float]:
    """(burn rate in millicredits per day, days left at that rate; -1 when
    nothing is spent). The rate is per elapsed day: a window reaching into the
    future must not dilute it (and a wholly future window has none)."""
    elapsed = min(end_us, now_us) - start_us
    burn = int(total / max(elapsed / DAY_US, 1 / 24)) if elapsed > 0 else 0
    return burn, (round(max(credits, 0) / burn, 1) if burn > 0 else -1.0)


class HistoryService:
    def __init__(self, balance: BalanceService, repo: HistoryRepository, clock: Clock) -> None:
        self.balance = balance
        self.repo = repo
        self.clock = clock

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
        category: str | None = None,
        key_id: str = "",
        org_id: str = "",
        member_id: str = "",
    ) -> tuple[list[TransferView], int | None]:
        """A page, and the position to resume from when the page stopped at
        its bound of rows examined (server/history/repository.py)."""
        user = await self.balance.wallet_of(principal, user_id, org_id, Right.READ)
        if start_us is not None and start_us > self.clock.now_us() + CLOCK_STEP_US:
            # Every transfer is stamped with the ledger's clock when written:
            # a window that begins after now holds none, and costs no read.
            return [], None
        await self.balance.wallet(user)  # a roll-over due now belongs to the page
        return await self.repo.page(
            user, limit=limit, before_id=before_id, kinds=[str(k) for k in kinds], start_us=start_us, end_us=end_us,
            category=category,
            key_id=key_id, member_id=member_id,
        )

    async def daily_spending(
        self, principal: Principal, user_id: str, days: int
    ) -> tuple[int, list[tuple[int, str, int, int]]]:
        """Spending of the last `days` UTC days (today included) by day and
        category: (first day's start, rows of (day index, category, amount, operations))."""
        user = principal.resolve_user(user_id)
        if not 1 <= days <= 366:
            raise errors.InvalidArgument("days must be between 1 and 366", reason="INVALID_TIME_RANGE")
        start = (self.clock.now_us() // DAY_US - days + 1) * DAY_US
        rows = await self.repo.daily_spending(user, start, start + days * DAY_US)
        return start, [((day * DAY_US - start) // DAY_US, c, a, n) for day, c, a, n in rows]

    async def spending_report(
        self, principal: Principal, user_id: str, start_us: int | None, end_us: int | None, key_id: str = "",
        org_id: str = "", member_id: str = "",
    ) -> tuple[WalletState, list[tuple[str, int, int]], list[tuple[str, int, int]], int, int]:
        user = await self.balance.wallet_of(principal, user_id, org_id, Right.READ)
        now = self.clock.now_us()
        end = end_us or now + 1  # the window includes this instant
        # A window ending in the first days of year 1 starts at the first instant.
        start = start_us or max(end - 30 * DAY_US, MIN_US)
        if start >= end:
            raise errors.InvalidArgument("start_time must be before end_time", reason="INVALID_TIME_RANGE")
        state = await self.balance.wallet(user)
        # A window holding more than the bound is reported from a later start.
        start = await self.repo.window_start(user, start, end)
        rows = await self.repo.spending_by_category(user, start, end, key_id, member_id)
        by_key = await self.repo.spending_by_key(user, start, end, key_id, member_id)
        return state, rows, by_key, start, end

    async def usage_of(self, transfers: list[TransferView]) -> dict[int, UsageRow]:
        """What the priced transfers of a page used, by transfer id (history/repository.py's usage_of)."""
        return await self.repo.usage_of([t.id for t in transfers])

    async def spending_by_meter(
        self, principal: Principal, user_id: str, org_id: str, start_us: int, end_us: int, key_id: str = "",
        member_id: str = "",
    ) -> list[MeterTotals]:
        """A wallet's priced spend in a report's window (as `spending_report` answered it), by meter."""
        user = await self.balance.wallet_of(principal, user_id, org_id, Right.READ)
        return by_meter(await self.repo.spending_by_usage(user, start_us, end_us, key_id, member_id))

    async def spending_by_member(
        self, principal: Principal, org_id: str, start_us: int, end_us: int, key_id: str = "", member_id: str = ""
    ) -> list[tuple[str, int, int]]:
        """An org wallet's spend in a report's window (as `spending_report` answered it), by member."""
        user = await self.balance.wallet_of(principal, "", org_id, Right.READ)
        return await self.repo.spending_by_member(user, start_us, end_us, key_id, member_id)
