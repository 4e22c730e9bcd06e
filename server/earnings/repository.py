"""Earnings' SQL: what a user earned and spent, and from what."""

from __future__ import annotations

from sqlalchemy import and_, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from server.db.schema import accounts, transfers
from server.earnings.models import UserStats
from server.ledger.model import EARNED_KINDS, Kind, wallet_id


class EarningsRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def stats(self, user_id: str) -> UserStats:
        account = wallet_id(user_id)
        earned = [str(k) for k in EARNED_KINDS]
        q = select(
            func.coalesce(func.sum(transfers.c.amount), 0),
            # Published apps: the distinct apps (by id) that paid the user a
            # revenue share or an APP_USAGE award; both name the app in `ref`.
            func.count(func.distinct(transfers.c.ref)).filter(
                and_(
                    (transfers.c.kind == Kind.REVENUE_SHARE)
                    | and_(transfers.c.kind == Kind.AWARD, transfers.c.category == "app_usage"),
                    transfers.c.ref != "",
                )
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
