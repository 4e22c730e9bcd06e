"""SQL for auto-refill configs and jobs. Writes take the connection of the
ledger transaction they belong to; reads use the reader engine."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from server.db.batchsql import BatchSql
from server.db.schema import payments, refill_configs, refill_jobs

Row = dict[str, Any]

IN_FLIGHT = ("queued", "running", "retry_scheduled")
ACTIVE, PAUSED, ACTION_REQUIRED = "active", "paused", "action_required"
# Attempts that took money (or hold it): they count against the monthly cap.
CHARGED = ("pending", "paid", "refunded", "partially_refunded", "disputed")
DAY_US = 86400 * 1_000_000
# The rolling decline window is (now - 30 days, now]: a decline counts for
# exactly 30 days after its attempt was made and no longer at that instant,
# like a calendar period [start, end) that excludes its end.
DECLINE_WINDOW_US = 30 * DAY_US


LOOKUP_SQL = "SELECT enabled, threshold, paused_reason FROM refill_configs WHERE user_id = ?"


async def config(conn: AsyncConnection, user_id: str) -> Row | None:
    r = (await conn.execute(select(refill_configs).where(refill_configs.c.user_id == user_id))).mappings().first()
    return dict(r) if r else None


async def read_config(engine: AsyncEngine, user_id: str) -> Row | None:
    async with engine.connect() as conn:
        return await config(conn, user_id)


def new_config(user_id: str, now_us: int) -> Row:
    return {
        "user_id": user_id,
        "enabled": False,
        "threshold": 0,
        "amount_cents": 0,
        "payment_method_id": None,
        "pm_brand": "",
        "pm_last4": "",
        "pm_exp_month": 0,
        "pm_exp_year": 0,
        "setup_intent_id": None,
        "state": ACTIVE,
        "paused_reason": "",
        "recovery_url": "",
        "last_failure_reason": "",
        "cap_blocked_until_us": 0,
        "created_at_us": now_us,
        "updated_at_us": now_us,
    }


async def upsert_config(conn: AsyncConnection, row: Row, *, exists: bool) -> None:
    if exists:
        values = {k: v for k, v in row.items() if k not in ("user_id", "created_at_us")}
        await conn.execute(update(refill_configs).where(refill_configs.c.user_id == row["user_id"]).values(**values))
    else:
        await conn.execute(insert(refill_configs).values(**row))


async def update_config(conn: AsyncConnection, user_id: str, **values: Any) -> None:
    await conn.execute(update(refill_configs).where(refill_configs.c.user_id == user_id).values(**values))


async def due_configs(sql: BatchSql, user_ids: list[str], now_us: int) -> list[Row]:
    """The one query of the trigger hook (it runs in every ledger batch, so on
    the driver): enabled, active configs of these users."""
    return [
        r for r in await sql.select_in(refill_configs, "user_id", user_ids)
        if r["enabled"] and r["state"] == ACTIVE and r["cap_blocked_until_us"] <= now_us
    ]


def insert_jobs_ignoring_in_flight(dialect: str) -> Any:
    """INSERT that skips users who already have a refill in flight (the partial
    unique index decides, so concurrent batches and replicas cannot add a second)."""
    if dialect == "postgresql":
        return postgresql.insert(refill_jobs).on_conflict_do_nothing()
    return sqlite.insert(refill_jobs).on_conflict_do_nothing()


async def in_flight_job(conn: AsyncConnection, user_id: str) -> Row | None:
    q = select(refill_jobs).where(refill_jobs.c.user_id == user_id, refill_jobs.c.status.in_(IN_FLIGHT))
    r = (await conn.execute(q)).mappings().first()
    return dict(r) if r else None


async def job(conn: AsyncConnection, job_id: str, *, lock: bool = False) -> Row | None:
    q = select(refill_jobs).where(refill_jobs.c.id == job_id)
    if lock and conn.dialect.name == "postgresql":
        q = q.with_for_update()
    r = (await conn.execute(q)).mappings().first()
    return dict(r) if r else None


async def job_by_payment(conn: AsyncConnection, payment_id: str) -> Row | None:
    r = (await conn.execute(select(refill_jobs).where(refill_jobs.c.payment_id == payment_id))).mappings().first()
    return dict(r) if r else None


async def claimable(conn: AsyncConnection, now_us: int, limit: int) -> list[Row]:
    """Due jobs, plus running ones whose worker died (lease expired). On
    PostgreSQL the rows are locked with SKIP LOCKED: replicas never share a job."""
    q = (
        select(refill_jobs)
        .where(
            or_(
                and_(refill_jobs.c.status.in_(("queued", "retry_scheduled")), refill_jobs.c.next_run_at_us <= now_us),
                and_(refill_jobs.c.status == "running", refill_jobs.c.lease_until_us < now_us),
            )
        )
        .order_by(refill_jobs.c.next_run_at_us, refill_jobs.c.id)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    return [dict(r) for r in (await conn.execute(q)).mappings()]


async def update_job(conn: AsyncConnection, job_id: str, **values: Any) -> None:
    await conn.execute(update(refill_jobs).where(refill_jobs.c.id == job_id).values(**values))


async def month_used_cents(
    conn: AsyncConnection, user_id: str, month: tuple[int, int], *, exclude: str = ""
) -> int:
    """Auto-refill charges of one calendar month, `month` = [start, end) from
    server.platform.clock.month_bounds: a charge made at or after `end` (by a replica
    whose clock is ahead) belongs to the next month, not this one."""
    start_us, end_us = month
    q = select(func.coalesce(func.sum(payments.c.amount_cents), 0)).where(
        payments.c.user_id == user_id,
        payments.c.kind == "auto_refill",
        payments.c.status.in_(CHARGED),
        payments.c.created_at_us >= start_us,
        payments.c.created_at_us < end_us,
    )
    if exclude:
        q = q.where(payments.c.id != exclude)
    return int((await conn.execute(q)).scalar_one())


async def declines_in_window(conn: AsyncConnection, user_id: str, now_us: int) -> int:
    """Declined auto-refill attempts in (now - 30 days, now] (DECLINE_WINDOW_US):
    one made exactly 30 days ago no longer counts. No upper bound: a decline
    another replica (clock ahead) just recorded counts too."""
    q = select(func.count()).where(
        payments.c.user_id == user_id,
        payments.c.kind == "auto_refill",
        payments.c.status == "failed",
        payments.c.created_at_us > now_us - DECLINE_WINDOW_US,
    )
    return int((await conn.execute(q)).scalar_one())
