"""Auto-refill configs and jobs. Inside a ledger batch they are read and
written through the batch (`tx.rows`: cached, staged, written back before its
single commit); outside, reads use the reader engine."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from server.db.schema import refill_configs, refill_jobs, users
from server.ledger.tx import LedgerTx
from server.refill.models import (
    DUE,
    IN_FLIGHT,
    ConfigState,
    JobStatus,
    RefillConfigRow,
    RefillJobRow,
)

DAY_US = 86400 * 1_000_000
# The rolling decline window is (now - 30 days, now]: a decline counts for
# exactly 30 days after its attempt was made and no longer at that instant,
# like a calendar period [start, end) that excludes its end.
DECLINE_WINDOW_US = 30 * DAY_US
# Users whose config this batch read through its rows (and may have changed):
# the trigger takes their staged row, not the committed one.
CONFIGS = "refill-configs"


LOOKUP_SQL = "SELECT enabled, threshold, paused_reason FROM refill_configs WHERE user_id = ?"


def new_config(user_id: str, now_us: int) -> RefillConfigRow:
    return {
        "user_id": user_id,
        "enabled": False,
        "threshold": 0,
        "amount_cents": 0,
        "state": ConfigState.ACTIVE,
        "paused_reason": "",
        "recovery_url": "",
        "last_failure_reason": "",
        "cap_blocked_until_us": 0,
        "created_at_us": now_us,
        "updated_at_us": now_us,
    }


# ---- inside a ledger batch ---------------------------------------------------------------

async def config(tx: LedgerTx, user_id: str) -> RefillConfigRow | None:
    """The user's config, locked for this batch (on PostgreSQL) and cached."""
    row = await tx.rows(refill_configs).get(user_id, lock=True)
    tx.batch_add(CONFIGS, user_id)
    return cast(RefillConfigRow | None, row)


def save_config(tx: LedgerTx, cfg: RefillConfigRow | None, user_id: str, **values: Any) -> RefillConfigRow:
    """Change `cfg` (read with `config` in this batch), or insert a new config with `values`."""
    rows = tx.rows(refill_configs)
    values.setdefault("updated_at_us", tx.now_us)
    if cfg is None:
        tx.batch_add(CONFIGS, user_id)
        return cast(RefillConfigRow, rows.insert({**new_config(user_id, tx.now_us), **values}))
    return cast(RefillConfigRow, rows.update(cast(dict[str, Any], cfg), **values))


async def set_config(tx: LedgerTx, user_id: str, **values: Any) -> RefillConfigRow | None:
    """Change the user's config if there is one."""
    cfg = await config(tx, user_id)
    return save_config(tx, cfg, user_id, **values) if cfg is not None else None


async def due_configs(tx: LedgerTx, user_ids: list[str], now_us: int) -> list[RefillConfigRow]:
    """The one query of the trigger hook (it runs in every ledger batch, so on
    the driver): enabled, active configs of these users. A config this batch
    read or changed is taken from the batch instead."""
    touched = tx.batch_set(CONFIGS)
    found = {
        r["user_id"]: r
        for r in await tx.read_in(refill_configs, "user_id", [u for u in user_ids if u not in touched])
    }
    out: list[RefillConfigRow] = []
    for user in user_ids:
        row = await tx.rows(refill_configs).get(user) if user in touched else found.get(user)
        if row is not None and row["enabled"] and row["state"] == ConfigState.ACTIVE and row["cap_blocked_until_us"] <= now_us:
            out.append(cast(RefillConfigRow, row))
    return out


async def alert_thresholds(tx: LedgerTx, user_ids: list[str]) -> dict[str, int]:
    """The thresholds of these users' enabled auto-refills (the events domain's
    default balance.low alert), as this batch sees them."""
    touched = tx.batch_set(CONFIGS)
    found: dict[str, Any] = {
        r["user_id"]: r for r in await tx.read_in(refill_configs, "user_id", [u for u in user_ids if u not in touched])
    }
    for user in user_ids:
        if user in touched:
            found[user] = await tx.rows(refill_configs).get(user)
    return {u: r["threshold"] for u, r in found.items() if r is not None and r["enabled"]}


def add_job_unless_in_flight(tx: LedgerTx, job: RefillJobRow) -> None:
    """A new job, unless the user already has one in flight (the partial unique
    index decides, so concurrent batches and replicas cannot add a second)."""
    tx.rows(refill_jobs).insert_unless_conflict(cast(dict[str, Any], job))


async def job(tx: LedgerTx, job_id: str, *, lock: bool = False) -> RefillJobRow | None:
    return cast(RefillJobRow | None, await tx.rows(refill_jobs).get(job_id, lock=lock))


async def job_by_payment(tx: LedgerTx, payment_id: str) -> RefillJobRow | None:
    return cast(RefillJobRow | None, await tx.rows(refill_jobs).find(payment_id=payment_id))


async def claimable(tx: LedgerTx, limit: int, user_id: str = "") -> list[RefillJobRow]:
    """Due jobs, plus running ones whose worker died (lease expired), of every
    user or of one. On PostgreSQL the rows are locked with SKIP LOCKED:
    replicas never share a job."""
    q = (
        select(refill_jobs)
        .where(
            or_(
                and_(refill_jobs.c.status.in_(DUE), refill_jobs.c.next_run_at_us <= tx.now_us),
                and_(refill_jobs.c.status == JobStatus.RUNNING, refill_jobs.c.lease_until_us < tx.now_us),
            )
        )
        .order_by(refill_jobs.c.next_run_at_us, refill_jobs.c.id)
        .limit(limit)
    )
    if user_id:
        q = q.where(refill_jobs.c.user_id == user_id)
    if not tx.is_sqlite:
        q = q.with_for_update(skip_locked=True)
    return cast(list[RefillJobRow], await tx.rows(refill_jobs).select(q))


def update_job(tx: LedgerTx, job: RefillJobRow, **values: Any) -> RefillJobRow:
    """Change `job` (read through this batch) in place."""
    values.setdefault("updated_at_us", tx.now_us)
    return cast(RefillJobRow, tx.rows(refill_jobs).update(cast(dict[str, Any], job), **values))


async def flagged(tx: LedgerTx, user_id: str) -> bool:
    """The account's flag, read without loading the wallet."""
    return bool(await tx.fetch_scalar(select(users.c.flagged_reason).where(users.c.user_id == user_id)))


# ---- outside batches (the reader engine) -------------------------------------------------

async def _config_on(conn: AsyncConnection, user_id: str) -> RefillConfigRow | None:
    r = (await conn.execute(select(refill_configs).where(refill_configs.c.user_id == user_id))).mappings().first()
    return cast(RefillConfigRow, dict(r)) if r else None


async def read_config(engine: AsyncEngine, user_id: str) -> RefillConfigRow | None:
    async with engine.connect() as conn:
        return await _config_on(conn, user_id)


async def read_overview(engine: AsyncEngine, user_id: str) -> tuple[RefillConfigRow | None, RefillJobRow | None]:
    """The config and the job in flight, on one connection."""
    async with engine.connect() as conn:
        cfg = await _config_on(conn, user_id)
        q = select(refill_jobs).where(refill_jobs.c.user_id == user_id, refill_jobs.c.status.in_(IN_FLIGHT))
        found = (await conn.execute(q)).mappings().first()
    return cfg, cast(RefillJobRow, dict(found)) if found else None
