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


class Joined:
    """A group of `select_groups` read as one jsonb array per row: `values`
    (a jsonb_build_array over `source`'s columns), its rows those of `source`
    (a FROM clause) whose key column (the group's, qualified) is one of the
    keys. Only what is needed, in a fixed order: a whole row's jsonb object
    costs its every column's decoding and a dict."""

    __slots__ = ("source", "values")

    def __init__(self, values: str, source: str) -> None:
        self.values = values
        self.source = source


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
        self._queued: list[tuple[str, Table, list[str], str, list[Any]]] = []
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

    async def select_groups(self, groups: Sequence[tuple[Table | Joined, str, Sequence[Any]]]) -> list[list[Any]]:
        """Several `select_in`s; on PostgreSQL in one round trip (rows as jsonb,
        tagged by group), since each round trip waits for a turn of the loop.
        A `Joined` group's rows are lists (PostgreSQL only)."""
        if self.is_sqlite or (sum(1 for g in groups if g[2]) < 2 and not any(isinstance(g[0], Joined) for g in groups)):
            return [await self.select_in(t, c, k) for t, c, k in groups]  # type: ignore[arg-type]
        parts: list[str] = []
        args: list[Any] = []
        for i, (table, column, keys) in enumerate(groups):
            if not keys:
                continue
            kind = "bigint" if isinstance(keys[0], int) else "text"
            # Texts as one text where they split back (the driver encodes an
            # array's every element on its own, a few microseconds a key).
            text = joined_text(keys) if kind == "text" else None
            args.append(list(keys) if text is None else text)
            wanted = f"${len(args)}::{kind}[]" if text is None else f"string_to_array(${len(args)}::text, ',')"
            if isinstance(table, Joined):
                parts.append(f"SELECT {i} AS g, {table.values} AS r FROM {table.source} WHERE {column} = ANY({wanted})")
            else:
                parts.append(
                    f'SELECT {i} AS g, to_jsonb(t) AS r FROM "{table.name}" t WHERE t."{column}" = ANY({wanted})'
                )
        out: list[list[Any]] = [[] for _ in groups]
        for g, raw in await self._pg_fetch(" UNION ALL ".join(parts), *args):
            # SQLAlchemy's asyncpg setup decodes jsonb already; a bare connection would not.
            row: Any = raw if isinstance(raw, dict | list) else json.loads(raw)
            table = groups[g][0]
            if isinstance(table, Joined):
                out[g].append(row)
                continue
            for col in _binaries(table):
                if row[col] is not None:  # jsonb shows bytea as "\\x<hex>"
                    row[col] = bytes.fromhex(row[col][2:])
            out[g].append(row)
        return out

    async def fetch(self, sqlite_sql: str | None, pg_sql: str | None, *args: Any) -> list[Sequence[Any]]:
        """The rows of a query, in this database's text, as the driver gives them."""
        sql = sqlite_sql if self.is_sqlite else pg_sql
        if sql is None:
            raise ValueError("no query for this database")
        return await (self._sqlite_fetch(sql, args) if self.is_sqlite else self._pg_fetch(sql, *args))

    async def column(self, sqlite_sql: str | None, pg_sql: str | None, *args: Any) -> list[Any]:
        """The first column of the rows of a query, in this database's text."""
        return [r[0] for r in await self.fetch(sqlite_sql, pg_sql, *args)]

    async def scalar(self, sqlite_sql: str | None, pg_sql: str | None, *args: Any) -> Any:
        values = await self.column(sqlite_sql, pg_sql, *args)
        return values[0] if values else None

    def json_each(self) -> bool:
        """Whether statements may take a JSON array as one bound value
        (json_each, on the inline SQLite connection): sqlite3 binds each value
        on its own, and a statement text of a new length is prepared anew."""
        return self.sqlite is not None and _json_each(self.sqlite)

    async def insert(self, table: Table, rows: list[Row], *, skip: Iterable[str] = ()) -> None:
        """INSERT rows (SQLite: now; PostgreSQL: with the others at `send()`)."""
        if not rows:
            return
        if not self.is_sqlite:
            names = [c for c in _columns(table) if c not in set(skip)]
            self._queued.append(("insert", table, names, "", [[r[c] for r in rows] for c in names]))
            return
        sql, values = _insert_sql(table, tuple(skip))
        await self._many(sql, [values(r) for r in rows])

    async def insert_shared(self, table: Table, own: str, rows: list[tuple[int, Row]]) -> None:
        """INSERT rows that differ in one integer column: each is (its value of
        `own`, a dict of every other column), and many rows share one dict (the
        same object). On PostgreSQL each distinct dict's values are sent once,
        and each row's value and its dict's position as two texts of numbers:
        the driver encodes every element of an array on its own (a few
        microseconds a row for an array of each column), and most of a row's
        elements would be copies."""
        if not rows:
            return
        if self.is_sqlite:
            await self._sqlite_insert_shared(table, own, rows)
            return
        names = [c for c in _columns(table) if c != own]
        # By the dicts' identity, within this call (`rows` holds them all meanwhile).
        position: dict[int, str] = {}
        shared: list[Row] = []
        owns: list[str] = []
        refs: list[str] = []
        for value, row in rows:
            n = position.get(id(row))
            if n is None:
                shared.append(row)
                n = position[id(row)] = str(len(shared))
            owns.append(str(int(value)))
            refs.append(n)
        arrays: list[Any] = [",".join(owns), ",".join(refs), *([r[c] for r in shared] for c in names)]
        self._queued.append(("shared", table, [own, *names], own, arrays))

    async def _sqlite_insert_shared(self, table: Table, own: str, rows: list[tuple[int, Row]]) -> None:
        """SQLite's insert_shared: the rows of each dict shared by several, as
        one INSERT ... SELECT over a JSON array of their values of `own`
        (json_each), the dict's values bound once; the others, each bound in
        full. Binding every column of every row (and adapting its NULLs) cost
        some 3 times the rows' own insert."""
        groups: dict[int, tuple[Row, list[int]]] = {}
        if self.json_each():
            for value, row in rows:
                group = groups.get(id(row))
                if group is None:
                    groups[id(row)] = (row, [value])
                else:
                    group[1].append(value)
        alone: list[tuple[Any, ...]] = []
        if groups:
            sql, values = _insert_sql(table, (), own, each=True)
            for row, owns in groups.values():
                if len(owns) == 1:
                    alone.append((owns[0], *values(row)))
                else:
                    self.execute_now(sql, (*values(row), "[" + ",".join([str(int(v)) for v in owns]) + "]"))
        else:
            alone = [(value, *_insert_sql(table, (), own)[1](row)) for value, row in rows]
        if alone:
            await self._many(_insert_sql(table, (), own)[0], alone)

    async def update(self, table: Table, key: str, columns: Sequence[str], rows: list[Row]) -> None:
        """UPDATE each row's `columns`, matched on `key` (PostgreSQL: at `send()`)."""
        if not rows:
            return
        if not self.is_sqlite:
            names = [*columns, key]
            self._queued.append(("update", table, names, key, [[r[c] for r in rows] for c in names]))
            return
        sql, values = _update_sql(table, key, columns)
        await self._many(sql, [values(r) for r in rows])

    async def update_values(self, table: Table, key: str, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
        """`update` of rows given as tuples of the values of `columns` then `key`:
        a hot write-back without a dict per row."""
        if not rows:
            return
        if not self.is_sqlite:
            # Each column as one text where it can be (the driver encodes an
            # array's every element on its own, a few microseconds a row).
            names = [*columns, key]
            types = _pg_types(table)
            arrays = [_column_text(types[c], values) for c, values in zip(names, zip(*rows, strict=True), strict=True)]
            self._queued.append(("update", table, names, key, arrays))
            return
        await self._many(_update_sql(table, key, columns)[0], rows)

    async def send(self) -> None:
        """PostgreSQL: every queued INSERT and UPDATE as ONE statement, one round
        trip (data-modifying CTEs over unnest()ed column arrays). Each round trip
        of the writer waits for a turn of the busy event loop, so a batch that
        took four for its write-back now takes one."""
        if self.is_sqlite or not (self._queued or self._notices):
            return
        args: list[Any] = []
        for _verb, _table, _names, _key, arrays in self._queued:
            args.extend(arrays)
        for channel, payload in self._notices:
            args += [channel, payload]
        # The statement's text by its shape (each part's verb, table, columns and
        # which columns come as one text; the notices): built once, not per batch.
        shape = (
            tuple((verb, table.name, tuple(names), key, tuple(isinstance(a, str) for a in arrays))
                  for verb, table, names, key, arrays in self._queued),
            len(self._notices),
        )
        sql = _SEND_SQL.get(shape)
        if sql is None:
            sql = _send_sql(self._queued, len(self._notices))
            if len(_SEND_SQL) > 1000:
                _SEND_SQL.clear()
            _SEND_SQL[shape] = sql
        self._queued.clear()
        self._notices.clear()
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

    def execute_now(self, sql: str, params: tuple[Any, ...]) -> None:
        """One statement on the inline SQLite connection (no rows back)."""
        assert self.sqlite is not None
        self.sqlite.execute(sql, params)

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
_JSON_EACH: dict[str, bool] = {}


def _send_sql(queued: list[tuple[str, Table, list[str], str, list[Any]]], notices: int) -> str:
    """`send()`'s statement for these queued writes (their arrays in order, then each notice's two values)."""
    parts: list[str] = []
    n = 0
    for i, (verb, table, names, key, arrays) in enumerate(queued):
        types = _pg_types(table)
        cols = ", ".join(f'"{c}"' for c in names)
        if verb == "shared":  # insert_shared's: (own value, position) per row, the distinct rest once
            own, rest = names[0], names[1:]
            rest_params = ", ".join(f"${n + j + 3}::{types[c]}[]" for j, c in enumerate(rest))
            parts.append(
                f'q{i} AS (INSERT INTO "{table.name}" ({cols}) '
                f'SELECT o."{own}", {", ".join(f"s.{_quoted(c)}" for c in rest)} '
                f"FROM unnest(string_to_array(${n + 1}::text, ',')::{types[own]}[], "
                f"string_to_array(${n + 2}::text, ',')::bigint[]) AS o(\"{own}\", \"_n\") "
                f'JOIN unnest({rest_params}) WITH ORDINALITY AS s({", ".join(_quoted(c) for c in rest)}, "_n") '
                f'USING ("_n"))'
            )
            n += len(arrays)
            continue
        params = ", ".join(
            f"string_to_array(${n + j + 1}::text, '{', ' if types[c] in _INTEGERS else ','}')::{types[c]}[]"
            if isinstance(a, str) else f"${n + j + 1}::{types[c]}[]"
            for j, (c, a) in enumerate(zip(names, arrays, strict=True))
        )
        n += len(arrays)
        if verb == "insert":
            parts.append(f'q{i} AS (INSERT INTO "{table.name}" ({cols}) SELECT * FROM unnest({params}))')
        else:
            sets = ", ".join(f'"{c}" = v."{c}"' for c in names if c != key)
            parts.append(
                f'q{i} AS (UPDATE "{table.name}" SET {sets} FROM unnest({params}) AS v({cols}) '
                f'WHERE "{table.name}"."{key}" = v."{key}")'
            )
    selects = ", ".join(f"pg_notify(${n + 2 * k + 1}, ${n + 2 * k + 2})" for k in range(notices))
    return ("WITH " + ", ".join(parts) + " " if parts else "") + "SELECT " + (selects or "1")


# send()'s statements by shape (`_send_sql`).
_SEND_SQL: dict[tuple[Any, ...], str] = {}


def joined_text(values: Sequence[str]) -> str | None:
    """Texts as one, comma-separated, for `string_to_array($n::text, ',')` on
    PostgreSQL; None when that would not give them back (an empty text, or
    one with a comma): the caller sends an array instead."""
    text = ",".join(values)
    if values and all(values) and text.count(",") == len(values) - 1:
        return text
    return None


_INTEGERS = ("BIGINT", "INTEGER", "SMALLINT")


def _column_text(pg_type: str, values: Sequence[Any]) -> str | list[Any]:
    """A column's values for `send()`: integers (ints, NOT NULL: a None or a
    bool fails the cast, it is not lost) as one text, ", "-separated, texts
    as `joined_text`'s, anything else as an array."""
    if pg_type in _INTEGERS:
        return str(list(values))[1:-1]  # "1, 2, 3": a third cheaper than joining each str()
    if pg_type == "text":
        text = joined_text(values)
        if text is not None:
            return text
    return list(values)


def _quoted(name: str) -> str:
    return f'"{name}"'


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


def _update_sql(table: Table, key: str, columns: Sequence[str]) -> tuple[str, Callable[[Row], tuple[Any, ...]]]:
    """SQLite's UPDATE of `columns` matched on `key`, and a row's values for it."""
    cache_key = ("update", True, table.name, key, tuple(columns))
    cached = _SQL.get(cache_key)
    if cached is None:
        sets = ", ".join(f'"{c}" = ?' for c in columns)
        cached = _SQL[cache_key] = (f'UPDATE "{table.name}" SET {sets} WHERE "{key}" = ?', _row_values([*columns, key]))
    return cached


def _insert_sql(
    table: Table, skip: tuple[str, ...], lead: str = "", *, each: bool = False,
) -> tuple[str, Callable[[Row], tuple[Any, ...]]]:
    """SQLite's INSERT of every column of `table` but `skip`, and a row's
    values for it. `lead`: a column bound first, apart from the row
    (insert_shared's own column); with `each` its values come as one JSON
    array, a row each (json_each), and the row's values are bound once."""
    cache_key = ("insert", True, table.name, skip, lead, each)
    cached = _SQL.get(cache_key)
    if cached is None:
        names = [c for c in _columns(table) if c not in skip and c != lead]
        cols = ", ".join(_quoted(c) for c in ([lead] if lead else []) + names)
        if each:
            sql = f'INSERT INTO "{table.name}" ({cols}) SELECT value, {", ".join("?" * len(names))} FROM json_each(?)'
        else:
            sql = f'INSERT INTO "{table.name}" ({cols}) VALUES ({", ".join("?" * (len(names) + bool(lead)))})'
        cached = _SQL[cache_key] = (sql, _row_values(names))
    return cached


def _json_each(conn: sqlite3.Connection) -> bool:
    """Whether this SQLite has json_each (built in since 3.38, unless left out)."""
    found = _JSON_EACH.get(sqlite3.sqlite_version)
    if found is None:
        try:
            conn.execute("SELECT value FROM json_each('[1]')").fetchall()
            found = True
        except sqlite3.OperationalError:
            found = False
        _JSON_EACH[sqlite3.sqlite_version] = found
    return found


def _row_values(names: Sequence[str]) -> Callable[[Row], tuple[Any, ...]]:
    """A row's values in column order, as a tuple (itemgetter gives a bare value for one column)."""
    get = operator.itemgetter(*names)
    if len(names) == 1:
        return lambda row: (get(row),)
    return get
