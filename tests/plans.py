"""Query plans of a statement on both databases, for plan tests: SQLite's
EXPLAIN QUERY PLAN, and PostgreSQL's generic plan over a seeded table."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import asyncpg

from server.db.fastread import pg_params


def sqlite_plan(db_url: str, sql: str, args: list[Any]) -> str:
    conn = sqlite3.connect(db_url.split(":///", 1)[1])
    try:
        return " | ".join(str(r[-1]) for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", args))
    finally:
        conn.close()


async def pg_generic_plan_scans(db_url: str, sql: str, args: list[Any], account: str) -> list[str]:
    """The index (or node type) of each read of transfers in the generic plan
    PostgreSQL caches after five runs, once `account` holds 20,000 of 40,000
    transfers (the others spread over 50 accounts); nothing seeded is kept."""
    literals = ", ".join(str(a) if isinstance(a, int) else "'" + a.replace("'", "''") + "'" for a in args)
    conn = await asyncpg.connect(db_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        tx = conn.transaction()
        await tx.start()
        try:
            cols = "id, key, debit_account, credit_account, amount, kind, description, category, ref, metadata, " \
                   "debit_balance_after, credit_balance_after, created_at_us"
            await conn.execute(f"""
                INSERT INTO transfers ({cols})
                SELECT 1000000 + g, 'plan:' || g, CASE WHEN g > 20000 THEN $1 ELSE 'wallet:o' || (g % 50) END,
                       'system:platform_revenue', 1, 'spend', '', '', '', '{{}}', 0, 0, g
                FROM generate_series(1, 40000) AS g""", account)
            await conn.execute("ANALYZE transfers")
            await conn.execute(f"PREPARE plan_under_test AS {pg_params(sql)}")
            await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            raw = await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE plan_under_test({literals})")
        finally:
            await tx.rollback()
    finally:
        await conn.close()

    def nodes(node: dict) -> list[dict]:  # type: ignore[type-arg]
        return [node, *(n for child in node.get("Plans", []) for n in nodes(child))]

    return sorted(
        n.get("Index Name", n["Node Type"]) for n in nodes(json.loads(raw)[0]["Plan"])
        if n.get("Relation Name") == "transfers"
    )
