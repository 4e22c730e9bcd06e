"""The fast readers' connections on PostgreSQL (server/db/fastread.py): a
reader holds at most `max_size` connections whatever its reads (single rows
and pages alike), a read past them waits for one, and a read cancelled
midway gives its place back. Each PostgreSQL backend shares the host's cores
and the server's `max_connections` with every replica's."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg

from server.db.fastread import FastReader
from tests.conftest import _require_postgres
from tests.harness import database

SLOW = "SELECT pg_sleep(0.05), ?::int"


async def _backends(dsn: str, seen: list[int], stop: asyncio.Event) -> None:
    """The most connections to the test's database at once, besides this one."""
    conn = await asyncpg.connect(dsn)
    try:
        while not stop.is_set():
            seen.append(await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"))
            await asyncio.sleep(0.005)
    finally:
        await conn.close()


async def test_a_reader_holds_at_most_its_connections_and_a_cancelled_read_gives_its_place_back(tmp_path: Path) -> None:
    await _require_postgres()
    async with database("postgres", tmp_path) as url:
        dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)
        reader = FastReader(url, max_size=3)
        seen: list[int] = []
        stop = asyncio.Event()
        watching = asyncio.create_task(_backends(dsn, seen, stop))
        try:
            rows = await asyncio.gather(
                *(reader.fetchrow(SLOW, i) for i in range(12)),
                *(reader.fetchall(SLOW, i) for i in range(12, 18)),
            )
            assert [r[1] for r in rows[:12]] == list(range(12))  # type: ignore[index]
            assert [r[0][1] for r in rows[12:]] == list(range(12, 18))  # type: ignore[index]
            most = max(seen)
            assert 2 <= most <= 3, seen  # at least two: the sampler saw the reads at all

            # Cancelled while reading: those connections are closed, their places free.
            long = [asyncio.create_task(reader.fetchrow("SELECT pg_sleep(2), ?::int", i)) for i in range(3)]
            await asyncio.sleep(0.3)
            for task in long:
                task.cancel()
            await asyncio.gather(*long, return_exceptions=True)
            assert await asyncio.wait_for(reader.fetchrow("SELECT ?::int", 7), 1) == (7,)
        finally:
            stop.set()
            await watching
            await reader.close()
