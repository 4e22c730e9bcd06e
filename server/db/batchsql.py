"""The ledger writer's hot statements, run on the driver connection.

A group-commit batch loads the rows it touches and writes them back.
Through SQLAlchemy Core each statement cost 0.3-1 ms of compilation and
result processing on the event loop, more than the ledger work of the whole
batch. Here the SQL text is built once per table and shape and runs straight
on the driver: `sqlite3` inline (the writer's connection is
`server/db/sqlite_inline.py`'s), or asyncpg with its prepared-statement cache.

On PostgreSQL the batch is bound by round trips, not CPU: each one waits for
a turn of the busy event loop. So the reads that follow the account locks go
out as one statement (`select_groups`), and the whole write-back plus the
fan-out NOTIFY as another (`send`).

The transaction is still the SQLAlchemy connection's (BEGIN IMMEDIATE on
SQLite, the adapter's on PostgreSQL), so statements that other domains add to
the batch commit with these.
"""

from __future__ import annotations

import json
import operator
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import Boolean, LargeBinary, String, Table
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

# A row as the hot path handles it: a plain dict, column name -> value.
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
        # PostgreSQL write-back, sent as one statement by send().
        self._queued: list[tuple[str, Table, list[str], str, list[list[Any]]]] = []
        self._notices: list[tuple[str, str]] = []

    @classmethod
    async def open(cls, conn: AsyncConnection, *, is_sqlite: bool) -> BatchSql:
        raw = await conn.get_raw_connection()
        return cls(conn, raw.driver_connection, is_sqlite=is_sqlite)

    # ---- statements -----------------------------------------------------------------

    async def select_in(
        self, table: Table, column: str, keys: Sequence[Any], *, order_by: str | None = None, lock: bool = False,
        columns: Sequence[str] | None = None,
    ) -> list[Row]:
        """Rows of `table` whose `column` is one of `keys`, as dicts (of `columns`
        only, when given: a hot read takes no more than it needs)."""
        rows = await self.select_values(table, column, keys, order_by=order_by, lock=lock, columns=columns)
        names = list(columns) if columns is not None else _columns(table)
        out = [dict(zip(names, r, strict=True)) for r in rows]
        for col in _booleans(table):
            if col not in names:
                continue
            for r in out:  # sqlite3 returns 0/1
                r[col] = bool(r[col])
        return out

    async def select_values(
        self, table: Table, column: str, keys: Sequence[Any], *, order_by: str | None = None, lock: bool = False,
        columns: Sequence[str] | None = None,
    ) -> list[Sequence[Any]]:
        """`select_in`'s rows as the driver gives them, each a sequence of the
        values of `columns` (SQLite's booleans as 0/1): a hot read's rows
        without a dict each."""
        if not keys:
            return []
        names = list(columns) if columns is not None else _columns(table)
        key = (
            "select", self.is_sqlite, table.name, column, len(keys) if self.is_sqlite else type(keys[0]), order_by, lock,
            tuple(names) if columns is not None else None,
        )
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
            return await self._sqlite_fetch(sql, tuple(keys))
        return await self._pg_fetch(sql, list(keys))

    async def select_groups(self, groups: Sequence[tuple[Table, str, Sequence[Any]]]) -> list[list[Row]]:
        """Several `select_in`s; on PostgreSQL in one round trip (rows as jsonb,
        tagged by group), since each round trip waits for a turn of the loop."""
        if self.is_sqlite or sum(1 for g in groups if g[2]) < 2:
            return [await self.select_in(t, c, k) for t, c, k in groups]
        parts: list[str] = []
        args: list[Any] = []
        for i, (table, column, keys) in enumerate(groups):
            if not keys:
                continue
            args.append(list(keys))
            kind = "bigint" if isinstance(keys[0], int) else "text"
            parts.append(
                f'SELECT {i} AS g, to_jsonb(t) AS r FROM "{table.name}" t WHERE t."{column}" = ANY(${len(args)}::{kind}[])'
            )
        out: list[list[Row]] = [[] for _ in groups]
        for g, raw in await self._pg_fetch(" UNION ALL ".join(parts), *args):
            # SQLAlchemy's asyncpg setup decodes jsonb already; a bare connection would not.
            row = raw if isinstance(raw, dict) else json.loads(raw)
            for col in _binaries(groups[g][0]):
                if row[col] is not None:  # jsonb shows bytea as "\\x<hex>"
                    row[col] = bytes.fromhex(row[col][2:])
            out[g].append(row)
        return out

    async def column(self, sqlite_sql: str | None, pg_sql: str | None, *args: Any) -> list[Any]:
        """The first column of the rows of a query, in this database's text."""
        sql = sqlite_sql if self.is_sqlite else pg_sql
        if sql is None:
            raise ValueError("no query for this database")
        rows = await (self._sqlite_fetch(sql, args) if self.is_sqlite else self._pg_fetch(sql, *args))
        return [r[0] for r in rows]

    async def scalar(self, sqlite_sql: str | None, pg_sql: str | None, *args: Any) -> Any:
        values = await self.column(sqlite_sql, pg_sql, *args)
        return values[0] if values else None

    async def insert(self, table: Table, rows: list[Row], *, skip: Iterable[str] = ()) -> None:
        """INSERT rows (SQLite: now; PostgreSQL: with the others at `send()`)."""
        if not rows:
            return
        if not self.is_sqlite:
            names = [c for c in _columns(table) if c not in set(skip)]
            self._queued.append(("insert", table, names, "", [[r[c] for r in rows] for c in names]))
            return
        key = ("insert", self.is_sqlite, table.name, tuple(skip))
        cached = _SQL.get(key)
        if cached is None:
            names = [c for c in _columns(table) if c not in set(skip)]
            cols = ", ".join(f'"{c}"' for c in names)
            n = len(names)
            marks = ", ".join("?" * n)
            cached = _SQL[key] = (f'INSERT INTO "{table.name}" ({cols}) VALUES ({marks})', _row_values(names))
        sql, values = cached
        await self._many(sql, [values(r) for r in rows])

    async def update(self, table: Table, key: str, columns: Sequence[str], rows: list[Row]) -> None:
        """UPDATE each row's `columns`, matched on `key` (PostgreSQL: at `send()`)."""
        if not rows:
            return
        if not self.is_sqlite:
            names = [*columns, key]
            self._queued.append(("update", table, names, key, [[r[c] for r in rows] for c in names]))
            return
        cache_key = ("update", self.is_sqlite, table.name, key, tuple(columns))
        cached = _SQL.get(cache_key)
        if cached is None:
            sets = ", ".join(f'"{c}" = ?' for c in columns)
            cached = _SQL[cache_key] = (f'UPDATE "{table.name}" SET {sets} WHERE "{key}" = ?', _row_values([*columns, key]))
        sql, values = cached
        await self._many(sql, [values(r) for r in rows])

    async def send(self) -> None:
        """PostgreSQL: every queued INSERT and UPDATE as ONE statement, one round
        trip (data-modifying CTEs over unnest()ed column arrays). Each round trip
        of the writer waits for a turn of the busy event loop, so a batch that
        took four for its write-back now takes one."""
        if self.is_sqlite or not (self._queued or self._notices):
            return
        parts: list[str] = []
        args: list[Any] = []
        for i, (verb, table, names, key, arrays) in enumerate(self._queued):
            types = _pg_types(table)
            params = ", ".join(f"${len(args) + j + 1}::{types[c]}[]" for j, c in enumerate(names))
            args.extend(arrays)
            cols = ", ".join(f'"{c}"' for c in names)
            if verb == "insert":
                parts.append(f'q{i} AS (INSERT INTO "{table.name}" ({cols}) SELECT * FROM unnest({params}))')
            else:
                sets = ", ".join(f'"{c}" = v."{c}"' for c in names if c != key)
                parts.append(
                    f'q{i} AS (UPDATE "{table.name}" SET {sets} FROM unnest({params}) AS v({cols}) '
                    f'WHERE "{table.name}"."{key}" = v."{key}")'
                )
        notices = []
        for channel, payload in self._notices:
            args += [channel, payload]
            notices.append(f"pg_notify(${len(args) - 1}, ${len(args)})")
        self._queued.clear()
        self._notices.clear()
        sql = ("WITH " + ", ".join(parts) + " " if parts else "") + "SELECT " + (", ".join(notices) or "1")
        if not self._in_tx:
            await self._begin()
        await self.driver.execute(sql, *args)

    def notify(self, channel: str, payload: str) -> None:
        """PostgreSQL NOTIFY, sent with the write-back (delivered only if the batch commits)."""
        self._notices.append((channel, payload))

    # ---- drivers -------------------------------------------------------------------------

    async def _sqlite_fetch(self, sql: str, args: Sequence[Any]) -> list[Any]:
        if self.sqlite is not None:
            return self.sqlite.execute(sql, args).fetchall()
        return list(await self.driver.execute_fetchall(sql, args))

    async def _pg_fetch(self, sql: str, *args: Any) -> list[Any]:
        if not self._in_tx:
            # The first statement goes through SQLAlchemy, which opens the
            # transaction with it (no extra round trip).
            rows = list((await self.conn.exec_driver_sql(sql, args)).all())
            self._check_in_tx()
            return rows
        return list(await self.driver.fetch(sql, *args))

    async def _many(self, sql: str, params: list[tuple[Any, ...]]) -> None:
        if self.sqlite is not None:
            self.sqlite.executemany(sql, params)
        else:
            await self.driver.executemany(sql, params)

    async def _begin(self) -> None:
        if not self.driver.is_in_transaction():
            await self.conn.exec_driver_sql("SELECT 1")  # lets the adapter open its transaction
        self._check_in_tx()

    def _check_in_tx(self) -> None:
        if not self.driver.is_in_transaction():
            raise RuntimeError("ledger batch is not inside a transaction")
        self._in_tx = True


# SQL text by dialect and statement shape, built once.
_SQL: dict[tuple[Any, ...], Any] = {}
_COLUMNS: dict[str, list[str]] = {}
_BOOLEANS: dict[str, list[str]] = {}
_PG_TYPES: dict[str, dict[str, str]] = {}
_BINARIES: dict[str, list[str]] = {}


def _columns(table: Table) -> list[str]:
    names = _COLUMNS.get(table.name)
    if names is None:
        names = _COLUMNS[table.name] = [c.name for c in table.columns]
    return names


def _pg_types(table: Table) -> dict[str, str]:
    types = _PG_TYPES.get(table.name)
    if types is None:
        dialect = postgresql.dialect()
        # Strings as text[]: a cast to varchar(n) would silently truncate, while
        # assigning text to the varchar(n) column refuses an over-long value.
        types = _PG_TYPES[table.name] = {
            c.name: "text" if isinstance(c.type, String) else c.type.compile(dialect=dialect) for c in table.columns
        }
    return types


def _binaries(table: Table) -> list[str]:
    names = _BINARIES.get(table.name)
    if names is None:
        names = _BINARIES[table.name] = [c.name for c in table.columns if isinstance(c.type, LargeBinary)]
    return names


def _booleans(table: Table) -> list[str]:
    names = _BOOLEANS.get(table.name)
    if names is None:
        names = _BOOLEANS[table.name] = [c.name for c in table.columns if isinstance(c.type, Boolean)]
    return names


def _row_values(names: Sequence[str]) -> Callable[[Row], tuple[Any, ...]]:
    """A row's values in column order, as a tuple (itemgetter gives a bare value for one column)."""
    get = operator.itemgetter(*names)
    if len(names) == 1:
        return lambda row: (get(row),)
    return get
