"""The budget reset job reads only the keys that are due: a range of the
key_usage (resets_at_us, id) index, in the order it returns, on both databases (a
generic plan on PostgreSQL too), never a scan of every key; and the column
it reads follows each key's use."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
from sqlalchemy.dialects import postgresql, sqlite

from server.keys.repository import due_query
from tests.harness import Running
from tests.keys.helpers import CREDIT, DAY, HOUR, bearer, create_key, fund, spend_req
from tests.plans import sqlite_plan

SEEDED = 20_000


def _sqlite_sql(now_us: int, limit: int) -> tuple[str, list[Any]]:
    compiled = due_query(now_us, limit).compile(dialect=sqlite.dialect())
    return str(compiled), [compiled.params[p] for p in compiled.positiontup or []]


async def _pg_generic_plan(db_url: str, now_us: int, limit: int) -> dict[str, Any]:
    """The generic plan PostgreSQL caches for the job's read once api_keys
    and key_usage hold SEEDED keys, a few of them due; nothing seeded is kept."""
    compiled = due_query(now_us, limit).compile(dialect=postgresql.asyncpg.dialect())
    sql = str(compiled)
    for i, name in enumerate(compiled.positiontup or [], 1):
        sql = sql.replace(f"%({name})s", f"${i}")
    args = [compiled.params[p] for p in compiled.positiontup or []]
    conn = await asyncpg.connect(db_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        tx = conn.transaction()
        await tx.start()
        try:
            await conn.execute(f"""
                INSERT INTO api_keys (id, user_id, label, secret_hash, secret_prefix, budgets, categories, max_spend,
                    expires_at_us, revoked_at_us, created_by, created_at_us)
                SELECT 'plan' || g, 'u' || (g % 500), 'k', 'h' || g, 'fnk_', '[]', '[]', 0, 0, 0, '', g
                FROM generate_series(1, {SEEDED}) AS g""")
            await conn.execute(f"""
                INSERT INTO key_usage (id, hour_start_us, hour_used, day_start_us, day_used, month_start_us,
                    month_used, lifetime_used, resets_at_us)
                SELECT 'plan' || g, 0, 0, 0, 0, 0, 0, 0, CASE WHEN g % 4000 = 0 THEN g ELSE 0 END
                FROM generate_series(1, {SEEDED}) AS g""")
            await conn.execute("ANALYZE api_keys")
            await conn.execute("ANALYZE key_usage")
            await conn.execute(f"PREPARE plan_under_test AS {sql}")
            await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            literals = ", ".join(str(a) for a in args)
            raw = await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE plan_under_test({literals})")
        finally:
            await tx.rollback()
    finally:
        await conn.close()
    return json.loads(raw)[0]["Plan"]  # type: ignore[no-any-return]


def _nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node, *(n for child in node.get("Plans", []) for n in _nodes(child))]


async def test_the_reset_job_reads_only_due_keys_through_their_index(server: Running, db_url: str) -> None:
    now = server.clock.now_us()
    if db_url.startswith("sqlite"):
        plan = sqlite_plan(db_url, *_sqlite_sql(now, 500))
        assert "ix_key_usage_resets" in plan, plan
        assert "SCAN key_usage" not in plan and "SCAN api_keys" not in plan and "TEMP B-TREE" not in plan, plan
        return
    nodes = _nodes(await _pg_generic_plan(db_url, now, 500))
    reads = [n for n in nodes if n.get("Relation Name") == "key_usage"]
    assert [n.get("Index Name") for n in reads] == ["ix_key_usage_resets"], nodes
    # Each due key's owner: a lookup of its row by id.
    keys = [n for n in nodes if n.get("Relation Name") == "api_keys"]
    assert [n.get("Index Name") for n in keys] == ["pk_api_keys"], nodes
    assert not any(n["Node Type"] in ("Seq Scan", "Sort", "Incremental Sort") for n in nodes), nodes


async def test_a_key_is_due_at_the_end_of_its_earliest_used_window(server: Running) -> None:
    await fund(server, "rio", 10_000 * CREDIT)
    used = await create_key(server, "rio", [(HOUR, 100 * CREDIT), (DAY, 500 * CREDIT)])
    await create_key(server, "rio", [(HOUR, 100 * CREDIT)], label="idle")
    assert server.app is not None
    repo = server.app.keys.repo
    far = server.clock.now_us() + 400 * 86_400_000_000
    assert await repo.due(far, 100) == []  # no use recorded: never due
    await server.s.usage.Spend(spend_req(5 * CREDIT, "s1"), metadata=bearer(used.secret))
    hour_end = used.key.budgets[0].resets_at.ToMicroseconds()
    assert await repo.due(hour_end - 1, 100) == []
    assert await repo.due(hour_end, 100) == [(used.key.id, "rio")]
    # Past the hour, the job moves the hour's counter: the key is next due when
    # its day ends, unless that hour was the day's last (both moved: never due).
    server.clock.advance((hour_end - server.clock.now_us()) / 1e6 + 1)
    assert await server.run_job("reset_key_budgets") == 1
    assert await repo.due(server.clock.now_us(), 100) == []
    day_end = used.key.budgets[1].resets_at.ToMicroseconds()
    if day_end > hour_end:
        assert await repo.due(day_end - 1, 100) == []
        assert await repo.due(day_end, 100) == [(used.key.id, "rio")]
    else:
        assert await repo.due(far, 100) == []
