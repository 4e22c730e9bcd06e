"""The ledger writer's hot statements, run on the driver connection.

A group-commit batch issues a handful of statements (load the rows it
touches, write them back). Through SQLAlchemy Core each one costs 0.3-1 ms of
statement compilation and result processing on the event loop, more than
the ledger work of the whole batch. Here the SQL text is built once per
table and shape, and runs straight on the driver: `sqlite3` inline (the
writer's connection is `server/db/sqlite_inline.py`'s), or asyncpg with its
own prepared-statement cache. The transaction is still the SQLAlchemy
connection's (BEGIN IMMEDIATE on SQLite, the adapter's on PostgreSQL), so
statements of other domains in the same batch commit with these.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Boolean, Table
from sqlalchemy.ext.asyncio import AsyncConnection

Row = dict[str, Any]


class BatchSql:
    def __init__(self, conn: AsyncConnection, driver: Any, *, is_sqlite: bool) -> None:
        self.conn = conn
        self.driver = driver
        self.is_sqlite = is_sqlite
        # Inline sqlite3 connection (no thread hop), or None: go through aiosqlite.
        self.sqlite: sqlite3.Connection | None = None
        if is_sqlite and getattr(driver, "_inline", False):
            self.sqlite = driver._conn
        # PostgreSQL: SQLAlchemy's adapter opens the transaction lazily, on its
        # first statement; ours must not run before it (they would autocommit).
        self._in_tx = is_sqlite

    @classmethod
    async def open(cls, conn: AsyncConnection, *, is_sqlite: bool) -> BatchSql:
        raw = await conn.get_raw_connection()
        return cls(conn, raw.driver_connection, is_sqlite=is_sqlite)

    # ---- statements -----------------------------------------------------------------

    async def select_in(
        self, table: Table, column: str, keys: Sequence[Any], *, order_by: str | None = None, lock: bool = False
    ) -> list[Row]:
        """Rows of `table` whose `column` is one of `keys`, as dicts."""
        if not keys:
            return []
        names = _columns(table)
        key = ("select", self.is_sqlite, table.name, column, len(keys) if self.is_sqlite else type(keys[0]), order_by, lock)
        sql = _SQL.get(key)
        if sql is None:
            cols = ", ".join(f'"{c}"' for c in names)
            order = f' ORDER BY "{order_by}"' if order_by else ""
            if self.is_sqlite:
                marks = ", ".join("?" * len(keys))
                sql = f'SELECT {cols} FROM "{table.name}" WHERE "{column}" IN ({marks}){order}'
            else:
                kind = "bigint" if isinstance(keys[0], int) else "text"
                lock_sql = " FOR UPDATE" if lock else ""
                sql = f'SELECT {cols} FROM "{table.name}" WHERE "{column}" = ANY($1::{kind}[]){order}{lock_sql}'
            _SQL[key] = sql
        if self.is_sqlite:
            rows = await self._sqlite_fetch(sql, tuple(keys))
        else:
            rows = await self._pg_fetch(sql, list(keys))
        out = [dict(zip(names, r, strict=True)) for r in rows]
        for col in _booleans(table):
            for r in out:  # sqlite3 returns 0/1
                r[col] = bool(r[col])
        return out

    async def scalar(self, sqlite_sql: str, pg_sql: str, *args: Any) -> Any:
        rows = await (self._sqlite_fetch(sqlite_sql, args) if self.is_sqlite else self._pg_fetch(pg_sql, *args))
        return rows[0][0] if rows else None

    async def insert(self, table: Table, rows: list[Row], *, skip: Iterable[str] = ()) -> None:
        if not rows:
            return
        key = ("insert", self.is_sqlite, table.name, tuple(skip))
        cached = _SQL.get(key)
        if cached is None:
            names = [c for c in _columns(table) if c not in set(skip)]
            cols = ", ".join(f'"{c}"' for c in names)
            n = len(names)
            marks = ", ".join("?" * n) if self.is_sqlite else ", ".join(f"${i}" for i in range(1, n + 1))
            cached = _SQL[key] = (f'INSERT INTO "{table.name}" ({cols}) VALUES ({marks})', names)
        sql, names = cached
        await self._many(sql, [tuple(r[c] for c in names) for r in rows])

    async def update(self, table: Table, key: str, columns: Sequence[str], rows: list[Row]) -> None:
        """UPDATE each row's `columns`, matched on `key`."""
        if not rows:
            return
        cache_key = ("update", self.is_sqlite, table.name, key, tuple(columns))
        sql = _SQL.get(cache_key)
        if sql is None:
            if self.is_sqlite:
                sets = ", ".join(f'"{c}" = ?' for c in columns)
                sql = f'UPDATE "{table.name}" SET {sets} WHERE "{key}" = ?'
            else:
                sets = ", ".join(f'"{c}" = ${i}' for i, c in enumerate(columns, 1))
                sql = f'UPDATE "{table.name}" SET {sets} WHERE "{key}" = ${len(columns) + 1}'
            _SQL[cache_key] = sql
        await self._many(sql, [tuple(r[c] for c in (*columns, key)) for r in rows])

    # ---- drivers -------------------------------------------------------------------------

    async def _sqlite_fetch(self, sql: str, args: Sequence[Any]) -> list[Any]:
        if self.sqlite is not None:
            return self.sqlite.execute(sql, args).fetchall()
        return list(await self.driver.execute_fetchall(sql, args))

    async def _pg_fetch(self, sql: str, *args: Any) -> list[Any]:
        if not self._in_tx:
            await self._begin()
        return list(await self.driver.fetch(sql, *args))

    async def _many(self, sql: str, params: list[tuple[Any, ...]]) -> None:
        if self.is_sqlite:
            if self.sqlite is not None:
                self.sqlite.executemany(sql, params)
            else:
                await self.driver.executemany(sql, params)
            return
        if not self._in_tx:
            await self._begin()
        await self.driver.executemany(sql, params)

    async def _begin(self) -> None:
        if not self.driver.is_in_transaction():
            await self.conn.exec_driver_sql("SELECT 1")  # lets the adapter open its transaction
        if not self.driver.is_in_transaction():
            raise RuntimeError("ledger batch is not inside a transaction")
        self._in_tx = True


# SQL text by dialect and statement shape, built once.
_SQL: dict[tuple[Any, ...], Any] = {}
_COLUMNS: dict[str, list[str]] = {}
_BOOLEANS: dict[str, list[str]] = {}


def _columns(table: Table) -> list[str]:
    names = _COLUMNS.get(table.name)
    if names is None:
        names = _COLUMNS[table.name] = [c.name for c in table.columns]
    return names


def _booleans(table: Table) -> list[str]:
    names = _BOOLEANS.get(table.name)
    if names is None:
        names = _BOOLEANS[table.name] = [c.name for c in table.columns if isinstance(c.type, Boolean)]
    return names
