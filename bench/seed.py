"""Fast seeding of 1,000,000 transfers for one wallet, with direct bulk SQL.

This writes transfers only (no matching balance update): it is meant for a
throwaway benchmark database, which is never audited, so that the history
index can be measured at depth in seconds instead of hours of Spends.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import asyncpg

COLUMNS = (
    "id", "key", "debit_account", "credit_account", "amount", "kind", "description", "category",
    "ref", "metadata", "debit_balance_after", "credit_balance_after", "created_at_us",
)


def _rows(account: str, first_id: int, n: int) -> Iterator[tuple[Any, ...]]:
    base = time.time_ns() // 1000 - n
    for i in range(n):
        yield (first_id + i, f"bench-seed:{account}:{i}", account, "system:platform_revenue", 1, "spend",
               "Usage: bench", "bench", "", "{}", -i - 1, i + 1, base + i)


def seed_sqlite(path: str, account: str, n: int) -> int:
    conn = sqlite3.connect(path, timeout=60)
    try:
        top = conn.execute("SELECT coalesce(max(id), 0) FROM transfers").fetchone()[0]
        sql = f"INSERT INTO transfers ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(sql, _rows(account, top + 1, n))
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
        return int(top + n)
    finally:
        conn.close()


async def seed_postgres(dsn: str, account: str, n: int) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute("LOCK TABLE transfers IN EXCLUSIVE MODE")
            top = await conn.fetchval("SELECT greatest(coalesce(max(id), 0), (SELECT last_value FROM transfers_id_seq)) FROM transfers")
            await conn.copy_records_to_table("transfers", records=_rows(account, top + 1, n), columns=COLUMNS)
            await conn.execute("SELECT setval('transfers_id_seq', $1)", top + n)
        await conn.execute("ANALYZE transfers")
        return int(top + n)
    finally:
        await conn.close()
