"""Keys' SQL: the per-call lookup of a secret, key reads and usage reads."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, Table, and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from server.db.batchsql import Joined, joined_text
from server.db.fastread import FastReader
from server.db.schema import api_keys, key_usage
from server.keys.guard import json_amounts, json_texts
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
        """The key's row with its use counters."""
        async with self.engine.connect() as conn:
            found = (await conn.execute(_with_usage().where(api_keys.c.id == key_id))).mappings().first()
        return dict(found) if found is not None else None

    async def due(self, now_us: int, limit: int) -> list[tuple[str, str]]:
        """(key id, wallet owner) of keys with use recorded in a window that has
        ended by `now_us`: a range of the resets_at_us index, never every key."""
        async with self.engine.connect() as conn:
            return [(str(k), str(u)) for k, u in (await conn.execute(due_query(now_us, limit))).all()]

    async def page(self, user_id: str, limit: int, after: tuple[int, str] | None) -> list[dict[str, Any]]:
        """Keys of a wallet, newest first, after the (created_at_us, id) position."""
        q = _with_usage().where(api_keys.c.user_id == user_id)
        if after is not None:
            at, kid = after
            q = q.where(or_(api_keys.c.created_at_us < at, and_(api_keys.c.created_at_us == at, api_keys.c.id < kid)))
        q = q.order_by(api_keys.c.created_at_us.desc(), api_keys.c.id.desc()).limit(limit)
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(q)).mappings().all()]


def due_query(now_us: int, limit: int) -> Select[Any]:
    u = key_usage.c
    return (
        select(u.id, api_keys.c.user_id).join_from(key_usage, api_keys, api_keys.c.id == u.id)
        .where(u.resets_at_us > 0, u.resets_at_us <= now_us).order_by(u.resets_at_us, u.id).limit(limit)
    )


def _with_usage() -> Select[Any]:
    """Keys' rows with their use counters (a view's read, not the ledger's)."""
    return select(api_keys, *(key_usage.c[c] for c in COUNTER_COLUMNS)).join_from(
        api_keys, key_usage, key_usage.c.id == api_keys.c.id
    )


async def count_keys(tx: LedgerTx, user_id: str) -> int:
    """Keys of a wallet, under the wallet's lock (the cap on keys per wallet)."""
    return int(await tx.fetch_scalar(select(func.count()).select_from(api_keys).where(api_keys.c.user_id == user_id)))


# What the budget guard reads of a key, in one statement per batch: what it
# checks of the key's row (not the secret's hash, nor who created it when),
# then its counters from its usage row.
KEY_COLUMNS = ("id", "user_id", "label", "revoked_at_us", "expires_at_us", "max_spend", "categories", "budgets")
USAGE_COLUMNS = (
    "hour_start_us", "hour_used", "day_start_us", "day_used", "month_start_us", "month_used", "lifetime_used",
    "resets_at_us",
)
GUARD_COLUMNS = (*KEY_COLUMNS, *USAGE_COLUMNS)
COUNTER_COLUMNS = USAGE_COLUMNS[:7]

_GUARD_SELECT = "SELECT " + ", ".join(
    [f'k."{c}"' for c in KEY_COLUMNS] + [f'u."{c}"' for c in USAGE_COLUMNS]
) + ' FROM "api_keys" k JOIN "key_usage" u ON u."id" = k."id"'
# PostgreSQL locks the keys' rows, not their usage rows: a usage row is
# written only under its wallet's lock, and by a batch under its key's too.
_GUARD_PG = _GUARD_SELECT + ' WHERE k."id" = ANY($1::text[]) ORDER BY k."id" FOR UPDATE OF k'
# The ids as one text (the driver encodes an array's every element on its own).
_GUARD_PG_TEXT = _GUARD_SELECT + """ WHERE k."id" = ANY(string_to_array($1::text, ',')) ORDER BY k."id" FOR UPDATE OF k"""
_GUARD_SQLITE: dict[int, str] = {}
# SQLite with json_each: the ids as one JSON array, one statement text for
# any count (a text per count missed sqlite3's statement cache batch after
# batch, and each id was bound on its own), and the array drives the join:
# one key's seek per element (`IN (SELECT ...)` first built a temporary
# index of the ids). A batch's keys are unique; their order does not matter
# under SQLite's write lock.
_GUARD_FROM_JSON = ' FROM json_each(?1) AS j CROSS JOIN "api_keys" k ON k."id" = j.value JOIN "key_usage" u ON u."id" = k."id"'
_GUARD_SQLITE_JSON = "SELECT " + ", ".join(
    [f'k."{c}"' for c in KEY_COLUMNS] + [f'u."{c}"' for c in USAGE_COLUMNS]
) + _GUARD_FROM_JSON
# Up to this many keys, SQLite's per-key statements cost less than the JSON
# ones (a single Spend's batch: 2.71M -> 2.75M instructions a call with JSON).
JSON_FROM_KEYS = 4

# The common key, narrower (sqlite3 costs about 1k instructions a column of
# a row, most of it a lock and the GIL taken and given back per call): a key
# with no limit but its budgets and expiry (not revoked, any category and
# amount) whose counters are for the windows of the batch's instant (?2-?4:
# their starts) and next reset at ?5. Its `expires` column is the key's
# expiry; -1 for any other key (guard.read_plain_rows reads those whole).
# Its label is read only when a budget event is due (key_label).
PLAIN_COLUMNS = ("id", "user_id", "budgets", "expires", "hour_used", "day_used", "month_used", "lifetime_used")
_PLAIN_SQLITE = (
    'SELECT k."id", k."user_id", k."budgets", CASE WHEN k."revoked_at_us" = 0 AND k."max_spend" = 0 '
    'AND k."categories" = \'[]\' AND u."hour_start_us" = ?2 AND u."day_start_us" = ?3 AND u."month_start_us" = ?4 '
    'AND u."resets_at_us" = ?5 THEN k."expires_at_us" ELSE -1 END, '
    'u."hour_used", u."day_used", u."month_used", u."lifetime_used"' + _GUARD_FROM_JSON
)


async def guard_rows(tx: LedgerTx, key_ids: list[str]) -> list[Sequence[Any]]:
    """A batch's keys, locked in id order after the wallets' locks (PostgreSQL):
    read in this transaction, so a revocation or a change committed before it
    is what the batch sees. Each row is the values of GUARD_COLUMNS in order."""
    if not key_ids:
        return []
    if not tx.is_sqlite:
        ids = sorted(key_ids)
        text = joined_text(ids)
        return await (tx.sql.fetch(None, _GUARD_PG, ids) if text is None else tx.sql.fetch(None, _GUARD_PG_TEXT, text))
    if plain_rows_apply(tx, len(key_ids)):
        return await tx.sql.fetch(_GUARD_SQLITE_JSON, None, json_texts(key_ids))
    sql = _GUARD_SQLITE.get(len(key_ids))
    if sql is None:
        sql = _GUARD_SQLITE[len(key_ids)] = f'{_GUARD_SELECT} WHERE k."id" IN ({", ".join("?" * len(key_ids))})'
    return await tx.sql.fetch(sql, None, *key_ids)


def plain_rows_apply(tx: LedgerTx, keys: int) -> bool:
    """Whether plain_rows may read this many keys: SQLite with json_each, more than a few."""
    return tx.is_sqlite and keys > JSON_FROM_KEYS and tx.sql.json_each()


async def key_label(tx: LedgerTx, key_id: str) -> str:
    """A key's label, for its budget events (a key read by plain_rows)."""
    found = await tx.sql.scalar(
        'SELECT "label" FROM "api_keys" WHERE "id" = ?', 'SELECT "label" FROM "api_keys" WHERE "id" = $1', key_id
    )
    return str(found or "")


async def plain_rows(
    tx: LedgerTx, key_ids: list[str], starts: tuple[int, int, int], resets_at_us: int
) -> list[tuple[Any, ...]]:
    """The batch's keys (SQLite, when plain_rows_apply), each row the values of
    PLAIN_COLUMNS: the common key narrower, any other with `expires` -1."""
    return await tx.sql.fetch(_PLAIN_SQLITE, None, json_texts(key_ids), *starts, resets_at_us)  # type: ignore[return-value]


# A group of rows read with the batch's load: (table, key column, keys).
LoadGroup = tuple[Table | Joined, str, list[Any]]
# The guard's columns of a key and its usage row, as one jsonb array (not the
# two whole rows as objects: about half the decoding, and no dicts).
_GUARD_ARRAY = Joined(
    "jsonb_build_array(" + ", ".join([f'k."{c}"' for c in KEY_COLUMNS] + [f'u."{c}"' for c in USAGE_COLUMNS]) + ")",
    '"api_keys" k JOIN "key_usage" u ON u."id" = k."id"',
)


def prefetch_groups(key_ids: list[str]) -> list[LoadGroup]:
    """The batch's named keys with their usage rows, as a group of its load
    (LedgerTx.load's `extra`, PostgreSQL): each row the values of GUARD_COLUMNS."""
    return [(_GUARD_ARRAY, 'k."id"', key_ids)]


async def write_counters(tx: LedgerTx, rows: list[tuple[Any, ...]], moved: list[tuple[Any, ...]]) -> None:
    """The counters of the keys a batch used (the values of COUNTER_COLUMNS then
    the id; `moved`: of USAGE_COLUMNS, with resets_at_us, then the id), with the
    batch's write-back (PostgreSQL: in its one statement)."""
    await tx.sql.update_values(key_usage, "id", COUNTER_COLUMNS, rows)
    await tx.sql.update_values(key_usage, "id", USAGE_COLUMNS, moved)


# The counters that only moved by one amount in their windows (KeyGuard's
# counter_bumps), as additions, all in one statement: each row of an
# executemany was bound value by value (8 of them) and stepped on its own.
_BUMP_SQLITE = (
    'UPDATE "key_usage" SET "hour_used" = "hour_used" + j.value, "day_used" = "day_used" + j.value, '
    '"month_used" = "month_used" + j.value, "lifetime_used" = "lifetime_used" + j.value '
    'FROM json_each(?) AS j WHERE "key_usage"."id" = j.key'
)


def bumps_in_one(tx: LedgerTx, keys: int) -> bool:
    """Whether write_bumps may run for this many keys: more than a few, and
    SQLite's UPDATE ... FROM (3.33) and json_each."""
    return keys > JSON_FROM_KEYS and tx.sql.json_each() and sqlite3.sqlite_version_info >= (3, 33, 0)


def write_bumps(tx: LedgerTx, bumps: dict[str, int]) -> None:
    """Add each amount to the key's four use counters (SQLite, when bumps_in_one)."""
    if bumps:
        tx.sql.execute_now(_BUMP_SQLITE, (json_amounts(bumps),))


async def locked_key(tx: LedgerTx, key_id: str) -> dict[str, Any] | None:
    return await tx.rows(api_keys).get(key_id, lock=True)


def insert_key(tx: LedgerTx, row: dict[str, Any]) -> None:
    """A new key, and its usage row (nothing used yet)."""
    tx.rows(api_keys).insert(row)
    tx.rows(key_usage).insert({"id": row["id"], **dict.fromkeys(USAGE_COLUMNS, 0)})


def update_key(tx: LedgerTx, row: dict[str, Any], **values: Any) -> None:
    tx.rows(api_keys).update(row, **values)
