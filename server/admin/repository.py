"""Admin's SQL, read outside the writer on the read engine: the audit trail and GetAccount."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select, text, tuple_
from sqlalchemy.ext.asyncio import AsyncEngine

from server.admin.models import AccountView, AdminActionView
from server.db.schema import (
    accounts,
    admin_actions,
    holds,
    lots,
    payments,
    refill_jobs,
    tier_subscriptions,
    users,
)
from server.ledger.model import LotKind, wallet_id
from server.ledger.repository import LOT_ORDER
from server.ledger.tx import LedgerTx

# GetAccount shows this many of the newest of each.
ACCOUNT_HOLDS = 100
ACCOUNT_REFILL_JOBS = 5
ACCOUNT_PAYMENTS = 10


def record_action(tx: LedgerTx, row: dict[str, Any]) -> None:
    """The audit row of an admin change, staged in the change's own batch."""
    tx.rows(admin_actions).insert(row)


class AdminRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def actions(
        self, *, user_id: str, action: str, actor: str, before: tuple[int, str] | None, limit: int
    ) -> list[AdminActionView]:
        t = admin_actions
        q = select(t).order_by(t.c.created_at_us.desc(), t.c.id.desc()).limit(limit)
        if user_id:
            q = q.where(t.c.user_id == user_id)
        if action:
            q = q.where(t.c.action == action)
        if actor:
            q = q.where(t.c.actor == actor)
        if before is not None:
            q = q.where(tuple_(t.c.created_at_us, t.c.id) < tuple_(*before))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).mappings().all()
        return [
            AdminActionView(
                id=r["id"], actor=r["actor"], action=r["action"], user_id=r["user_id"], reason=r["reason"],
                request_id=r["request_id"], transfer_ids=[int(i) for i in json.loads(r["transfer_ids"])],
                created_at_us=r["created_at_us"], details=r["details"],
            )
            for r in rows
        ]

    async def account(self, user_id: str) -> AccountView | None:
        """Everything GetAccount shows, on one connection of the read engine
        (one REPEATABLE READ snapshot on PostgreSQL); None without a wallet."""
        wallet_q = (
            select(accounts, users.c.tier, users.c.period_start_us, users.c.period_end_us, users.c.flagged_reason,
                   users.c.stripe_customer_id)
            .join(users, users.c.user_id == accounts.c.user_id)
            .where(accounts.c.id == wallet_id(user_id))
        )
        async with self.engine.connect() as conn:
            if self.engine.dialect.name == "postgresql":
                await conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
            wallet = (await conn.execute(wallet_q)).mappings().first()
            if wallet is None:
                return None
            lot_rows = (await conn.execute(
                select(lots).where(lots.c.account_id == wallet_id(user_id), lots.c.remaining > 0))).mappings().all()
            hold_rows = (await conn.execute(
                select(holds).where(holds.c.user_id == user_id, holds.c.status == "active")
                .order_by(holds.c.expires_at_us, holds.c.id).limit(ACCOUNT_HOLDS))).mappings().all()
            sub = (await conn.execute(
                select(tier_subscriptions).where(tier_subscriptions.c.user_id == user_id))).mappings().first()
            jobs = (await conn.execute(
                select(refill_jobs).where(refill_jobs.c.user_id == user_id)
                .order_by(refill_jobs.c.created_at_us.desc(), refill_jobs.c.id.desc())
                .limit(ACCOUNT_REFILL_JOBS))).mappings().all()
            pays = (await conn.execute(
                select(payments).where(payments.c.user_id == user_id)
                .order_by(payments.c.created_at_us.desc(), payments.c.id.desc())
                .limit(ACCOUNT_PAYMENTS))).mappings().all()
        return AccountView(
            user_id=user_id,
            wallet=dict(wallet),
            lots=sorted((dict(r) for r in lot_rows),
                        key=lambda r: (LOT_ORDER[LotKind(r["kind"])], r["expires_at_us"] == 0, r["expires_at_us"])),
            holds=[dict(r) for r in hold_rows],
            subscription=dict(sub) if sub else None,
            refill_jobs=[dict(r) for r in jobs],
            payments=[dict(r) for r in pays],
        )
