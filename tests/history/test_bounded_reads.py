"""No read scans more rows than it returns: a ListTransactions filter that
matches nothing is one probe of an index per kind, any other filtered page
stops at BILLING_HISTORY_MAX_ROWS_EXAMINED and answers a short page with a
next_page_token (AIP-158), and a spending report over a long window sums at
most BILLING_REPORT_MAX_ROWS_EXAMINED rows of each kind (docs/fairness.md)."""

from __future__ import annotations

from typing import Any

from flownexus.billing.v1 import common_pb2, earnings_pb2, history_pb2, usage_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from server.history.repository import frontier_query, page_query, probe_query
from tests.harness import Running, auth, serving
from tests.plans import pg_generic_plan_scans, sqlite_plan

YEAR_9000_US = 221_845_392_000_000_000  # 9000-01-01T00:00:00Z


def ts(us: int) -> Timestamp:
    t = Timestamp()
    t.FromMicroseconds(us)
    return t


async def _spends(server: Any, user: str, n: int, tag: str) -> None:
    svc = auth("svc", "service")
    for start in range(0, n, 500):
        items = [
            usage_pb2.SpendRequest(user_id=user, amount_millicredits=1, request_id=f"{tag}{i}", category="bulk")
            for i in range(start, min(n, start + 500))
        ]
        r = await server.s.usage.SpendBatch(usage_pb2.SpendBatchRequest(requests=items), metadata=svc)
        assert all(x.HasField("response") for x in r.results)


async def _pages(server: Any, user: str, **filters: Any) -> list[history_pb2.ListTransactionsResponse]:
    out, token = [], ""
    while True:
        page = await server.s.history.ListTransactions(
            history_pb2.ListTransactionsRequest(page_size=10, page_token=token, **filters), metadata=auth(user)
        )
        out.append(page)
        token = page.next_page_token
        if not token:
            return out
        assert len(out) < 100, "pages never end"


async def test_a_filtered_page_stops_at_its_bound_of_rows_examined(db_url: str, clock: Any) -> None:
    async with serving(db_url, clock, history_max_rows_examined=100) as server:
        await server.s.earnings.AwardCredits(earnings_pb2.AwardCreditsRequest(
            user_id="deep", amount_millicredits=5, source=common_pb2.EARNING_SOURCE_CHALLENGE, source_ref="ch", request_id="aw",
        ), metadata=auth("svc", "service"))
        await _spends(server, "deep", 420, "s")
        pages = await _pages(server, "deep", types=[common_pb2.TRANSACTION_TYPE_AWARD])
        found = [t for p in pages for t in p.transactions]
        assert [t.type for t in found] == [common_pb2.TRANSACTION_TYPE_AWARD]
        # 50 rows per side per page: the award lies under 420 spends, so the
        # first pages come back empty, each with a token to go on.
        assert len(pages) >= 420 // 50
        assert all(not p.transactions and p.next_page_token for p in pages[:-1])
        # A filter matching most rows pages through all of them, once each.
        spends = [t for p in await _pages(server, "deep", types=[common_pb2.TRANSACTION_TYPE_SPEND])
                  for t in p.transactions]
        assert len(spends) == 420 and len({t.id for t in spends}) == 420
        assert [int(t.id) for t in spends] == sorted((int(t.id) for t in spends), reverse=True)


async def test_a_filter_matching_nothing_is_an_empty_last_page(server: Any) -> None:
    await _spends(server, "many", 300, "s")
    for filters in (
        {"types": [common_pb2.TRANSACTION_TYPE_REVERSAL]},
        {"start_time": ts(YEAR_9000_US)},
        {"end_time": ts(1_000_000)},
    ):
        page = await server.s.history.ListTransactions(
            history_pb2.ListTransactionsRequest(page_size=10, **filters), metadata=auth("many")
        )
        assert (list(page.transactions), page.next_page_token) == ([], ""), filters


def _count_reads(server: Running, monkeypatch: Any) -> list[str]:
    """Each read of the bulk reader, by kind: "probe" (inline on SQLite),
    "rows", and "hop" for each one handed to a reader thread."""
    bulk, reads = server.bulk_reader, list[str]()

    def counted(name: str, method: Any) -> Any:
        async def read(*args: Any) -> Any:
            reads.append(name)
            return await method(*args)
        return read

    monkeypatch.setattr(bulk, "probe", counted("probe", bulk.probe))
    monkeypatch.setattr(bulk, "fetchall", counted("rows", bulk.fetchall))
    monkeypatch.setattr(bulk, "_in_thread", counted("hop", bulk._in_thread))
    return reads


async def test_a_filter_matching_nothing_is_one_probe_without_a_thread_hop(
    server: Running, clock: Any, monkeypatch: Any,
) -> None:
    """A filter matching nothing is the probe alone, inline (no hop to a
    reader thread on SQLite), and a window that begins after now is no read
    at all: every transfer is stamped with the ledger's clock."""
    await _spends(server, "hops", 300, "s")
    reads = _count_reads(server, monkeypatch)

    async def page(**filters: Any) -> tuple[int, list[str]]:
        reads.clear()
        r = await server.s.history.ListTransactions(
            history_pb2.ListTransactionsRequest(page_size=10, **filters), metadata=auth("hops"))
        return len(r.transactions), list(reads)

    assert await page(types=[common_pb2.TRANSACTION_TYPE_REVERSAL]) == (0, ["probe"])
    assert await page(start_time=ts(YEAR_9000_US)) == (0, [])
    assert await page(start_time=ts(clock.now_us() + 3_600_000_000)) == (0, ["probe"])
    # A filter that matches reads its rows (on SQLite, on a reader thread),
    # then what the page's priced transfers used (transfer_usage, by id).
    hop = ["hop"] if server.bulk_reader.hops else []
    rows = ["rows", *hop]
    assert await page(start_time=ts(clock.now_us() - 3_600_000_000)) == (10, ["probe", *rows, *rows, *rows])


async def test_a_spending_report_over_a_long_window_sums_its_newest_rows(db_url: str, clock: Any) -> None:
    async with serving(db_url, clock, report_max_rows_examined=5) as server:
        svc = auth("svc", "service")
        first = clock.now_us()
        for i in range(12):
            clock.advance(60)
            await server.s.usage.Spend(usage_pb2.SpendRequest(
                user_id="long", amount_millicredits=10, request_id=f"r{i}", category="c"), metadata=svc)
        r = await server.s.history.GetSpendingReport(
            history_pb2.GetSpendingReportRequest(start_time=ts(first)), metadata=auth("long"))
        # The 5 newest spends, and the window they cover: the rest is asked
        # for with end_time at this start_time.
        assert [(c.category, c.operations) for c in r.categories] == [("c", 5)]
        assert r.total_spent_millicredits == 50
        start = r.start_time.ToMicroseconds()
        assert first < start <= clock.now_us()
        older = await server.s.history.GetSpendingReport(
            history_pb2.GetSpendingReportRequest(start_time=ts(first), end_time=r.start_time), metadata=auth("long"))
        assert older.total_spent_millicredits == 50 and older.end_time == r.start_time


async def _reads_only(db_url: str, sql: str, args: list[Any], suffix: str) -> None:
    """The statement reads transfers through each side's index named
    ix_transfers_{debit,credit}_<suffix> only, never the table."""
    if db_url.startswith("sqlite"):
        plan = sqlite_plan(db_url, sql, args)
        assert f"ix_transfers_debit_{suffix}" in plan and f"ix_transfers_credit_{suffix}" in plan, plan
        assert "SCAN transfers" not in plan, plan
        return
    scans = await pg_generic_plan_scans(db_url, sql, args, "wallet:probe")
    assert scans == [f"ix_transfers_credit_{suffix}", f"ix_transfers_debit_{suffix}"], scans


async def test_a_probe_is_one_index_search_per_kind_on_both_databases(server: Any, db_url: str) -> None:
    """The probe reads each side's (account, kind, created_at_us) index, under
    a generic plan on PostgreSQL too, and never the table."""
    await _reads_only(db_url, *probe_query("wallet:probe", [], 1_000, YEAR_9000_US), "kind_created")


async def test_a_bounded_filtered_page_reads_only_the_accounts_newest_index(server: Any, db_url: str) -> None:
    """The filtered page and the count of rows it may examine each walk the
    account's (account, -id) indexes from the cursor, whatever the plan."""
    page = page_query("wallet:probe", limit=11, before_id=1_030_000, kinds=["spend"], start_us=5, end_us=None,
                      scan=500, from_id=1_025_000)
    await _reads_only(db_url, *page, "newest")
    await _reads_only(db_url, *frontier_query("wallet:probe", 1_030_000, 500), "newest")
