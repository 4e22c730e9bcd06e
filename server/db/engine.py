"""One place for database connections: engines, SQLite pragmas, migrations."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import event, inspect
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from server.db.fastread import FastReader
from server.db.sqlite_inline import BUSY_TIMEOUT_MS, inline_creator

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent.parent / "migrations"


class Database:
    """The writer engine takes the write lock up front (SQLite BEGIN IMMEDIATE);
    the reader engine serves concurrent reads (SQLite WAL readers)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.fast = FastReader(url)
        if self.is_sqlite:
            _ensure_sqlite_dir(url)
            if ":memory:" in url:
                self.writer = create_async_engine(url, poolclass=NullPool)
            else:
                # Statements run inline, only BEGIN/COMMIT hop threads (server/db/sqlite_inline.py).
                self.writer = create_async_engine(url, async_creator=inline_creator(_sqlite_path(url)))
            self.reader = create_async_engine(
                url, pool_size=4, max_overflow=4,
                **({} if ":memory:" in url else {"async_creator": inline_creator(_sqlite_path(url))}),
            )
            _sqlite_pragmas(self.writer, immediate=True)
            _sqlite_pragmas(self.reader, immediate=False)
        else:
            # No pre-ping: it is a round trip per batch. A connection found dead
            # is invalidated by SQLAlchemy and the writer retries the batch on a
            # fresh one (is_retryable), which request ids make safe.
            # Custom plans for the writer's statements: a batch's reads are
            # `= ANY($1)` over arrays of up to max_batch keys, and the generic
            # plan PostgreSQL switches to after five runs guesses ten elements
            # and scans whole tables (measured: SpendBatch 860 -> 3,310 items/s,
            # Spend on one hot account 0.29 -> 0.40x echo).
            self.writer = create_async_engine(
                url, pool_size=4, max_overflow=4,
                connect_args={"server_settings": {"plan_cache_mode": "force_custom_plan"}},
            )
            # Read-only snapshots: a balance and its lots always come from one moment.
            self.reader = create_async_engine(
                url, pool_size=8, max_overflow=8, pool_pre_ping=True, isolation_level="REPEATABLE READ"
            )

    async def dispose(self) -> None:
        await self.fast.close()
        await self.writer.dispose()
        await self.reader.dispose()

    async def migrate(self) -> None:
        async with self.writer.begin() as conn:
            await conn.run_sync(_alembic_upgrade)


    async def migrated(self) -> bool:
        """The ledger's tables exist (the migrations ran)."""
        async with self.reader.connect() as conn:
            return bool(await conn.run_sync(lambda c: inspect(c).has_table("transfers")))


async def ping(conn: Any) -> None:
    """A liveness check on a raw driver connection (asyncpg)."""
    await conn.execute("SELECT 1")


def _sqlite_path(url: str) -> str:
    return url.split(":///", 1)[-1].split("?", 1)[0]


def _ensure_sqlite_dir(url: str) -> None:
    path = url.split(":///", 1)[-1].split("?", 1)[0]
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def _sqlite_pragmas(engine: AsyncEngine, *, immediate: bool) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # We issue BEGIN ourselves so the writer can take the lock up front.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is durable before we acknowledge it.
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _alembic_upgrade(sync_conn: Connection) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = sync_conn
    command.upgrade(cfg, "head")


def is_retryable(exc: BaseException) -> bool:
    """Lock conflicts and lost connections that a fresh attempt resolves."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    text = f"{type(exc).__name__} {exc}".lower()
    return any(s in text for s in ("deadlock", "could not serialize", "database is locked"))


def is_unique_violation(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return any(s in text for s in ("unique constraint", "uniqueviolation", "duplicate key"))


__all__ = ["AsyncConnection", "Database", "is_retryable", "is_unique_violation"]
