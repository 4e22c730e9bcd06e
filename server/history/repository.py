"""History's SQL: keyset pages of a wallet's transfers and spending by category."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, literal, select
from sqlalchemy.ext.asyncio import AsyncEngine

from server.db.fastread import FastReader
from server.db.schema import transfers
from server.ledger.model import Kind, TransferView, wallet_id

DAY_US = 86_400_000_000

HISTORY_FIELDS = (
    "id", "kind", "amount", "debit_account", "credit_account", "debit_balance_after", "credit_balance_after",
    "description", "category", "ref", "created_at_us", "metadata", "key_id",
)
HISTORY_COLUMNS = ", ".join(HISTORY_FIELDS)


def page_query(
    account: str, *, limit: int, before_id: int | None, kinds: list[str], start_us: int | None, end_us: int | None,
    category: str | None = None,
    key_id: str = "",
) -> tuple[str, list[Any]]:
    """One page of an account's transfers, newest first, with `?` placeholders."""
    # Each side walks its own (account, -id) index newest first; raw SQL on
    # the driver keeps a page at any depth to one index range scan. The
    # keyset is written on -id, the index's expression, which the primary
    # key cannot serve.
    params: list[Any] = []
    extra = ""
    if before_id is not None:
        extra += " AND -id > ?"
        params.append(-before_id)
    if kinds:
        extra += f" AND kind IN ({','.join('?' * len(kinds))})"
        params.extend(kinds)
    if start_us is not None:
        extra += " AND created_at_us >= ?"
        params.append(start_us)
    if end_us is not None:
        extra += " AND created_at_us < ?"
        params.append(end_us)
    if category is not None:
        extra += " AND category = ?"
        params.append(category)
    if key_id:
        extra += " AND key_id = ?"
        params.append(key_id)

    def side(column: str) -> str:
        return f"SELECT * FROM (SELECT {HISTORY_COLUMNS} FROM transfers WHERE {column} = ?{extra} ORDER BY -id LIMIT ?) AS {column[0]}"

    sql = f"{side('debit_account')} UNION ALL {side('credit_account')} ORDER BY id DESC LIMIT ?"
    return sql, [account, *params, limit, account, *params, limit, limit]


class HistoryRepository:
    def __init__(self, engine: AsyncEngine, fast: FastReader) -> None:
        self.engine = engine
        self.fast = fast

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
    ) -> list[TransferView]:
        account = wallet_id(user_id)
        sql, args = page_query(
            account, limit=limit, before_id=before_id, kinds=kinds, start_us=start_us, end_us=end_us,
            category=category, key_id=key_id,
        )
        rows = await self.fast.fetchall(sql, *args)
        return [TransferView.of(dict(zip(HISTORY_FIELDS, r, strict=True)), account) for r in rows]

    async def daily_spending(self, user_id: str, start_us: int, end_us: int) -> list[tuple[int, str, int, int]]:
        """(UTC day number, category, amount, operations) of the window's spending."""
        day = (transfers.c.created_at_us // DAY_US).label("day")
        category = func.coalesce(func.nullif(transfers.c.category, ""), literal("other")).label("category")
        q = (
            select(day, category, func.sum(transfers.c.amount), func.count())
            .where(
                transfers.c.debit_account == wallet_id(user_id),
                transfers.c.kind.in_([str(Kind.SPEND), str(Kind.HOLD_CAPTURE)]),
                transfers.c.created_at_us >= start_us,
                transfers.c.created_at_us < end_us,
            )
            .group_by(day, category)
            .order_by(day, category)
        )
        async with self.engine.connect() as conn:
            return [(int(r[0]), r[1], int(r[2]), int(r[3])) for r in (await conn.execute(q)).all()]

    async def spending_by_category(
        self, user_id: str, start_us: int, end_us: int, key_id: str = ""
    ) -> list[tuple[str, int, int]]:
        label = func.coalesce(func.nullif(transfers.c.category, ""), literal("other")).label("category")
        return await self._spending(label, user_id, start_us, end_us, key_id)

    async def spending_by_key(
        self, user_id: str, start_us: int, end_us: int, key_id: str = ""
    ) -> list[tuple[str, int, int]]:
        return await self._spending(func.coalesce(transfers.c.key_id, literal("")).label("spender_key"), user_id, start_us,
                                    end_us, key_id)

    async def _spending(
        self, group: Any, user_id: str, start_us: int, end_us: int, key_id: str
    ) -> list[tuple[str, int, int]]:
        account = wallet_id(user_id)
        q = (
            select(group, func.sum(transfers.c.amount), func.count())
            .where(
                transfers.c.debit_account == account,
                transfers.c.kind.in_([str(Kind.SPEND), str(Kind.HOLD_CAPTURE)]),
                transfers.c.created_at_us >= start_us,
                transfers.c.created_at_us < end_us,
            )
            .group_by(group.name)
            .order_by(func.sum(transfers.c.amount).desc())
        )
        if key_id:
            q = q.where(transfers.c.key_id == key_id)
        async with self.engine.connect() as conn:
            return [(r[0], int(r[1]), int(r[2])) for r in (await conn.execute(q)).all()]
