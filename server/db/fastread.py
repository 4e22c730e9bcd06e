"""Single-statement reads on the raw driver, for the hottest read RPCs
(CheckBalance and friends). SQLAlchemy's execution layers cost several times
the query itself there; everything else keeps using the engines."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from typing import Any


def pg_params(sql: str) -> str:
    """`?` placeholders as PostgreSQL's `$1`, `$2`, ..."""
    counter = iter(range(1, 1000))
    return re.sub(r"\?", lambda _m: f"${next(counter)}", sql)


class FastReader:
    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self._sqlite: sqlite3.Connection | None = None
        self._pool: Any = None
        self._lock = asyncio.Lock()
        self._pg_sql: dict[str, str] = {}

    async def fetchrow(self, sql: str, *args: Any) -> tuple[Any, ...] | None:
        """`sql` uses `?` placeholders on both databases."""
        if self.is_sqlite:
            conn = self._sqlite or self._open_sqlite()
            # A WAL reader never waits for the writer; a one-row read by key
            # takes microseconds, so it runs inline on the event loop.
            row: tuple[Any, ...] | None = conn.execute(sql, args).fetchone()
            return row
        pool = self._pool or await self._open_pool()
        pg = self._pg_sql.get(sql) or self._pg_sql.setdefault(sql, pg_params(sql))
        record = await pool.fetchrow(pg, *args)
        return tuple(record) if record is not None else None

    async def fetchall(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        if self.is_sqlite:
            conn = self._sqlite or self._open_sqlite()
            return conn.execute(sql, args).fetchall()
        pool = self._pool or await self._open_pool()
        pg = self._pg_sql.get(sql) or self._pg_sql.setdefault(sql, pg_params(sql))
        return [tuple(r) for r in await pool.fetch(pg, *args)]

    def _open_sqlite(self) -> sqlite3.Connection:
        path = self.url.split(":///", 1)[-1].split("?", 1)[0]
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA busy_timeout=30000")
        self._sqlite = conn
        return conn

    async def _open_pool(self) -> Any:
        import asyncpg

        async with self._lock:
            if self._pool is None:
                dsn = self.url.replace("postgresql+asyncpg://", "postgresql://", 1)
                self._pool = await asyncpg.create_pool(dsn, min_size=1, max_size=8)
        return self._pool

    async def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
            self._sqlite = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
