"""History's SQL: keyset pages of a wallet's transfers and spending by category."""

from __future__ import annotations

from typing import Any

from server.db.fastread import FastReader
from server.ledger.model import Kind, TransferView, wallet_id
from server.platform.fairshare import WORK_PER_HOP, charge

DAY_US = 86_400_000_000

HISTORY_FIELDS = (
    "id", "kind", "amount", "debit_account", "credit_account", "debit_balance_after", "credit_balance_after",
    "description", "category", "ref", "created_at_us", "metadata", "key_id",
    "member_id",
)
HISTORY_COLUMNS = ", ".join(HISTORY_FIELDS)
# A transfer_usage row: meter, quantity, dimensions JSON, version, unit price, per units, priced instant.
UsageRow = tuple[str, int, str, int, int, int, int]


def _filters(
    kinds: list[str], start_us: int | None, end_us: int | None, key_id: str = "", category: str | None = None,
    member_id: str = "",
) -> tuple[str, list[Any]]:
    sql, params = "", list[Any]()
    if member_id:
        sql += " AND member_id = ?"
        params.append(member_id)
    if category is not None:
        sql += " AND category = ?"
        params.append(category)
    if key_id:
        sql += " AND key_id = ?"
        params.append(key_id)
    if kinds:
        sql += f" AND kind IN ({','.join('?' * len(kinds))})"
        params.extend(kinds)
    if start_us is not None:
        sql += " AND created_at_us >= ?"
        params.append(start_us)
    if end_us is not None:
        sql += " AND created_at_us < ?"
        params.append(end_us)
    return sql, params


def page_query(
    account: str,
    *,
    limit: int,
    before_id: int | None,
    kinds: list[str],
    start_us: int | None,
    end_us: int | None,
    scan: int | None = None,
    from_id: int | None = None,
    category: str | None = None,
    key_id: str = "",
    member_id: str = "",
) -> tuple[str, list[Any]]:
    """One page of an account's transfers, newest first, with `?` placeholders.
    `scan` bounds the rows each side examines (a filtered page); `from_id`
    is the lowest id both sides have examined (see `frontier_query`)."""
    # Each side walks its own (account, -id) index newest first; raw SQL on
    # the driver keeps a page at any depth to one index range scan. The
    # keyset is written on -id, the index's expression, which the primary
    # key cannot serve.
    params: list[Any] = []
    keyset = ""
    if before_id is not None:
        keyset += " AND -id > ?"
        params.append(-before_id)
    if from_id is not None:
        keyset += " AND -id <= ?"
        params.append(-from_id)
    filters, fparams = _filters(kinds, start_us, end_us, key_id, category, member_id)
    if scan is None:  # unfiltered: every row examined is a row of the page
        keyset, params, filters, fparams = keyset + filters, params + fparams, "", []
    inner = scan if scan is not None else limit

    def side(column: str) -> str:
        rows = f"SELECT {HISTORY_COLUMNS} FROM transfers WHERE {column} = ?{keyset} ORDER BY -id LIMIT ?"
        if not filters:
            return f"SELECT * FROM ({rows}) AS {column[0]}"
        return f"SELECT * FROM ({rows}) AS {column[0]} WHERE 1 = 1{filters}"

    sql = f"{side('debit_account')} UNION ALL {side('credit_account')} ORDER BY id DESC LIMIT ?"
    return sql, [account, *params, inner, *fparams, account, *params, inner, *fparams, limit]


def probe_query(account: str, kinds: list[str], start_us: int | None, end_us: int | None) -> tuple[str, list[Any]]:
    """Whether any transfer of the account matches the filters: one probe of
    each side's (account, kind, created_at_us) index per kind. A filter on
    another column (a key, a member) gets its own (account, column,
    created_at_us) index and is probed the same way."""
    filters, params = _filters(kinds or [str(k) for k in Kind], start_us, end_us)

    def side(column: str) -> str:
        return f"EXISTS (SELECT 1 FROM transfers WHERE {column} = ?{filters})"

    return f"SELECT 1 WHERE {side('debit_account')} OR {side('credit_account')}", [account, *params, account, *params]


def frontier_query(account: str, before_id: int | None, scan: int) -> tuple[str, list[Any]]:
    """For each side: how many of its next `scan` transfers (newest first)
    exist, and the lowest id among them, read from its (account, -id) index."""
    keyset, params = ("", []) if before_id is None else (" AND -id > ?", [-before_id])

    def side(column: str) -> str:
        return (f"SELECT COUNT(*), MIN(id) FROM (SELECT id FROM transfers WHERE {column} = ?{keyset} "
                f"ORDER BY -id LIMIT ?) AS {column[0]}")

    return f"{side('debit_account')} UNION ALL {side('credit_account')}", [account, *params, scan, account, *params, scan]


class HistoryRepository:
    """History's reads run on the bulk reader: its own connections, so that
    they never hold the ones single-row reads use (server/db/engine.py)."""

    def __init__(self, bulk: FastReader, *, max_rows_examined: int, report_max_rows: int) -> None:
        self.bulk = bulk
        # Each side of a filtered page examines at most half the bound.
        self.scan = max(max_rows_examined // 2, 1)
        self.report_max_rows = report_max_rows

    async def page(
        self,
        user_id: str,
        *,
        limit: int,
        before_id: int | None,
        kinds: list[str],
        start_us: int | None,
        end_us: int | None,
        category: str | None = None,
        key_id: str = "",
        member_id: str = "",
    ) -> tuple[list[TransferView], int | None]:
        """Up to `limit` transfers, and where to resume when the filters
        matched fewer within the rows a page may examine (else None)."""
        account = wallet_id(user_id)
        frontier = None
        scan = None
        if kinds or start_us is not None or end_us is not None or key_id or member_id or category is not None:
            # Key and category filters are applied while scanning: the probe reads kinds and times only.
            # A few index searches and no rows: inline on SQLite, no thread hop.
            sql, args = probe_query(account, kinds, start_us, end_us)
            if await self.bulk.probe(sql, *args) is None:
                charge(1)
                return [], None
            scan = self.scan
            sql, args = frontier_query(account, before_id, scan)
            counts = await self._fetchall(sql, *args)
            # A side that has `scan` rows may have more below its lowest one:
            # the page covers what both sides have examined, no further.
            frontier = max((int(low) for n, low in counts if n >= scan), default=None)
            charge(sum(int(n) for n, _ in counts))
        sql, args = page_query(
            account, limit=limit, before_id=before_id, kinds=kinds, start_us=start_us, end_us=end_us,
            scan=scan, from_id=frontier, category=category, key_id=key_id, member_id=member_id,
        )
        rows = await self._fetchall(sql, *args)
        charge(len(rows))
        return [TransferView.of(dict(zip(HISTORY_FIELDS, r, strict=True)), account) for r in rows], frontier

    async def _fetchall(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """A page's read, charged for its hop to a reader thread (SQLite)."""
        if self.bulk.hops:
            charge(WORK_PER_HOP)
        return await self.bulk.fetchall(sql, *args)

    async def window_start(self, user_id: str, start_us: int, end_us: int) -> int:
        """The start of a spending report's window: `start_us`, or a later
        instant when the window holds more than `report_max_rows` Spends or
        Captures (of either kind), so that the newest ones are summed."""
        account = wallet_id(user_id)
        cut = None
        for kind in (str(Kind.SPEND), str(Kind.HOLD_CAPTURE)):
            row = await self.bulk.fetchrow(
                "SELECT created_at_us FROM transfers WHERE debit_account = ? AND kind = ? AND created_at_us >= ? "
                "AND created_at_us < ? ORDER BY created_at_us DESC LIMIT 1 OFFSET ?",
                account, kind, start_us, end_us, self.report_max_rows,
            )
            if row is not None:
                cut = max(cut or row[0], row[0])
        if cut is None:
            return start_us
        return cut + 1 if cut + 1 < end_us else cut  # past the bound: whole microseconds only

    async def daily_spending(self, user_id: str, start_us: int, end_us: int) -> list[tuple[int, str, int, int]]:
        """(UTC day number, category, amount, operations) of the window's spending."""
        rows = await self.bulk.fetchall(
            f"SELECT created_at_us / {DAY_US} AS day, COALESCE(NULLIF(category, ''), 'other') AS cat, SUM(amount), COUNT(*) "
            "FROM transfers WHERE debit_account = ? AND kind IN (?, ?) AND created_at_us >= ? AND created_at_us < ? "
            "GROUP BY day, cat ORDER BY day, cat",
            wallet_id(user_id), str(Kind.SPEND), str(Kind.HOLD_CAPTURE), start_us, end_us,
        )
        return [(int(r[0]), str(r[1]), int(r[2]), int(r[3])) for r in rows]

    async def spending_by_category(
        self, user_id: str, start_us: int, end_us: int, key_id: str = "", member_id: str = ""
    ) -> list[tuple[str, int, int]]:
        return await self._spending("CASE WHEN category = '' THEN 'other' ELSE category END", user_id, start_us,
                                    end_us, key_id, member_id)

    async def spending_by_key(
        self, user_id: str, start_us: int, end_us: int, key_id: str = "", member_id: str = ""
    ) -> list[tuple[str, int, int]]:
        return await self._spending("COALESCE(key_id, '')", user_id, start_us, end_us, key_id, member_id)

    async def spending_by_member(
        self, user_id: str, start_us: int, end_us: int, key_id: str = "", member_id: str = ""
    ) -> list[tuple[str, int, int]]:
        return await self._spending("COALESCE(member_id, '')", user_id, start_us, end_us, key_id, member_id)

    async def _spending(
        self, group: str, user_id: str, start_us: int, end_us: int, key_id: str, member_id: str = ""
    ) -> list[tuple[str, int, int]]:
        by_key, params = (" AND key_id = ?", [key_id]) if key_id else ("", [])
        if member_id:
            by_key, params = by_key + " AND member_id = ?", [*params, member_id]
        rows = await self.bulk.fetchall(
            f"SELECT {group} AS g, SUM(amount), COUNT(*) FROM transfers WHERE debit_account = ? AND kind IN (?, ?) "
            f"AND created_at_us >= ? AND created_at_us < ?{by_key} GROUP BY g ORDER BY SUM(amount) DESC",
            wallet_id(user_id), str(Kind.SPEND), str(Kind.HOLD_CAPTURE), start_us, end_us, *params,
        )
        charge(sum(int(r[2]) for r in rows))
        return [(r[0], int(r[1]), int(r[2])) for r in rows]

    async def usage_of(self, transfer_ids: list[int]) -> dict[int, UsageRow]:
        """The transfer_usage rows of these transfers (only priced ones have one), by transfer id:
        (meter, quantity, dimensions JSON, version, unit_price, per_units, priced_at_us)."""
        if not transfer_ids:
            return {}
        rows = await self.bulk.fetchall(
            "SELECT transfer_id, meter, quantity, dimensions, version, unit_price, per_units, priced_at_us"
            f" FROM transfer_usage WHERE transfer_id IN ({','.join('?' * len(transfer_ids))})",
            *transfer_ids,
        )
        return {
            int(r[0]): (str(r[1]), int(r[2]), str(r[3]), int(r[4]), int(r[5]), int(r[6]), int(r[7])) for r in rows
        }

    async def spending_by_usage(
        self, user_id: str, start_us: int, end_us: int, key_id: str = "", member_id: str = ""
    ) -> list[tuple[str, str, int, int, int]]:
        """The window's spends and captures priced from usage, by meter and
        dimension values: (meter, dimensions JSON, quantity, amount, operations)."""
        by_key, params = (" AND t.key_id = ?", [key_id]) if key_id else ("", [])
        if member_id:
            by_key, params = by_key + " AND t.member_id = ?", [*params, member_id]
        rows = await self.bulk.fetchall(
            "SELECT u.meter, u.dimensions, SUM(u.quantity), SUM(t.amount), COUNT(*) FROM transfers t"
            " JOIN transfer_usage u ON u.transfer_id = t.id WHERE t.debit_account = ? AND t.kind IN (?, ?)"
            f" AND t.created_at_us >= ? AND t.created_at_us < ?{by_key} GROUP BY u.meter, u.dimensions"
            " ORDER BY u.meter, u.dimensions",
            wallet_id(user_id), str(Kind.SPEND), str(Kind.HOLD_CAPTURE), start_us, end_us, *params,
        )
        charge(sum(int(r[4]) for r in rows))
        return [(str(r[0]), str(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in rows]
