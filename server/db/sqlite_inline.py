"""An aiosqlite connection for the ledger writer that skips the thread hops.

aiosqlite runs every call (cursor, execute, fetch, close) on its own thread:
about four thread hops per statement, a dozen statements per batch, and each
hop waits for the event loop and the GIL. The writer's statements hit the
page cache and take microseconds, so they run inline on the event loop
thread. Only the calls that can wait still go to the connection's thread, so
the loop keeps serving gRPC meanwhile: COMMIT (it waits for the fsync), and a
BEGIN IMMEDIATE that finds the write lock taken by another connection.

One writer task uses a connection at a time (SQLAlchemy's pool), so the
sqlite3 connection is never used by two threads at once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

import aiosqlite

BUSY_TIMEOUT_MS = 30_000

# sqlite3 adapts each bound value that is not exactly an int, float or str.
# With no adapter registered for its type it asks the protocol type for
# `__adapt__`, which raises (and formats) an AttributeError every time: some
# 2.5k instructions per NULL, blob or boolean bound, several per spend. These
# C callables give back what sqlite3 would have bound anyway.
sqlite3.register_adapter(type(None), {}.get)  # type: ignore[arg-type]  # None -> None (NULL), in C
sqlite3.register_adapter(bytes, bytes)  # the same bytes (BLOB)
sqlite3.register_adapter(bool, int)  # 0 or 1, as sqlite3 binds a bool


def _is_begin_immediate(fn: Any, args: tuple[Any, ...]) -> bool:
    if getattr(fn, "__name__", "") in ("execute", "executescript") and args and isinstance(args[0], str):
        return args[0].lstrip()[:15].upper() == "BEGIN IMMEDIATE"
    return False


class InlineConnection(aiosqlite.Connection):
    # server/db/batchsql.py runs the writer's statements on `_conn` directly.
    _inline = True

    async def _execute(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if not self._running or not self._connection:
            raise ValueError("Connection closed")
        if getattr(fn, "__name__", "") == "commit":
            return await super()._execute(fn, *args, **kwargs)  # waits for the fsync
        if _is_begin_immediate(fn, args):
            # Usually the write lock is free: take it inline, without waiting.
            # Held by another connection or process: wait for it on the thread.
            conn = self._connection
            conn.execute("PRAGMA busy_timeout=0")
            try:
                return fn(*args, **kwargs)
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
            finally:
                conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            return await super()._execute(fn, *args, **kwargs)
        return fn(*args, **kwargs)


def inline_creator(path: str) -> Callable[[], Awaitable[Any]]:
    """For the writer (BEGIN IMMEDIATE and COMMIT hop) and for readers: a WAL
    reader's BEGIN and single-row or keyset reads never wait for a lock."""

    async def create() -> InlineConnection:
        conn = InlineConnection(lambda: sqlite3.connect(path, check_same_thread=False), 64)
        conn._thread.daemon = True
        await conn
        return conn

    return create
