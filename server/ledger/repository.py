"""Read side of the ledger: single-row balance reads and keyset history."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, func, literal, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from server.db.fastread import FastReader
from server.db.schema import accounts, holds, idempotency, lots, transfers, users
from server.ledger.model import EARNED_KINDS, Kind, LotKind, TransferView, wallet_id

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


@dataclass
class UserStats:
    credits_earned: int
    credits_spent: int
    apps_published: int
    challenges_completed: int
    app_revenue: int


WALLET_SQL = (
    "SELECT a.balance, a.pending, a.earned_total, a.spent_total, a.unlimited_overdraft, u.tier,"
    " u.monthly_credits, u.period_start_us, u.period_end_us, u.flagged_reason,"
    " (SELECT min(l.expires_at_us) FROM lots l WHERE l.account_id = a.id AND l.kind = 'allowance'"
    "  AND l.remaining > 0 AND l.expires_at_us > 0)"
    " FROM accounts a JOIN users u ON u.user_id = a.user_id WHERE a.id = ?"
)


HISTORY_FIELDS = (
    "id", "kind", "amount", "debit_account", "credit_account", "debit_balance_after", "credit_balance_after",
    "description", "category", "ref", "created_at_us", "metadata",
)
HISTORY_COLUMNS = ", ".join(HISTORY_FIELDS)


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
                    (r["expires_at_us"] for r in state.lots if r["kind"] == LotKind.ALLOWANCE and r["expires_at_us"] > 0),
                    default=0,
                )
        return state

    async def history(
        self,
        user_id: str,
        *,
        limit: int,
        before_id: int | None,
        kinds: list[str],
        start_us: int | None,
        end_us: int | None,
    ) -> list[TransferView]:
        account = wallet_id(user_id)
        # Each side walks its own (account, id) index newest first; raw SQL on
        # the driver keeps a page at any depth to one index range scan.
        params: list[Any] = []
        extra = ""
        if before_id is not None:
            extra += " AND id < ?"
            params.append(before_id)
        if kinds:
            extra += f" AND kind IN ({','.join('?' * len(kinds))})"
            params.extend(kinds)
        if start_us is not None:
            extra += " AND created_at_us >= ?"
            params.append(start_us)
        if end_us is not None:
            extra += " AND created_at_us < ?"
            params.append(end_us)

        def side(column: str) -> str:
            return f"SELECT * FROM (SELECT {HISTORY_COLUMNS} FROM transfers WHERE {column} = ?{extra} ORDER BY id DESC LIMIT ?) AS {column[0]}"

        sql = f"{side('debit_account')} UNION ALL {side('credit_account')} ORDER BY id DESC LIMIT ?"
        args = [account, *params, limit, account, *params, limit, limit]
        rows = await self.fast.fetchall(sql, *args)
        return [TransferView.of(dict(zip(HISTORY_FIELDS, r, strict=True)), account) for r in rows]

    async def hold(self, hold_id: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(holds).where(holds.c.id == hold_id))).mappings().first()
        return dict(row) if row else None

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
        """Users whose period ended, or who hold allowance whose lot ended first
        (a month's free credits of a user whose Pro period runs on)."""
        ended = select(users.c.user_id).where(users.c.period_end_us <= now_us).limit(limit)
        stale = (
            select(accounts.c.user_id)
            .join(lots, lots.c.account_id == accounts.c.id)
            .where(lots.c.kind == str(LotKind.ALLOWANCE), lots.c.remaining > 0,
                   lots.c.expires_at_us > 0, lots.c.expires_at_us <= now_us)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            found = [r[0] for r in (await conn.execute(ended)).all()]
            found += [r[0] for r in (await conn.execute(stale)).all()]
        return list(dict.fromkeys(found))[:limit]

    async def stats(self, user_id: str) -> UserStats:
        account = wallet_id(user_id)
        earned = [str(k) for k in EARNED_KINDS]
        q = select(
            func.coalesce(func.sum(transfers.c.amount), 0),
            func.count(func.distinct(transfers.c.ref)).filter(
                and_(transfers.c.kind == Kind.REVENUE_SHARE, transfers.c.ref != "")
            ),
            func.count(func.distinct(transfers.c.ref)).filter(
                and_(transfers.c.kind == Kind.AWARD, transfers.c.category == "challenge")
            ),
            func.coalesce(
                func.sum(transfers.c.amount).filter(
                    (transfers.c.kind == Kind.REVENUE_SHARE)
                    | and_(transfers.c.kind == Kind.AWARD, transfers.c.category == "app_usage")
                ),
                0,
            ),
        ).where(transfers.c.credit_account == account, transfers.c.kind.in_(earned))
        async with self.engine.connect() as conn:
            earned_total, apps, challenges, app_revenue = (await conn.execute(q)).one()
            spent = (await conn.execute(select(accounts.c.spent_total).where(accounts.c.id == account))).scalar()
        return UserStats(
            credits_earned=int(earned_total),
            credits_spent=int(spent or 0),
            apps_published=int(apps),
            challenges_completed=int(challenges),
            app_revenue=int(app_revenue),
        )

    async def spending_by_category(self, user_id: str, start_us: int, end_us: int) -> list[tuple[str, int, int]]:
        account = wallet_id(user_id)
        q = (
            select(
                func.coalesce(func.nullif(transfers.c.category, ""), literal("other")).label("category"),
                func.sum(transfers.c.amount),
                func.count(),
            )
            .where(
                transfers.c.debit_account == account,
                transfers.c.kind.in_([str(Kind.SPEND), str(Kind.HOLD_CAPTURE)]),
                transfers.c.created_at_us >= start_us,
                transfers.c.created_at_us < end_us,
            )
            .group_by("category")
            .order_by(func.sum(transfers.c.amount).desc())
        )
        async with self.engine.connect() as conn:
            return [(r[0], int(r[1]), int(r[2])) for r in (await conn.execute(q)).all()]
