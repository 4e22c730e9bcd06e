"""SQL for payments and stored webhook events. Writes take the connection of the
ledger transaction they belong to (an exclusive `ops.Call`); reads use the
reader engine."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from server.db.schema import payments, users, webhook_events

Row = dict[str, Any]


async def get(conn: AsyncConnection, payment_id: str, *, lock: bool = False) -> Row | None:
    q = select(payments).where(payments.c.id == payment_id)
    if lock and conn.dialect.name == "postgresql":
        q = q.with_for_update()
    r = (await conn.execute(q)).mappings().first()
    return dict(r) if r else None


async def find(conn: AsyncConnection, *, session_id: str = "", payment_intent_id: str = "", charge_id: str = "") -> str | None:
    """The payment a Stripe object belongs to, by whichever id we know."""
    for col, value in (
        (payments.c.checkout_session_id, session_id),
        (payments.c.payment_intent_id, payment_intent_id),
        (payments.c.charge_id, charge_id),
    ):
        if value:
            pid = (await conn.execute(select(payments.c.id).where(col == value).limit(1))).scalar()
            if pid:
                return str(pid)
    return None


async def by_request_key(conn: AsyncConnection, request_key: str) -> Row | None:
    r = (await conn.execute(select(payments).where(payments.c.request_key == request_key))).mappings().first()
    return dict(r) if r else None


def new_payment(
    payment_id: str, user_id: str, kind: str, amount_cents: int, credits: int, now_us: int, **values: Any
) -> Row:
    """A pending payment row with every column; `values` sets the few that differ."""
    row: Row = {
        "id": payment_id,
        "user_id": user_id,
        "kind": kind,
        "status": "pending",
        "amount_cents": amount_cents,
        "currency": "usd",
        "credits": credits,
        "request_key": None,
        "fingerprint": "",
        "checkout_session_id": None,
        "payment_url": "",
        "expires_at_us": None,
        "payment_intent_id": None,
        "charge_id": None,
        "receipt_url": "",
        "failure_reason": "",
        "refunded_cents": 0,
        "refund_clawed": 0,
        "dispute_id": None,
        "dispute_clawed": 0,
        "created_at_us": now_us,
        "updated_at_us": now_us,
        "paid_at_us": None,
    }
    row.update(values)
    return row


async def insert_payment(conn: AsyncConnection, row: Row) -> None:
    await conn.execute(insert(payments).values(**row))


async def update_payment(conn: AsyncConnection, payment_id: str, **values: Any) -> None:
    await conn.execute(update(payments).where(payments.c.id == payment_id).values(**values))


async def customer_id(conn: AsyncConnection, user_id: str) -> str | None:
    q = select(users.c.stripe_customer_id).where(users.c.user_id == user_id)
    value = (await conn.execute(q)).scalar()
    return str(value) if value else None


async def event_seen(conn: AsyncConnection, event_id: str) -> bool:
    q = select(webhook_events.c.id).where(webhook_events.c.id == event_id)
    return (await conn.execute(q)).first() is not None


async def store_event(conn: AsyncConnection, row: Row) -> None:
    await conn.execute(insert(webhook_events).values(**row))


async def early_receipt(conn: AsyncConnection, payment_intent_id: str) -> tuple[str, str] | None:
    """(charge id, receipt URL) of a charge event of this PaymentIntent that
    arrived before the payment knew the PaymentIntent, newest first."""
    q = (
        select(webhook_events.c.payload)
        .where(webhook_events.c.stripe_ref == payment_intent_id, webhook_events.c.outcome == "unmatched")
        .order_by(webhook_events.c.created.desc(), webhook_events.c.received_at_us.desc())
    )
    for (payload,) in (await conn.execute(q)).all():
        try:
            charge = json.loads(payload)["data"]["object"]
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(charge, dict) and charge.get("receipt_url"):
            return str(charge.get("id") or ""), str(charge["receipt_url"])
    return None


async def list_for_user(
    engine: AsyncEngine, user_id: str, *, limit: int, before: tuple[int, str] | None
) -> list[Row]:
    """Newest first, keyset on (created_at_us, id)."""
    q = select(payments).where(payments.c.user_id == user_id)
    if before is not None:
        at, pid = before
        q = q.where(or_(payments.c.created_at_us < at, and_(payments.c.created_at_us == at, payments.c.id < pid)))
    q = q.order_by(payments.c.created_at_us.desc(), payments.c.id.desc()).limit(limit)
    async with engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(q)).mappings()]


async def read(engine: AsyncEngine, payment_id: str) -> Row | None:
    async with engine.connect() as conn:
        return await get(conn, payment_id)


async def stale_pending(engine: AsyncEngine, *, older_than_us: int, limit: int, kind: str = "checkout") -> list[Row]:
    """Pending payments of one kind (refills settle their own PaymentIntents)."""
    q = (
        select(payments)
        .where(payments.c.status == "pending", payments.c.kind == kind, payments.c.created_at_us <= older_than_us)
        .order_by(payments.c.created_at_us)
        .limit(limit)
    )
    async with engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(q)).mappings()]
