"""Every statement of the events domain. Inside a ledger batch rows go
through the batch (`tx.rows`, `tx.fetch`: its transaction, its locks, its
undo log); outside, reads use the reader engine."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from server.db.batchsql import Row
from server.db.schema import (
    accounts,
    balance_alerts,
    event_counter,
    events,
    lots,
    transfers,
    webhook_deliveries,
    webhook_endpoints,
)
from server.events.models import DeliveryStatus, EndpointStatus, EventView
from server.ledger.model import EXPIRING_KINDS, SPENT_KINDS
from server.ledger.tx import LedgerTx

# ---- the outbox (inside the batch) -------------------------------------------------------


async def allocate_ids(tx: LedgerTx, n: int) -> int:
    """The last of `n` new event ids. The counter's row stays locked until the
    batch commits, so ids are given out in commit order (no cursor can pass
    an id that commits later)."""
    q = (
        update(event_counter)
        .where(event_counter.c.id == 1)
        .values(last_id=event_counter.c.last_id + n)
        .returning(event_counter.c.last_id)
    )
    return int(await tx.fetch_scalar(q))


async def last_committed_id(tx: LedgerTx) -> int:
    return int(await tx.fetch_scalar(select(event_counter.c.last_id).where(event_counter.c.id == 1)) or 0)


def insert_event(tx: LedgerTx, row: Row) -> None:
    tx.rows(events).insert(row)


async def dedup_key_used(tx: LedgerTx, key: str) -> bool:
    return await tx.fetch_scalar(select(events.c.id).where(events.c.dedup_key == key)) is not None


# Read in every batch for its wallets: loaded with them (Registry.ledger_extension).
ALERT_TABLES = (balance_alerts,)


async def alert_rows(tx: LedgerTx, user_ids: list[str]) -> dict[str, Row]:
    """The alert settings of these wallets (on the driver: this runs in every
    batch; loaded with the wallets, see ALERT_TABLES)."""
    return {r["user_id"]: r for r in await tx.read_in(balance_alerts, "user_id", user_ids)}


async def alerts_in_batch(tx: LedgerTx, user_id: str) -> Row | None:
    return await tx.rows(balance_alerts).get(user_id, lock=True)


def save_alerts(tx: LedgerTx, row: Row | None, user_id: str, **values: Any) -> None:
    rows = tx.rows(balance_alerts)
    values["updated_at_us"] = tx.now_us
    if row is None:
        rows.insert({"user_id": user_id, **values})
    else:
        rows.update(row, **values)


def delete_alerts(tx: LedgerTx, row: Row) -> None:
    """Back to the defaults: an empty marker row would not be the defaults, so
    the row is cleared to the sentinel the service reads as 'defaults'."""
    tx.rows(balance_alerts).update(row, thresholds="null", expiry_lead_seconds=0, forecast_days=0,
                                   updated_at_us=tx.now_us)


# ---- the outbox (reads) -----------------------------------------------------------------


def _event(r: Any) -> EventView:
    return EventView(id=r["id"], type=r["type"], user_id=r["user_id"], created_at_us=r["created_at_us"],
                     payload=r["payload"])


async def list_events(
    engine: AsyncEngine, *, user_id: str | None, types: list[str], after_id: int, limit: int, newest: bool = False
) -> list[EventView]:
    """Events after `after_id`, oldest first; or with `newest`, the last `limit` of them, newest first."""
    order = events.c.id.desc() if newest else events.c.id
    q = select(events).where(events.c.id > after_id).order_by(order).limit(limit)
    if user_id is not None:
        q = q.where(events.c.user_id == user_id)
    if types:
        q = q.where(events.c.type.in_(types))
    async with engine.connect() as conn:
        return [_event(r) for r in (await conn.execute(q)).mappings().all()]


async def last_event_id(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(event_counter.c.last_id).where(event_counter.c.id == 1))).scalar() or 0)


async def read_alerts(engine: AsyncEngine, user_id: str) -> Row | None:
    async with engine.connect() as conn:
        r = (await conn.execute(select(balance_alerts).where(balance_alerts.c.user_id == user_id))).mappings().first()
    return dict(r) if r else None


async def expiring_lots(engine: AsyncEngine, now_us: int, horizon_us: int, limit: int) -> list[Row]:
    """Expiring lots (allowance, promotional) with credits left that end
    within (now, now + horizon], with their wallet's user (ix_lots_expiry)."""
    q = (
        select(lots.c.kind, lots.c.expires_at_us, lots.c.remaining, accounts.c.user_id)
        .join(accounts, accounts.c.id == lots.c.account_id)
        .where(lots.c.expires_at_us > now_us, lots.c.expires_at_us <= now_us + horizon_us, lots.c.remaining > 0,
               lots.c.kind.in_([str(k) for k in EXPIRING_KINDS]))
        .order_by(lots.c.expires_at_us, lots.c.id)
        .limit(limit)
    )
    async with engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(q)).mappings().all()]


async def longest_lead_seconds(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.max(balance_alerts.c.expiry_lead_seconds)))).scalar() or 0)


async def spend_rates(engine: AsyncEngine, since_us: int) -> list[Row]:
    """Per wallet that spent since the instant: what it spent and its balance now."""
    spent = (
        select(transfers.c.debit_account.label("account_id"), func.sum(transfers.c.amount).label("spent"))
        .where(transfers.c.created_at_us >= since_us, transfers.c.kind.in_([str(k) for k in SPENT_KINDS]),
               transfers.c.debit_account.like("wallet:%"))
        .group_by(transfers.c.debit_account)
        .subquery()
    )
    q = select(accounts.c.user_id, accounts.c.balance, spent.c.spent).join(spent, spent.c.account_id == accounts.c.id)
    async with engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(q)).mappings().all()]


async def alerts_of(engine: AsyncEngine, user_ids: list[str]) -> dict[str, Row]:
    if not user_ids:
        return {}
    async with engine.connect() as conn:
        q = select(balance_alerts).where(balance_alerts.c.user_id.in_(user_ids))
        return {r["user_id"]: dict(r) for r in (await conn.execute(q)).mappings().all()}


# ---- webhook endpoints ----------------------------------------------------------------


async def endpoint(tx: LedgerTx, endpoint_id: str, *, lock: bool = False) -> Row | None:
    return await tx.rows(webhook_endpoints).get(endpoint_id, lock=lock)


def insert_endpoint(tx: LedgerTx, row: Row) -> Row:
    return tx.rows(webhook_endpoints).insert(row)


def update_endpoint(tx: LedgerTx, row: Row, **values: Any) -> Row:
    values.setdefault("updated_at_us", tx.now_us)
    return tx.rows(webhook_endpoints).update(row, **values)


async def delete_endpoint(tx: LedgerTx, endpoint_id: str) -> None:
    """The endpoint and its deliveries (statements of this batch: a refused
    operation rolls the whole batch back, and deletion is never refused after this)."""
    await tx.fetch(delete(webhook_deliveries).where(webhook_deliveries.c.endpoint_id == endpoint_id)
                   .returning(webhook_deliveries.c.id))
    await tx.fetch(delete(webhook_endpoints).where(webhook_endpoints.c.id == endpoint_id)
                   .returning(webhook_endpoints.c.id))


async def endpoint_for_worker(tx: LedgerTx, endpoint_id: str) -> Row | None:
    """The endpoint, locked for this batch; None when another process holds it
    (PostgreSQL: SKIP LOCKED; it is working on this endpoint right now)."""
    q = select(webhook_endpoints).where(webhook_endpoints.c.id == endpoint_id)
    if not tx.is_sqlite:
        q = q.with_for_update(skip_locked=True)
    found = await tx.rows(webhook_endpoints).select(q)
    return found[0] if found else None


async def list_endpoints(engine: AsyncEngine, *, after: str, limit: int) -> list[Row]:
    q = select(webhook_endpoints).where(webhook_endpoints.c.id > after).order_by(webhook_endpoints.c.id).limit(limit)
    async with engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(q)).mappings().all()]


async def enabled_endpoints(engine: AsyncEngine) -> list[Row]:
    q = select(webhook_endpoints).where(webhook_endpoints.c.status == EndpointStatus.ENABLED)
    async with engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(q)).mappings().all()]


# ---- deliveries ------------------------------------------------------------------------


async def events_after(tx: LedgerTx, after_id: int, limit: int) -> list[Row]:
    q = select(events.c.id, events.c.type, events.c.user_id).where(events.c.id > after_id).order_by(events.c.id).limit(limit)
    return await tx.fetch(q)


def insert_delivery(tx: LedgerTx, row: Row) -> Row:
    """The row as staged (change that one, not `row`)."""
    return tx.rows(webhook_deliveries).insert(row)


async def due_heads(tx: LedgerTx, endpoint_id: str, now_us: int, limit: int) -> list[Row]:
    """An endpoint's deliveries to attempt now, oldest event first: each the
    oldest pending delivery of its wallet (in order per wallet), due, and not
    leased by an attempt in flight (read through the batch)."""
    d = webhook_deliveries
    p = d.alias("earlier")
    earlier = (
        select(p.c.id)
        .where(p.c.endpoint_id == d.c.endpoint_id, p.c.user_id == d.c.user_id,
               p.c.status == DeliveryStatus.PENDING, p.c.event_id < d.c.event_id)
        .exists()
    )
    q = (
        select(d)
        .where(d.c.endpoint_id == endpoint_id, d.c.status == DeliveryStatus.PENDING,
               d.c.next_attempt_at_us <= now_us, d.c.lease_until_us <= now_us, ~earlier)
        .order_by(d.c.event_id)
        .limit(limit)
    )
    return await tx.rows(webhook_deliveries).select(q)


async def delivery(tx: LedgerTx, delivery_id: str) -> Row | None:
    return await tx.rows(webhook_deliveries).get(delivery_id, lock=True)


def update_delivery(tx: LedgerTx, row: Row, **values: Any) -> Row:
    values.setdefault("updated_at_us", tx.now_us)
    return tx.rows(webhook_deliveries).update(row, **values)


async def event_rows(tx: LedgerTx, ids: list[int]) -> dict[int, Row]:
    if not ids:
        return {}
    return {r["id"]: r for r in await tx.fetch(select(events).where(events.c.id.in_(ids)))}


async def event_by_id(tx: LedgerTx, event_id: int) -> Row | None:
    return await tx.fetch_one(select(events).where(events.c.id == event_id))


async def list_deliveries(
    engine: AsyncEngine, endpoint_id: str, *, status: str, before_event: int, limit: int
) -> list[Row]:
    q = (
        select(webhook_deliveries, events.c.type.label("event_type"))
        .join(events, events.c.id == webhook_deliveries.c.event_id, isouter=True)
        .where(webhook_deliveries.c.endpoint_id == endpoint_id, webhook_deliveries.c.event_id < before_event)
        .order_by(webhook_deliveries.c.event_id.desc())
        .limit(limit)
    )
    if status:
        q = q.where(webhook_deliveries.c.status == status)
    async with engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(q)).mappings().all()]


# ---- retention --------------------------------------------------------------------------


async def prune(tx: LedgerTx, before_us: int, limit: int) -> int:
    """Up to `limit` events created before the instant, and finished
    deliveries of that age (a pending delivery keeps its event)."""
    old = (
        select(webhook_deliveries.c.id)
        .where(webhook_deliveries.c.created_at_us < before_us, webhook_deliveries.c.status != DeliveryStatus.PENDING)
        .limit(limit)
    )
    gone = await tx.fetch(delete(webhook_deliveries).where(webhook_deliveries.c.id.in_(old.scalar_subquery()))
                          .returning(webhook_deliveries.c.id))
    pending = select(webhook_deliveries.c.event_id).where(webhook_deliveries.c.status == DeliveryStatus.PENDING)
    old_events = (
        select(events.c.id)
        .where(events.c.created_at_us < before_us, events.c.id.not_in(pending))
        .order_by(events.c.id)
        .limit(limit)
    )
    pruned = await tx.fetch(delete(events).where(events.c.id.in_(old_events.scalar_subquery())).returning(events.c.id))
    return len(gone) + len(pruned)


def thresholds_json(values: list[int] | None) -> str:
    return json.dumps(values, separators=(",", ":"))

