"""The ledger writer alone: `python -m bench.writer` (not part of `make bench`).

Applies SpendBatch-shaped work straight to a LedgerWriter on a fresh SQLite
file, no gRPC: 4 submit_many calls of 100 Spends at a time, each Spend of 1
millicredit by a random one of BENCH_WRITER_ACCOUNTS wallets (default 1,000;
1 for the hot account). Prints spends/s and the process's CPU per spend;
with BENCH_WRITER_SQL=1 also the time of each batch statement per row, which
is how "Where a batched item's time goes" in bench/README.md splits the
database's share.

  BENCH_WRITER_ACCOUNTS=1000  BENCH_WRITER_ROUNDS=100  BENCH_WRITER_SQL=0
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from server.db import batchsql
from server.db.engine import Database
from server.ledger.ops import Idempotency, Spend
from server.ledger.tx import TierPolicy
from server.ledger.writer import LedgerWriter
from server.platform.clock import Clock

ITEMS_PER_CALL = 100
CALLS_IN_FLIGHT = 4
WARMUP_ROUNDS = 30

# SQL text (its start) -> [seconds, rows]
_SQL_TIME: collections.defaultdict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])


def _time_statements() -> None:
    """Wrap the batch's statement runners to add up their time per statement."""
    fetch, many = batchsql.BatchSql._sqlite_fetch, batchsql.BatchSql._many

    async def timed_fetch(self: batchsql.BatchSql, sql: str, args: Sequence[Any]) -> list[Any]:
        began = time.perf_counter()
        rows = await fetch(self, sql, args)
        entry = _SQL_TIME[sql[:60]]
        entry[0] += time.perf_counter() - began
        entry[1] += len(args)
        return rows

    async def timed_many(self: batchsql.BatchSql, sql: str, params: list[tuple[Any, ...]]) -> None:
        began = time.perf_counter()
        await many(self, sql, params)
        entry = _SQL_TIME[sql[:60]]
        entry[0] += time.perf_counter() - began
        entry[1] += len(params)

    batchsql.BatchSql._sqlite_fetch = timed_fetch  # type: ignore[method-assign]
    batchsql.BatchSql._many = timed_many  # type: ignore[method-assign]


async def run(accounts: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite+aiosqlite:///{Path(tmp) / 'writer.db'}")
        await db.migrate()
        writer = LedgerWriter(db, Clock(), TierPolicy({"free": 10**12}), max_batch=256)
        await writer.start()
        rng = random.Random(1)
        n = 0

        async def one_round() -> None:
            nonlocal n
            calls = []
            for _ in range(CALLS_IN_FLIGHT):
                ops = []
                for _ in range(ITEMS_PER_CALL):
                    n += 1
                    ops.append(Spend(
                        user_id=f"u{rng.randrange(accounts)}", amount=1, category="bench",
                        idempotency=Idempotency.of("service", "bench", "Spend", f"r{n}", "f" * 64),
                        charged_by="service/bench",
                    ))
                calls.append(writer.submit_many(ops))
            await asyncio.gather(*calls)

        for _ in range(WARMUP_ROUNDS):  # wallets created, tables grown
            await one_round()
        _SQL_TIME.clear()
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(rounds):
            await one_round()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        await writer.stop()
        await db.writer.dispose()
        await db.reader.dispose()
    spends = rounds * CALLS_IN_FLIGHT * ITEMS_PER_CALL
    print(f"{accounts} accounts: {spends / wall:,.0f} spends/s, {1e6 * cpu / spends:.1f} us of CPU per spend")
    for sql, (seconds, rows) in sorted(_SQL_TIME.items(), key=lambda kv: -kv[1][0]):
        print(f"  {1e6 * seconds / spends:6.2f} us per spend  {1e6 * seconds / max(rows, 1):6.2f} us per row  {sql}")


def main() -> None:
    if os.environ.get("BENCH_WRITER_SQL", "") not in ("", "0"):
        _time_statements()
    asyncio.run(run(int(os.environ.get("BENCH_WRITER_ACCOUNTS", 1000)), int(os.environ.get("BENCH_WRITER_ROUNDS", 100))))


if __name__ == "__main__":
    main()
