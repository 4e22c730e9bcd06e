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

from server.platform.fairshare import WORK_PER_ROUND_TRIP, charge


def pg_params(sql: str) -> str:
    """`?` placeholders as PostgreSQL's `$1`, `$2`, ..."""
    counter = iter(range(1, 1000))
    return re.sub(r"\?", lambda _m: f"${next(counter)}", sql)


class FastReader:
    """`threaded`: the bulk reader, for reads that examine many rows (history,
    reports). On SQLite its statements run on its own threads and
    connections rather than inline on the event loop; on PostgreSQL it has
    connections of its own. Either way it never holds what single-row reads use."""

    def __init__(self, url: str, *, threaded: bool = False, max_size: int = 8) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.max_size = max_size
        self._sqlite: sqlite3.Connection | None = None
        self._threads: ThreadPoolExecutor | None = ThreadPoolExecutor(max_size, "bulk-read") if threaded else None
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []
        # PostgreSQL: the reader's own connections, the idle ones, and how many reads at once (`_pg`).
        self._idle: list[Any] = []
        self._slots: asyncio.Semaphore | None = None
        self._closed = False
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
        pg = self._pg_sql.get(sql) or self._pg_sql.setdefault(sql, pg_params(sql))
        record = await self._pg("fetchrow", pg, args)
        return tuple(record) if record is not None else None

    async def _pg(self, fetch: str, pg: str, args: tuple[Any, ...]) -> Any:
        """`fetch` ("fetchrow" or "fetch") on a connection of the reader's
        own, the idle ones kept in a list: a pool's acquire and release (a
        proxy, a future, a shielded task and a timeout scope per read) cost
        about as much as the read, on a key's secret looked up on every call.
        At most `max_size` reads at once, whatever they are, the rest wait
        their turn: each is a PostgreSQL backend on the same cores as the
        server, so one caller's loops of reads can take no more of them.
        Each costs the running call one more call of its fair share."""
        charge(WORK_PER_ROUND_TRIP)
        slots = self._slots
        if slots is None:
            slots = self._slots = asyncio.Semaphore(self.max_size)
        await slots.acquire()
        try:
            conn = self._idle.pop() if self._idle else None
            if conn is None or conn.is_closed():
                if self._closed:
                    raise RuntimeError("the reader is closed")
                import asyncpg

                conn = await asyncpg.connect(self._dsn())
            try:
                result = await getattr(conn, fetch)(pg, *args)
            except BaseException:
                # Failed or cancelled mid-read: its state is unknown, so it is not reused.
                conn.terminate()
                raise
            if self._closed:
                conn.terminate()
            else:
                self._idle.append(conn)
            return result
        finally:
            slots.release()

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
        pg = self._pg_sql.get(sql) or self._pg_sql.setdefault(sql, pg_params(sql))
        return [tuple(r) for r in await self._pg("fetch", pg, args)]

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

    def _dsn(self) -> str:
        return self.url.replace("postgresql+asyncpg://", "postgresql://", 1)

    async def close(self) -> None:
        self._closed = True
        while self._idle:
            await self._idle.pop().close()
        if self._threads is not None:
            self._threads.shutdown(wait=True)
            for conn in self._opened:
                conn.close()
            self._opened.clear()
        if self._sqlite is not None:
            self._sqlite.close()
            self._sqlite = None

