"""Keys' SQL: the per-call lookup of a secret, key reads and usage reads."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, Table, and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from server.db.fastread import FastReader
from server.db.schema import api_keys
from server.ledger.tx import LedgerTx

# One indexed read per call (the secret's hash is unique): revocation is seen
# by the very next call, in every process, with no cache to invalidate.
BY_SECRET = "SELECT id, user_id, revoked_at_us, expires_at_us, created_by FROM api_keys WHERE secret_hash = ?"


class KeysRepository:
    def __init__(self, engine: AsyncEngine, fast: FastReader) -> None:
        self.engine = engine
        self.fast = fast

    async def by_secret(self, secret_hash: str) -> tuple[Any, ...] | None:
        return await self.fast.fetchrow(BY_SECRET, secret_hash)

    async def key(self, key_id: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            found = (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).mappings().first()
        return dict(found) if found is not None else None

    async def due(self, now_us: int, limit: int) -> list[tuple[str, str]]:
        """(key id, wallet owner) of keys with use recorded in a window that has
        ended by `now_us`: a range of the resets_at_us index, never every key."""
        async with self.engine.connect() as conn:
            return [(str(k), str(u)) for k, u in (await conn.execute(due_query(now_us, limit))).all()]

    async def page(self, user_id: str, limit: int, after: tuple[int, str] | None) -> list[dict[str, Any]]:
        """Keys of a wallet, newest first, after the (created_at_us, id) position."""
        q = select(api_keys).where(api_keys.c.user_id == user_id)
        if after is not None:
            at, kid = after
            q = q.where(or_(api_keys.c.created_at_us < at, and_(api_keys.c.created_at_us == at, api_keys.c.id < kid)))
        q = q.order_by(api_keys.c.created_at_us.desc(), api_keys.c.id.desc()).limit(limit)
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(q)).mappings().all()]


def due_query(now_us: int, limit: int) -> Select[Any]:
    c = api_keys.c
    return (
        select(c.id, c.user_id).where(c.resets_at_us > 0, c.resets_at_us <= now_us)
        .order_by(c.resets_at_us, c.id).limit(limit)
    )


async def count_keys(tx: LedgerTx, user_id: str) -> int:
    """Keys of a wallet, under the wallet's lock (the cap on keys per wallet)."""
    return int(await tx.fetch_scalar(select(func.count()).select_from(api_keys).where(api_keys.c.user_id == user_id)))


# What the budget guard reads of a key, in one statement per batch: what it
# checks and the counters (not the secret's hash, nor who created it when).
GUARD_COLUMNS = (
    "id", "user_id", "label", "revoked_at_us", "expires_at_us", "max_spend", "categories", "budgets",
    "hour_start_us", "hour_used", "day_start_us", "day_used", "month_start_us", "month_used", "lifetime_used",
    "resets_at_us",
)
COUNTER_COLUMNS = GUARD_COLUMNS[8:15]


async def guard_rows(tx: LedgerTx, key_ids: list[str]) -> list[Sequence[Any]]:
    """A batch's keys, locked in id order after the wallets' locks (PostgreSQL):
    read in this transaction, so a revocation or a change committed before it
    is what the batch sees. Each row is the values of GUARD_COLUMNS in order."""
    return await tx.sql.select_values(
        api_keys, "id", sorted(key_ids), order_by="id", lock=not tx.is_sqlite, columns=GUARD_COLUMNS
    )


# A group of rows read with the batch's load: (table, key column, keys).
LoadGroup = tuple[Table, str, list[Any]]


def prefetch_group(key_ids: list[str]) -> LoadGroup:
    """The batch's named keys as a group of its load (LedgerTx.load's `extra`)."""
    return api_keys, "id", key_ids


async def write_counters(tx: LedgerTx, rows: list[dict[str, Any]], moved: list[dict[str, Any]]) -> None:
    """The counters of the keys a batch used (id plus COUNTER_COLUMNS each; `moved`
    also their resets_at_us), with the batch's write-back (PostgreSQL: in its
    one statement)."""
    await tx.sql.update(api_keys, "id", COUNTER_COLUMNS, rows)
    await tx.sql.update(api_keys, "id", (*COUNTER_COLUMNS, "resets_at_us"), moved)


async def locked_key(tx: LedgerTx, key_id: str) -> dict[str, Any] | None:
    return await tx.rows(api_keys).get(key_id, lock=True)


def insert_key(tx: LedgerTx, row: dict[str, Any]) -> None:
    tx.rows(api_keys).insert(row)


def update_key(tx: LedgerTx, row: dict[str, Any], **values: Any) -> None:
    tx.rows(api_keys).update(row, **values)
