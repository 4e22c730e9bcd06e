"""Payments and stored webhook events. Inside a ledger batch (an exclusive
`ops.Call`, `tx: LedgerTx`) rows are read and staged through the batch
(`tx.rows`, `tx.fetch`): they are written back with it, before its single
commit. Reads outside a batch use the reader engine."""

from __future__ import annotations

import json
from typing import Any, cast

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from server.db.schema import accounts, payments, saved_cards, transfers, users, webhook_events
from server.ledger.tx import LedgerTx
from server.payments.models import CREDITED, PaymentKind, PaymentRow, PaymentStatus

# Payments that took money (or hold it): what a monthly cap counts.
CHARGED = (PaymentStatus.PENDING, *CREDITED)

# ---- inside a ledger batch --------------------------------------------------------------


async def get(tx: LedgerTx, payment_id: str, *, lock: bool = False) -> PaymentRow | None:
    """The payment, read once per batch (and locked on PostgreSQL when `lock`)."""
    return cast("PaymentRow | None", await tx.rows(payments).get(payment_id, lock=lock))


async def find(
    tx: LedgerTx, *, session_id: str = "", payment_intent_id: str = "", charge_id: str = ""
) -> PaymentRow | None:
    """The payment a Stripe object belongs to, by whichever id we know, locked
    on PostgreSQL (the batch's cached row when it has one)."""
    for col, value in (
        (payments.c.checkout_session_id, session_id),
        (payments.c.payment_intent_id, payment_intent_id),
        (payments.c.charge_id, charge_id),
    ):
        if value:
            q = select(payments).where(col == value).limit(1)
            if not tx.is_sqlite:
                q = q.with_for_update()
            found = await tx.rows(payments).select(q)
            if found:
                return cast(PaymentRow, found[0])
    return None


async def by_request_key(tx: LedgerTx, request_key: str) -> PaymentRow | None:
    return cast("PaymentRow | None", await tx.rows(payments).find(request_key=request_key))


def new_payment(
    payment_id: str, user_id: str, kind: str, amount_cents: int, credits: int, now_us: int, **values: Any
) -> PaymentRow:
    """A pending payment row with every column; `kind` is a PaymentKind, `values`
    sets the few columns that differ."""
    row = PaymentRow(
        id=payment_id,
        user_id=user_id,
        kind=PaymentKind(kind),
        status=PaymentStatus.PENDING,
        amount_cents=amount_cents,
        currency="usd",
        credits=credits,
        request_key=None,
        fingerprint="",
        checkout_session_id=None,
        payment_url="",
        expires_at_us=None,
        payment_intent_id=None,
        charge_id=None,
        receipt_url="",
        failure_reason="",
        refunded_cents=0,
        refund_clawed=0,
        dispute_id=None,
        dispute_clawed=0,
        created_at_us=now_us,
        updated_at_us=now_us,
        paid_at_us=None,
    )
    row.update(values)  # type: ignore[typeddict-item]
    return row


async def insert_payment(tx: LedgerTx, row: PaymentRow) -> PaymentRow:
    """Stage the insert; the returned row is the batch's: update that one."""
    return cast(PaymentRow, tx.rows(payments).insert(cast("dict[str, Any]", row)))


def update_payment(tx: LedgerTx, p: PaymentRow, **values: Any) -> None:
    """Change a payment read or inserted through this batch, in place (staged)."""
    tx.rows(payments).update(cast("dict[str, Any]", p), **values)


async def event_seen(tx: LedgerTx, event_id: str) -> bool:
    return await tx.rows(webhook_events).get(event_id) is not None


async def store_event(tx: LedgerTx, row: dict[str, Any]) -> None:
    tx.rows(webhook_events).insert(row)


async def early_receipt(tx: LedgerTx, payment_intent_id: str) -> tuple[str, str] | None:
    """(charge id, receipt URL) of a charge event of this PaymentIntent that
    arrived before the payment knew the PaymentIntent, newest first."""
    q = (
        select(webhook_events.c.payload)
        .where(webhook_events.c.stripe_ref == payment_intent_id, webhook_events.c.outcome == "unmatched")
        .order_by(webhook_events.c.created.desc(), webhook_events.c.received_at_us.desc())
    )
    for found in await tx.fetch(q):
        try:
            charge = json.loads(found["payload"])["data"]["object"]
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(charge, dict) and charge.get("receipt_url"):
            return str(charge.get("id") or ""), str(charge["receipt_url"])
    return None


async def card(tx: LedgerTx, user_id: str) -> dict[str, Any] | None:
    """The user's saved card row, locked for this batch (on PostgreSQL) and cached."""
    return await tx.rows(saved_cards).get(user_id, lock=True)


async def save_card(tx: LedgerTx, user_id: str, **values: Any) -> None:
    rows = tx.rows(saved_cards)
    row = await rows.get(user_id, lock=True)
    if row is None:
        rows.insert({"user_id": user_id, **values, "updated_at_us": tx.now_us})
    else:
        rows.update(row, **values, updated_at_us=tx.now_us)


def _charged(user_id: str, kind: PaymentKind, month: tuple[int, int]) -> Any:
    start_us, end_us = month
    return select(func.coalesce(func.sum(payments.c.amount_cents), 0)).where(
        payments.c.user_id == user_id,
        payments.c.kind == kind,
        payments.c.status.in_(CHARGED),
        payments.c.created_at_us >= start_us,
        payments.c.created_at_us < end_us,
    )


async def charged_cents(tx: LedgerTx, user_id: str, kind: PaymentKind, month: tuple[int, int]) -> int:
    return int(await tx.fetch_scalar(_charged(user_id, kind, month)))


async def declined(tx: LedgerTx, user_id: str, kind: PaymentKind, after_us: int, *, except_id: str = "") -> int:
    """Payments of one kind that failed, made after `after_us`."""
    q = select(func.count()).where(
        payments.c.user_id == user_id,
        payments.c.kind == kind,
        payments.c.status == PaymentStatus.FAILED,
        payments.c.created_at_us > after_us,
    )
    if except_id:
        q = q.where(payments.c.id != except_id)
    return int(await tx.fetch_scalar(q))


# ---- outside a batch: the reader engine ---------------------------------------------------


async def read_card(engine: AsyncEngine, user_id: str) -> dict[str, Any] | None:
    async with engine.connect() as conn:
        r = (await conn.execute(select(saved_cards).where(saved_cards.c.user_id == user_id))).mappings().first()
    return dict(r) if r else None


async def read_charged_cents(engine: AsyncEngine, user_id: str, kind: PaymentKind, month: tuple[int, int]) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(_charged(user_id, kind, month))).scalar_one())


async def customer_id(conn: AsyncConnection, user_id: str) -> str | None:
    q = select(users.c.stripe_customer_id).where(users.c.user_id == user_id)
    value = (await conn.execute(q)).scalar()
    return str(value) if value else None


async def list_for_user(
    engine: AsyncEngine, user_id: str, *, limit: int, before: tuple[int, str] | None
) -> list[PaymentRow]:
    """Newest first, keyset on (created_at_us, id)."""
    q = select(payments).where(payments.c.user_id == user_id)
    if before is not None:
        at, pid = before
        q = q.where(or_(payments.c.created_at_us < at, and_(payments.c.created_at_us == at, payments.c.id < pid)))
    q = q.order_by(payments.c.created_at_us.desc(), payments.c.id.desc()).limit(limit)
    async with engine.connect() as conn:
        return [cast(PaymentRow, dict(r)) for r in (await conn.execute(q)).mappings()]


async def read(engine: AsyncEngine, payment_id: str) -> PaymentRow | None:
    async with engine.connect() as conn:
        r = (await conn.execute(select(payments).where(payments.c.id == payment_id))).mappings().first()
    return cast(PaymentRow, dict(r)) if r else None


async def by_session(engine: AsyncEngine, session_id: str) -> PaymentRow | None:
    q = select(payments).where(payments.c.checkout_session_id == session_id)
    async with engine.connect() as conn:
        r = (await conn.execute(q)).mappings().first()
    return cast(PaymentRow, dict(r)) if r else None


async def balance(engine: AsyncEngine, account_id: str) -> int:
    async with engine.connect() as conn:
        value = (await conn.execute(select(accounts.c.balance).where(accounts.c.id == account_id))).scalar()
    return int(value or 0)


async def balance_after_grant(engine: AsyncEngine, grant_key: str) -> int | None:
    """The wallet's balance right after a payment's credits were granted."""
    q = select(transfers.c.credit_balance_after).where(transfers.c.key == grant_key)
    async with engine.connect() as conn:
        value = (await conn.execute(q)).scalar()
    return int(value) if value is not None else None


async def stale_pending(
    engine: AsyncEngine, *, older_than_us: int, limit: int, kind: PaymentKind = PaymentKind.CHECKOUT
) -> list[PaymentRow]:
    """Pending payments of one kind (refills settle their own PaymentIntents)."""
    q = (
        select(payments)
        .where(
            payments.c.status == PaymentStatus.PENDING,
            payments.c.kind == kind,
            payments.c.created_at_us <= older_than_us,
        )
        .order_by(payments.c.created_at_us)
        .limit(limit)
    )
    async with engine.connect() as conn:
        return [cast(PaymentRow, dict(r)) for r in (await conn.execute(q)).mappings()]
