"""Read side of the ledger: balances (one row, on the raw driver), holds, due
jobs and stored responses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from server.db.fastread import FastReader
from server.db.schema import accounts, holds, idempotency, lots, transfer_usage, users
from server.ledger.model import EXPIRING_KINDS, LotKind, wallet_id

LOT_ORDER = {LotKind.ALLOWANCE: 0, LotKind.EARNED: 1, LotKind.PURCHASED: 2}


@dataclass
class WalletState:
    user_id: str
    credits: int
    pending: int
    earned_total: int
    spent_total: int
    unlimited_overdraft: bool
    tier: str
    monthly_credits: int | None
    period_start_us: int
    period_end_us: int
    flagged_reason: str | None
    # The soonest end of an allowance lot that still holds credits (0: none).
    next_expiry_us: int = 0
    lots: list[dict[str, Any]] = field(default_factory=list)


WALLET_SQL = (
    "SELECT a.balance, a.pending, a.earned_total, a.spent_total, a.unlimited_overdraft, u.tier,"
    " u.monthly_credits, u.period_start_us, u.period_end_us, u.flagged_reason,"
    " (SELECT min(l.expires_at_us) FROM lots l WHERE l.account_id = a.id"
    f" AND l.kind IN ({', '.join(repr(str(k)) for k in EXPIRING_KINDS)})"
    "  AND l.remaining > 0 AND l.expires_at_us > 0)"
    " FROM accounts a JOIN users u ON u.user_id = a.user_id WHERE a.id = ?"
)


async def stored_responses(engine: AsyncEngine, lookup_keys: tuple[str, ...]) -> dict[str, tuple[str, bytes]]:
    """Stored (fingerprint, response) of requests by idempotency key, for callers
    that answer a repeat before they call Stripe (Idempotency.replay)."""
    q = select(idempotency.c.key, idempotency.c.fingerprint, idempotency.c.response).where(
        idempotency.c.key.in_(lookup_keys)
    )
    async with engine.connect() as conn:
        return {r.key: (r.fingerprint, bytes(r.response)) for r in (await conn.execute(q)).all()}


class LedgerReader:
    def __init__(self, engine: AsyncEngine, fast: FastReader) -> None:
        self.engine = engine
        self.fast = fast

    async def stored_responses(self, lookup_keys: tuple[str, ...]) -> dict[str, tuple[str, bytes]]:
        return await stored_responses(self.engine, lookup_keys)

    async def wallet(self, user_id: str, *, with_lots: bool = False) -> WalletState | None:
        if not with_lots:
            # The hot path (CheckBalance, stream snapshots): one row, raw driver.
            r = await self.fast.fetchrow(WALLET_SQL, wallet_id(user_id))
            if r is None:
                return None
            return WalletState(user_id, r[0], r[1], r[2], r[3], bool(r[4]), r[5], r[6], r[7], r[8], r[9], r[10] or 0)
        q = (
            select(accounts, users.c.tier, users.c.monthly_credits, users.c.period_start_us,
                   users.c.period_end_us, users.c.flagged_reason)
            .join(users, users.c.user_id == accounts.c.user_id)
            .where(accounts.c.id == wallet_id(user_id))
        )
        async with self.engine.connect() as conn:
            if with_lots and self.engine.dialect.name == "postgresql":
                # One snapshot for the balance and its lots (they must add up).
                await conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
            row = (await conn.execute(q)).mappings().first()
            if row is None:
                return None
            state = WalletState(
                user_id=user_id,
                credits=row["balance"],
                pending=row["pending"],
                earned_total=row["earned_total"],
                spent_total=row["spent_total"],
                unlimited_overdraft=row["unlimited_overdraft"],
                tier=row["tier"],
                monthly_credits=row["monthly_credits"],
                period_start_us=row["period_start_us"],
                period_end_us=row["period_end_us"],
                flagged_reason=row["flagged_reason"],
            )
            if with_lots:
                rows = (await conn.execute(select(lots).where(lots.c.account_id == wallet_id(user_id)))).mappings()
                state.lots = sorted(
                    (dict(r) for r in rows if r["remaining"] > 0),
                    key=lambda r: (LOT_ORDER[LotKind(r["kind"])], r["expires_at_us"] == 0, r["expires_at_us"]),
                )
                state.next_expiry_us = min(
                    (r["expires_at_us"] for r in state.lots if r["kind"] in EXPIRING_KINDS and r["expires_at_us"] > 0),
                    default=0,
                )
        return state

    async def hold(self, hold_id: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(holds).where(holds.c.id == hold_id))).mappings().first()
        return dict(row) if row else None

    async def hold_and_usage(self, hold_id: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """A hold, and the usage it was reserved for (its Reserve's
        transfer_usage row, the first of the hold's) or None: a hold by amount."""
        q = (
            select(transfer_usage)
            .where(transfer_usage.c.hold_id == hold_id)
            .order_by(transfer_usage.c.transfer_id)
            .limit(1)
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(holds).where(holds.c.id == hold_id))).mappings().first()
            usage = (await conn.execute(q)).mappings().first() if row else None
        return (dict(row) if row else None), (dict(usage) if usage else None)

    async def expired_holds(self, now_us: int, limit: int = 500) -> list[str]:
        q = (
            select(holds.c.id)
            .where(holds.c.status == "active", holds.c.expires_at_us <= now_us)
            .order_by(holds.c.expires_at_us)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [r.id for r in (await conn.execute(q)).all()]

    async def users_due_rollover(self, now_us: int, limit: int = 500) -> list[str]:
        """Users whose period ended, or who hold credits whose lot ended first
        (a month's free credits of a user whose Pro period runs on, or
        promotional credits granted with an expiry)."""
        ended = select(users.c.user_id).where(users.c.period_end_us <= now_us).limit(limit)
        stale = (
            select(accounts.c.user_id)
            .join(lots, lots.c.account_id == accounts.c.id)
            .where(lots.c.kind.in_([str(k) for k in EXPIRING_KINDS]), lots.c.remaining > 0,
                   lots.c.expires_at_us > 0, lots.c.expires_at_us <= now_us)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            found = [r[0] for r in (await conn.execute(ended)).all()]
            found += [r[0] for r in (await conn.execute(stale)).all()]
        return list(dict.fromkeys(found))[:limit]
