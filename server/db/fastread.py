"""Single-statement reads on the raw driver, for the hottest read RPCs
(CheckBalance and friends). SQLAlchemy's execution layers cost several times
the query itself there; everything else keeps using the engines."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def pg_params(sql: str) -> str:
    """`?` placeholders as PostgreSQL's `$1`, `$2`, ..."""
    counter = iter(range(1, 1000))
    return re.sub(r"\?", lambda _m: f"${next(counter)}", sql)


class FastReader:
    """`threaded`: the bulk reader, for reads that examine many rows (history,
    reports). On SQLite its statements run on its own threads and
    connections rather than inline on the event loop; on PostgreSQL it has a
    pool of its own. Either way it never holds what single-row reads use."""

    def __init__(self, url: str, *, threaded: bool = False, max_size: int = 8) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.max_size = max_size
        self._sqlite: sqlite3.Connection | None = None
        self._threads: ThreadPoolExecutor | None = ThreadPoolExecutor(max_size, "bulk-read") if threaded else None
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []
        self._pool: Any = None
        self._lock = asyncio.Lock()
        self._pg_sql: dict[str, str] = {}
        # Its reads hop to a thread of its own (see `probe`).
        self.hops = threaded and self.is_sqlite

    async def fetchrow(self, sql: str, *args: Any) -> tuple[Any, ...] | None:
        """`sql` uses `?` placeholders on both databases."""
        if self._threads is not None and self.is_sqlite:
            rows = await self._in_thread(sql, args)
            return rows[0] if rows else None
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

    async def probe(self, sql: str, *args: Any) -> tuple[Any, ...] | None:
        """A read bounded to a few index searches (no rows scanned): on the
        bulk reader's SQLite it runs inline on a connection of its own, as a
        single-row read does. A hop to a bulk thread costs the event loop
        far more than such a read (the loop and the thread trade the GIL),
        and a hundred loops of them held every other caller's calls."""
        if self._threads is not None and self.is_sqlite:
            conn = self._sqlite or self._open_sqlite()
            row: tuple[Any, ...] | None = conn.execute(sql, args).fetchone()
            return row
        return await self.fetchrow(sql, *args)

    async def fetchall(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        if self._threads is not None and self.is_sqlite:
            return await self._in_thread(sql, args)
        if self.is_sqlite:
            conn = self._sqlite or self._open_sqlite()
            return conn.execute(sql, args).fetchall()
        pool = self._pool or await self._open_pool()
        pg = self._pg_sql.get(sql) or self._pg_sql.setdefault(sql, pg_params(sql))
        return [tuple(r) for r in await pool.fetch(pg, *args)]

    def _connect_sqlite(self) -> sqlite3.Connection:
        path = self.url.split(":///", 1)[-1].split("?", 1)[0]
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def _open_sqlite(self) -> sqlite3.Connection:
        self._sqlite = self._connect_sqlite()
        return self._sqlite

    async def _in_thread(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        def run() -> list[tuple[Any, ...]]:
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = self._connect_sqlite()
                self._opened.append(conn)
            return conn.execute(sql, args).fetchall()

        return await asyncio.get_running_loop().run_in_executor(self._threads, run)

    async def _open_pool(self) -> Any:
        import asyncpg

        async with self._lock:
            if self._pool is None:
                dsn = self.url.replace("postgresql+asyncpg://", "postgresql://", 1)
                self._pool = await asyncpg.create_pool(dsn, min_size=1, max_size=self.max_size)
        return self._pool

    async def close(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=True)
            for conn in self._opened:
                conn.close()
            self._opened.clear()
        if self._sqlite is not None:
            self._sqlite.close()
            self._sqlite = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
