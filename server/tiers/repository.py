"""Tiers' SQL: the subscription row of a user. Inside a ledger batch it is read
and written through the batch (cached, staged, undone with a refused
operation); outside, on the read engine."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from server.db.schema import tier_subscriptions, users
from server.ledger.tx import LedgerTx
from server.tiers.models import SubscriptionRow, SubscriptionStatus


async def load_sub(tx: LedgerTx, user_id: str) -> SubscriptionRow | None:
    row = await tx.rows(tier_subscriptions).get(user_id, lock=True)
    return row  # type: ignore[return-value]


async def save_sub(tx: LedgerTx, user_id: str, **values: Any) -> SubscriptionRow:
    rows = tx.rows(tier_subscriptions)
    values["updated_at_us"] = tx.now_us
    row = await rows.get(user_id, lock=True)
    if row is None:
        fresh: dict[str, Any] = {
            "user_id": user_id, "status": SubscriptionStatus.NONE, "payment_url": "", "cancel_in_stripe": False,
            "created_at_us": tx.now_us, **values,
        }
        return rows.insert(fresh)  # type: ignore[return-value]
    return rows.update(row, **values)  # type: ignore[return-value]


async def user_of_subscription(tx: LedgerTx, subscription_id: str) -> str | None:
    q = select(tier_subscriptions.c.user_id).where(tier_subscriptions.c.stripe_subscription_id == subscription_id)
    found = await tx.fetch_scalar(q)
    return str(found) if found else None


async def user_of_customer(tx: LedgerTx, customer_id: str) -> str | None:
    """The subscription's customer first, else the customer of purchases."""
    q = select(tier_subscriptions.c.user_id).where(tier_subscriptions.c.stripe_customer_id == customer_id)
    found = await tx.fetch_scalar(q) or await tx.fetch_scalar(
        select(users.c.user_id).where(users.c.stripe_customer_id == customer_id)
    )
    return str(found) if found else None


async def read_sub(engine: AsyncEngine, user_id: str) -> SubscriptionRow | None:
    async with engine.connect() as conn:
        row = (await conn.execute(select(tier_subscriptions).where(tier_subscriptions.c.user_id == user_id))).mappings().first()
    return dict(row) if row else None  # type: ignore[return-value]


async def to_cancel_in_stripe(engine: AsyncEngine, *, limit: int) -> list[tuple[str, str]]:
    """(user, subscription) pairs to cancel in Stripe: lapsed, or moved to Enterprise."""
    q = select(tier_subscriptions.c.user_id, tier_subscriptions.c.stripe_subscription_id).where(
        tier_subscriptions.c.cancel_in_stripe.is_(True)
    ).limit(limit)
    async with engine.connect() as conn:
        return [(str(u), str(s)) for u, s in (await conn.execute(q)).all()]
