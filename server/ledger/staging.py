"""Other domains' rows inside a ledger batch.

A domain never touches the batch's connection. It reads through `LedgerTx.fetch`
(under the batch's transaction and locks) and writes through a `StagedRows` of
its table: rows are cached by primary key, changes are recorded in the
batch's undo log (a refused operation leaves nothing behind) and go out with
the batch's write-back, before its single commit.

    rows = tx.rows(payments)
    p = await rows.get(payment_id, lock=True)   # read once per batch, then cached
    rows.update(p, status="paid")               # staged; undone if the operation is refused
    rows.insert({...})                          # staged insert
"""

from __future__ import annotations

from typing import Any, Protocol

from sqlalchemy import Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql import Executable

from server.db.batchsql import BatchSql, Row


class Batch(Protocol):
    """What staged rows need of the batch they belong to (server/ledger/tx.py's
    LedgerTx): its reads, its undo log and its write-back."""

    is_sqlite: bool
    sql: BatchSql

    async def fetch(self, query: Executable) -> list[Row]: ...
    async def fetch_one(self, query: Executable) -> Row | None: ...
    async def execute_staged(self, statement: Executable, params: list[Row]) -> None: ...
    def _set(self, row: Row, field: str, value: Any) -> None: ...
    def _append(self, target: list[Any], item: Any) -> None: ...
    def _add(self, target: set[Any], item: Any) -> None: ...
    def _put(self, target: dict[Any, Any], key: Any, value: Any) -> None: ...


class StagedRows:
    def __init__(self, tx: Batch, table: Table) -> None:
        (key,) = table.primary_key.columns  # one-column keys only
        self.tx = tx
        self.table = table
        self.key = key.name
        self._cache: dict[Any, Row | None] = {}
        self._new: list[Row] = []
        self._new_unless_conflict: list[Row] = []
        self._dirty: set[tuple[Any, str]] = set()

    # ---- reads ------------------------------------------------------------------------

    async def get(self, key: Any, *, lock: bool = False) -> Row | None:
        """The row with this primary key: staged, cached, or read (and locked on
        PostgreSQL when `lock`) under the batch's transaction."""
        if key in self._cache:
            return self._cache[key]
        q = select(self.table).where(self.table.c[self.key] == key)
        if lock and not self.tx.is_sqlite:
            q = q.with_for_update()
        found = await self.tx.fetch_one(q)
        self._cache[key] = found  # a read, not a change: nothing to undo
        return found

    async def get_many(self, keys: list[Any], *, lock: bool = False) -> None:
        """Read the rows with these primary keys into the cache at once (in key
        order, locked on PostgreSQL when `lock`); absent ones are cached as None."""
        wanted = sorted({k for k in keys if k not in self._cache})
        if not wanted:
            return
        found = await self.tx.sql.select_in(
            self.table, self.key, wanted, order_by=self.key, lock=lock and not self.tx.is_sqlite
        )
        for row in found:
            self._cache[row[self.key]] = row
        for k in wanted:
            self._cache.setdefault(k, None)

    async def find(self, **where: Any) -> Row | None:
        """The first row whose columns equal `where`: staged and cached rows
        first, then the database (that row is then cached by its key)."""
        for row in self._cache.values():
            if row is not None and all(row.get(c) == v for c, v in where.items()):
                return row
        q = select(self.table).where(*(self.table.c[c] == v for c, v in where.items())).limit(1)
        found = await self.tx.fetch_one(q)
        if found is None:
            return None
        return self._cache.setdefault(found[self.key], found)

    async def select(self, query: Any) -> list[Row]:
        """The rows of a query of this table (for example a claim with SKIP
        LOCKED), each taken from the cache when this batch has it already, so
        that it can be updated here."""
        return [self._cache.setdefault(r[self.key], r) or r for r in await self.tx.fetch(query)]

    # ---- staged writes -------------------------------------------------------------------

    def insert(self, row: Row) -> Row:
        row = self._complete(row)
        tx = self.tx
        tx._put(self._cache, row[self.key], row)
        tx._append(self._new, row)
        return row

    def insert_unless_conflict(self, row: Row) -> None:
        """INSERT … ON CONFLICT DO NOTHING: a unique index of the table decides,
        so that concurrent batches and replicas never add a second row."""
        self.tx._append(self._new_unless_conflict, self._complete(row))

    def update(self, row: Row, **values: Any) -> Row:
        """Change a row read or inserted through this table, in place."""
        key = row[self.key]
        if self._cache.get(key) is not row:
            raise ValueError(f"{self.table.name} row {key!r} was not read through this batch")
        tx = self.tx
        for column, value in values.items():
            if row[column] != value:
                tx._set(row, column, value)
                tx._add(self._dirty, (key, column))
        return row

    # ---- write-back -------------------------------------------------------------------------

    async def flush(self) -> None:
        sql = self.tx.sql
        await sql.insert(self.table, self._new)
        new = {id(r) for r in self._new}
        by_columns: dict[tuple[str, ...], list[Row]] = {}
        columns: dict[Any, list[str]] = {}
        for key, column in self._dirty:
            columns.setdefault(key, []).append(column)
        # In key order (the order of the rows' locks); each row's columns sorted.
        for key in sorted(columns, key=str):
            row = self._cache[key]
            if row is not None and id(row) not in new:
                by_columns.setdefault(tuple(sorted(columns[key])), []).append(row)
        for names, rows in by_columns.items():
            await sql.update(self.table, self.key, names, rows)

    async def flush_unless_conflict(self) -> None:
        """After the batch's write-back: a conflict skips the row, not the batch."""
        if self._new_unless_conflict:
            insert = sqlite.insert if self.tx.is_sqlite else postgresql.insert
            await self.tx.execute_staged(insert(self.table).on_conflict_do_nothing(), self._new_unless_conflict)

    def _complete(self, row: Row) -> Row:
        """Every column present (the write-back sends whole rows): a missing one
        takes its scalar default, else NULL."""
        out: Row = {}
        for c in self.table.columns:
            if c.name in row:
                out[c.name] = row[c.name]
            else:
                default = getattr(c.default, "arg", None) if c.default is not None and c.default.is_scalar else None
                out[c.name] = default
        return out
