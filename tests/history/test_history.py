"""HistoryService.ListTransactions: keyset pages, filters, balance after."""

from __future__ import annotations

import itertools

from flownexus.billing.v1 import common_pb2, earnings_pb2, history_pb2, usage_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from server.grpc.validation import MAX_PAGE_SIZE
from tests.harness import auth


async def _list(server, **kw):  # type: ignore[no-untyped-def]
    return await server.s.history.ListTransactions(history_pb2.ListTransactionsRequest(**kw), metadata=auth("alice"))


async def test_pages_walk_the_whole_history_newest_first(server) -> None:
    for i in range(25):
        await server.s.usage.Spend(
            usage_pb2.SpendRequest(amount_millicredits=100 + i, request_id=f"s{i}", category="api"), metadata=auth("alice")
        )
    seen, token = [], ""
    while True:
        page = await _list(server, page_size=7, page_token=token)
        seen += list(page.transactions)
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == 26  # 25 spends + the allowance grant
    ids = [int(t.id) for t in seen]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 26
    assert seen[-1].type == common_pb2.TRANSACTION_TYPE_ALLOWANCE_GRANT
    # balance_after chains: each entry's balance is the previous one plus its amount
    for newer, older in itertools.pairwise(seen):
        assert newer.balance_after_millicredits == older.balance_after_millicredits + newer.amount_millicredits
    first = await _list(server)
    assert len(first.transactions) == 20  # the default page size


async def test_page_size_above_the_maximum_is_coerced_to_it(server) -> None:
    # AIP-158: 2**31-1 asks for "as many as you allow", i.e. MAX_PAGE_SIZE, not a refusal.
    for i in range(MAX_PAGE_SIZE + 4):
        await server.s.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=1, request_id=f"m{i}"), metadata=auth("alice"))
    for asked in (MAX_PAGE_SIZE + 1, 2**31 - 1):
        page = await _list(server, page_size=asked)
        assert len(page.transactions) == MAX_PAGE_SIZE
        assert page.next_page_token
    rest = await _list(server, page_size=2**31 - 1, page_token=page.next_page_token)
    assert len(rest.transactions) == 5 and not rest.next_page_token  # 104 spends + the allowance grant


async def test_filter_by_type_and_time(server) -> None:
    await server.s.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=500, request_id="a"), metadata=auth("alice"))
    t0 = server.clock.now_us()
    server.clock.advance(60)
    await server.s.earnings.AwardCredits(
        earnings_pb2.AwardCreditsRequest(
            user_id="alice", amount_millicredits=2_000, source=common_pb2.EARNING_SOURCE_REFERRAL,
            source_ref="ref-1", request_id="aw",
        ),
        metadata=auth("growth", "service"),
    )
    server.clock.advance(60)
    await server.s.usage.Spend(usage_pb2.SpendRequest(amount_millicredits=700, request_id="b"), metadata=auth("alice"))

    spends = await _list(server, types=[common_pb2.TRANSACTION_TYPE_SPEND])
    assert [t.amount_millicredits for t in spends.transactions] == [-700, -500]
    start, end = Timestamp(), Timestamp()
    start.FromMicroseconds(t0 + 1)
    end.FromMicroseconds(t0 + 90_000_000)
    window = await _list(server, start_time=start, end_time=end)
    assert [t.type for t in window.transactions] == [common_pb2.TRANSACTION_TYPE_AWARD]
    assert window.transactions[0].amount_millicredits == 2_000


async def test_spending_report_groups_by_category(server) -> None:
    for i, (cat, amount) in enumerate([("sandbox", 3_000), ("training", 5_000), ("sandbox", 1_000)]):
        await server.s.usage.Spend(
            usage_pb2.SpendRequest(amount_millicredits=amount, request_id=f"r{i}", category=cat), metadata=auth("alice")
        )
    report = await server.s.history.GetSpendingReport(history_pb2.GetSpendingReportRequest(), metadata=auth("alice"))
    assert {c.category: c.spent_millicredits for c in report.categories} == {"sandbox": 4_000, "training": 5_000}
    assert report.total_spent_millicredits == 9_000
    assert report.credits_millicredits == 91_000
    assert report.burn_rate_millicredits_per_day == 300  # 9,000 over the default 30 days
    assert report.days_left == round(91_000 / 300, 1)


async def test_a_deep_page_is_one_index_range_scan_under_a_generic_plan(server, db_url: str) -> None:
    """PostgreSQL caches a generic plan for a statement after five runs. For
    the credit side of a wallet's page, where nearly every row credits one
    system account, that plan walked the primary key backwards from the
    cursor past every other account's transfers (75 ms at 1,000,000 rows).
    Every page must be a range scan of the account's own index, whatever
    the plan."""
    import json
    import sqlite3

    import asyncpg

    from server.db.fastread import pg_params
    from server.history.repository import page_query

    sql, args = page_query("wallet:deep", limit=51, before_id=1_020_052, kinds=[], start_us=None, end_us=None)
    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(db_url.split(":///", 1)[1])
        try:
            plan = " | ".join(str(r[-1]) for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", args))
        finally:
            conn.close()
        assert "INDEX ix_transfers_debit_" in plan and "INDEX ix_transfers_credit_" in plan, plan
        assert "SCAN transfers" not in plan and "PRIMARY KEY" not in plan, plan
        return

    pg = pg_params(sql)
    literals = ", ".join(str(a) if isinstance(a, int) else "'" + a.replace("'", "''") + "'" for a in args)
    conn = await asyncpg.connect(db_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        tx = conn.transaction()
        await tx.start()
        try:
            # The bench's shape: other accounts' spends below the cursor, then
            # the deep wallet's; statistics of it; nothing of it is kept.
            cols = "id, key, debit_account, credit_account, amount, kind, description, category, ref, metadata, " \
                   "debit_balance_after, credit_balance_after, created_at_us"
            await conn.execute(f"""
                INSERT INTO transfers ({cols})
                SELECT 1000000 + g, 'plan:' || g, CASE WHEN g > 20000 THEN 'wallet:deep' ELSE 'wallet:o' || (g % 50) END,
                       'system:platform_revenue', 1, 'spend', '', '', '', '{{}}', 0, 0, g
                FROM generate_series(1, 40000) AS g""")
            await conn.execute("ANALYZE transfers")
            await conn.execute(f"PREPARE history_page AS {pg}")
            await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            raw = await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE history_page({literals})")
        finally:
            await tx.rollback()
    finally:
        await conn.close()

    def nodes(node: dict) -> list[dict]:  # type: ignore[type-arg]
        return [node, *(n for child in node.get("Plans", []) for n in nodes(child))]

    scans = [n for n in nodes(json.loads(raw)[0]["Plan"]) if n.get("Relation Name") == "transfers"]
    assert sorted(n.get("Index Name", n["Node Type"]) for n in scans) == [
        "ix_transfers_credit_newest", "ix_transfers_debit_newest"], scans
